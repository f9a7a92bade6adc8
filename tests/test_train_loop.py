"""The single loop: accumulation, exact resume, checkpoints, errors."""
import pytest
import torch

from prefopt.data.tokenize import encode_prompt_response
from prefopt.errors import TrainingError
from prefopt.tasks import get_task
from prefopt.train.algorithms.base import Algorithm, StepLoss
from prefopt.train.algorithms.sft import SFT
from prefopt.train.checkpoint import list_checkpoints
from prefopt.train.config import LoopConfig
from prefopt.train.loop import train
from prefopt.train.metrics import read_metrics


def _sft(tok, n=64, batch_size=4):
    t = get_task("reviews")
    enc = [encode_prompt_response(tok, p, r, 64, 32) for p, r in t.sft_corpus(n, seed=0)]
    return SFT(enc[8:], enc[:8], pad_id=tok.pad_token_id, batch_size=batch_size, seed=0)


def _model(tok):
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    return load_model(ModelConfig(name_or_path="tiny:llama-1m"), tok)


def _cfg(**kw):
    return LoopConfig(**{"steps": 6, "progress": False, "lr_schedule": "cosine", "warmup_steps": 2, **kw})


def test_metrics_every_step(reviews_tokenizer, tmp_path):
    model = _model(reviews_tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    res = train(model, _sft(reviews_tokenizer), opt, _cfg(steps=3), tmp_path)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "lr", "time/step_s", "tokens/s", "memory/peak_rss_mib", "sft/nll"):
        assert key in rows[0]
    assert "loss" in res.eval_metrics
    assert (res.final_checkpoint / "model" / "model.safetensors").exists()


def test_exact_resume(reviews_tokenizer, tmp_path):
    """N steps straight == N/2 steps, interrupt, resume, N/2 steps: identical weights."""
    straight = _model(reviews_tokenizer)
    train(straight, _sft(reviews_tokenizer), torch.optim.AdamW(straight.parameters(), lr=1e-3), _cfg(), tmp_path / "a")

    half = _model(reviews_tokenizer)
    with pytest.raises(KeyboardInterrupt):
        train(half, _interrupting(reviews_tokenizer, stop_at=4), torch.optim.AdamW(half.parameters(), lr=1e-3),
              _cfg(), tmp_path / "b")
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["checkpoint-3"]
    # The second half starts from fresh objects, as a new process would.
    resumed = _model(reviews_tokenizer)
    train(resumed, _sft(reviews_tokenizer), torch.optim.AdamW(resumed.parameters(), lr=1e-3), _cfg(),
          tmp_path / "b", resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_grad_accumulation_equals_big_batch(reviews_tokenizer, tmp_path):
    """2 micro-batches of 4 accumulate to the same update as 1 batch of 8 (token-level mean)."""
    big, small = _model(reviews_tokenizer), _model(reviews_tokenizer)
    opt_cfg = dict(lr=1e-2)
    train(big, _sft(reviews_tokenizer, batch_size=8), torch.optim.SGD(big.parameters(), **opt_cfg),
          _cfg(steps=1, warmup_steps=0, lr_schedule="constant", max_grad_norm=0), tmp_path / "a")
    train(small, _sft(reviews_tokenizer, batch_size=4), torch.optim.SGD(small.parameters(), **opt_cfg),
          _cfg(steps=1, warmup_steps=0, lr_schedule="constant", max_grad_norm=0, grad_accum=2), tmp_path / "b")
    for a, b in zip(big.parameters(), small.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


class _Exploding(Algorithm):
    def next_batches(self, model, num_micro):
        return [[0]]

    def compute_loss(self, model, batch):
        p = next(model.parameters())
        return StepLoss(p.sum() * float("nan"))


def test_non_finite_loss_stops_clearly_without_checkpoint(reviews_tokenizer, tmp_path):
    model = _model(reviews_tokenizer)
    with pytest.raises(TrainingError, match="non-finite loss .* at step 1"):
        train(model, _Exploding(), torch.optim.AdamW(model.parameters()), _cfg(), tmp_path)
    assert not list(tmp_path.glob("checkpoint-*")) and not list(tmp_path.glob(".tmp-*"))


class _Interrupting(SFT):
    def __init__(self, *a, stop_at, **kw):
        super().__init__(*a, **kw)
        self.calls, self.stop_at = 0, stop_at

    def next_batches(self, model, num_micro):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return super().next_batches(model, num_micro)


def _interrupting(tok, stop_at):
    t = get_task("reviews")
    enc = [encode_prompt_response(tok, p, r, 64, 32) for p, r in t.sft_corpus(64, seed=0)]
    return _Interrupting(enc[8:], enc[:8], pad_id=tok.pad_token_id, batch_size=4, stop_at=stop_at)


def test_ctrl_c_saves_resumable_checkpoint(reviews_tokenizer, tmp_path):
    model = _model(reviews_tokenizer)
    with pytest.raises(KeyboardInterrupt):
        train(model, _interrupting(reviews_tokenizer, 4), torch.optim.AdamW(model.parameters(), lr=1e-3), _cfg(),
              tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3"]
    assert not list(tmp_path.glob(".tmp-*"))
