import torch

from prefopt.data.tokenize import collate_sequences
from prefopt.models.logprobs import selective_log_softmax, sequence_logps, token_logps


def test_selective_log_softmax_matches_naive():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 11)
    labels = torch.randint(0, 11, (5, 7))
    naive = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, labels, chunk_rows=2), naive, atol=1e-6)


def test_hand_example():
    # logits [0, ln 3] → p = [1/4, 3/4]; label 1 → log(3/4)
    logits = torch.tensor([[[0.0, torch.log(torch.tensor(3.0))]]])
    out = selective_log_softmax(logits, torch.tensor([[1]]))
    assert torch.allclose(out, torch.log(torch.tensor([[0.75]])), atol=1e-6)


def test_sequence_logps_against_naive_full_forward(tiny_llama):
    rows = [([5, 6, 7], [8, 9, 1]), ([10, 11], [12, 13, 14, 15, 1]), ([20, 21, 22, 23], [1])]
    batch = collate_sequences(rows, pad_id=0)
    tiny_llama.eval()
    with torch.no_grad():
        summed, lengths = sequence_logps(tiny_llama, batch)
        logps, mask = token_logps(tiny_llama, batch)
        for i, (p, r) in enumerate(rows):
            ids = torch.tensor([p + r])
            full = torch.log_softmax(tiny_llama(ids).logits[0].float(), -1)
            expected = sum(float(full[len(p) + j - 1, tok]) for j, tok in enumerate(r))
            assert abs(float(summed[i]) - expected) < 1e-4
            assert int(lengths[i]) == len(r)
    assert (logps[~mask] == 0).all()
