"""Row operations on :class:`~prefopt.types.Rollout` containers (stack, select)."""
from __future__ import annotations

import torch

from prefopt.types import Rollout


def _pad_cols(x: torch.Tensor, L: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, L - x.shape[1]), value=value) if x.shape[1] < L else x


def cat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts row-wise (responses re-padded, group ids offset to stay distinct)."""
    if len(parts) == 1:
        return parts[0]
    L = max(p.response_ids.shape[1] for p in parts)
    groups, offset = [], 0
    for p in parts:
        groups.append(p.group + offset)
        offset += int(p.group.max()) + 1 if len(p) else 0
    return Rollout(
        prompt_ids=[ids for p in parts for ids in p.prompt_ids],
        response_ids=torch.cat([_pad_cols(p.response_ids, L, pad_id) for p in parts]),
        response_mask=torch.cat([_pad_cols(p.response_mask, L, False) for p in parts]),
        logprobs=torch.cat([_pad_cols(p.logprobs, L, 0.0) for p in parts]),
        group=torch.cat(groups), truncated=torch.cat([p.truncated for p in parts]))


def select_rows(r: Rollout, rows: torch.Tensor) -> Rollout:
    idx = rows.tolist()
    return Rollout([r.prompt_ids[i] for i in idx], r.response_ids[rows], r.response_mask[rows],
                   r.logprobs[rows], r.group[rows], r.truncated[rows])
