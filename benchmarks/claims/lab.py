"""What the reviews-lab claims share: a cached SFT start per seed, cached data sets, one evaluation,
and training an arm through ``prefopt.cli.run.run_train``.

The SFT start is the demo's / ``prefopt compare``'s (``prefopt.cli.demo.reviews_sft_config``:
tiny Llama, the reviews corpus), trained once per (settings, seed) and kept under
``$PREFOPT_CACHE/claims/`` so that every arm, every claim and every later run reuse it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from harness import Arm, SeedContext, deep_merge

SFT_DEFAULTS = {"model": "tiny:llama-1m", "steps": 300, "lr": 3e-3, "examples": 6000, "batch_size": 32}
CACHE_VERSION = 1  # bump when what is cached changes meaning


def cache_root() -> Path:
    from prefopt.cli.run import cache_dir
    return cache_dir() / "claims"


def cache_key(*parts) -> str:
    return hashlib.sha1(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:12]


def sft_start(seed: int, settings: dict | None = None, log=print) -> Path:
    """The reviews SFT model for ``seed`` (trained on first use, then read from the cache)."""
    from prefopt.cli.config import to_dict
    from prefopt.cli.demo import reviews_sft_config

    s = {**SFT_DEFAULTS, **(settings or {})}
    cfg = reviews_sft_config(s["model"], seed=seed, steps=s["steps"], lr=s["lr"], examples=s["examples"],
                             output_dir=Path("."), eval_examples=0,
                             loop={"batch_size": s["batch_size"], "seed": seed, "progress": False})
    return cached_sft(to_dict(cfg), key_parts=(s, seed), log=log)


def cached_sft(train: dict, key_parts=None, log=print) -> Path:
    """The final model of the SFT run ``train`` (a prefopt train config as a dict), trained on first
    use and kept under the claims cache, keyed by ``key_parts`` (default: the config without its
    output paths and progress/thread settings)."""
    from prefopt.cli.config import from_dict
    from prefopt.cli.run import run_train
    from prefopt.train.config import TrainConfig

    if key_parts is None:
        key = {k: v for k, v in train.items() if k not in ("output_dir", "run_name")}
        key["train"] = {k: v for k, v in key.get("train", {}).items() if k not in ("progress", "threads")}
        key_parts = (key,)
    target = cache_root() / f"sft-{train.get('data', {}).get('task', 'data')}-{cache_key(*key_parts)}"
    if (target / "config.json").exists():
        return target
    steps = train.get("train", {}).get("steps")
    log(f"  SFT start: {steps} steps of {train['model']['name_or_path']} (cached at {target})")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    cfg = from_dict(TrainConfig, {**train, "output_dir": str(tmp), "run_name": "sft",
                                  "train": {**train.get("train", {}), "save_every": 0, "keep_checkpoints": 1,
                                            "eval_every": 0, "progress": False}})
    run = run_train(cfg)
    try:
        (run.result.final_checkpoint / "model").rename(target)
    except OSError:  # another process cached the same start first; its copy is identical
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def cached_rows(name: str, key_parts, build, log=print) -> tuple[list[dict], dict]:
    """Rows (and their stats) from ``build()``, cached as JSONL + JSON under the claims cache."""
    from prefopt.data.loaders import write_jsonl

    path = cache_root() / "data" / f"{name}-{cache_key(key_parts)}.jsonl"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()], json.loads(meta.read_text())
    rows, stats = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    meta.write_text(json.dumps(stats, default=str))
    log(f"  {name}: {len(rows)} rows (cached at {path})")
    return rows, stats


@dataclass
class LabEval:
    """Held-out evaluation against the SFT start: gold reward, win rate vs SFT, KL to SFT."""

    sft_model: object
    tokenizer: object
    task: object
    prompts: list
    sampling: object
    sft_samples: object
    objective: str

    def __call__(self, model) -> dict:
        from prefopt.eval.lab import compare_policies
        r = compare_policies(model, self.sft_model, self.tokenizer, self.task, self.prompts, self.objective,
                             self.sampling, self.sft_samples)
        return {"gold_reward": r["gold_reward"], "win_rate_vs_sft": r["win_rate_vs_ref"], "kl_to_sft": r["kl_to_ref"],
                "response_tokens": r["response_tokens"],
                **{k: v for k, v in r.items() if k.startswith("gold/")}}


def reviews_eval(sft_path: Path, seed: int, prompts: int, samples: int, max_new_tokens: int) -> LabEval:
    """The evaluation every reviews arm of a seed gets: same prompts, same sampling seed, same SFT samples."""
    from prefopt.cli.run import task_tokenizer
    from prefopt.eval.lab import sample_policy
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.rollout.engine import SamplingConfig
    from prefopt.tasks import get_task

    task = get_task("reviews")
    tokenizer = task_tokenizer("reviews", {})
    sft = load_model(ModelConfig(name_or_path=str(sft_path)))
    sft.requires_grad_(False).eval()
    eval_prompts = task.prompts("eval", prompts, seed=seed + 1)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0, num_samples=samples,
                              seed=seed + 2, batch_size=256)
    return LabEval(sft, tokenizer, task, eval_prompts, sampling,
                   sample_policy(sft, tokenizer, task, eval_prompts, sampling), task.default_objective)


def sampled_tokens(run_dir: Path) -> float:
    """Response tokens the run sampled from its policy (0 for offline runs): Σ over fresh rollout
    batches of samples × mean response length, from ``metrics.jsonl``."""
    from prefopt.train.metrics import read_metrics
    total = 0.0
    for m in read_metrics(Path(run_dir) / "metrics.jsonl"):
        if "rollout/samples" in m and m.get("rollout/fresh", 1.0):
            total += float(m["rollout/samples"]) * float(m.get("rollout/response_length", 0.0))
    return total


def train_arm(ctx: SeedContext, arm: Arm, runtime: dict, evaluator) -> dict:
    """Train ``arm`` (its config merged over the claim's base, then ``runtime``) and evaluate its final policy."""
    from prefopt.cli.config import from_dict
    from prefopt.cli.run import run_train
    from prefopt.train.config import TrainConfig

    data = ctx.train_dict(arm, {"output_dir": str(ctx.work_dir), "run_name": arm.name,
                                "train": {"seed": ctx.seed, "threads": ctx.threads, "progress": False}, **runtime})
    cfg = from_dict(TrainConfig, data)
    final: dict = {}

    def evaluate(model):
        final.clear()
        final.update(evaluator(model))
        return final

    t0 = time.perf_counter()
    run = run_train(cfg, evaluators=[evaluate], overwrite=True)  # the arm's folder is this claim run's own output
    result = {**final, "train_s": round(time.perf_counter() - t0, 1), "steps": run.result.steps,
              "sampled_tokens": sampled_tokens(run.run_dir)}
    ctx.log(f"  {arm.name:>14s}: " + "  ".join(f"{k} {result[k]:.3f}" for k in ("gold_reward", "win_rate_vs_sft", "kl_to_sft"))
            + f"  ({result['train_s']} s)")
    return result


def run_arms(ctx: SeedContext, sft_path: Path, datasets: dict[str, Path], evaluator) -> dict[str, dict]:
    """Train every arm of ``ctx`` from the SFT start, in the YAML's order.

    ``data: NAME`` gives an arm ``datasets[NAME]`` at the config key ``data_key`` (default
    ``data.path``; e.g. a mixture's offline source takes it at ``mix.path``); ``nonempty: COLUMN``
    first drops the rows whose COLUMN is an empty response (DR-PO refuses to reset from one);
    ``token_budget_of: OTHER`` then keeps only the first pairs whose response tokens add up to at
    most what arm OTHER (run before it) sampled.
    """
    results: dict[str, dict] = {}
    for arm in ctx.arms:
        runtime: dict = {"model": {"name_or_path": str(sft_path)}}
        source = arm.options.get("data")
        path = None
        if source is not None:
            if source not in datasets:
                raise ValueError(f"arm '{arm.name}': data '{source}' is not one of this claim's data sets {sorted(datasets)}")
            path = datasets[source]
            if arm.options.get("nonempty"):
                path = drop_empty(path, arm.options["nonempty"], ctx.work_dir / f"data-{arm.name}.jsonl")
            other = arm.options.get("token_budget_of")
            if other is not None:
                if other not in results:
                    raise ValueError(f"arm '{arm.name}': token_budget_of '{other}' must be an arm that ran before it")
                path = cut_to_tokens(path, results[other]["sampled_tokens"], evaluator.tokenizer,
                                     ctx.work_dir / f"data-{arm.name}.jsonl")
            runtime = deep_merge(runtime, nested(arm.options.get("data_key", "data.path"), str(path)))
        results[arm.name] = train_arm(ctx, arm, runtime, evaluator)
        if path is not None:
            results[arm.name]["data_tokens"] = response_tokens(path, evaluator.tokenizer)
            results[arm.name]["data_pairs"] = float(sum(1 for line in path.read_text().splitlines() if line.strip()))
    return results


def nested(dotted: str, value) -> dict:
    """'a.b.c', v -> {'a': {'b': {'c': v}}}."""
    out: dict = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _row_tokens(row: dict, tokenizer) -> int:
    """Sampled tokens of a pair's two responses, each with the end-of-sequence token that ended it
    (as a rollout's ``rollout/response_length`` counts it)."""
    return sum(len(tokenizer(row[k], add_special_tokens=False).input_ids) + 1 for k in ("chosen", "rejected"))


def drop_empty(path: Path, column: str, out: Path) -> Path:
    """The rows of a JSONL whose ``column`` is a non-empty (after stripping) string."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return write_rows(out, [r for r in rows if isinstance(r.get(column), str) and r[column].strip()])


def cut_to_tokens(path: Path, budget: float, tokenizer, out: Path) -> Path:
    """The first rows of a pairwise JSONL whose response tokens add up to at most ``budget``."""
    rows, used = [], 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        n = _row_tokens(row, tokenizer)
        if used + n > budget:
            break
        rows.append(row)
        used += n
    return write_rows(out, rows)


def response_tokens(path: Path, tokenizer) -> float:
    """Tokens in the responses (chosen and rejected, end-of-sequence included) of a pairwise JSONL:
    what was sampled to make it."""
    return float(sum(_row_tokens(json.loads(line), tokenizer) for line in Path(path).read_text().splitlines()
                     if line.strip()))


def write_rows(path: Path, rows: list[dict]) -> Path:
    from prefopt.data.loaders import write_jsonl
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    return path


def coverage_sets(ctx: SeedContext, sft_path: Path, data_settings: dict) -> tuple[dict[str, list], dict]:
    """The poor-coverage pairs and the full-coverage control, from one set of SFT samples (cached)."""
    from dataclasses import asdict, replace

    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.cli.run import task_tokenizer
    from prefopt.tasks import get_task
    from prefopt.tasks.coverage import CoverageConfig, sample_responses, slice_pairs

    cfg = CoverageConfig(**data_settings, seed=ctx.seed)
    task = get_task("reviews")

    def build():
        model = load_model(ModelConfig(name_or_path=str(sft_path)))
        samples = sample_responses(model, task_tokenizer("reviews", {}), task, cfg)
        poor, poor_st = slice_pairs(samples, cfg, task.objectives, task.default_objective)
        full, full_st = slice_pairs(samples, replace(cfg, max_score=None), task.objectives, task.default_objective)
        full = full[:len(poor)]  # the same number of pairs in both sets
        full_st.pairs = len(full)
        return ([{**r, "set": "poor"} for r in poor] + [{**r, "set": "full"} for r in full],
                {"poor": asdict(poor_st), "full": asdict(full_st)})

    rows, stats = cached_rows("coverage", [str(sft_path), asdict(cfg)], build, log=ctx.log)
    sets = {name: [{k: v for k, v in r.items() if k != "set"} for r in rows if r["set"] == name]
            for name in ("poor", "full")}
    return sets, stats


def preference_pairs(ctx: SeedContext, sft_path: Path, data_settings: dict) -> tuple[list[dict], dict]:
    """``prefopt.tasks.prefdata`` pairs from the SFT start (2 samples per prompt), cached."""
    from dataclasses import asdict

    from prefopt.cli.run import task_tokenizer
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.rollout.engine import SamplingConfig
    from prefopt.tasks import get_task
    from prefopt.tasks.prefdata import PrefDataConfig, make_preference_data

    cfg = PrefDataConfig(samples_per_prompt=2, seed=ctx.seed, **data_settings,
                         sampling=SamplingConfig(max_new_tokens=40, temperature=1.0, batch_size=128))

    def build():
        model = load_model(ModelConfig(name_or_path=str(sft_path)))
        rows, st = make_preference_data(model, task_tokenizer("reviews", {}), get_task("reviews"), cfg)
        return rows, asdict(st)

    return cached_rows("prefpairs", [str(sft_path), asdict(cfg)], build, log=ctx.log)
