"""No deprecated API on our hot paths: a short train (offline with LoRA, online with generation
and evaluation) and direct generation raise no deprecation warning from our own calls.

Whose call is it? A library's ``stacklevel`` names whatever frame it guessed (transformers'
``deprecate_kwarg`` names ``torch/nn/modules/module.py``, the ``nn.Module`` call between us and
the model), so the reported file says little. Instead a hook replaces ``warnings.showwarning``
while every filter is ``always``; it runs inside the ``warnings.warn`` call, so it sees the live
stack: the frame that raised (its package: e.g. transformers), then, walking outward past the
frames of that package and past pure dispatch frames (``nn.Module.__call__``, PEFT's
``forward`` pass-through, functools/contextlib wrappers), the frame that used the deprecated
API. The warning is ours when that frame is in ``prefopt`` (or prefopt raised it itself); a
library using another library's deprecated API inside its own code (PEFT reading
``is_gradient_checkpointing`` while we call ``get_peft_model``) is not ours, and stays visible in
pytest's warnings summary. Deprecations reported through ``logging`` (transformers'
``warning_once``) are caught the same way.
"""
from __future__ import annotations

import logging
import sys
import sysconfig
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import prefopt

PREFOPT = Path(prefopt.__file__).resolve().parent
CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
# Frames that only pass a call on: (path suffix, function name or "*").
DISPATCH = (("torch/nn/modules/module.py", "*"), ("peft/peft_model.py", "forward"),
            ("peft/tuners/tuners_utils.py", "forward"), ("functools.py", "*"), ("contextlib.py", "*"),
            ("torch/utils/_contextlib.py", "*"))
MACHINERY = ("warnings.py", "logging/__init__.py", "transformers/utils/logging.py")
# Deprecations our current calls trigger that we cannot change: (substring of the message, why).
ACCEPTED: tuple[tuple[str, str], ...] = ()


@dataclass
class Caught:
    kind: str
    message: str
    raised_in: str        # package that raised it
    used_by: str          # file:line (function) of the frame that used the deprecated API
    ours: bool

    def __str__(self) -> str:
        return f"{self.kind} raised in {self.raised_in}, used by {self.used_by}: {self.message}"


def _package(path: str, root: Path) -> str:
    p = Path(path)
    try:
        p = p.resolve()
    except OSError:
        return path
    if p.is_relative_to(root):
        return "ours"
    parts = p.parts
    if "site-packages" in parts:
        i = parts.index("site-packages")
        return parts[i + 1].removesuffix(".py") if i + 1 < len(parts) else path
    if p.is_relative_to(STDLIB) or path.startswith("<frozen"):
        return "stdlib:" + p.name
    return str(p)


def _matches(path: str, func: str, table) -> bool:
    path = path.replace("\\", "/")
    return any(path.endswith(suffix) and name in ("*", func) for suffix, name in table)


def classify(kind: str, message: str, root: Path, frame) -> Caught:
    """Walk the live stack outward from ``frame`` (inside the ``warn`` or ``logging`` call): which
    package raised the warning, and which frame used the deprecated API."""
    frames = []
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if not any(path.endswith(m) for m in MACHINERY):
            frames.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    if not frames:
        return Caught(kind, message, "?", "?", False)
    raiser = _package(frames[0][0], root)
    user = next((f for f in frames if _package(f[0], root) != raiser and not _matches(f[0], f[2], DISPATCH)), None)
    where = f"{user[0]}:{user[1]} ({user[2]})" if user else "?"
    mine = raiser == "ours" or (user is not None and _package(user[0], root) == "ours")
    accepted = any(s in message for s, _ in ACCEPTED)
    return Caught(kind, message, raiser, where, mine and not accepted)


class _LogCatcher(logging.Handler):
    def __init__(self, root: Path, caught: list):
        super().__init__(logging.WARNING)
        self.root, self.caught = root, caught

    def emit(self, record):
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.caught.append(classify("log:" + record.name, message, self.root, sys._getframe(1)))


@contextmanager
def deprecations_caught(root: Path = PREFOPT):
    """Every deprecation shown inside the block, classified against the code under ``root``."""
    caught: list[Caught] = []

    def hook(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CATEGORIES) or "deprecat" in str(message).lower():
            caught.append(classify(category.__name__, str(message), root, sys._getframe(1)))

    lib_logger = logging.getLogger("transformers")
    catcher = _LogCatcher(root, caught)
    once = getattr(logging.Logger, "warning_once", None)
    if hasattr(once, "cache_clear"):
        once.cache_clear()  # transformers shows each such message once per process
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every occurrence, whatever earlier "once" registries say
        warnings.showwarning = hook
        lib_logger.addHandler(catcher)
        try:
            yield caught
        finally:
            lib_logger.removeHandler(catcher)


def ours(caught: list[Caught]) -> list[Caught]:
    return [c for c in caught if c.ours]


# --------------------------------------------------------------------------- the mechanism itself

LIBA = """import warnings
import torch

def old():
    warnings.warn("old() is deprecated, use new()", FutureWarning, stacklevel=2)

class Net(torch.nn.Module):
    def forward(self, x, legacy=False):
        if legacy:
            warnings.warn("legacy= is deprecated", FutureWarning, stacklevel=3)  # a guess, like transformers'
        return x
"""
LIBB = "import liba\n\ndef current_api():\n    liba.old()  # libb's own use of liba's deprecated API\n"


@pytest.fixture
def libraries(tmp_path, monkeypatch):
    """Two third-party packages in a site-packages folder: liba deprecates, libb uses liba."""
    site = tmp_path / "site-packages"
    for name, code in (("liba", LIBA), ("libb", LIBB)):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(code)
    monkeypatch.syspath_prepend(str(site))
    import liba
    import libb
    yield liba, libb
    for name in ("liba", "libb"):
        sys.modules.pop(name, None)


def test_a_deprecated_call_is_ours_by_the_stack_not_by_the_stacklevel(libraries):
    liba, libb = libraries
    here = Path(__file__).resolve().parent  # stand-in for prefopt: this test folder
    with deprecations_caught(here) as caught:
        liba.old()                            # our direct call of a deprecated function
        liba.Net()(1, legacy=True)            # through nn.Module.__call__, stacklevel pointing into torch
        libb.current_api()                    # libb's own use of it: not ours
    assert [(c.raised_in, c.ours) for c in caught] == [("liba", True), ("liba", True), ("liba", False)]
    assert caught[1].used_by.startswith(str(here / "test_deprecations.py"))
    assert "libb" in caught[2].used_by

    with deprecations_caught(PREFOPT) as caught:  # no prefopt frame on this stack at all
        liba.old()
    assert len(caught) == 1 and not ours(caught)


def test_the_old_past_key_values_call_is_caught(monkeypatch, tiny_llama, reviews_tokenizer):
    """The check would have failed before the rollout engine moved to the ``cache`` argument,
    also through a PEFT wrapper."""
    from peft import LoraConfig, get_peft_model

    from prefopt.rollout import engine

    monkeypatch.setattr(engine, "cache_arg", lambda model: "past_key_values")
    wrapped = get_peft_model(tiny_llama, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    for model in (tiny_llama, wrapped):
        with deprecations_caught() as caught:
            _generate(model, reviews_tokenizer)
        found = ours(caught)
        assert found and all("prefopt/rollout/engine.py" in c.used_by for c in found)
        assert all("past_key_values" in c.message for c in found)


# --------------------------------------------------------------------------- our hot paths


def _generate(model, tokenizer):
    from prefopt.rollout.engine import SamplingConfig, generate

    prompts = [tokenizer.encode("review of the zenta phone:"), tokenizer.encode("review of the tern blender:")]
    return generate(model, prompts, SamplingConfig(max_new_tokens=6, num_samples=2, batch_size=3),
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def test_generation_plain_and_through_peft_raises_no_deprecation(tiny_llama, reviews_tokenizer):
    from peft import LoraConfig, get_peft_model

    with deprecations_caught() as caught:
        plain = _generate(tiny_llama, reviews_tokenizer)
        wrapped = get_peft_model(tiny_llama, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        through_peft = _generate(wrapped, reviews_tokenizer)
    assert not ours(caught), "\n".join(map(str, ours(caught)))
    assert plain.response_ids.shape == through_peft.response_ids.shape  # adapters start at zero: same model


@pytest.mark.slow
def test_short_offline_and_online_training_raise_no_deprecation(tmp_path):
    from offline_fixtures import lab_pairs, write_jsonl

    from prefopt.cli.config import from_dict
    from prefopt.cli.run import run_train
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model, load_tokenizer
    from prefopt.train.config import TrainConfig

    pairs = write_jsonl(tmp_path / "pairs.jsonl", lab_pairs(12))
    common = {"model": {"name_or_path": "tiny:llama-1m"}, "output_dir": str(tmp_path), "optim": {"lr": 1e-3}}
    offline = {**common, "data": {"task": "reviews", "path": str(pairs), "eval_examples": 4},
               "train": {"steps": 2, "batch_size": 4, "progress": False, "threads": 1},
               "algo": {"name": "dpo", "reference": "lora"}, "lora": {"enabled": True, "r": 2}, "run_name": "dpo"}
    online = {**common, "data": {"task": "reviews", "eval_examples": 2},
              "train": {"steps": 2, "batch_size": 4, "progress": False, "threads": 1, "eval_every": 1},
              "algo": {"name": "rloo"}, "rollout": {"max_new_tokens": 6},
              "online": {"prompts_per_step": 2, "num_generations": 2, "num_prompts": 16, "eval_num_samples": 1,
                         "reward": [{"name": "online_reward_fns:length"}]}, "run_name": "rloo"}
    with deprecations_caught() as caught:
        for cfg in (offline, online):
            out = run_train(from_dict(TrainConfig, cfg))
            assert out.result.steps == 2
        saved = out.result.final_checkpoint / "model"  # and back from disk, as the demo and `data make` do
        tokenizer = load_tokenizer(str(saved))
        _generate(load_model(ModelConfig(name_or_path=str(saved)), tokenizer), tokenizer)
    assert not ours(caught), "\n".join(map(str, ours(caught)))


# --------------------------------------------------------------------------- bounds and pytest settings


def test_every_dependency_is_bounded_above_and_the_installed_versions_fit():
    import tomllib
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    project = tomllib.loads((PREFOPT.parent / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{line}: no upper bound"
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            continue
        assert req.specifier.contains(installed, prereleases=True), f"installed {req.name} {installed} ∉ {line}"


def test_pytest_fails_a_deprecation_that_names_a_prefopt_module():
    with pytest.raises(FutureWarning):
        warnings.warn_explicit("old API", FutureWarning, "prefopt/x.py", 1, module="prefopt.x")  # pyproject's filter
