"""Numeric precision of training (``train.precision``): the one place the loop's autocast and loss
scaling live.

* ``fp32``: everything in the parameters' dtype (float32 unless ``model.dtype`` says otherwise).
* ``bf16-mixed`` / ``fp16-mixed``: the model's float32 parameters are the master weights (the
  optimizer and its state see float32 parameters and gradients, so 8-bit, GaLore and APOLLO states
  are unchanged); every forward of a step -- the sources' (reference, rollouts) and the loss terms'
  -- and its backward run under ``torch.autocast`` in bf16/fp16; frozen copies of the weights (rollout
  sampling, a live reference: :func:`copy_dtype`) are held in bf16/fp16. fp16 adds a dynamic loss scaler
  (``torch.amp.GradScaler``): a step whose gradients overflow is skipped and the scale halves.
* ``bf16``: pure bf16, the weights themselves are bf16 (``model.dtype`` becomes bfloat16). An
  update smaller than half a bf16 ulp of a weight (|θ|·2^-8) rounds away: :func:`warn_vanishing_updates`.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from prefopt.validation import bad_value

PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")
COMPUTE_DTYPE = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16, "bf16": torch.bfloat16}
BF16_HALF_ULP = 2.0 ** -8  # relative: x + d == x in bf16 when |d| < |x| * 2^-8 (8 significant bits)


def hardware_supports(dtype: torch.dtype, device_type: str) -> bool:
    """Whether ``device_type`` computes in ``dtype`` natively (CPU: oneDNN's own check, which
    needs AVX512-BF16/AMX for bf16 and AVX512-FP16/AMX-FP16 for fp16; emulation runs 10-100x slower)."""
    if dtype == torch.float32:
        return True
    if device_type == "cuda":
        return torch.cuda.is_available() and (dtype != torch.bfloat16 or torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        check = torch.ops.mkldnn._is_mkldnn_bf16_supported if dtype == torch.bfloat16 else \
            torch.ops.mkldnn._is_mkldnn_fp16_supported
        return bool(check())
    return True  # other backends: autocast itself reports what it cannot do


def check_precision(precision: str, model_dtype: str, optim_name: str, device_type: str = "cpu",
                    key: str = "train.precision") -> None:
    """One-line ConfigError, before any work, for a precision the hardware or the model cannot run."""
    if precision not in PRECISIONS:
        raise bad_value(key, precision, f"one of {', '.join(PRECISIONS)}")
    dtype = COMPUTE_DTYPE.get(precision)
    if dtype is not None and not hardware_supports(dtype, device_type):
        name = "bf16" if dtype == torch.bfloat16 else "fp16"
        raise bad_value(key, precision, f"a precision this {device_type} runs natively (it has no {name} support "
                                        "per torch/oneDNN); use fp32" + (" or bf16-mixed" if name == "fp16" else ""))
    if precision.endswith("-mixed") and model_dtype != "float32":
        raise bad_value(key, precision, f"fp32, or model.dtype float32 (got {model_dtype}): mixed precision keeps "
                                        f"the fp32 master weights in the model, and optimizer {optim_name!r} holds "
                                        "no fp32 copy of low-precision weights; for bf16 weights use bf16")
    if precision == "bf16" and model_dtype == "float16":
        raise bad_value(key, precision, "model.dtype bfloat16 or float32 with train.precision bf16 (got float16)")


def copy_dtype(precision: str) -> torch.dtype | None:
    """The dtype frozen copies of the weights (a live reference, the rollout weights) are held in under
    ``precision``: a mixed precision's autocast dtype; None = use the weights as they are."""
    return COMPUTE_DTYPE[precision] if precision.endswith("-mixed") else None


ROLLOUT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


def rollout_copy_dtype(rollout_dtype: str, precision: str) -> torch.dtype | None:
    """``rollout.dtype`` resolved against ``train.precision``: the dtype of the sampling copy, None for none."""
    return copy_dtype(precision) if rollout_dtype == "auto" else ROLLOUT_DTYPES[rollout_dtype]


def check_rollout_dtype(rollout_dtype: str, device_type: str = "cpu", key: str = "rollout.dtype") -> None:
    dtype = ROLLOUT_DTYPES.get(rollout_dtype)
    if dtype is not None and not hardware_supports(dtype, device_type):
        raise bad_value(key, rollout_dtype, f"a dtype this {device_type} runs natively (it has no "
                                            f"{rollout_dtype} support per torch/oneDNN); use auto or float32")


def device_type_of(model: torch.nn.Module) -> str:
    param = next(model.parameters(), None)
    return param.device.type if param is not None else "cpu"


def warn_vanishing_updates(model: torch.nn.Module, lr: float, stacklevel: int = 3) -> float:
    """Warn when most bf16 weights are so large that an update of size ~lr (Adam-like) rounds away.

    Returns the fraction of bf16 weight elements with lr < |θ|·2^-8 (0.0 if none is bf16)."""
    vanish = total = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype == torch.bfloat16:
            vanish += int((p.detach().abs().float() * BF16_HALF_ULP > lr).sum())
            total += p.numel()
    share = vanish / total if total else 0.0
    if share > 0.5:
        warnings.warn(f"train.precision bf16: lr {lr:g} is below the bf16 resolution (|θ|·2^-8) of {share:.0%} of "
                      "the weights, so those updates round to zero; use train.precision: bf16-mixed",
                      stacklevel=stacklevel)
    return share


class Precision:
    """What the loop's step does differently per precision: ``autocast()`` around forwards,
    ``backward``, ``unscale`` before clipping, ``step`` (returns False for a skipped fp16 step) and
    the loss scaler's plain state tree for checkpoints."""

    def __init__(self, name: str, device_type: str = "cpu"):
        self.name, self.device_type = name, device_type
        self.autocast_dtype = COMPUTE_DTYPE.get(name) if name.endswith("-mixed") else None
        self.scaler = torch.amp.GradScaler(device_type) if name == "fp16-mixed" else None

    @classmethod
    def for_run(cls, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> "Precision":
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        device = device_type_of(model)
        check_precision(name, str(dtype).removeprefix("torch."), type(optimizer).__name__, device)
        if name == "bf16" or dtype == torch.bfloat16:
            warn_vanishing_updates(model, optimizer.param_groups[0]["lr"], stacklevel=4)
        return cls(name, device)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor, create_graph: bool = False) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward(create_graph=create_graph)

    def unscale(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> bool:
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale drops only when the step was skipped

    def metrics(self) -> dict:
        return {"precision/loss_scale": float(self.scaler.get_scale())} if self.scaler is not None else {}

    def state_dict(self) -> dict:
        return dict(self.scaler.state_dict()) if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))


FP32 = Precision("fp32")  # stateless: plain backward and step
