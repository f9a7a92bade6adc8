"""Checkpointable projectors for low-rank projected optimizers, and GaLore.

Both upstream implementations keep a Python *projector object* (holding the
projection matrix and, for APOLLO, the seed of the next random projection) in
``optimizer.state[p]["projector"]``. Saved as-is, that object only round-trips
through ``torch.load(weights_only=False)`` and its tensors are never moved to
the parameter's device. The subclasses below change nothing in the update; they
only make ``state_dict()`` store each projector as a dict of tensors and ints
(so checkpoints load with ``weights_only=True``) and rebuild the projector
objects in ``load_state_dict()``. The projector's hyper-parameters (rank, gap,
scale, projection type) are taken from the parameter group, which
``state_dict()`` already carries.
"""

from __future__ import annotations

import torch
from pytorch_optimizer import GaLore as _GaLore
from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector as _GaLoreProjector


class _ProjectorStateDictMixin:
    """Serialize ``state[p]["projector"]`` objects as plain dicts in the state dict."""

    def _projector_to_state(self, projector) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _projector_from_state(self, saved: dict, group: dict):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        sd = super().state_dict()
        packed = {}
        for idx, st in sd["state"].items():
            if "projector" in st and not isinstance(st["projector"], dict):
                st = dict(st)  # never mutate the live state
                st["projector"] = self._projector_to_state(st["projector"])
            packed[idx] = st
        sd["state"] = packed
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st and isinstance(st.get("projector"), dict):
                    st["projector"] = self._projector_from_state(st["projector"], group)


def _pack_ortho(ortho, out: dict) -> None:
    if isinstance(ortho, torch.Tensor):
        out["ortho_matrix"] = ortho
    elif isinstance(ortho, (tuple, list)):  # GaLore 'full' projection keeps (left, right)
        out["ortho_left"], out["ortho_right"] = ortho


def _unpack_ortho(saved: dict):
    if "ortho_matrix" in saved:
        return saved["ortho_matrix"]
    if "ortho_left" in saved:
        return (saved["ortho_left"], saved["ortho_right"])
    return None


class GaLoreAdamW(_ProjectorStateDictMixin, _GaLore):
    """``pytorch_optimizer.GaLore`` (AdamW in an SVD subspace of each 2-D gradient).

    Groups carrying ``rank``, ``update_proj_gap``, ``scale`` and
    ``projection_type`` are projected; the rest get plain AdamW. The update is
    upstream's unchanged; only the checkpoint format of the projector differs.
    """

    def _projector_to_state(self, projector: _GaLoreProjector) -> dict:
        out = {"last_svd_step": int(projector.last_svd_step)}
        _pack_ortho(projector.ortho_matrix, out)
        return out

    def _projector_from_state(self, saved: dict, group: dict) -> _GaLoreProjector:
        proj = _GaLoreProjector(
            rank=group["rank"],
            update_proj_gap=group["update_proj_gap"],
            scale=group["scale"],
            projection_type=group["projection_type"],
        )
        proj.ortho_matrix = _unpack_ortho(saved)
        proj.last_svd_step = int(saved["last_svd_step"])
        return proj
