"""Teacher-forced log-probs (and values) of rollouts, and the model's context length."""
from __future__ import annotations

import torch

from prefopt.models.lora import reference_pass
from prefopt.models.prefix import grouped_response_logps, supports_packing
from prefopt.models.value import response_forward
from prefopt.types import Rollout


def model_context(model) -> int | None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@torch.no_grad()
def batched_logps(model, rollout: Rollout, pad_id: int, batch_size: int = 64, values: bool = False, *,
                  prefix_sharing: bool = True, padding_free: bool = True):
    """Teacher-forced per-token log-probs (N, L) of a rollout (and values (N, L) when asked).

    ``model`` may be a reference (a LoRA-disabled one included). Without values, the rows of a
    prompt share one copy of it and rows are packed (``perf.*``, exact), as in the training pass.
    """
    logps, vals = [], []
    with reference_pass(model) as net:
        was_training = net.training
        net.eval()
        packed = not values and (prefix_sharing or padding_free) and supports_packing(net)
        try:
            for s in range(0, len(rollout), batch_size):
                e = min(len(rollout), s + batch_size)
                args = (net, rollout.prompt_ids[s:e], rollout.response_ids[s:e], rollout.response_mask[s:e], pad_id)
                if packed:
                    out = grouped_response_logps(*args, prefix_sharing=prefix_sharing, padding_free=padding_free)
                else:
                    out = response_forward(*args, values=values)
                logps.append(out["logps"].float().cpu())
                if values:
                    vals.append(out["values"].float().cpu())
        finally:
            net.train(was_training)
    return (torch.cat(logps), torch.cat(vals)) if values else torch.cat(logps)
