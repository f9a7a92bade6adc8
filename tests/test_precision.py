"""train.precision: bf16/fp16 mixed precision over fp32 master weights, pure bf16, and its bad input."""
from __future__ import annotations

import warnings

import pytest
import torch

from prefopt.cli.config import from_dict
from prefopt.errors import ConfigError
from prefopt.optim import OptimConfig, build_optimizer
from prefopt.train import precision as prec
from prefopt.train.config import TrainConfig
from prefopt.validation import check_config
from offline_fixtures import lab_pairs, one_thread, write_jsonl  # noqa: F401

BF16_CPU = prec.hardware_supports(torch.bfloat16, "cpu")
needs_bf16 = pytest.mark.skipif(not BF16_CPU, reason="this CPU has no native bf16 (oneDNN)")


def _dpo_cfg(tmp_path, precision: str, steps: int, **train) -> TrainConfig:
    path = tmp_path / "pairs.jsonl"
    if not path.exists():
        write_jsonl(path, lab_pairs(8 * steps))
    return from_dict(TrainConfig, {
        "model": {"name_or_path": "tiny:llama-1m"},
        "data": {"task": "reviews", "eval_examples": 4, "path": str(path), "max_length": 64, "max_prompt_length": 24},
        "optim": {"lr": 1e-3}, "algo": {"name": "dpo"}, "output_dir": str(tmp_path), "run_name": precision,
        "train": {"steps": steps, "batch_size": 8, "progress": False, "lr_schedule": "constant",
                  "precision": precision, **train}})


def _losses(out) -> list[float]:
    from prefopt.train.metrics import read_metrics
    return [r["loss"] for r in read_metrics(out.run_dir / "metrics.jsonl") if "loss" in r]


@needs_bf16
def test_bf16_mixed_dpo_tracks_fp32_on_the_lab(tmp_path, one_thread):  # noqa: F811
    """24 DPO steps on lab pairs: every step's loss within 0.01 of fp32's (1.4% of the initial ln 2).

    Why 0.01: autocast rounds the matmul inputs to bf16 (relative 2^-9); summed over a response's ~30
    tokens that moves a sequence log-ratio by ~1e-2..1e-1, and the DPO loss by at most β/4 of that
    (β = 0.1): a few 1e-3 per step, growing slowly as the two runs' weights drift. Measured: 9e-4.
    The run must still learn as much (final loss within the same 0.01), and its weights stay fp32."""
    from prefopt.cli.run import run_train

    fp32 = run_train(_dpo_cfg(tmp_path, "fp32", 24))
    mixed = run_train(_dpo_cfg(tmp_path, "bf16-mixed", 24))
    a, b = _losses(fp32), _losses(mixed)
    assert len(a) == len(b) == 24
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.01
    assert a[0] == pytest.approx(0.6931, abs=1e-3) and a[-1] < a[0] - 0.03  # there was something to track
    ckpt = mixed.result.final_checkpoint
    from safetensors.torch import load_file
    assert all(t.dtype == torch.float32 for t in load_file(ckpt / "model" / "model.safetensors").values())


@needs_bf16
def test_autocast_is_applied_in_bf16_mixed():
    """The forward really runs in bf16 (a mixed step is not silently fp32) and gradients reach fp32 masters."""
    lin = torch.nn.Linear(8, 8)
    p = prec.Precision("bf16-mixed", "cpu")
    with p.autocast():
        y = lin(torch.randn(4, 8))
    assert y.dtype == torch.bfloat16
    p.backward(y.float().sum())
    assert lin.weight.grad.dtype == torch.float32
    assert prec.Precision("fp32").autocast_dtype is None


@needs_bf16
@pytest.mark.parametrize("name", ["adamw", "adamw_8bit", "galore_adamw", "apollo", "lion", "muon", "adafactor"])
def test_every_optimizer_keeps_fp32_state_under_bf16_mixed(name, tiny_llama):
    """Two mixed steps: the weights move, stay fp32, and the optimizer's state is what it is in fp32
    (same tensors' dtypes and shapes: 8-bit stays 8-bit, GaLore/APOLLO keep their projected shapes)."""
    from prefopt.optim import available_optimizers
    if name not in available_optimizers():
        pytest.skip(f"{name}: its library is not installed")
    states = {}
    for precision in ("fp32", "bf16-mixed"):
        torch.manual_seed(0)
        model = type(tiny_llama)(tiny_llama.config)
        model.load_state_dict(tiny_llama.state_dict())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        opt = build_optimizer(model, OptimConfig(name=name, lr=1e-3))
        p = prec.Precision(precision, "cpu")
        ids = torch.randint(3, 100, (2, 16))
        for _ in range(2):
            with p.autocast():
                loss = model(input_ids=ids, labels=ids).loss
            p.backward(loss)
            p.unscale(opt)
            p.step(opt)
            opt.zero_grad(set_to_none=True)
        assert all(v.dtype == torch.float32 for v in model.parameters())
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        states[precision] = sorted((str(v.dtype), tuple(v.shape)) for s in opt.state.values()
                                   for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    assert states["bf16-mixed"] == states["fp32"]


def test_fp16_loss_scaler_skips_an_overflowing_step_and_checkpoints_a_plain_tree(tmp_path, tiny_llama):
    from prefopt.train.checkpoint import load_trainer_state, save_checkpoint

    lin = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    p = prec.Precision("fp16-mixed", "cpu")
    assert p.scaler.get_scale() == 2.0 ** 16
    w = lin.weight.detach().clone()
    p.backward(lin(torch.full((1, 4), 1e36)).sum())  # 1e36 * 2^16 overflows float32
    p.unscale(opt)
    assert p.step(opt) is False and torch.equal(lin.weight, w) and p.scaler.get_scale() == 2.0 ** 15
    opt.zero_grad(set_to_none=True)
    p.backward(lin(torch.ones(1, 4)).sum())
    p.unscale(opt)
    assert p.step(opt) is True and not torch.equal(lin.weight, w)
    assert lin.weight.grad.abs().max() == pytest.approx(1.0)  # unscaled before the step: the true gradient
    state = p.state_dict()
    assert all(isinstance(v, (int, float)) for v in state.values())
    save_checkpoint(tmp_path, 1, tiny_llama, None, {"precision": state})
    again = prec.Precision("fp16-mixed", "cpu")
    again.load_state_dict(load_trainer_state(tmp_path / "checkpoint-1")["precision"])
    assert again.scaler.get_scale() == 2.0 ** 15 and again.state_dict() == state


def test_pure_bf16_warns_when_lr_is_below_the_weights_resolution():
    model = torch.nn.Linear(64, 64).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(0.05)  # half an ulp: 0.05 * 2^-8 = 2e-4
    with pytest.warns(UserWarning, match=r"lr 5e-06 is below the bf16 resolution"):
        assert prec.warn_vanishing_updates(model, 5e-6) > 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prec.warn_vanishing_updates(model, 1e-3) < 0.5
    # an update below half an ulp really is lost, one above it is kept
    w = torch.tensor(0.05, dtype=torch.bfloat16)
    assert w + 1e-4 == w and w + 4e-4 != w


def test_pure_bf16_sets_the_model_dtype():
    cfg = TrainConfig()
    cfg.train.precision = "bf16"
    if BF16_CPU:
        check_config(cfg)
        assert cfg.model.dtype == "bfloat16"


@pytest.mark.parametrize("precision,supported,dtype,message", [
    ("fp16-mixed", {torch.float16: False}, "float32",
     "train.precision: got 'fp16-mixed', expected a precision this cpu runs natively (it has no fp16 support"),
    ("bf16-mixed", {torch.bfloat16: False}, "float32",
     "train.precision: got 'bf16-mixed', expected a precision this cpu runs natively (it has no bf16 support"),
    ("bf16", {torch.bfloat16: False}, "float32", "it has no bf16 support"),
    ("bf16-mixed", {}, "bfloat16", "optimizer 'adamw' holds no fp32 copy of low-precision weights"),
    ("bf16", {}, "float16", "model.dtype bfloat16 or float32 with train.precision bf16 (got float16)"),
])
def test_bad_precision_is_one_line_before_any_work(precision, supported, dtype, message, monkeypatch):
    monkeypatch.setattr(prec, "hardware_supports", lambda d, device: supported.get(d, True))
    cfg = TrainConfig()
    cfg.train.precision, cfg.model.dtype = precision, dtype
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(torch.ops.mkldnn._is_mkldnn_fp16_supported(), reason="this CPU runs fp16 natively")
def test_fp16_on_this_cpu_is_refused_for_real():
    """No monkeypatch: a CPU without native fp16 (emulated it is 100x slower than fp32) refuses it."""
    cfg = TrainConfig()
    cfg.train.precision = "fp16-mixed"
    with pytest.raises(ConfigError, match="it has no fp16 support"):
        check_config(cfg)


def test_fp16_mixed_run_checkpoints_and_resumes_its_loss_scale(tmp_path, reviews_tokenizer, monkeypatch):
    """Through the loop (fp16 forced on: this CPU emulates it slowly, so the model is tiny): the scale
    is logged, saved in every checkpoint and restored on resume."""
    from test_train_loop import _model, _sft

    from prefopt.train.checkpoint import load_trainer_state
    from prefopt.train.config import LoopConfig
    from prefopt.train.loop import train
    from prefopt.train.metrics import read_metrics

    monkeypatch.setattr(prec, "hardware_supports", lambda d, device: True)
    cfg = dict(steps=2, save_every=1, progress=False, precision="fp16-mixed", lr_schedule="constant")
    model = _model(reviews_tokenizer)
    res = train(model, _sft(reviews_tokenizer, n=12, batch_size=1), torch.optim.AdamW(model.parameters(), lr=1e-3),
                LoopConfig(**cfg), tmp_path)
    state = load_trainer_state(res.final_checkpoint)["precision"]
    assert state["scale"] == [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r][-1][
        "precision/loss_scale"]
    state_file = load_trainer_state(tmp_path / "checkpoint-1")["precision"]
    assert set(state_file) >= {"scale", "_growth_tracker"}
    seen = {}
    monkeypatch.setattr(prec.Precision, "load_state_dict", lambda self, s: seen.update(s))
    model = _model(reviews_tokenizer)
    train(model, _sft(reviews_tokenizer, n=12, batch_size=1), torch.optim.AdamW(model.parameters(), lr=1e-3),
          LoopConfig(**{**cfg, "steps": 3}), tmp_path, resume=True)
    assert seen == state


@needs_bf16
@pytest.mark.parametrize("algo", ["grpo", "ppo", "online_dpo", "hypo"])
def test_bf16_mixed_runs_online_and_hybrid_recipes(algo, tmp_path, one_thread):  # noqa: F811
    """Sources (rollouts, reference, value model) and terms under one autocast: every recipe family trains."""
    import test_hybrid
    import test_online_algorithms

    from prefopt.cli.run import run_train

    make = test_hybrid._cfg if algo == "hypo" else test_online_algorithms._cfg
    out = run_train(make(tmp_path, algo, train__precision="bf16-mixed"))
    losses = _losses(out)
    assert len(losses) == 2 and all(map(lambda x: x == x, losses))


def _config_per_preset() -> dict:
    """algo.name -> the first shipped config (configs/**.yaml) that trains it."""
    import yaml
    from pathlib import Path

    found = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")):
        name = (yaml.safe_load(path.read_text()) or {}).get("algo", {}).get("name", "dpo")
        found.setdefault(name, path)
    return found


CONFIGS = _config_per_preset()


def test_every_preset_has_a_shipped_config_to_train_under_bf16_mixed():
    from prefopt.train.presets import PRESETS
    assert set(PRESETS) - set(CONFIGS) <= {"recipe"}  # recipes: tests/test_recipes.py's YAML recipes


@needs_bf16
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_preset_trains_under_bf16_mixed(name, tmp_path, one_thread):  # noqa: F811
    """Each preset's shipped config, shrunk (tiny model, lab pairs, a length reward), trains 2 steps in
    bf16-mixed to finite losses and gradients, and its checkpoint holds the fp32 masters."""
    import math

    import test_recipes
    import yaml

    from prefopt.cli.run import run_train
    from prefopt.train.metrics import read_metrics
    from prefopt.train.presets import PRESETS

    path = CONFIGS[name]
    if path.parent.name == "selfplay":  # their tiny settings and a length judge (a random model ties the lab's)
        import test_selfplay_presets

        from prefopt.cli.config import load_config
        cfg = load_config(TrainConfig, path, test_selfplay_presets._overrides(path, tmp_path)
                          + ["train.precision=bf16-mixed"])
        out = run_train(cfg)
    else:
        if path.parent.name == "multiobjective":  # MODPO / RiC read score columns of several objectives
            import test_mo_presets
            rows = test_mo_presets.mo_pairs()
        else:
            rows = lab_pairs(16)
        pairs = str(write_jsonl(tmp_path / "pairs.jsonl", rows))
        data = test_recipes._tiny(yaml.safe_load(path.read_text()), pairs)
        data["model"] = {"name_or_path": "tiny:llama-1m"}
        data.setdefault("data", {}).update(eval_examples=2, max_length=64, max_prompt_length=24)
        data.setdefault("train", {}).update(steps=2, batch_size=4, eval_every=0, save_every=0, warmup_steps=0,
                                            progress=False, precision="bf16-mixed")
        data.update(output_dir=str(tmp_path), run_name=name)
        if "rollout" in PRESETS[name].sections:
            data["rollout"] = {"max_new_tokens": 6}
        if "online" in PRESETS[name].sections:
            data.setdefault("online", {}).update(eval_num_samples=1, reward=[{"name": "online_reward_fns:length"}])
        out = run_train(from_dict(TrainConfig, data))
    rows = [r for r in read_metrics(out.run_dir / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    from safetensors.torch import load_file
    files = sorted(out.result.final_checkpoint.rglob("*.safetensors"))
    dtypes = {t.dtype for f in files for t in load_file(f).values() if t.is_floating_point()}
    assert files and dtypes == {torch.float32}
