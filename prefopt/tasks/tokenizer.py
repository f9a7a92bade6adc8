"""A byte-level BPE tokenizer trained locally on a task's text, loadable with ``AutoTokenizer``."""
from __future__ import annotations

from pathlib import Path

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"


def train_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 512):
    """Train a byte-level BPE on ``texts`` (digits split one per token) and save it to ``out_dir``.

    Returns the ``PreTrainedTokenizerFast`` as loaded back through ``AutoTokenizer``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)
