"""Conversational data: the chat template renders the prompt; only assistant tokens carry loss."""
import pytest
import torch

from prefopt.data.chat import render_pair, set_chat_template
from prefopt.data.loaders import validate
from prefopt.data.prepare import encode_pairwise
from prefopt.data.tokenize import collate_pairs
from prefopt.errors import ConfigError, DataError

from offline_fixtures import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# A Jinja template written for this test (ChatML-like markers, assistant turn ends with eos).
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}"
            "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}\n{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


@pytest.fixture
def chat_tok():
    from prefopt.cli.run import task_tokenizer
    tok = task_tokenizer("reviews", {})  # a fresh object: the template does not leak to other tests
    set_chat_template(tok, TEMPLATE)
    return tok


def _conv():
    return [{"prompt": [{"role": "system", "content": "be brief ."},
                        {"role": "user", "content": "review of the zenta phone:"},
                        {"role": "assistant", "content": "the screen is okay ."},   # an earlier assistant turn
                        {"role": "user", "content": "and the battery ?"}],
             "chosen": [{"role": "assistant", "content": "the battery is great ."}],
             "rejected": [{"role": "assistant", "content": "the battery is awful ."}]}]


def test_only_the_final_assistant_response_carries_loss(chat_tok):
    rows = validate(_conv(), "pairwise").rows
    pairs, stats = encode_pairwise(chat_tok, rows, max_length=128, max_prompt_length=96)
    assert stats.conversational == 1
    batch = collate_pairs(pairs, chat_tok.pad_token_id)
    for seq, text in ((batch.chosen, " the battery is great .<eos>"), (batch.rejected, " the battery is awful .<eos>")):
        ids = seq.input_ids[0][seq.loss_mask[0]].tolist()
        assert chat_tok.decode(ids) == text
        prompt_part = chat_tok.decode(seq.input_ids[0][~seq.loss_mask[0] & seq.attention_mask[0].bool()].tolist())
        # system, user and the earlier assistant turn (and the generation prompt) are all masked out
        assert "[system] be brief" in prompt_part and "the screen is okay" in prompt_part
        assert prompt_part.endswith("[assistant]")
    # the mask is exactly the response span: one contiguous run at the end of the real tokens
    mask = batch.chosen.loss_mask[0].int()
    n_real = int(batch.chosen.attention_mask[0].sum())
    assert mask[:n_real].tolist() == [0] * (n_real - int(mask.sum())) + [1] * int(mask.sum())


def test_render_pair_is_a_split_of_the_full_rendering(chat_tok):
    conv = _conv()[0]
    p, r = render_pair(chat_tok, conv["prompt"], conv["chosen"])
    assert p + r == chat_tok.apply_chat_template(conv["prompt"] + conv["chosen"], tokenize=False)
    assert r == " the battery is great .<eos>"


def test_eos_is_appended_only_when_the_template_has_none(chat_tok):
    set_chat_template(chat_tok, "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                                "{% if add_generation_prompt %}assistant:{% endif %}")
    (pair,), _ = encode_pairwise(chat_tok, validate(_conv(), "pairwise").rows, max_length=128, max_prompt_length=96)
    assert pair.chosen_ids[-1] == chat_tok.eos_token_id and pair.chosen_ids.count(chat_tok.eos_token_id) == 1


def test_missing_template_is_a_clear_error():
    from prefopt.cli.run import task_tokenizer
    tok = task_tokenizer("reviews", {})
    tok.chat_template = None
    with pytest.raises(DataError, match="needs a tokenizer with a chat template.*data.chat_template"):
        encode_pairwise(tok, validate(_conv(), "pairwise").rows, max_length=64, max_prompt_length=32)
    with pytest.raises(ConfigError, match="data.chat_template"):
        set_chat_template(tok, "no-such-template")


def test_loss_mask_drives_the_logps(chat_tok, tiny_llama):
    """Changing a prompt token changes nothing but the context; changing the mask changes the sum."""
    from prefopt.models.logprobs import sequence_logps

    (pair,), _ = encode_pairwise(chat_tok, validate(_conv(), "pairwise").rows, max_length=128, max_prompt_length=96)
    batch = collate_pairs([pair], chat_tok.pad_token_id)
    logps, lengths = sequence_logps(tiny_llama.eval(), batch.chosen)
    assert int(lengths[0]) == len(pair.chosen_ids)
    assert torch.isfinite(logps).all()
