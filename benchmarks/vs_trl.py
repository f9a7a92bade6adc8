"""prefopt vs TRL 1.16 on identical work, side by side in one run.

One set of inputs -- a synthetic preference dataset with prompts and responses of varied length,
a word-level tokenizer built locally (so both libraries see exactly the same token ids: the run
checks it), one randomly initialised tiny Llama saved to a temp dir so both load identical weights
-- then phases run interleaved A B C D, D C B A, ... each in its own subprocess (so peak RSS is per
phase). Same batch size, AdamW with the same lr (torch's implementation in both), constant
schedule, gradient clipping 1.0, fp32, no gradient checkpointing, no eval, no checkpoints during
training, data in the same (sequential) order.

DPO phases (sigmoid loss, beta 0.1, 16 pairs per step, 30 steps):
  trl_dpo           TRL DPOTrainer, default reference handling (a reference model runs every step)
  trl_dpo_precomp   TRL with precompute_ref_log_probs=True
  prefopt_dpo       prefopt defaults (prefix sharing + padding-free packing) with
                    algo.reference=precomputed (cached reference log-probs, no reference model)
  prefopt_dpo_live  prefopt defaults with algo.reference=copy (a reference pass every step,
                    holding no graph): the like-for-like match of TRL's default
GRPO phases (4 generations per prompt, 32 new tokens, 16 completions per step, beta 0, 16 steps):
  trl_grpo          TRL GRPOTrainer (transformers' model.generate)
  prefopt_grpo      prefopt's grpo (its own rollout engine)

Per phase: seconds per step (median of the step-to-step intervals, the first step left out as
warm-up), tokens/s (real prompt and response tokens, each prompt counted once, over the timed
steps), peak RSS of the phase's process, the reference precompute time where there is one, and
the loss of every step. The summary gives medians over rounds, the ratios prefopt/TRL, and how
far the DPO loss curves of the two libraries are apart.

Run (needs the bench extra: pip install -e ".[bench]", best in its own venv):
    .venv-bench/bin/python benchmarks/vs_trl.py                # full: 3-10 min on 2 CPU cores (load)
    .venv-bench/bin/python benchmarks/vs_trl.py --quick        # smoke run: tiny sizes, 1 round
Writes runs/bench/vs_trl.json (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

DPO_PHASES = ["trl_dpo", "trl_dpo_precomp", "prefopt_dpo", "prefopt_dpo_live"]
GRPO_PHASES = ["trl_grpo", "prefopt_grpo"]
# (prefopt phase, TRL phase) pairs whose ratios the summary reports.
COMPARISONS = [
    ("prefopt_dpo", "trl_dpo", "DPO: prefopt (cached ref) vs TRL default"),
    ("prefopt_dpo", "trl_dpo_precomp", "DPO: prefopt (cached ref) vs TRL precompute_ref_log_probs"),
    ("prefopt_dpo_live", "trl_dpo", "DPO: prefopt (live ref) vs TRL default"),
    ("prefopt_grpo", "trl_grpo", "GRPO: prefopt vs TRL"),
]

# A ~0.9M-parameter Llama keeps the full run (2 rounds x 6 phases) near 10 minutes on 2 CPU cores;
# benchmarks/scaling.py covers longer sequences and bigger batches.
FULL = dict(steps=30, batch=16, hidden=128, layers=4, heads=4, inter=344, vocab=1024,
            prompt=(16, 96), response=(8, 64), grpo_steps=16, grpo_prompt=(8, 48), new_tokens=32, rounds=2)
QUICK = dict(steps=4, batch=4, hidden=64, layers=2, heads=2, inter=128, vocab=256,
             prompt=(4, 16), response=(2, 12), grpo_steps=3, grpo_prompt=(4, 12), new_tokens=8, rounds=1)


# ------------------------------------------------------------------------------------------ inputs
def build_inputs(work: Path, s: dict, seed: int = 0) -> dict:
    """Tokenizer, initial weights, DPO pairs and GRPO prompts, all written under ``work``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(s["vocab"] - 3)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(work / "tokenizer")

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                      num_key_value_heads=s.get("kv_heads", s["heads"]), max_position_embeddings=1024,
                      tie_word_embeddings=True,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(work / "model")
    n_params = sum(p.numel() for p in model.parameters())

    rng = random.Random(seed)
    n_words = s["vocab"] - 3

    def words(n: int, parity: int | None = None) -> str:
        out = []
        for _ in range(n):
            w = rng.randrange(n_words)
            if parity is not None:  # nearest id of that parity
                w = w - (w % 2) + parity
                w = w if w < n_words else w - 2
            out.append(f"w{w}")
        return " ".join(out)

    pairs = []
    for _ in range(s["steps"] * s["batch"]):
        p, c, r = (rng.randint(*s["prompt"]), rng.randint(*s["response"]), rng.randint(*s["response"]))
        # a learnable preference: chosen responses use even-numbered words, rejected ones odd-numbered
        pairs.append({"prompt": words(p), "chosen": " " + words(c, 0), "rejected": " " + words(r, 1)})
    with open(work / "dpo.jsonl", "w") as fh:
        for row in pairs:
            fh.write(json.dumps(row) + "\n")
    # Expected token ids (word i -> id i+3; responses end with eos): both libraries must agree.
    ids = lambda text: [vocab[w] for w in text.split()]
    expected = [(ids(r["prompt"]), ids(r["chosen"]) + [1], ids(r["rejected"]) + [1]) for r in pairs]
    step_tokens = [sum(len(p) + len(c) + len(r) for p, c, r in expected[i * s["batch"]:(i + 1) * s["batch"]])
                   for i in range(s["steps"])]
    (work / "expected_ids.json").write_text(json.dumps(expected))

    prompts_per_step = max(1, _grpo_batch(s) // 4)
    prompts = [{"prompt": words(rng.randint(*s["grpo_prompt"]))} for _ in range(s["grpo_steps"] * prompts_per_step)]
    with open(work / "prompts.jsonl", "w") as fh:
        for row in prompts:
            fh.write(json.dumps(row) + "\n")
    prompt_len = sum(len(p["prompt"].split()) for p in prompts) / len(prompts)
    return {"params": n_params, "pairs": len(pairs), "step_tokens": step_tokens,
            "grpo_prompt_tokens_per_step": prompt_len * prompts_per_step,
            "tokens_per_pair_mean": sum(step_tokens) / len(pairs),
            "padded_tokens_trl_mean": _padded_tokens(expected, s["batch"]) / s["steps"]}


def _grpo_batch(s: dict) -> int:
    """Completions per GRPO step (4 per prompt); DPO's pairs per step unless set apart."""
    return s.get("grpo_batch", s["batch"])


def _trl_precision(s: dict) -> dict:
    """TRL's precision and memory flags from the phase settings (default here: fp32, no checkpointing)."""
    return {"bf16": s.get("precision", "fp32") == "bf16-mixed", "fp16": False,
            "gradient_checkpointing": s.get("gradient_checkpointing", False)}


def _padded_tokens(expected, batch: int) -> float:
    """Tokens TRL's padded [chosen; rejected] batch computes per policy pass, summed over steps."""
    total = 0
    for i in range(0, len(expected), batch):
        rows = [len(p) + len(c) for p, c, _ in expected[i:i + batch]] + \
               [len(p) + len(r) for p, _, r in expected[i:i + batch]]
        total += len(rows) * max(rows)
    return total


def _even_words(text: str) -> float:
    words = [w for w in text.split() if w[1:].isdigit()]
    return sum(int(w[1:]) % 2 == 0 for w in words) / max(1, len(words))


def reward_even(completions, **kwargs):
    """The GRPO workload's reward, TRL signature: the fraction of even-numbered words (cheap)."""
    return [_even_words(c if isinstance(c, str) else str(c)) for c in completions]


def reward_even_prefopt(prompts, responses):
    """The same reward with prefopt's scorer signature ``f(prompts, responses)``."""
    return [_even_words(r) for r in responses]


# ------------------------------------------------------------------------------------------ phases
def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def phase_trl_dpo(work: Path, s: dict, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    t_setup = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(work / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    rows = [json.loads(line) for line in open(work / "dpo.jsonl")]
    stamps, losses = [], {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses[state.global_step] = float(logs["loss"])

    args = DPOConfig(
        output_dir=str(work / "trl_out"), per_device_train_batch_size=s["batch"], max_steps=s["steps"],
        learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch", max_grad_norm=1.0, beta=0.1, loss_type="sigmoid", **_trl_precision(s), use_cpu=True, logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", dataloader_num_workers=0, max_length=None, precompute_ref_log_probs=precompute,
        seed=0, train_sampling_strategy="sequential", disable_tqdm=True)
    t_pre = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Clock()])
    init_s = time.perf_counter() - t_pre
    expected = json.loads((work / "expected_ids.json").read_text())
    ds = trainer.train_dataset
    got = list(zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    assert [list(map(list, g)) for g in got] == expected, "TRL tokenized the data differently"
    rss_ready = _rss_mib()
    setup_s = time.perf_counter() - t_setup
    trainer.train()
    return {"step_s": _intervals(stamps), "losses": [losses[k] for k in sorted(losses)],
            "peak_rss_mib": _rss_mib(), "rss_ready_mib": rss_ready, "setup_s": setup_s,
            "precompute_s": init_s if precompute else None}


def _prefopt_cfg(work: Path, s: dict, name: str):
    from prefopt.train.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.name_or_path = str(work / "model")
    cfg.model.tokenizer = str(work / "tokenizer")
    cfg.data.task = None
    cfg.data.eval_examples = 0
    cfg.data.shuffle = False
    cfg.data.max_length = 4096
    cfg.data.max_prompt_length = 4096
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = "adamw", s["lr"], 0.0
    t = cfg.train
    t.batch_size, t.lr_schedule, t.warmup_steps, t.max_grad_norm = s["batch"], "constant", 0, 1.0
    t.progress, t.save_every, t.eval_every, t.seed = False, 0, 0, 0
    t.precision = s.get("precision", "fp32")
    cfg.model.gradient_checkpointing = s.get("gradient_checkpointing", False)
    cfg.output_dir, cfg.run_name = str(work / "prefopt_out"), f"{name}-{time.time_ns()}"  # rounds and variants
    return cfg


def _run_prefopt(cfg) -> tuple[list[float], list[float], dict]:
    """``prefopt.cli.run.run_train`` with a logger that also records when each step ended."""
    import prefopt.cli.run as run_mod

    stamps, losses, first, records = [], [], {}, []

    class TimedLogger(run_mod.MetricsLogger):
        def log(self, record: dict) -> None:
            if "loss" in record and "time/step_s" in record:
                stamps.append(time.perf_counter())
                losses.append(float(record["loss"]))
                records.append({k: v for k, v in record.items() if isinstance(v, (int, float))})
            elif record.get("step") == 0:
                first.update(record)
            super().log(record)

    original = run_mod.MetricsLogger
    run_mod.MetricsLogger = TimedLogger
    try:
        run_mod.run_train(cfg)
    finally:
        run_mod.MetricsLogger = original
        shutil.rmtree(Path(cfg.output_dir) / cfg.run_name, ignore_errors=True)  # 135M: 1.6 GB of checkpoint
    return stamps, losses, first, records


def phase_prefopt_dpo(work: Path, s: dict, reference: str) -> dict:
    os.environ["PREFOPT_CACHE"] = tempfile.mkdtemp(dir=work)  # a fresh reference cache: precompute runs
    t_setup = time.perf_counter()
    cfg = _prefopt_cfg(work, s, f"dpo-{reference}")
    cfg.data.path = str(work / "dpo.jsonl")
    cfg.train.steps = s["steps"]
    cfg.algo.name, cfg.algo.loss, cfg.algo.beta, cfg.algo.reference = "dpo", "dpo", 0.1, reference
    cfg.perf.prefix_sharing, cfg.perf.padding_free = s.get("prefix_sharing", True), s.get("padding_free", True)
    _check_prefopt_tokens(work, cfg)
    stamps, losses, stats, records = _run_prefopt(cfg)
    return {"step_s": _intervals(stamps), "losses": losses, "peak_rss_mib": _rss_mib(),
            "setup_s": time.perf_counter() - t_setup - sum(_intervals(stamps)),
            "precompute_s": stats.get("reference/precompute_seconds"),
            # what a step's time follows: its tokens (batches differ), and the RSS high-water mark
            "step_tokens": [round(r["tokens/s"] * r["time/step_s"]) for r in records],
            "step_peak_rss_mib": [round(r["memory/peak_rss_mib"]) for r in records]}


def _check_prefopt_tokens(work: Path, cfg) -> None:
    from prefopt.cli.builders.offline import encode_pair_data
    from prefopt.cli.run import resolve_tokenizer

    tr, _, _, _ = encode_pair_data(cfg, resolve_tokenizer(cfg))
    got = [[p.prompt_ids, p.chosen_ids, p.rejected_ids] for p in tr]
    assert got == json.loads((work / "expected_ids.json").read_text()), "prefopt tokenized the data differently"


def phase_trl_grpo(work: Path, s: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    t_setup = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(work / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    rows = [json.loads(line) for line in open(work / "prompts.jsonl")]
    stamps, losses, completion_tokens = [], [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                completion_tokens.append(float(logs["completions/mean_length"]) * _grpo_batch(s))

    args = GRPOConfig(
        output_dir=str(work / "trl_grpo_out"), per_device_train_batch_size=_grpo_batch(s), max_steps=s["grpo_steps"],
        num_generations=4, max_completion_length=s["new_tokens"], temperature=1.0, top_p=1.0, top_k=0, beta=0.0,
        learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=1.0, **_trl_precision(s), use_cpu=True, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", dataloader_num_workers=0, seed=0,
        disable_tqdm=True, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_even, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, callbacks=[Clock()])
    setup_s = time.perf_counter() - t_setup
    trainer.train()
    return {"step_s": _intervals(stamps), "losses": losses, "peak_rss_mib": _rss_mib(), "setup_s": setup_s,
            "completion_tokens": completion_tokens}


def phase_prefopt_grpo(work: Path, s: dict) -> dict:
    from prefopt.train.online_config import RewardSpec

    os.environ["PREFOPT_CACHE"] = tempfile.mkdtemp(dir=work)
    t_setup = time.perf_counter()
    cfg = _prefopt_cfg(work, s, "grpo")
    cfg.data.path = str(work / "prompts.jsonl")
    cfg.train.steps = s["grpo_steps"]
    cfg.algo.name = "grpo"
    cfg.algo.reference = "none"
    o = cfg.online
    o.prompts_per_step, o.num_generations = max(1, _grpo_batch(s) // 4), 4
    o.kl_coef, o.eval_kl = 0.0, False  # TRL's default beta 0: no reference model on either side
    o.reward = [RewardSpec(name=f"{HERE.stem}:reward_even_prefopt")]
    cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p = s["new_tokens"], 1.0, 1.0
    stamps, losses, _, records = _run_prefopt(cfg)
    return {"step_s": _intervals(stamps), "losses": losses, "peak_rss_mib": _rss_mib(),
            "setup_s": time.perf_counter() - t_setup - sum(_intervals(stamps)),
            "completion_tokens": [r["rollout/response_length"] * r["rollout/samples"] for r in records],
            "gen_s": [r.get("rollout/gen_seconds") for r in records]}  # sampling's share of each step


def run_phase(name: str, work: Path, s: dict) -> dict:
    if name == "trl_dpo":
        return phase_trl_dpo(work, s, precompute=False)
    if name == "trl_dpo_precomp":
        return phase_trl_dpo(work, s, precompute=True)
    if name == "prefopt_dpo":
        return phase_prefopt_dpo(work, s, "precomputed")
    if name == "prefopt_dpo_live":
        return phase_prefopt_dpo(work, s, "copy")
    if name == "trl_grpo":
        return phase_trl_grpo(work, s)
    if name == "prefopt_grpo":
        return phase_prefopt_grpo(work, s)
    raise SystemExit(f"unknown phase {name}")


# ------------------------------------------------------------------------------------------ driver
def _spawn(name: str, work: Path, s: dict, timeout: float) -> dict:
    out = work / f"phase-{name}-{time.time_ns()}.json"
    cmd = [sys.executable, str(HERE), "--phase", name, "--work", str(work), "--settings", json.dumps(s),
           "--phase-out", str(out)]
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(HERE.parent))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        return {"error": f"phase {name} failed (rc {proc.returncode}):\n{tail}"}
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(results: dict[str, list[dict]], info: dict, s: dict) -> dict:
    step_tokens = info["step_tokens"]
    phases = {}
    for name, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            phases[name] = {"error": runs[0]["error"] if runs else "not run"}
            continue
        per_run = []
        for r in ok:
            dts = r["step_s"]
            if "grpo" in name:  # generated tokens + each step's prompts once (mean prompt length)
                toks = [c + info["grpo_prompt_tokens_per_step"] for c in r.get("completion_tokens") or []]
                tok_s = (sum(toks[1:1 + len(dts)]) / sum(dts)) if toks and dts else None
            else:
                tok_s = sum(step_tokens[1:1 + len(dts)]) / sum(dts) if dts else None
            per_run.append({"s_per_step": statistics.median(dts) if dts else None, "tokens_per_s": tok_s,
                            "peak_rss_mib": r["peak_rss_mib"], "precompute_s": r.get("precompute_s")})
        phases[name] = {
            "s_per_step": _median([p["s_per_step"] for p in per_run]),
            "tokens_per_s": _median([p["tokens_per_s"] for p in per_run]),
            "peak_rss_mib": _median([p["peak_rss_mib"] for p in per_run]),
            "precompute_s": _median([p["precompute_s"] for p in per_run]),
            "runs": per_run, "losses": ok[0]["losses"],
        }
    ratios = []
    for mine, theirs, label in COMPARISONS:
        a, b = phases.get(mine, {}), phases.get(theirs, {})
        if not a.get("s_per_step") or not b.get("s_per_step"):
            continue
        ratios.append({
            "comparison": label, "prefopt": mine, "trl": theirs,
            "steps_per_s_ratio": b["s_per_step"] / a["s_per_step"],
            "tokens_per_s_ratio": (a["tokens_per_s"] / b["tokens_per_s"]) if a["tokens_per_s"] and b["tokens_per_s"] else None,
            "peak_rss_ratio": a["peak_rss_mib"] / b["peak_rss_mib"],
        })
    agreement = {}
    mine = phases.get("prefopt_dpo", {}).get("losses")
    for theirs in ("trl_dpo", "trl_dpo_precomp"):
        other = phases.get(theirs, {}).get("losses")
        if mine and other:
            n = min(len(mine), len(other))
            diffs = [abs(x - y) for x, y in zip(mine[:n], other[:n])]
            spread = max(mine[:n]) - min(mine[:n])
            agreement[theirs] = {"steps": n, "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / n,
                                 "loss_range": spread, "first": [mine[0], other[0]], "last": [mine[n - 1], other[n - 1]],
                                 "agree": max(diffs) <= max(0.02, 0.1 * spread)}
    return {"phases": phases, "ratios": ratios, "dpo_loss_agreement": agreement}


def print_summary(summary: dict, info: dict) -> None:
    print("\nphase               s/step   tokens/s   peak RSS MiB   precompute s")
    for name, p in summary["phases"].items():
        if "error" in p:
            print(f"{name:18s}  ERROR: {p['error'].splitlines()[0]}")
            continue
        pre = f"{p['precompute_s']:.1f}" if p.get("precompute_s") else "-"
        tps = f"{p['tokens_per_s']:9.0f}" if p.get("tokens_per_s") else "        -"
        print(f"{name:18s} {p['s_per_step']:7.3f}  {tps}   {p['peak_rss_mib']:10.0f}   {pre:>10s}")
    print("\nratio (prefopt / TRL)                                       steps/s  tokens/s  peak RSS")
    for r in summary["ratios"]:
        tok = f"{r['tokens_per_s_ratio']:7.2f}x" if r["tokens_per_s_ratio"] else "      -"
        print(f"{r['comparison']:58s} {r['steps_per_s_ratio']:7.2f}x {tok}  {r['peak_rss_ratio']:7.2f}x")
    for theirs, a in summary["dpo_loss_agreement"].items():
        print(f"DPO loss curves prefopt vs {theirs}: max |diff| {a['max_abs_diff']:.2e} over {a['steps']} steps "
              f"(loss went {a['first'][0]:.4f} -> {a['last'][0]:.4f}); agree: {a['agree']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round (the test suite's smoke run)")
    ap.add_argument("--rounds", type=int, default=None, help="A B C D rounds (default 2; --quick 1)")
    ap.add_argument("--workloads", default="dpo,grpo", help="comma list: dpo, grpo")
    ap.add_argument("--only", default=None, help="comma list of phases to run (default: all of the workloads)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a workload setting, e.g. --set steps=10 --set 'prompt=[8,64]' (JSON values)")
    ap.add_argument("--threads", default="auto", help=(
        "torch threads per phase; 'auto' = the core count (2 here), or 1 when the machine's load average "
        "exceeds its cores (with other jobs running, 2 OpenMP threads mostly wait for each other)"))
    ap.add_argument("--profile", action="store_true", help="cProfile every phase; the JSON gets each profile")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", default="runs/bench/vs_trl.json")
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--phase-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.phase:  # child: one phase
        import torch
        s = json.loads(args.settings)
        torch.set_num_threads(s["threads"])
        if s.get("profile"):
            import cProfile
            import io
            import pstats
            prof = cProfile.Profile()
            res = prof.runcall(run_phase, args.phase, Path(args.work), s)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(45)
            res["profile"] = buf.getvalue()
        else:
            res = run_phase(args.phase, Path(args.work), s)
        Path(args.phase_out).write_text(json.dumps(res))
        return 0

    s = dict(QUICK if args.quick else FULL)
    cores = os.cpu_count() or 1
    threads = (1 if os.getloadavg()[0] > cores else cores) if args.threads == "auto" else int(args.threads)
    s.update(threads=threads, lr=args.lr, profile=args.profile)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in s:
            raise SystemExit(f"--set: unknown setting {key!r} (known: {', '.join(sorted(s))})")
        s[key] = json.loads(value)
    if args.rounds:
        s["rounds"] = args.rounds
    names = []
    workloads = args.workloads.split(",")
    if "dpo" in workloads:
        names += DPO_PHASES
    if "grpo" in workloads:
        names += GRPO_PHASES
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    work = Path(tempfile.mkdtemp(prefix="prefopt-vs-trl-"))
    t0 = time.perf_counter()
    info = build_inputs(work, s)
    results: dict[str, list[dict]] = {n: [] for n in names}
    timeout = 120 if args.quick else 600
    for r in range(s["rounds"]):
        order = names if r % 2 == 0 else names[::-1]  # A B C D, D C B A: no phase always runs first
        for name in order:
            res = _spawn(name, work, s, timeout)
            results[name].append(res)
            msg = res.get("error", "").splitlines()[0] if "error" in res else (
                f"{statistics.median(res['step_s']):.3f} s/step, peak RSS {res['peak_rss_mib']:.0f} MiB"
                if res["step_s"] else "no timed steps")
            print(f"[round {r + 1}] {name}: {msg}", flush=True)
    summary = summarize(results, info, s)
    report = {"settings": s, "inputs": {k: v for k, v in info.items() if k != "step_tokens"}, "versions": versions(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_avg": os.getloadavg()},
              "wall_s": time.perf_counter() - t0, "command": " ".join([Path(sys.executable).name] + sys.argv),
              **summary, "raw": results}
    print_summary(summary, info)
    write_report(Path(args.out), report)
    return 0


def versions() -> dict:
    import torch
    import transformers
    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import trl
        out["trl"] = trl.__version__
    except ImportError:
        out["trl"] = None
    return out


def write_report(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out} ({report['wall_s']:.0f} s, load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    raise SystemExit(main())
