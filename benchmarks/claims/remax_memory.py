"""Claim: ReMax needs about half of PPO's memory (Li et al. 2023), measured per phase in its own process.

    python benchmarks/claims/remax_memory.py [--quick] [--seeds 0,1,2]

Per seed (``train.seed``): ``benchmarks/remax_vs_ppo.py`` runs ReMax, PPO with a shared-trunk
value head and PPO with a separate critic model, each in its own process: ``tiny:llama-25m``
from its random init, 16 reviews prompts × 1 sample per step, 32 new tokens, one optimizer step
per rollout, 4 steps (the first not timed). Figures: peak RSS above the process's after-import
baseline (measured), the analytic model state (fp32 weights, gradients and AdamW moments of
trainable weights plus the frozen reference) and seconds per step. "About half" is read as a
measured memory ratio ReMax / PPO below 0.6.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, Claim, SeedContext, SeedResult, main  # noqa: E402
from stats import ByCondition, RatioBelow  # noqa: E402

METRICS = ("rss_above_baseline_mib", "model_state_mib", "time_per_step_s", "peak_rss_mib")


def flatten(config: dict, prefix: str = "") -> list[str]:
    """{a: {b: 1}} -> ['a.b=1'] (the ``--set`` overrides of remax_vs_ppo.py)."""
    out = []
    for k, v in config.items():
        if isinstance(v, dict):
            out += flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={json.dumps(v)}")
    return out


def run_seed(ctx: SeedContext) -> SeedResult:
    s = ctx.settings()
    arms = {}
    for arm in ctx.arms:
        out = ctx.work_dir / f"{arm.name}.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "remax_vs_ppo.py"), "--phases", arm.options["phase"],
               "--model", s["model"], "--steps", str(s["steps"]), "--prompts", str(s["prompts"]),
               "--max-new-tokens", str(s["max_new_tokens"]), "--threads", str(ctx.threads), "--out", str(out),
               *[f"--set={o}" for o in flatten({"train": {"seed": ctx.seed}, "model": {"init_seed": ctx.seed}, **arm.config})]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"arm '{arm.name}': {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        phase = json.loads(out.read_text())["phases"][0]
        arms[arm.name] = {m: phase[m] for m in METRICS}
        ctx.log(f"  {arm.name:>12s}: RSS above baseline {phase['rss_above_baseline_mib']:.0f} MiB, "
                f"model state {phase['model_state_mib']:.0f} MiB, {phase['time_per_step_s']:.2f} s/step")
    return SeedResult(arms, {"model": s["model"]})


CLAIM = Claim(
    name="remax_memory",
    statement="ReMax needs about half (< 0.6) of PPO's memory",
    source="ReMax, Li et al. 2023 (arXiv 2310.10505)",
    metrics=METRICS,
    rule=ByCondition((("vs PPO with a separate critic", RatioBelow("rss_above_baseline_mib", "remax", "ppo_separate", 0.6)),
                      ("vs PPO with a shared value head", RatioBelow("rss_above_baseline_mib", "remax", "ppo", 0.6)))),
    run_seed=run_seed,
    setup=__doc__.split("\n\n", 2)[2].strip(),
)

if __name__ == "__main__":
    sys.exit(main(CLAIM))
