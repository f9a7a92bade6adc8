"""The one seed derivation of prefopt: every random stream is seeded by
``derive_seed(seed, purpose, index, rank)``.

Ad-hoc formulas (``seed + 1000 * i``, ``seed * 7919 + 17``) collide: an ensemble seeded with
``seed + 1000 * i`` gives member 1 of seed 0 the stream of member 0 of seed 1000. Here the four
inputs go through a splitmix64 chain (each step a bijection of 64-bit words), the purpose as a
stable 64-bit digest of its name (never Python's salted ``hash``), so distinct inputs give
unrelated seeds; collisions are as rare as for random 63-bit numbers.

Purposes are the names in ``PURPOSES`` (one place; ``derive_seed`` refuses any other name), each
with what its ``index`` counts. ``rank`` is the process rank in distributed runs (0 otherwise).
Two-level streams (e.g. sampling call ``c``, prompt ``j``) nest: ``derive_seed(derive_seed(seed,
ROLLOUT_CALL, c), ROLLOUT_PROMPT, j)``.
"""
from __future__ import annotations

import hashlib
import operator

from prefopt.errors import ConfigError

_M64 = (1 << 64) - 1
SEED_MAX = 2**32 - 1  # largest base seed of a run (numpy.random.seed takes 32 bits)
SEED_WORD_MAX = _M64  # largest seed derive_seed takes (e.g. a derived seed used as a base)

GLOBAL = "global"
DATA_ORDER = "data.order"
UNPAIRED_PARTNERS = "data.unpaired_partners"
TASK_PROMPTS = "task.prompts"
TASK_CORPUS = "task.sft_corpus"
PREFDATA_SAMPLING = "prefdata.sampling"
PREFDATA_LABELS = "prefdata.labels"
LABEL_FLIPS = "compare.label_flips"
HELDOUT_PAIRS = "compare.heldout_pairs"
EVAL_PROMPTS = "eval.prompts"
EVAL_SAMPLING = "eval.sampling"
REWARD_MEMBER = "reward.member"
REWARD_INIT = "reward.init"
REWARD_BOOTSTRAP = "reward.bootstrap"
ROLLOUT_PROMPT = "rollout.prompt"
ROLLOUT_SAMPLE = "rollout.sample"
ROLLOUT_CALL = "rollout.call"
ROLLOUT_EVAL = "rollout.eval"
ONLINE_PREF_ROUND = "online_pref.round"
PPO_MINIBATCHES = "ppo.minibatches"
RESET_DRAW = "reset.draw"
MIX_OFFLINE = "mix.offline"
RIC_ROUND = "ric.round"
HEDGE_FEEDBACK = "hedge.feedback"

PURPOSES: dict[str, str] = {
    GLOBAL: "Python/NumPy/torch global generators (dropout, anything unseeded)",
    DATA_ORDER: "epoch order of a dataset sampler; index: epoch",
    UNPAIRED_PARTNERS: "KTO mismatched-completion derangement; index: 0 train, 1 eval",
    TASK_PROMPTS: "lab task prompts; index: split (0 train, 1 eval)",
    TASK_CORPUS: "lab task SFT corpus; index: 0 train, 1 eval",
    PREFDATA_SAMPLING: "sampling of preference-data candidates",
    PREFDATA_LABELS: "Bradley-Terry draws and label flips of preference data",
    LABEL_FLIPS: "nested label-noise draws of `prefopt compare`",
    HELDOUT_PAIRS: "held-out preference pairs of `prefopt compare`",
    EVAL_PROMPTS: "held-out evaluation prompts of demo/compare",
    EVAL_SAMPLING: "sampling of evaluation completions",
    REWARD_MEMBER: "base seed of reward-ensemble member; index: member",
    REWARD_INIT: "initialisation of a reward model's weights and head; index: member seed",
    REWARD_BOOTSTRAP: "bootstrap resampling of reward-ensemble training pools",
    ROLLOUT_PROMPT: "per-prompt seed of a generation call; index: prompt position",
    ROLLOUT_SAMPLE: "per-row key of one prompt's samples; index: sample",
    ROLLOUT_CALL: "training sampling call of an online algorithm; index: call count",
    ROLLOUT_EVAL: "fixed evaluation samples of an online algorithm; index: prompt",
    ONLINE_PREF_ROUND: "data order of one online/iterative DPO round; index: round",
    RIC_ROUND: "prompts, random targets and sampling of a rewards-in-context online round; index: round",
    PPO_MINIBATCHES: "PPO epoch/minibatch shuffles; index: rollout count",
    RESET_DRAW: "dataset-reset coins and prefix lengths (DR-PO); index: draw call",
    MIX_OFFLINE: "base seed of a mixture's offline source (its data order)",
    HEDGE_FEEDBACK: "which judged pairs a Hedge labeller asks the gold label for; index: judge call",
}


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


_PURPOSE_WORDS = {p: int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "little")
                  for p in PURPOSES}


def _word(name: str, value) -> int:
    try:
        word = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        word = None
    if word is None or not 0 <= word <= _M64:
        raise ConfigError(f"seed derivation: {name}={value!r}, expected an integer in [0, 2**64)")
    return word


def derive_seed(seed: int, purpose: str, index: int = 0, rank: int = 0, *, bits: int = 63) -> int:
    """The seed of stream ``(purpose, index, rank)`` under base ``seed``: an int in [0, 2**bits).

    The default 63 bits suit ``torch.Generator.manual_seed``, ``random.Random`` and
    ``numpy.random.default_rng``; pass ``bits=32`` for ``numpy.random.seed``.
    """
    if purpose not in _PURPOSE_WORDS:
        raise ConfigError(f"seed derivation: purpose '{purpose}' is not one of {', '.join(PURPOSES)}")
    if not 1 <= bits <= 64:
        raise ConfigError(f"seed derivation: bits={bits}, expected 1..64")
    h = _splitmix64(_word("seed", seed))
    for word in (_PURPOSE_WORDS[purpose], _word("index", index), _word("rank", rank)):
        h = _splitmix64(h ^ word)
    return h >> (64 - bits)
