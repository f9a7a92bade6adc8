"""The ``prefopt`` command.

Every command takes ``key=value`` overrides of its config dataclass; errors print one line
(``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path


def _config_help(cls) -> str:
    from prefopt.cli.config import describe

    lines = [f"  {key} (default {default})\n      {help_}" for key, default, help_ in describe(cls)]
    return "config keys (set in YAML or as key=value):\n" + "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    from prefopt.cli.demo import DemoConfig
    from prefopt.tasks.prefdata import PrefDataConfig
    from prefopt.train.config import TrainConfig

    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="prefopt", description="Align generative models to preferences and rewards.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML config", formatter_class=fmt, epilog=_config_help(TrainConfig))
    t.add_argument("config", nargs="?", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=50")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    t.add_argument("--check", action="store_true", help="validate the config and exit")

    d = sub.add_parser("demo", help="SFT → preference data → DPO → report on the reviews lab task",
                       formatter_class=fmt, epilog=_config_help(DemoConfig))
    d.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dpo_steps=60")
    d.add_argument("--out", help="run directory (default runs/demo-<timestamp>)")

    sub.add_parser("tasks", help="list the lab tasks")

    from prefopt.cli.compare import CompareConfig
    c = sub.add_parser("compare", help="train every P0 offline loss on reviews under label noise and tabulate",
                       formatter_class=fmt, epilog=_config_help(CompareConfig))
    c.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=30 'losses=[dpo,ipo]'")
    c.add_argument("--out", help="output directory (default runs/compare-<timestamp>)")

    data = sub.add_parser("data", help="datasets for the lab")
    dsub = data.add_subparsers(dest="data_command", required=True)
    mk = dsub.add_parser("make", help="sample preference pairs from a model and label them by a gold objective",
                         formatter_class=fmt, epilog=_config_help(PrefDataConfig))
    mk.add_argument("task", help="lab task name")
    mk.add_argument("--model", required=True, help="model directory (or tiny:NAME for an untrained tiny model)")
    mk.add_argument("--out", required=True, help="output JSONL file")
    mk.add_argument("overrides", nargs="*", help="key=value overrides, e.g. flip_rate=0.2 num_prompts=256")
    return p


def cmd_train(args) -> int:
    from prefopt.cli.config import load_config
    from prefopt.cli.run import run_train
    from prefopt.train.config import TrainConfig

    config_path = args.config
    if config_path and "=" in config_path and not Path(config_path).exists():
        # `train --resume DIR key=value`: argparse hands the first override to the optional config
        args.overrides, config_path = [config_path] + list(args.overrides), None
    if args.resume and config_path is None:
        config_path = str(Path(args.resume) / "config.yaml")
    cfg = load_config(TrainConfig, config_path, args.overrides)
    if args.check:
        print("config OK")
        return 0
    out = run_train(cfg, resume=bool(args.resume), run_dir=Path(args.resume) if args.resume else None)
    from prefopt.dist import current
    if not current().is_main:  # under torchrun, rank 0 reports
        return 0
    print(f"run: {out.run_dir}  steps: {out.result.steps}  final checkpoint: {out.result.final_checkpoint}")
    for k, v in sorted(out.result.eval_metrics.items()):
        print(f"  eval/{k}: {v:.4f}")
    return 0


def cmd_demo(args) -> int:
    from prefopt.cli.config import load_config
    from prefopt.cli.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, None, args.overrides)
    summary = run_demo(cfg, Path(args.out) if args.out else None)
    _print_summary(summary)
    return 0


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prefopt demo — gold {s['objective']} on held-out prompts")
    for col in ("policy", "gold reward", "win rate vs SFT", "KL to SFT"):
        table.add_column(col, justify="right")
    table.add_row("SFT", f"{s['sft']['gold_reward']:.3f}", "0.500", "0.000")
    table.add_row(s.get("loss", "DPO").upper(), f"{s['dpo']['gold_reward']:.3f}", f"{s['dpo']['win_rate_vs_sft']:.3f}",
                  f"{s['dpo']['kl_to_sft']:.3f}")
    console = Console()
    console.print(table)
    console.print(f"wall time {s['seconds']} s")


def cmd_tasks(args) -> int:
    from prefopt.tasks import TASKS

    for name, cls in sorted(TASKS.items()):
        print(f"{name:12s} objectives: {', '.join(cls.objectives):40s} {cls.description}")
    return 0


def cmd_data_make(args) -> int:
    from prefopt.cli.config import load_config
    from prefopt.cli.run import task_tokenizer
    from prefopt.data.loaders import write_jsonl
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model, load_tokenizer
    from prefopt.models.tiny import is_tiny
    from prefopt.tasks import get_task
    from prefopt.tasks.prefdata import PrefDataConfig, make_preference_data

    cfg = load_config(PrefDataConfig, None, args.overrides)
    task = get_task(args.task)
    tokenizer = task_tokenizer(args.task, {}) if is_tiny(args.model) else load_tokenizer(args.model)
    model = load_model(ModelConfig(name_or_path=args.model), tokenizer)
    rows, stats = make_preference_data(model, tokenizer, task, cfg)
    write_jsonl(args.out, rows)
    print(f"wrote {stats.pairs} pairs to {args.out} ({stats.flipped} flipped, "
          f"{stats.identical_skipped} identical pairs skipped, {stats.agree_with_gold:.1%} agree with gold)")
    return 0


def cmd_compare(args) -> int:
    from prefopt.cli.compare import CompareConfig, run_compare
    from prefopt.cli.config import load_config

    cfg = load_config(CompareConfig, None, args.overrides)
    summary = run_compare(cfg, Path(args.out) if args.out else None)
    print(_compare_text(summary))
    return 0


def _compare_text(summary: dict) -> str:
    from prefopt.cli.compare import markdown_table
    return markdown_table(summary) + f"\nwall time {summary['seconds']['total']} s"


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "tasks": cmd_tasks, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    from prefopt.errors import PrefoptError

    args = _parser().parse_args(argv)
    handler = cmd_data_make if args.command == "data" else COMMANDS[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted: a resumable checkpoint was saved where a step had completed", file=sys.stderr)
        return 130
    except (PrefoptError, FileNotFoundError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_where()}{exc}", file=sys.stderr)
        return 2
    finally:
        from prefopt.dist import shutdown
        shutdown()  # leave a torchrun process group, if one was joined


def _where() -> str:
    from prefopt.dist import current
    rt = current()
    return f"rank {rt.rank}: " if rt.distributed else ""


if __name__ == "__main__":
    sys.exit(main())
