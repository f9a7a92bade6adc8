"""Rewarded soups (Ramé et al. 2023): interpolate the weights of policies fine-tuned from one start,
``θ(λ) = Σ_i λ_i θ_i`` with λ on the simplex; WiSE-FT (Wortsman et al. 2022) is the soup of the start
and one fine-tuned policy.

LoRA (PEFT) members are interpolated through their *merged* low-rank updates: member i contributes
``W_i + s_i B_i A_i`` (its base weight plus its scaled update, exactly what ``merge_and_unload``
gives), so the soup of a shared base W is ``W + Σ λ_i s_i B_i A_i``. The reference code
(alexrame/rewardedsoups ``llama/utils/inference_utils.py`` ``WeightAverager.average_weights``)
averages the A and B matrices separately, giving ``(Σ λ_i B_i)(Σ λ_j A_j)``, which has cross terms
``λ_i λ_j B_i A_j`` and is a different model (tests/test_soups.py shows both facts).

Members are read one at a time (a generator of models works), so a soup of N models holds the
running sum, the first member, the output and the current member in memory, whatever N. Tensors equal in every member (frozen weights)
are copied exactly instead of being re-summed in floating point.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Iterable, Sequence

import torch

from prefopt.errors import ConfigError
from prefopt.objectives.scalarize import check_simplex

# Config fields that do not change what a parameter means.
_NON_STRUCTURAL = {"_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash",
                   "architectures", "use_cache", "prefopt"}


def _unwrap(model) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """(plain model, {weight name: scaled LoRA update}) of a member; PEFT models are copied first."""
    from prefopt.models.lora import is_peft

    if not is_peft(model):
        return model, {}
    from peft.tuners.lora import LoraLayer

    updates = {}
    for name, module in model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not hasattr(module, "get_delta_weight"):
            raise ConfigError(f"soup: LoRA layer '{name}' ({type(module).__name__}) has no merged update")
        for adapter in module.active_adapters:
            if getattr(module, "use_dora", {}).get(adapter):
                raise ConfigError(f"soup: LoRA layer '{name}' uses DoRA, whose update is not additive; merge it "
                                  "(merge_and_unload) and soup the merged models")
            delta = module.get_delta_weight(adapter).detach()
            key = f"{name}.weight"
            updates[key] = updates[key] + delta if key in updates else delta
    return copy.deepcopy(model).unload(), updates


def _structure(model) -> tuple[str, dict]:
    config = getattr(model, "config", None)
    fields = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    return type(model).__name__, {k: v for k, v in fields.items() if k not in _NON_STRUCTURAL}


def _check_structure(first: tuple[str, dict], other: tuple[str, dict], label: str, first_label: str) -> None:
    if first[0] != other[0]:
        raise ConfigError(f"soup: member {label} is a {other[0]}, member {first_label} a {first[0]}; "
                          "soups need one architecture")
    for key in sorted(set(first[1]) | set(other[1])):
        a, b = first[1].get(key, "<unset>"), other[1].get(key, "<unset>")
        if a != b:
            raise ConfigError(f"soup: member {label} differs from member {first_label} in config.{key}: "
                              f"{b!r} vs {a!r}; soups need one architecture")


class _SoupSum:
    """Running Σ λ_i θ_i over state dicts with the same names and shapes."""

    def __init__(self):
        self.first_label = ""
        self.first: dict[str, torch.Tensor] = {}
        self.total: dict[str, torch.Tensor] = {}
        self.all_equal: dict[str, bool] = {}

    def add(self, state: dict[str, torch.Tensor], weight: float, label: str) -> None:
        if not self.first:
            self.first_label, self.first = label, {k: v.detach() for k, v in state.items()}
            self.all_equal = dict.fromkeys(self.first, True)
        self._check_names(state, label)
        for key, value in state.items():
            ref = self.first[key]
            if value.shape != ref.shape:
                raise ConfigError(f"soup: parameter '{key}' has shape {tuple(value.shape)} in member {label} but "
                                  f"{tuple(ref.shape)} in member {self.first_label}")
            if not torch.equal(value, ref):
                self.all_equal[key] = False
            if not ref.is_floating_point():
                if not self.all_equal[key]:
                    raise ConfigError(f"soup: non-float tensor '{key}' differs between members {self.first_label} "
                                      f"and {label}; it cannot be interpolated")
                continue
            term = weight * value.detach().to(device=ref.device, dtype=torch.float32)
            self.total[key] = self.total[key] + term if key in self.total else term

    def _check_names(self, state, label: str) -> None:
        missing = [k for k in self.first if k not in state]
        extra = [k for k in state if k not in self.first]
        if missing or extra:
            what = (f"lacks parameter '{missing[0]}'" if missing else f"has parameter '{extra[0]}'")
            raise ConfigError(f"soup: member {label} {what} that member {self.first_label} "
                              f"{'has' if missing else 'lacks'}; soups need the same parameter names")

    def result(self, updates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, ref in self.first.items():
            if self.all_equal[key] and key not in updates:
                out[key] = ref.clone()
                continue
            value = ref.to(torch.float32) if self.all_equal[key] else self.total[key]
            if key in updates:
                value = value + updates[key]
            out[key] = value.to(ref.dtype)
        return out


def soup_models(members: Iterable, weights: Sequence[float], *, labels: Sequence[str] | None = None):
    """A new plain model with ``Σ λ_i θ_i`` (LoRA members through their merged updates).

    ``members`` may be a generator (each model is dropped after it is added). Members must share the
    architecture (model class and structural config fields) and parameter names and shapes; the first
    mismatch is named. The output is a copy of the first member's (unloaded) model.
    """
    lam = check_simplex(weights, key="soup weights").tolist()
    if hasattr(members, "__len__") and len(members) != len(lam):
        raise ConfigError(f"soup weights: got {len(lam)} weights for {len(members)} members")
    total, updates = _SoupSum(), {}
    skeleton, first_structure, count = None, None, 0
    for i, model in enumerate(members):
        if i >= len(lam):
            raise ConfigError(f"soup weights: got {len(lam)} weights for more than {len(lam)} members")
        label = f"{i + 1} ({labels[i]})" if labels else str(i + 1)
        plain, deltas = _unwrap(model)
        structure = _structure(plain)
        if first_structure is None:
            first_structure, skeleton = structure, plain if plain is not model else copy.deepcopy(model)
        else:
            _check_structure(first_structure, structure, label, total.first_label)
        total.add(plain.state_dict(), lam[i], label)
        for key, delta in deltas.items():
            if key not in total.first:
                raise ConfigError(f"soup: member {label} adapts '{key}', which member {total.first_label} lacks")
            term = lam[i] * delta.to(device=total.first[key].device, dtype=torch.float32)
            updates[key] = updates[key] + term if key in updates else term
        count += 1
    if count != len(lam):
        raise ConfigError(f"soup weights: got {len(lam)} weights for {count} members")
    skeleton.load_state_dict(total.result(updates))
    return skeleton


def wise_ft(start, finetuned, alpha: float):
    """WiSE-FT: ``(1 − α)·θ_start + α·θ_finetuned`` (α = 0 gives the start, 1 the fine-tuned policy)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"wise_ft alpha: got {alpha}, expected a value in [0, 1]")
    return soup_models([start, finetuned], [1.0 - alpha, alpha], labels=["start", "finetuned"])


def load_member(path: str | Path, dtype: str = "float32"):
    """A saved policy: a Hugging Face model directory, or a PEFT adapter directory (kept unmerged)."""
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.models.lora import is_adapter_dir, load_adapter_model

    if is_adapter_dir(path):
        return load_adapter_model(path, dtype=dtype, merge=False)
    return load_model(ModelConfig(name_or_path=str(path), dtype=dtype))


def save_soup(model, out_dir: str | Path, *, weights: Sequence[float], members: Sequence[str],
              tokenizer=None) -> Path:
    """Write the soup as a Hugging Face model directory, plus ``soup.json`` (weights and members)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    info = {"weights": [float(w) for w in weights], "members": [str(m) for m in members]}
    (out / "soup.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def soup_dirs(paths: Sequence[str | Path], weights: Sequence[float], out_dir: str | Path, *,
              tokenizer=None, dtype: str = "float32") -> Path:
    """Load the saved policies one by one (skipping zero weights), soup them with ``weights`` and save
    the soup to ``out_dir``; ``soup.json`` lists every path with its weight."""
    if len(paths) != len(weights):
        raise ConfigError(f"soup weights: got {len(weights)} weights for {len(paths)} models")
    check_simplex(weights, key="soup weights")
    used = [(str(p), float(w)) for p, w in zip(paths, weights) if w > 0]  # a zero weight needs no loading
    model = soup_models((load_member(p, dtype) for p, _ in used), [w for _, w in used], labels=[p for p, _ in used])
    return save_soup(model, out_dir, weights=weights, members=[str(p) for p in paths], tokenizer=tokenizer)
