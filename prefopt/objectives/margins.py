"""Margin sources for MODPO: each gives the (B,) rewards of the chosen and of the rejected responses
for one objective; :func:`stack_margins` checks their shapes and builds the (B, K) matrices that
``prefopt.losses.modpo.modpo`` takes.

- :func:`score_margins`: a score column of the preference data (``PreferenceBatch.scores``).
- :func:`scorer_margins`: any prefopt scorer ``scorer(prompts, responses)`` (reward function, reward
  model, lab gold reward) on the pair's texts. Scorers are fixed during MODPO, so
  :func:`add_scorer_columns` can score the rows once before training and the term reads columns.
- :func:`implicit_reward_margins`: the implicit DPO reward β·(log π_k(y) − log π_ref(y)) of another
  policy π_k, e.g. one trained by DPO on that objective (the reference code's ``ImplicitRewardWrapper``);
  :func:`implicit_reward_columns` computes it once for a dataset of encoded pairs.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from prefopt.errors import ConfigError, DataError
from prefopt.types import PreferenceBatch

Tensor = torch.Tensor
MarginPair = tuple[Tensor, Tensor]


def score_margins(batch: PreferenceBatch, objective: str) -> MarginPair:
    """Chosen and rejected scores of ``objective`` from the batch's score columns (B, 2)."""
    available = sorted(batch.scores or {})
    if objective not in available:
        raise ConfigError(f"modpo margin 'scores:{objective}': the preference data has no score column "
                          f"'{objective}' (available: {', '.join(available) or 'none'})")
    column = batch.scores[objective].float()
    missing = torch.isnan(column).any(dim=-1).nonzero().flatten()
    if len(missing):
        row = int(batch.index[int(missing[0])])
        raise DataError(f"modpo margin 'scores:{objective}': pair {row} has no '{objective}' score "
                        f"({len(missing)} of {len(column)} pairs in this batch lack it)")
    return column[:, 0], column[:, 1]


def _objective_values(out, objective: str | None, n: int, label: str) -> Tensor:
    if isinstance(out, Mapping):
        names = list(out)
        if objective is None and len(names) == 1:
            objective = names[0]
        if objective not in out:
            raise ConfigError(f"modpo margin '{label}': scorer has no objective '{objective}' "
                              f"(available: {', '.join(names)})")
        out = out[objective]
    values = torch.as_tensor([float(v) for v in out], dtype=torch.float32)
    if values.shape != (n,):
        raise ConfigError(f"modpo margin '{label}': scorer returned shape {tuple(values.shape)}, expected ({n},)")
    return values


def scorer_margins(scorer: Callable, prompts: Sequence, chosen: Sequence, rejected: Sequence,
                   objective: str | None = None, *, label: str = "scorer") -> MarginPair:
    """Score chosen and rejected responses in one call of ``scorer`` (2B rows); ``objective`` picks
    one output of a multi-objective scorer (optional when it returns a single one)."""
    b = len(prompts)
    if len(chosen) != b or len(rejected) != b:
        raise ValueError(f"modpo margin '{label}': {b} prompts, {len(chosen)} chosen, {len(rejected)} rejected")
    values = _objective_values(scorer(list(prompts) * 2, list(chosen) + list(rejected)), objective, 2 * b, label)
    return values[:b], values[b:]


def add_scorer_columns(rows: Sequence[dict], scorer: Callable, objectives: Sequence[str] | None = None,
                       *, batch_size: int = 64, label: str = "scorer") -> list[dict]:
    """Copies of pairwise rows (prompt, chosen, rejected) with ``scores[objective] = [chosen, rejected]``
    from ``scorer`` for each asked objective (all it returns when None)."""
    out = [dict(r, scores=dict(r.get("scores") or {})) for r in rows]
    for start in range(0, len(out), batch_size):
        part = out[start:start + batch_size]
        b = len(part)
        raw = scorer([r["prompt"] for r in part] * 2, [r["chosen"] for r in part] + [r["rejected"] for r in part])
        if not isinstance(raw, Mapping):
            raw = {objectives[0] if objectives else label: raw}
        for name in objectives or list(raw):
            values = _objective_values(raw, name, 2 * b, label)
            for i, r in enumerate(part):
                r["scores"][name] = [float(values[i]), float(values[b + i])]
    return out


@torch.no_grad()
def implicit_reward_margins(policy: torch.nn.Module, reference: torch.nn.Module, batch: PreferenceBatch,
                            beta: float) -> MarginPair:
    """β·(log π_k(y) − log π_ref(y)) for the chosen and rejected responses of ``batch``.

    ``reference`` may be an adapter-disabled view of ``policy`` (``prefopt.models.lora``).
    """
    from prefopt.models.lora import reference_pass
    from prefopt.models.logprobs import sequence_logps

    was_training = policy.training
    policy.eval()
    try:
        chosen = sequence_logps(policy, batch.chosen)[0]
        rejected = sequence_logps(policy, batch.rejected)[0]
    finally:
        policy.train(was_training)
    with reference_pass(reference) as ref:
        ref_chosen = sequence_logps(ref, batch.chosen)[0]
        ref_rejected = sequence_logps(ref, batch.rejected)[0]
    return beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)


def implicit_reward_columns(policy: torch.nn.Module, reference: torch.nn.Module, pairs: Sequence, beta: float,
                            name: str, pad_id: int, batch_size: int = 32) -> list:
    """Copies of EncodedPairs with ``scores[name] = (chosen, rejected)`` implicit rewards of ``policy``:
    π_k and π_ref are fixed during MODPO, so one pass before training replaces a forward of both
    models per step (the term then reads the column with :func:`score_margins`)."""
    from dataclasses import replace

    from prefopt.data.tokenize import collate_pairs

    try:
        device = next(policy.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    out = []
    for start in range(0, len(pairs), batch_size):
        part = list(pairs[start:start + batch_size])
        batch = collate_pairs(part, pad_id)
        batch.chosen, batch.rejected = batch.chosen.to(device), batch.rejected.to(device)
        chosen, rejected = implicit_reward_margins(policy, reference, batch, beta)
        for pair, c, r in zip(part, chosen.tolist(), rejected.tolist()):
            out.append(replace(pair, scores={**pair.scores, name: (c, r)}))
    return out


def stack_margins(sources: Mapping[str, MarginPair], batch_size: int) -> MarginPair:
    """{source label: (chosen (B,), rejected (B,))} in weight order → (B, K) chosen and rejected;
    a source whose tensors are not (B,) fails naming it and the shape."""
    if not sources:
        raise ConfigError("modpo margins: expected at least one margin source")
    chosen, rejected = [], []
    for label, pair in sources.items():
        for which, values in zip(("chosen", "rejected"), pair):
            if tuple(values.shape) != (batch_size,):
                raise ConfigError(f"modpo margin '{label}': {which} margins have shape {tuple(values.shape)}, "
                                  f"expected ({batch_size},)")
        chosen.append(pair[0].float())
        rejected.append(pair[1].float())
    return torch.stack(chosen, dim=-1), torch.stack(rejected, dim=-1)
