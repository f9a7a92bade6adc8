"""The ``prefopt`` command.

Every command takes ``key=value`` overrides of its config dataclass, anywhere on the command
line; errors print one line (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import re
import sys
import traceback
from pathlib import Path

OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")  # `section.key=value`


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    """Option strings, of every sub-command, that take a value (their next token is not an override)."""
    out = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _value_options(sub)
        elif action.option_strings and action.nargs != 0:
            out.update(action.option_strings)
    return out


def split_overrides(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(other arguments, key=value overrides): overrides are taken from anywhere in ``argv`` before
    argparse sees it (argparse cannot take a positional list after options, e.g. ``data make
    reviews --out x flip_rate=0.1``); an option's value, an existing file and anything after
    ``--`` stay where they are."""
    takes_value = _value_options(parser)
    rest, overrides = [], []
    after_dashes = False
    for i, token in enumerate(argv):
        if token == "--":
            after_dashes = True
        elif (not after_dashes and OVERRIDE.match(token) and not (i and argv[i - 1] in takes_value)
              and not Path(token).exists()):
            overrides.append(token)
            continue
        rest.append(token)
    return rest, overrides


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
    t.add_argument("--overwrite", action="store_true",
                   help="start a new run in a run directory that holds files, clearing it first")
    t.add_argument("--check", action="store_true",
                   help="validate the config and the model, data and output paths, then exit")

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

    from prefopt.cli.front import FrontConfig
    f = sub.add_parser("front", help="sweep preference vectors for one multi-objective method, write the Pareto front",
                       formatter_class=fmt, epilog=_config_help(FrontConfig))
    f.add_argument("config", nargs="?", help="YAML front config")
    f.add_argument("overrides", nargs="*", help="key=value overrides, e.g. method=soups grid=2")
    f.add_argument("--out", help="output directory (default runs/front-<method>-<timestamp>); rerun to resume")

    data = sub.add_parser("data", help="datasets for the lab")
    dsub = data.add_subparsers(dest="data_command", required=True)
    mk = dsub.add_parser("make", help="sample preference pairs from a model and label them by a gold objective",
                         formatter_class=fmt, epilog=_config_help(PrefDataConfig))
    mk.add_argument("task", help="lab task name")
    mk.add_argument("--model", required=True, help="model directory (or tiny:NAME for an untrained tiny model)")
    mk.add_argument("--out", required=True, help="output JSONL file")
    mk.add_argument("overrides", nargs="*", help="key=value overrides, e.g. flip_rate=0.2 num_prompts=256")
    _add_report_parser(sub)
    return p


def _add_report_parser(sub) -> None:
    """``prefopt report``: its options are the fields of ReportConfig (help from the field docs)."""
    import dataclasses

    from prefopt.report.build import ReportConfig

    r = sub.add_parser("report", help="HTML report (and PNGs) of one or more run directories, side by side",
                       description=ReportConfig.__doc__)
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="a run directory (with metrics.jsonl) or a folder of runs (e.g. a demo run)")
    for f in dataclasses.fields(ReportConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            r.add_argument(flag, dest=f.name, action="store_true", help=f.metadata["help"])
        else:
            shown = "" if f.default is None else f" (default {f.default})"
            r.add_argument(flag, dest=f.name, type=int if isinstance(f.default, int) else str,
                           default=f.default, help=f.metadata["help"] + shown)


def cmd_train(args) -> int:
    from prefopt.cli.check import check_train_inputs
    from prefopt.cli.config import load_config
    from prefopt.cli.run import run_dir_for, run_train
    from prefopt.errors import PrefoptError, output_error
    from prefopt.train.config import TrainConfig

    config_path = args.config
    if args.resume and config_path is None:
        config_path = str(Path(args.resume) / "config.yaml")
    cfg = load_config(TrainConfig, config_path, args.overrides)
    if args.resume and cfg.model.trust_remote_code and not any(
            o.startswith("model.trust_remote_code=") for o in args.overrides):
        from prefopt.errors import ConfigError  # a run folder may come from anyone: code runs only if asked here
        raise ConfigError("--resume: the run's config sets model.trust_remote_code=true; pass "
                          "model.trust_remote_code=true on the command line to allow the model's own code")
    notes = check_train_inputs(cfg, args.resume)
    if args.check:
        for note in notes:
            print(f"note: {note}")
        print("config OK")
        return 0
    run_dir = Path(args.resume) if args.resume else run_dir_for(cfg)
    try:
        out = run_train(cfg, resume=bool(args.resume), run_dir=run_dir, overwrite=args.overwrite)
    except OSError as exc:
        if exc.filename is not None or isinstance(exc, PrefoptError):
            raise
        raise output_error(exc, run_dir) from exc  # e.g. a full disk: name the run being written
    from prefopt.dist import current
    if not current().is_main:  # under torchrun, rank 0 reports
        return 0
    print(f"run: {out.run_dir}  steps: {out.result.steps}  final checkpoint: {out.result.final_checkpoint}")
    for k, v in sorted(out.result.eval_metrics.items()):
        print(f"  eval/{k}: {v:.4f}")
    return 0


def cmd_demo(args) -> int:
    from prefopt.cli.check import check_writable
    from prefopt.cli.config import load_config
    from prefopt.cli.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, None, args.overrides)
    check_writable("--out" if args.out else "output_dir", args.out or cfg.output_dir)
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
    from prefopt.cli.check import check_writable
    from prefopt.cli.config import load_config
    from prefopt.cli.run import task_tokenizer
    from prefopt.data.loaders import write_jsonl
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model, load_tokenizer
    from prefopt.models.tiny import is_tiny
    from prefopt.tasks import get_task
    from prefopt.tasks.prefdata import PrefDataConfig, make_preference_data

    cfg = load_config(PrefDataConfig, None, args.overrides)
    check_writable("--out", Path(args.out).parent)
    task = get_task(args.task)
    tokenizer = task_tokenizer(args.task, {}) if is_tiny(args.model) else load_tokenizer(args.model)
    model = load_model(ModelConfig(name_or_path=args.model), tokenizer)
    rows, stats = make_preference_data(model, tokenizer, task, cfg)
    write_jsonl(args.out, rows)
    print(f"wrote {stats.pairs} pairs to {args.out} ({stats.flipped} flipped, "
          f"{stats.identical_skipped} identical pairs skipped, {stats.agree_with_gold:.1%} agree with gold)")
    return 0


def cmd_compare(args) -> int:
    from prefopt.cli.check import check_writable
    from prefopt.cli.compare import CompareConfig, run_compare
    from prefopt.cli.config import load_config

    cfg = load_config(CompareConfig, None, args.overrides)
    check_writable("--out" if args.out else "output_dir", args.out or cfg.output_dir)
    summary = run_compare(cfg, Path(args.out) if args.out else None)
    print(_compare_text(summary))
    return 0


def _compare_text(summary: dict) -> str:
    from prefopt.cli.compare import markdown_table
    return markdown_table(summary) + f"\nwall time {summary['seconds']['total']} s"


def cmd_front(args) -> int:
    from prefopt.cli.config import load_config
    from prefopt.cli.front import FrontConfig, run_front

    run_front(load_config(FrontConfig, args.config, args.overrides), Path(args.out) if args.out else None)
    return 0


def _interrupted_message(exc: KeyboardInterrupt) -> str:
    checkpoint = getattr(exc, "checkpoint", None)
    if checkpoint is not None:
        return (f"interrupted ({exc}): {checkpoint} holds the last completed step; continue with "
                f"`prefopt train --resume {exc.run_dir}`")
    if getattr(exc, "run_dir", None) is not None:
        return f"interrupted ({exc}) before the first step completed: nothing was saved"
    return "interrupted during start-up: nothing was saved"


def cmd_report(args) -> int:
    import dataclasses

    from prefopt.report.build import ReportConfig, build_report

    cfg = ReportConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ReportConfig)})
    print(f"report: {build_report(args.run_dirs, cfg)}")
    return 0


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "tasks": cmd_tasks, "compare": cmd_compare, "report": cmd_report,
            "front": cmd_front}


def main(argv: list[str] | None = None) -> int:
    from prefopt.errors import PrefoptError

    parser = _parser()
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv), parser)
    args = parser.parse_args(rest)
    if overrides and not hasattr(args, "overrides"):
        parser.error(f"'{args.command}' takes no key=value overrides: {' '.join(overrides)}")
    if overrides:
        args.overrides = list(args.overrides or []) + overrides
    handler = cmd_data_make if args.command == "data" else COMMANDS[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt as exc:
        print(_interrupted_message(exc), file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)
    except (PrefoptError, OSError) as exc:  # OSError: e.g. a full disk under a path the OS names
        if args.debug:
            traceback.print_exc()
        print(f"error: {_where()}{_one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        from prefopt.dist import shutdown
        shutdown()  # leave a torchrun process group, if one was joined


def _where() -> str:
    from prefopt.dist import current
    rt = current()
    return f"rank {rt.rank}: " if rt.distributed else ""


def _one_line(exc: Exception) -> str:
    from prefopt.errors import PrefoptError

    if isinstance(exc, OSError) and not isinstance(exc, PrefoptError):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror or exc}"
    return " ".join(str(exc).split("\n"))


if __name__ == "__main__":
    sys.exit(main())
