"""APOLLO / APOLLO-Mini: the authors' implementation with a checkpointable random projector."""

from __future__ import annotations

from prefopt.optim._imports import quiet_bitsandbytes
from prefopt.optim.projected import _pack_ortho, _ProjectorStateDictMixin, _unpack_ortho

with quiet_bitsandbytes():  # apollo_torch imports bitsandbytes at package import
    from apollo_torch import APOLLOAdamW as _ApolloAdamW
    from apollo_torch.random_projector import GradientProjector as _ApolloProjector


class APOLLO(_ProjectorStateDictMixin, _ApolloAdamW):
    """The APOLLO authors' ``apollo_torch.APOLLOAdamW`` (random projection, channel/tensor scaling).

    Groups carrying ``rank``, ``proj``, ``proj_type``, ``update_proj_gap``,
    ``scale`` and ``scale_type`` get APOLLO's scaled-SGD update; the rest get
    AdamW. The random projection of each matrix is regenerated every
    ``update_proj_gap`` steps from a per-parameter seed chain; the current matrix
    *and* the next seed are saved in the state dict, so resumed runs draw the
    same projections.
    """

    def _projector_to_state(self, projector: _ApolloProjector) -> dict:
        out = {"seed": int(projector.seed), "svd_count": int(projector.svd_count)}
        _pack_ortho(projector.ortho_matrix, out)
        return out

    def _projector_from_state(self, saved: dict, group: dict) -> _ApolloProjector:
        proj = _ApolloProjector(
            group["rank"],
            update_proj_gap=group["update_proj_gap"],
            scale=group["scale"],
            proj_type=group["proj_type"],
            seed=int(saved["seed"]),
        )
        proj.ortho_matrix = _unpack_ortho(saved)
        proj.svd_count = int(saved["svd_count"])
        return proj
