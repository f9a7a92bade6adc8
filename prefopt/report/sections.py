"""The sections of a report, each ``(id, heading, body HTML)`` built from loaded runs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations

from prefopt.report import plots
from prefopt.report.data import EVAL_PREFIX, Run, Source, families, final_value, ordered_keys
from prefopt.report.environment import environment_info
from prefopt.report.html import Figures, details, esc, number, paragraph, pre, slug, table_html

KL_KEY = re.compile(r"(^|/)kl(_|$)")
REWARD_KEYS = ("gold_reward", "reward")
MAX_REWARD_PANELS = 4
MAX_FRONT_OBJECTIVES = 3


@dataclass
class Context:
    sources: list[Source]
    runs: list[Run]
    colors: dict[str, str]
    figures: Figures
    max_samples: int = 8


def swatch(ctx: Context, name: str) -> str:
    return f"<span class='swatch' style='background:{_hex(ctx.colors[name])}'></span>{esc(name)}"


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb[:3])


def _transposed(ctx: Context, rows: list[tuple[str, dict[str, object]]]) -> str:
    """A table with one row per metric and one column per run (coloured headers)."""
    head = "<th class='text'>metric</th>" + "".join(f"<th>{swatch(ctx, r.name)}</th>" for r in ctx.runs)
    body = "".join(f"<tr><td class='text'>{esc(label)}</td>"
                   + "".join(f"<td>{number(values.get(r.name))}</td>" for r in ctx.runs) + "</tr>"
                   for label, values in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cfg(run: Run, dotted: str):
    node = run.config or {}
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# --------------------------------------------------------------------------- runs and final metrics

def runs_section(ctx: Context):
    rows = []
    for run in ctx.runs:
        time_s = sum(v for _, v in run.train.get("time/step_s", []) if v == v)
        rows.append(f"<tr><td class='text'>{swatch(ctx, run.name)}</td><td class='text'>{esc(run.path)}</td>"
                    f"<td class='text'>{esc(_cfg(run, 'algo.name') or '')}</td>"
                    f"<td class='text'>{esc(_cfg(run, 'model.name_or_path') or '')}</td>"
                    f"<td>{run.last_step}</td><td>{number(round(time_s, 1) if time_s else None)}</td></tr>")
    head = "".join(f"<th class='text'>{h}</th>" for h in ("run", "path", "algorithm", "model")) + \
        "<th>last step</th><th>train time (s)</th>"
    runs = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    final = [(k, {r.name: final_value(r.train.get(k, [])) for r in ctx.runs}) for k in ordered_keys(ctx.runs, "train")]
    final += [(EVAL_PREFIX + k, {r.name: final_value(r.evals.get(k, [])) for r in ctx.runs})
              for k in ordered_keys(ctx.runs, "evals")]
    body = runs + "<h3>Final metrics (last logged step of each run)</h3>" + (
        _transposed(ctx, final) if final else paragraph("no metrics logged", "meta"))
    return "runs", "Runs and final metrics", body


def summary_section(ctx: Context):
    parts = []
    for src in ctx.sources:
        if src.summary:
            rows = [{"key": k, "value": v} for k, v in flatten(src.summary).items()]
            parts.append(f"<h3>{esc(src.path)}/summary.json</h3>" + table_html(rows))
    return ("summary", "Summary", "".join(parts)) if parts else None


def flatten(data, prefix: str = "", max_list: int = 8) -> dict:
    out = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + ".", max_list))
        elif isinstance(v, list):
            shown = ", ".join(str(x) for x in v[:max_list]) + (f", … ({len(v)} items)" if len(v) > max_list else "")
            out[key] = f"[{shown}]"
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------- curves

def curves_section(ctx: Context, attr: str, sid: str, heading: str, merged: str, key_prefix: str = ""):
    keys = ordered_keys(ctx.runs, attr)
    if not keys:
        return sid, heading, paragraph(f"none of these runs logged {key_prefix or 'training'} metrics", "meta")
    parts = []
    for fam, fam_keys in families(keys, merged).items():
        series = {r.name: getattr(r, attr) for r in ctx.runs}
        fig = plots.family_figure(fam_keys, series, ctx.colors, markers=attr == "evals")
        label = ", ".join(key_prefix + k for k in fam_keys) if fam == merged else f"{key_prefix}{fam}/*"
        parts.append(f"<h3>{esc(label)}</h3>" + ctx.figures.img(fig, f"{sid}-{fam}", f"{label} over steps"))
    return sid, heading, "".join(parts)


def training_section(ctx: Context):
    return curves_section(ctx, "train", "training-curves", "Training curves", "main")


def evaluation_section(ctx: Context):
    return curves_section(ctx, "evals", "evaluation", "Evaluation over steps", "eval", EVAL_PREFIX)


# --------------------------------------------------------------------------- trade-offs

def _points(run: Run, x_key: str, y_key: str) -> list[tuple[float, float, int]]:
    ys = dict(run.evals.get(y_key, []))
    return [(x, ys[step], step) for step, x in run.evals.get(x_key, []) if step in ys]


def reward_keys(runs: list[Run]) -> list[str]:
    """Reward-like eval keys: the named rewards, then gold objectives that are not copies of them."""
    keys = ordered_keys(runs, "evals")
    chosen = [k for k in REWARD_KEYS if k in keys]
    for k in keys:
        if k.startswith("gold/") and "pass@" not in k and not any(
                all(r.evals.get(k) == r.evals.get(c) for r in runs) for c in chosen):
            chosen.append(k)
    return chosen[:MAX_REWARD_PANELS]


def reward_kl_section(ctx: Context):
    sid, heading = "reward-vs-kl", "Reward vs KL"
    keys = ordered_keys(ctx.runs, "evals")
    kl_keys = [k for k in keys if KL_KEY.search(k) and not k.startswith("greedy/")]
    rewards = reward_keys(ctx.runs)
    if not kl_keys or not rewards:
        return sid, heading, paragraph("needs eval/ records with a KL (e.g. eval/kl_to_ref) and a reward "
                                       "(eval/reward, eval/gold_reward or eval/gold/*)", "meta")
    panels = []
    for y in rewards:
        curves = {}
        for run in ctx.runs:
            kl = next((k for k in kl_keys if k in run.evals), None)
            if kl:
                curves[run.name] = _points(run, kl, y)
        if any(curves.values()):
            panels.append({"xlabel": EVAL_PREFIX + " or ".join(kl_keys) + " (nats per sequence)", "ylabel": EVAL_PREFIX + y, "curves": curves,
                           "maximize": (False, True)})
    if not panels:
        return sid, heading, paragraph("no evaluation logged a KL and a reward at the same step", "meta")
    note = paragraph("Each point is one evaluation, labelled by its training step (not joined in step "
                     "order). Ringed points joined by the dashed line are the front over all runs: no other "
                     "evaluation has both less KL and more reward.", "meta")
    return sid, heading, note + ctx.figures.img(plots.tradeoff_grid(panels, ctx.colors), sid, "reward vs KL")


def front_section(ctx: Context):
    objectives = [k for k in ordered_keys(ctx.runs, "evals")
                  if k.startswith("gold/") and "pass@" not in k][:MAX_FRONT_OBJECTIVES]
    if len(objectives) < 2:
        return None
    panels = [{"xlabel": EVAL_PREFIX + a, "ylabel": EVAL_PREFIX + b, "maximize": (True, True),
               "curves": {r.name: _points(r, a, b) for r in ctx.runs}} for a, b in combinations(objectives, 2)]
    note = paragraph("Two gold objectives at every evaluation (higher is better for both), labelled by "
                     "step; ringed points are non-dominated over all runs.", "meta")
    return ("front", "Objective front", note
            + ctx.figures.img(plots.tradeoff_grid(panels, ctx.colors), "front", "front of gold objectives"))


# --------------------------------------------------------------------------- samples

def samples_section(ctx: Context):
    parts = []
    for src in ctx.sources:
        if src.samples:
            parts.append(f"<h3>{esc(src.path)}/samples.jsonl</h3>" + _samples_body(ctx, src))
    return ("samples", "Samples before / after", "".join(parts)) if parts else None


def _samples_body(ctx: Context, src: Source) -> str:
    policies = list(dict.fromkeys(r["policy"] for r in src.samples))
    objectives = list(dict.fromkeys(k for r in src.samples for k in r["scores"]))
    scores = {o: {p: [r["scores"][o] for r in src.samples if r["policy"] == p and o in r["scores"]]
                  for p in policies} for o in objectives}
    colors = _policy_colors(ctx, policies)
    means = [{"policy": p, "samples": sum(r["policy"] == p for r in src.samples),
              **{o: _mean(scores[o][p]) for o in objectives}} for p in policies]
    body = table_html(means)
    if objectives:
        body += ctx.figures.img(plots.score_histograms(scores, colors), f"samples-{slug(src.path.name)}",
                                "score histograms per policy")
    groups: dict[tuple, dict] = {}
    for r in src.samples:
        groups.setdefault((r.get("prompt", ""), r.get("index", 0)), {})[r["policy"]] = r
    first = objectives[0] if objectives else None
    rows = []
    for (prompt, _), by_policy in list(groups.items())[: ctx.max_samples]:
        row = {"prompt": prompt}
        for p in policies:
            r = by_policy.get(p)
            row[p] = r["response"] if r else None
            if first:
                row[f"{p} {first}"] = r["scores"].get(first) if r else None
        rows.append(row)
    return body + f"<h3>First {len(rows)} of {len(groups)} prompts</h3>" + table_html(rows)


def _policy_colors(ctx: Context, policies: list[str]) -> dict[str, str]:
    """A policy named like a run (``DPO`` and run ``dpo``) takes the run's colour."""
    by_name = {r.name.lower(): ctx.colors[r.name] for r in ctx.runs}
    spare = iter(c for c in plots.run_colors([f"x{i}" for i in range(len(ctx.runs) + len(policies))]).values()
                 if c not in by_name.values())
    return {p: by_name.get(p.lower()) or next(spare, "#777777") for p in policies}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------- data, notes, config, env

def data_section(ctx: Context):
    keys = ordered_keys(ctx.runs, "static")
    if not keys:
        return None
    return "data", "Data statistics (step 0)", _transposed(ctx, [(k, {r.name: r.static.get(k) for r in ctx.runs})
                                                                 for k in keys])


def notes_section(ctx: Context):
    items = [f"<li><b>{esc(r.name)}</b>: {esc(n)}</li>" for r in ctx.runs for n in r.notes]
    return ("notes", "Notes", f"<ul class='note'>{''.join(items)}</ul>") if items else None


def config_section(ctx: Context):
    with_cfg = [r for r in ctx.runs if r.config_text is not None]
    if not with_cfg:
        return "config", "Config", paragraph("no config.yaml in these runs", "meta")
    body = ""
    if len(with_cfg) > 1:
        flat = {r.name: flatten(r.config or {}, max_list=1000) for r in with_cfg}
        keys = list(dict.fromkeys(k for f in flat.values() for k in f))
        differing = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1]
        rows = [{"key": k, **{r.name: _text(flat[r.name].get(k)) for r in with_cfg}} for k in differing]
        body += "<h3>Keys that differ between runs</h3>" + (
            table_html(rows) if rows else paragraph("none: every run has the same config", "meta"))
    for r in with_cfg:
        body += details(f"{r.name}: {r.path / 'config.yaml'}", pre(r.config_text), open_=len(with_cfg) == 1)
    return "config", "Config", body


def _text(value) -> str | None:
    return None if value is None else str(value)


def environment_section(ctx: Context):
    recorded = [r for r in ctx.runs if r.environment]
    body = ""
    if recorded:
        keys = list(dict.fromkeys(k for r in recorded for k in r.environment))
        rows = [{"key": k, **{r.name: _text(r.environment.get(k)) for r in recorded}} for k in keys]
        body += paragraph("Recorded by each run (environment.json).", "meta") + table_html(rows)
    missing = [r.name for r in ctx.runs if not r.environment]
    if missing:
        here = environment_info()
        body += paragraph(f"Not recorded by {', '.join(missing)}; the machine this report was made on:", "meta")
        body += table_html([{"key": k, "value": _text(v)} for k, v in here.items()])
    return "environment", "Environment", body


SECTIONS = (runs_section, summary_section, training_section, evaluation_section, reward_kl_section,
            front_section, samples_section, data_section, notes_section, config_section, environment_section)


def build_sections(ctx: Context) -> list[tuple[str, str, str]]:
    return [s for s in (fn(ctx) for fn in SECTIONS) if s is not None]
