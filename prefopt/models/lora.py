"""LoRA / QLoRA through PEFT: wrap a model from the ``lora`` config section, disable adapters for
a reference pass, save a merged model.

``load_policy(cfg, tokenizer)`` is what training runs use: the model of ``cfg.model`` (quantized
when ``lora.quantize`` asks for it) with adapters when ``lora.enabled``.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from prefopt.errors import ConfigError, PrefoptError
from prefopt.models.config import LoraConfig, ModelConfig
from prefopt.models.loading import DTYPES, freeze_except, load_model
from prefopt.models.tiny import is_tiny


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def peft_config(cfg: LoraConfig, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=cfg.target_modules, modules_to_save=list(cfg.modules_to_save) or None,
                          bias="none", task_type=task_type)


def apply_lora(model, cfg: LoraConfig, task_type: str = "CAUSAL_LM"):
    """``model`` with fresh LoRA adapters; only adapter (and modules_to_save) weights train."""
    from peft import get_peft_model

    if is_peft(model):
        raise ConfigError("lora.enabled: the model already has PEFT adapters")
    try:
        return get_peft_model(model, peft_config(cfg, task_type))
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules: {str(exc).splitlines()[0]}") from None


def quantization_config(cfg: LoraConfig, dtype: torch.dtype):
    """bitsandbytes settings for QLoRA (4-bit NF4 with double quantization) or 8-bit."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ConfigError("lora.quantize: QLoRA needs bitsandbytes (pip install bitsandbytes)") from None
    if cfg.quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_quantized(model_cfg: ModelConfig, cfg: LoraConfig):
    """The base model in 4/8 bits, prepared for k-bit training."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    if is_tiny(model_cfg.name_or_path):
        raise ConfigError("lora.quantize: tiny models are built in full precision; quantize a saved or hub model")
    dtype = DTYPES.get(model_cfg.dtype, torch.bfloat16)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_cfg.name_or_path, trust_remote_code=model_cfg.trust_remote_code, dtype=dtype,
            quantization_config=quantization_config(cfg, dtype))
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise PrefoptError(f"cannot load '{model_cfg.name_or_path}' quantized ({cfg.quantize}): "
                           f"{str(exc).splitlines()[0]}") from exc
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def load_policy(cfg, tokenizer=None):
    """The model a training config describes: ``cfg.model``, plus adapters per ``cfg.lora``."""
    lora: LoraConfig | None = getattr(cfg, "lora", None)
    if lora is None or not lora.enabled:
        if lora is not None and lora.quantize != "none":
            raise ConfigError("lora.quantize: quantized base weights cannot be trained without adapters; "
                              "set lora.enabled: true (QLoRA)")
        return apply_checkpointing(apply_freeze(load_model(cfg.model, tokenizer), cfg), cfg.model)
    apply_freeze(None, cfg)  # only checks: freeze tuning is refused next to adapters
    model = load_quantized(cfg.model, lora) if lora.quantize != "none" else load_model(cfg.model, tokenizer)
    return apply_checkpointing(apply_lora(model, lora), cfg.model)


def apply_checkpointing(model, model_cfg: ModelConfig):
    """``model.gradient_checkpointing``: transformers' non-reentrant checkpointing of the decoder
    layers (active in training mode only, so sampling and no-grad passes are unchanged)."""
    if not model_cfg.gradient_checkpointing:
        return model
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"model.gradient_checkpointing: {type(model).__name__} does not support gradient "
                          "checkpointing; set it to false")
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x; the old name warns
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def apply_freeze(model, cfg):
    """Freeze tuning per ``cfg.model.trainable`` (nothing when empty); refused next to LoRA adapters."""
    if not cfg.model.trainable:
        return model
    lora = getattr(cfg, "lora", None)
    if lora is not None and lora.enabled:  # a LoRA-disabled reference must equal the start: base stays frozen
        raise ConfigError("model.trainable: freeze tuning and lora.enabled exclude each other; use "
                          "lora.modules_to_save to train whole modules next to the adapters")
    if model is not None:
        freeze_except(model, cfg.model.trainable)
    return model


@contextlib.contextmanager
def adapters_disabled(model):
    """Run ``model`` as its base model (PEFT adapters off); a no-op for other models."""
    if is_peft(model):
        with model.disable_adapter():
            yield model
    else:
        yield model


class AdapterDisabledReference(torch.nn.Module):
    """The policy with its adapters disabled, used as the reference model (no second copy).

    The policy is held outside the module tree, so the reference has no parameters of its own
    and ``.eval()`` / ``.parameters()`` on it never touch the policy. Each call runs in eval mode
    (no dropout) and restores the policy's mode afterwards.
    """

    def __init__(self, policy):
        super().__init__()
        if not is_peft(policy):
            raise ConfigError("algo.reference: 'lora' needs a model with LoRA adapters (set lora.enabled: true)")
        self.__dict__["_policy"] = policy

    @property
    def policy(self):
        return self.__dict__["_policy"]

    def get_base_model(self):  # lets forward_logits see the base model's signature (logits_to_keep)
        return self.policy.get_base_model()

    @property
    def config(self):
        return self.policy.config

    @contextlib.contextmanager
    def active(self):
        """Yield the policy itself with adapters disabled and in eval mode; restore both after.
        Code that reaches into the model (e.g. packed prefix-sharing layouts call the backbone
        directly) must run the reference inside this context rather than through ``forward``."""
        policy = self.policy
        was_training = policy.training
        policy.eval()
        try:
            with policy.disable_adapter():
                yield policy
        finally:
            policy.train(was_training)

    def forward(self, *args, **kwargs):
        with self.active() as policy:
            return policy(*args, **kwargs)


@contextlib.contextmanager
def reference_pass(reference):
    """The module to run for a reference pass: the policy with adapters off (eval mode) for an
    :class:`AdapterDisabledReference`, else ``reference`` itself."""
    if isinstance(reference, AdapterDisabledReference):
        with reference.active() as policy:
            yield policy
    else:
        yield reference


def merge_adapters(model):
    """A plain model with the adapters folded into the weights (modifies ``model``)."""
    if not is_peft(model):
        return model
    return model.merge_and_unload()


def save_merged(model, tokenizer, out_dir: Path, model_cfg: ModelConfig | None = None,
                lora: LoraConfig | None = None, adapter_dir: Path | None = None) -> Path:
    """Write a merged full model (HF format) to ``out_dir``.

    For a quantized (QLoRA) run the base is reloaded in ``model.dtype`` and the saved adapter
    from ``adapter_dir`` is applied and merged, since 4-bit weights cannot be merged in place.
    """
    out_dir = Path(out_dir)
    if lora is not None and lora.quantize != "none":
        from peft import PeftModel

        if model_cfg is None or adapter_dir is None:
            raise ConfigError("lora.save: merging a QLoRA run needs the base model config and the adapter dir")
        base = load_model(model_cfg, tokenizer)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    else:
        merged = merge_adapters(model)
    merged.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def is_adapter_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "adapter_config.json").exists() and not (p / "config.json").exists()


def load_adapter_model(path: str | Path, dtype: str = "float32", merge: bool = True):
    """A causal LM from a saved adapter directory (its base is read from adapter_config.json)."""
    from peft import PeftModel

    meta = json.loads((Path(path) / "adapter_config.json").read_text())
    base_path = meta.get("base_model_name_or_path")
    if not base_path:
        raise PrefoptError(f"{path}: the adapter does not record its base model (base_model_name_or_path); "
                           "load the base model and the adapter yourself, or save with lora.save: merged")
    base = load_model(ModelConfig(name_or_path=base_path, dtype=dtype))
    model = PeftModel.from_pretrained(base, str(path))
    return model.merge_and_unload() if merge else model
