"""Claims of issue 12 measured on the reviews_rps lab (rows of docs/claims.md).

Self-contained (the shared benchmarks/claims harness was not in main when this was written): it
trains the reviews_rps SFT model once (cached in --out), then runs each method per seed with
``run_train`` in this process and reads the evaluation metrics the presets log.

- ``nash``: on the intransitive judge (λ = 1), SPPO and INPO reach lower exploitability than DPO
  on labels from the same judge (online_dpo, each fresh pair ordered by the judge, i.e. treated as
  Bradley-Terry data). Exploitability is exact (the lab's closed form over held-out samples).
- ``sppo_iterations``: SPPO's gold win rate against the SFT policy rises over iterations (evaluated
  at the end of every round of the ``nash`` SPPO runs; shared runs, no extra cost).
- ``hedge``: online DPO labelled by Hedge over {gold, noisy (ν = 0.8), adversarial} judges with gold
  feedback on 25 % of the pairs, vs the gold judge alone and the uniform mix (the same ensemble with
  no feedback, so its weights stay uniform): the gold win rate of the trained policy vs the SFT
  policy, and how often each labeller's side agrees with the gold judge's.

    python benchmarks/claims/selfplay_claims.py --claim all --seeds 3 --out runs/claims-selfplay
    python benchmarks/claims/selfplay_claims.py --quick          # a few steps, for the test suite

Prints a JSON summary and the markdown rows (mean ± standard error over seeds).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    se = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return m, se


def fmt(values: list[float]) -> str:
    m, se = mean_se(values)
    return f"{m:.3f} ± {se:.3f}" if math.isfinite(se) else f"{m:.3f}"


class Lab:
    """Settings shared by every run of one invocation (full or --quick)."""

    def __init__(self, out: Path, quick: bool):
        self.out, self.quick = out, quick
        self.steps, self.rounds = (4, 2) if quick else (30, 3)
        self.common = ["train.progress=false", "train.threads=1", f"train.steps={self.steps}",
                       f"train.eval_every={self.steps // self.rounds}", f"data.eval_examples={4 if quick else 32}",
                       f"online.eval_num_samples={2 if quick else 4}", f"rollout.max_new_tokens={12 if quick else 32}",
                       f"output_dir={out}"]

    def sft(self) -> str:
        from prefopt.cli.config import load_config
        from prefopt.cli.run import run_train
        from prefopt.train.config import TrainConfig

        run = self.out / "sft-reviews_rps"
        steps = 40 if self.quick else 300
        model = run / f"checkpoint-{steps}" / "model"
        if not model.exists():
            over = [f"output_dir={self.out}", "train.progress=false", "train.threads=1", f"train.steps={steps}"]
            if self.quick:
                over += ["train.batch_size=8", "data.num_examples=400", "train.eval_every=0"]
            run_train(load_config(TrainConfig, ROOT / "configs/sft/reviews_rps.yaml", over))
        return str(model)

    def run(self, config: str, name: str, seed: int, extra: list[str]) -> list[dict]:
        """Train ``configs/selfplay/<config>.yaml`` from the SFT model; its evaluation rows."""
        from prefopt.cli.config import load_config
        from prefopt.cli.run import run_train
        from prefopt.train.config import TrainConfig
        from prefopt.train.metrics import read_metrics

        over = self.common + [f"model.name_or_path={self.sft()}", f"train.seed={seed}", f"run_name={name}-s{seed}",
                              "train.eval_on_start=true", *extra]
        out = run_train(load_config(TrainConfig, ROOT / "configs/selfplay" / f"{config}.yaml", over))
        return [r for r in read_metrics(out.run_dir / "metrics.jsonl") if "eval/lab/exploitability" in r]

    def rounds_kw(self) -> list[str]:
        per = self.steps // self.rounds
        return [f"online.steps_per_round={per}", f"online.round_prompts={8 if self.quick else 32}"]

    def pairs_kw(self) -> list[str]:
        return [f"online.prompts_per_step={4 if self.quick else 16}"]


def claim_nash(lab: Lab, seeds: list[int]) -> dict:
    methods = {"sppo": ("sppo", lab.rounds_kw() + ["algo.beta=0.3"]),
               "inpo": ("inpo", lab.rounds_kw()),
               "dpo_on_judge_labels": ("online_dpo_hedge", lab.pairs_kw() + ["online.judge=lab", "hedge.judges=[]",
                                                                           "hedge.judge_options={}"])}
    out: dict = {}
    for name, (config, extra) in methods.items():
        for seed in seeds:
            rows = lab.run(config, name, seed, extra)
            out.setdefault(name, []).append({"steps": [r["step"] for r in rows],
                                             "exploitability": [r["eval/lab/exploitability"] for r in rows],
                                             "win_rate_vs_init": [r["eval/lab/win_rate_vs_init"] for r in rows],
                                             "styles": {s: rows[-1][f"eval/lab/style/{s}"]
                                                        for s in ("honestly", "overall", "frankly", "none")}})
    return out


def claim_hedge(lab: Lab, seeds: list[int]) -> dict:
    ensemble = ["online.judge=hedge", "hedge.judges=[lab, 'lab:noisy', 'lab:adversarial']",
                "hedge.judge_options={'lab:noisy': {noise: 0.8}}"]
    labellers = {"gold_alone": ["online.judge=lab", "hedge.judges=[]", "hedge.judge_options={}"],
                 "hedge": ensemble + ["hedge.feedback=0.25"],
                 "uniform_mix": ensemble + ["hedge.feedback=0.0"]}
    out: dict = {}
    for name, extra in labellers.items():
        for seed in seeds:
            rows = lab.run("online_dpo_hedge", f"hedge-{name}", seed, lab.pairs_kw() + extra)
            out.setdefault(name, []).append({"win_rate_vs_init": rows[-1]["eval/lab/win_rate_vs_init"],
                                             "informativeness": rows[-1]["eval/gold/informativeness"],
                                             **_label_stats(lab, name, seed)})
    return out


def _label_stats(lab: Lab, name: str, seed: int) -> dict:
    """Hedge's final weights and gold agreement, from the run's training metrics."""
    from prefopt.train.metrics import read_metrics

    rows = [r for r in read_metrics(lab.out / f"hedge-{name}-s{seed}" / "metrics.jsonl") if "hedge/regret" in r]
    if not rows:
        return {}
    last = rows[-1]
    return {"weights": {k.split("/", 2)[2]: v for k, v in last.items() if k.startswith("hedge/weight/")},
            "regret": last["hedge/regret"], "regret_bound": last["hedge/regret_bound"],
            "gold_agreement": last.get("hedge/gold_agreement")}


def rows_markdown(results: dict, seeds: int) -> list[str]:
    lines = []
    nash = results.get("nash")
    if nash:
        fig = "; ".join(f"{m} {fmt([r['exploitability'][-1] for r in runs])}" for m, runs in nash.items())
        start = fmt([r["exploitability"][0] for r in nash["sppo"]])
        lines.append(f"| Nash methods (SPPO/INPO) reach lower exploitability than DPO on labels of the same "
                     f"intransitive judge | issue 12 | selfplay_claims.py --claim nash | exploitability at the end "
                     f"(SFT {start}): {fig} ({seeds} seeds) | see docs/claims.md |")
        it = [fmt([r["win_rate_vs_init"][i] for r in nash["sppo"]]) for i in range(len(nash["sppo"][0]["steps"]))]
        lines.append(f"| SPPO's win rate vs SFT rises over iterations | issue 12 | selfplay_claims.py --claim nash | "
                     f"win rate vs SFT after iterations 0..{len(it) - 1}: {' → '.join(it)} ({seeds} seeds) | |")
    hedge = results.get("hedge")
    if hedge:
        fig = "; ".join(f"{m} {fmt([r['win_rate_vs_init'] for r in runs])}" for m, runs in hedge.items())
        lines.append(f"| Hedge over {{good, noisy, adversarial}} labels online DPO nearly as well as the best judge "
                     f"alone and far better than the uniform mix | issue 12 | selfplay_claims.py --claim hedge | "
                     f"gold win rate vs SFT: {fig} ({seeds} seeds) | |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--claim", choices=["nash", "hedge", "all"], default="all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a few steps, one seed (the test suite's smoke run)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "claims-selfplay"))
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    seeds = list(range(1 if args.quick else args.seeds))
    lab = Lab(Path(args.out) / ("quick" if args.quick else "full"), args.quick)
    t0 = time.perf_counter()
    results: dict = {}
    if args.claim in ("nash", "all"):
        results["nash"] = claim_nash(lab, seeds)
    if args.claim in ("hedge", "all"):
        results["hedge"] = claim_hedge(lab, seeds)
    results["seconds"] = time.perf_counter() - t0
    (lab.out / f"results-{args.claim}.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results))
    print("\n".join(rows_markdown(results, len(seeds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
