"""Reward models and ensembles: build, aggregate, save in HF format, load as a scorer.

A reward model is any ``AutoModelForSequenceClassification`` (a backbone with a linear head
on the last real token); ``num_labels = k`` gives k heads on one backbone. An ensemble of k
*separate* models is a :class:`RewardEnsemble`, saved as ``member-<i>/`` HF directories plus
``ensemble.json``. Every saved reward model carries ``prefopt_reward`` metadata in its
config (objective name, aggregation, encoding lengths), so ``load_scorer(path)`` needs
nothing else:

    scorer = load_scorer("runs/rm/checkpoint-200/model")        # or an ensemble directory
    scorer(prompts, responses)  # -> {"reward": [...]} aggregated over members/heads

Aggregations over k member rewards r_1..r_k of one response:
``mean``; ``min`` (worst-case optimization, WCO); ``uwo`` = mean - λ·Var (population variance
over members; uncertainty-weighted optimization).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch

from prefopt.errors import ConfigError, PrefoptError
from prefopt.losses.scalarize import ENSEMBLE_AGGREGATIONS, aggregate_members
from prefopt.models.config import ModelConfig
from prefopt.models.loading import DTYPES, _check_local
from prefopt.models.tiny import is_tiny, tiny_config
from prefopt.seeding import REWARD_INIT, REWARD_MEMBER, derive_seed

AGGREGATIONS = tuple(ENSEMBLE_AGGREGATIONS)
ENSEMBLE_FILE = "ensemble.json"
META_KEY = "prefopt_reward"


def aggregate(rewards: torch.Tensor, how: str = "mean", uwo_lambda: float = 1.0) -> torch.Tensor:
    """(N, k) member rewards -> (N,) aggregated reward (:func:`prefopt.losses.scalarize.aggregate_members`)."""
    return aggregate_members(rewards, how, uwo_lambda)


def reward_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, k) float rewards of right-padded sequences (k = heads or members)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    logits = out.logits if hasattr(out, "logits") else out
    return logits.float()


class RewardEnsemble(torch.nn.Module):
    """k separate reward models evaluated side by side; ``forward`` returns logits (B, k)."""

    def __init__(self, members: Sequence[torch.nn.Module], meta: dict | None = None):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = torch.nn.ModuleList(members)
        self.meta = dict(meta or {})

    @property
    def config(self):
        return self.members[0].config

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        logits = [m(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits for m in self.members]
        return SimpleNamespace(logits=torch.cat(logits, dim=-1))

    def save_pretrained(self, path, safe_serialization: bool = True, **kwargs) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(self.members):
            m.save_pretrained(path / f"member-{i}", safe_serialization=safe_serialization, **kwargs)
        (path / ENSEMBLE_FILE).write_text(json.dumps(
            {"members": [f"member-{i}" for i in range(len(self.members))], **self.meta}, indent=2))

    def load_checkpoint_dir(self, path) -> None:
        """Load member weights saved by ``save_pretrained`` (used when resuming)."""
        from safetensors.torch import load_file

        for i, m in enumerate(self.members):
            state = {}
            for f in sorted((Path(path) / f"member-{i}").glob("*.safetensors")):
                state.update(load_file(f))
            m.load_state_dict(state, strict=False)


def set_meta(model, meta: dict) -> None:
    """Attach prefopt metadata to a reward model (stored in config.json / ensemble.json)."""
    if isinstance(model, RewardEnsemble):
        model.meta.update(meta)
        for m in model.members:
            setattr(m.config, META_KEY, dict(meta))
    else:
        setattr(model.config, META_KEY, dict(meta))


def build_reward_backbone(model_cfg: ModelConfig, tokenizer, num_labels: int = 1, seed: int = 0):
    """A sequence-classification model on ``model_cfg``'s backbone with ``num_labels`` heads.

    Tiny models are created from a config (initialised from ``(init_seed, seed)``); others load
    their backbone from a hub name or directory (a causal LM checkpoint works: the head is new
    and initialised from ``seed``).
    """
    from transformers import AutoModelForSequenceClassification

    dtype = DTYPES.get(model_cfg.dtype)
    if dtype is None:
        raise ConfigError(f"model.dtype: got '{model_cfg.dtype}', expected one of {', '.join(DTYPES)}")
    pad = tokenizer.pad_token_id if tokenizer is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(model_cfg.init_seed, REWARD_INIT, seed))
        if is_tiny(model_cfg.name_or_path):
            if tokenizer is None:
                raise ConfigError("a tiny reward model needs a tokenizer")
            config = tiny_config(model_cfg.name_or_path, len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                                 max_positions=model_cfg.max_positions)
            config.num_labels = num_labels
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            _check_local(model_cfg.name_or_path, "reward model backbone")
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    model_cfg.name_or_path, num_labels=num_labels, dtype=dtype,
                    trust_remote_code=model_cfg.trust_remote_code, ignore_mismatched_sizes=True)
            except (OSError, ValueError) as exc:
                raise PrefoptError(f"cannot load reward model backbone '{model_cfg.name_or_path}': "
                                   f"{str(exc).splitlines()[0]}") from exc
    if model.config.pad_token_id is None:
        if pad is None:
            raise ConfigError("reward model: the tokenizer has no pad token and the model config none")
        model.config.pad_token_id = pad
    return model.to(dtype)


def build_reward_model(model_cfg: ModelConfig, tokenizer, *, ensemble_size: int = 1, kind: str = "models",
                       seed: int = 0, meta: dict | None = None):
    """One reward model, k heads on one backbone, or an ensemble of k separate models."""
    if kind not in ("models", "heads"):
        raise ConfigError(f"reward.ensemble_kind: got '{kind}', expected 'models' or 'heads'")
    if ensemble_size == 1 or kind == "heads":
        model = build_reward_backbone(model_cfg, tokenizer, num_labels=ensemble_size, seed=seed)
    else:
        model = RewardEnsemble([build_reward_backbone(model_cfg, tokenizer, 1, seed=derive_seed(seed, REWARD_MEMBER, i))
                                for i in range(ensemble_size)])
    if meta:
        set_meta(model, {**meta, "ensemble_size": ensemble_size, "ensemble_kind": kind})
    return model


# --------------------------------------------------------------------------- loading & scoring
def load_reward_model(path: str | Path, dtype: str = "float32"):
    """(model, metadata) of a saved reward model or ensemble directory."""
    from transformers import AutoModelForSequenceClassification

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    if not path.exists():
        raise PrefoptError(f"cannot load reward model '{path}': no such directory")
    torch_dtype = DTYPES.get(dtype, torch.float32)

    def one(p: Path):
        if not (p / "config.json").exists():
            raise PrefoptError(f"cannot load reward model '{p}': no config.json (expected a directory saved by "
                               "prefopt reward-model training or save_pretrained)")
        try:
            return AutoModelForSequenceClassification.from_pretrained(p, dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            raise PrefoptError(f"cannot load reward model '{p}': {str(exc).splitlines()[0]}") from exc

    if (path / ENSEMBLE_FILE).exists():
        spec = json.loads((path / ENSEMBLE_FILE).read_text())
        members = [one(path / m) for m in spec.get("members", [])]
        meta = {k: v for k, v in spec.items() if k != "members"}
        model = RewardEnsemble(members, meta)
    else:
        model = one(path)
        meta = dict(getattr(model.config, META_KEY, None) or {})
    model.eval()
    return model, meta


class RewardScorer:
    """``scorer(prompts, responses) -> {objective: [reward, ...]}`` from a reward model/ensemble.

    Texts are encoded exactly as in reward-model training (prompt + response + eos, prompt
    trimmed from the left; message lists rendered with the saved chat template).
    ``return_members`` adds ``<objective>/member_<i>`` and ``<objective>/std`` entries.
    """

    def __init__(self, model, tokenizer, *, objective: str = "reward", aggregation: str = "mean",
                 uwo_lambda: float = 1.0, max_length: int = 512, max_prompt_length: int = 256,
                 batch_size: int = 32, return_members: bool = False, device: str | None = None):
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"reward aggregation: got '{aggregation}', expected one of {', '.join(AGGREGATIONS)}")
        self.model, self.tokenizer = model, tokenizer
        self.objective, self.aggregation, self.uwo_lambda = objective, aggregation, uwo_lambda
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.batch_size, self.return_members = batch_size, return_members
        if device is not None:
            self.model.to(device)

    @torch.no_grad()
    def member_rewards(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        """(N, k) rewards of every member/head."""
        from prefopt.data.prepare import encode_texts
        from prefopt.data.tokenize import collate_sequences

        if len(prompts) != len(responses):
            raise ValueError(f"scorer: {len(prompts)} prompts but {len(responses)} responses")
        self.model.eval()
        device = next(self.model.parameters()).device
        out = []
        for s in range(0, len(prompts), self.batch_size):
            rows = []
            for p, r in zip(prompts[s:s + self.batch_size], responses[s:s + self.batch_size]):
                if isinstance(p, list) and isinstance(r, str):
                    r = [{"role": "assistant", "content": r}]
                pi, (ri,), _ = encode_texts(self.tokenizer, p, [r], self.max_length, self.max_prompt_length)
                rows.append((pi, ri))
            batch = collate_sequences(rows, self.tokenizer.pad_token_id).to(device)
            out.append(reward_values(self.model, batch.input_ids, batch.attention_mask).cpu())
        if not out:
            return torch.zeros(0, 1)
        return torch.cat(out)

    def __call__(self, prompts: Sequence, responses: Sequence) -> dict[str, list[float]]:
        r = self.member_rewards(list(prompts), list(responses))
        result = {self.objective: aggregate(r, self.aggregation, self.uwo_lambda).tolist()}
        if self.return_members:
            for i in range(r.shape[1]):
                result[f"{self.objective}/member_{i}"] = r[:, i].tolist()
            result[f"{self.objective}/std"] = r.std(-1, correction=0).tolist()
        return result


def load_scorer(path: str | Path, *, aggregation: str | None = None, uwo_lambda: float | None = None,
                objective: str | None = None, tokenizer=None, batch_size: int = 32,
                return_members: bool = False, device: str | None = None, dtype: str = "float32") -> RewardScorer:
    """A :class:`RewardScorer` for a saved reward model or ensemble; options override its metadata."""
    from prefopt.models.loading import load_tokenizer

    model, meta = load_reward_model(path, dtype)
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(str(path))
        except PrefoptError:
            raise PrefoptError(f"reward model '{path}' has no saved tokenizer; pass tokenizer=") from None
    return RewardScorer(model, tokenizer, objective=objective or meta.get("objective", "reward"),
                        aggregation=aggregation or meta.get("aggregation", "mean"),
                        uwo_lambda=meta.get("uwo_lambda", 1.0) if uwo_lambda is None else uwo_lambda,
                        max_length=meta.get("max_length", 512), max_prompt_length=meta.get("max_prompt_length", 256),
                        batch_size=batch_size, return_members=return_members, device=device)
