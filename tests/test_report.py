"""``prefopt report``: reading run folders, the page's structure without a browser, and (when
Chromium is installed) what a real browser renders."""
import json
import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from prefopt.cli.main import main
from prefopt.report.build import ReportConfig, build_report
from prefopt.report.data import families, load_sources, read_records, split_records, Run, to_number
from prefopt.report.front import non_dominated

ROOT = Path(__file__).resolve().parents[1]


def _write_run(path: Path, *, steps: int, loss0: float, evals: dict[int, dict], extra: list[dict] = (),
               algo: str = "dpo", lr: float = 1e-3) -> Path:
    path.mkdir(parents=True)
    rows = [{"step": 0, "data/train_pairs": 40, "data/truncated": 0}]
    for s in range(1, steps + 1):
        rows.append({"step": s, "loss": loss0 / s, "lr": lr, "grad_norm": 1.0 + s, "rewards/margin": 0.1 * s,
                     "rewards/accuracy": 0.5, "memory/peak_rss_mib": 400.0 + s, "kl": 0.01 * s, "kl_coef": 0.1,
                     "time/step_s": 0.5})
        if s in evals:
            rows.append({"step": s, **{f"eval/{k}": v for k, v in evals[s].items()}})
    rows += list(extra)
    with (path / "metrics.jsonl").open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    (path / "config.yaml").write_text(f"model: {{name_or_path: 'tiny:llama-1m'}}\nalgo: {{name: {algo}, beta: 0.1}}\n"
                                      f"optim: {{name: adamw, lr: {lr}}}\n")
    (path / "environment.json").write_text(json.dumps({"python": "3.11.7", "torch": "2.13.0", "torch_threads": 1}))
    return path


def _evals(points: list[tuple[int, float, float, float]]) -> dict[int, dict]:
    return {s: {"kl_to_ref": kl, "gold/positivity": pos, "gold/brevity": brev} for s, kl, pos, brev in points}


@pytest.fixture
def runs(tmp_path):
    """Two runs of a group (like the demo's folder) and a lone run, with a NaN, an infinity and
    a corrupt line among the records."""
    group = tmp_path / "exp"
    a = _write_run(group / "alpha", steps=6, loss0=0.7, evals=_evals([(2, 0.5, 0.2, 0.6), (4, 2.0, 0.6, 0.5),
                                                                      (6, 1.0, 0.5, 0.55)]))
    with (a / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 7, "loss": "nan", "grad_norm": "inf", "lr": 0.001}\n{"step": 8, "loss": 0.3')  # torn line
    _write_run(group / "beta", steps=4, loss0=0.9, lr=5e-4, evals=_evals([(4, 1.5, 0.7, 0.4)]),
               extra=[{"step": 4, "stopped_early": "every sample scored the same"}])
    (group / "summary.json").write_text(json.dumps({"dpo": {"gold_reward": 0.6, "kl_to_sft": float("nan")},
                                                    "seconds": 12.5}))
    samples = [{"policy": pol, "prompt": f"review of the item {i}:", "index": 0, "response": f"{pol} says <b>{i}</b>",
                "scores": {"positivity": base + 0.1 * i, "brevity": 0.5}}
               for pol, base in (("SFT", 0.1), ("DPO", 0.5)) for i in range(5)]
    (group / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    lone = _write_run(tmp_path / "gamma", steps=3, loss0=1.2, evals={}, algo="sft")
    return group, lone


class _Page(HTMLParser):
    """Collects section ids, image sources, link targets and the visible text of a page."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.links, self.text, self.scripts = [], [], [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.images.append(a["src"])
        elif tag in ("a", "link"):
            self.links.append(a.get("href", ""))
        elif tag == "script":
            self.scripts += 1

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.body = " ".join(page.text)
    return page


# --------------------------------------------------------------------------- reading


def test_non_finite_strings_are_read_back_as_floats_and_other_strings_kept():
    assert math.isnan(to_number("nan")) and to_number("inf") == math.inf and to_number("-inf") == -math.inf
    assert to_number("NaN") != to_number("NaN")  # a float NaN, not the string that equals itself
    assert to_number("every sample scored the same") == "every sample scored the same"
    assert to_number(3) == 3 and to_number(True) == 1.0


def test_records_split_into_train_eval_static_with_repeats_and_torn_lines_noted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "data/pairs": 10}\n{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'
                    '{"step": 2, "eval/gold/x": 0.3}\n{"step": 2, "loss": 0.45}\n{"step": 3, "loss": "nan"}\n'
                    '{"step": 4, "lo\n')
    records, bad = read_records(path)
    assert bad == 1
    run = Run("r", tmp_path)
    split_records(run, records)
    assert run.static == {"data/pairs": 10.0}
    assert run.train["loss"][:2] == [(1, 0.5), (2, 0.45)]  # step 2 logged twice (a resume): the last one wins
    assert math.isnan(run.train["loss"][2][1])
    assert run.evals == {"gold/x": [(2, 0.3)]}
    assert any("1 steps logged more than once" in n and ": 2" in n for n in run.notes)
    assert any(n.startswith("loss: 1 non-finite value") for n in run.notes)


def test_metric_families_group_by_prefix_and_merge_single_keys():
    keys = ["loss", "lr", "grad_norm", "rewards/margin", "rewards/accuracy", "kl", "kl_coef", "memory/peak_rss_mib",
            "memory/optimizer_state_bytes", "tokens/s"]
    assert families(keys) == {"main": ["loss", "lr", "grad_norm", "tokens/s"], "kl": ["kl", "kl_coef"],
                              "memory": ["memory/optimizer_state_bytes", "memory/peak_rss_mib"],
                              "rewards": ["rewards/accuracy", "rewards/margin"]}


def test_non_dominated_points_by_hand():
    # maximize both: (3, 1) and (1, 3) and (2, 2.5) are the front; (1, 1) and (2, 2) are dominated
    pts = [(1, 1), (3, 1), (1, 3), (2, 2), (2, 2.5)]
    assert non_dominated(pts) == [2, 4, 1]  # sorted by x: (1, 3), (2, 2.5), (3, 1)
    # reward vs KL: least KL, most reward -> (0, .1), (1, .4), (2, .5); (3, .45) is dominated by (2, .5)
    kl = [(0, 0.1), (2, 0.5), (1, 0.4), (3, 0.45)]
    assert non_dominated(kl, maximize=(False, True)) == [0, 2, 1]
    assert non_dominated([(1, 1), (1, 1)]) == [0, 1]  # equal points both stay


def test_run_names_are_unique_across_sources(runs):
    group, lone = runs
    assert [r.name for s in load_sources([group]) for r in s.runs] == ["alpha", "beta"]
    names = [r.name for s in load_sources([group, lone]) for r in s.runs]
    assert names == ["exp/alpha", "exp/beta", "gamma"]


# --------------------------------------------------------------------------- the page


def test_report_sections_images_names_and_non_finite_values(runs, tmp_path):
    group, lone = runs
    out = tmp_path / "report"
    page_path = build_report([group, lone], ReportConfig(out=str(out), title="two sources"))
    assert page_path == out / "report.html"
    page = _parse(page_path)
    assert page.sections == ["runs", "summary", "training-curves", "evaluation", "reward-vs-kl", "front", "samples",
                             "data", "notes", "config", "environment"]
    assert page.images and all((out / src).is_file() and (out / src).stat().st_size > 1000 for src in page.images)
    assert {p.name for p in (out / "report_files").iterdir()} == {Path(s).name for s in page.images}
    assert page.scripts == 0 and not [h for h in page.links if not h.startswith("#")]  # nothing from a network
    for name in ("exp/alpha", "exp/beta", "gamma"):
        assert name in page.body
    html = page_path.read_text()
    # step 7's NaN loss and infinite gradient norm are the final values of alpha: marked, not blank
    assert "<span class='nonfinite' title='not a number'>NaN</span>" in html and "+∞" in html
    assert "1 unreadable line in metrics.jsonl skipped" in page.body
    assert "stopped_early = every sample scored the same" in page.body
    assert "&lt;b&gt;" in html and "<b>0</b>" not in html  # sample text is escaped
    assert "optim.lr" in page.body  # config keys that differ between the runs
    assert "torch_threads" in page.body


def test_reward_vs_kl_is_points_with_the_front_in_kl_order_not_a_step_line():
    from prefopt.report.plots import reward_vs_kl

    points = [(0.0, 0.1, 0), (2.0, 0.5, 10), (1.0, 0.4, 20), (3.0, 0.45, 30)]
    fig = reward_vs_kl({"run": points})
    ax = fig.axes[0]
    assert [list(line.get_xdata()) for line in ax.lines] == [[0.0, 1.0, 2.0]]  # only the front, by KL
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["0", "10", "20", "30"]


def test_single_run_report_goes_beside_it_and_inline_is_one_file(runs, tmp_path):
    _, lone = runs
    page_path = build_report([lone])
    assert page_path == lone / "report.html" and (lone / "report_files").is_dir()
    page = _parse(page_path)
    assert "reward-vs-kl" in page.sections and "front" not in page.sections and "samples" not in page.sections
    assert "none of these runs logged eval/ metrics" in page.body  # said, not an empty plot
    assert "needs eval/ records with a KL" in page.body
    out = tmp_path / "inline"
    page = _parse(build_report([lone], ReportConfig(out=str(out), inline=True)))
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert not (out / "report_files").exists()


def test_report_command_and_its_one_line_errors(runs, tmp_path, capsys):
    group, _ = runs
    assert main(["report", str(group), "--out", str(tmp_path / "r"), "--max-samples", "2"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'r' / 'report.html'}"
    assert "First 2 of 5 prompts" in (tmp_path / "r" / "report.html").read_text()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: not a directory " \
                                              "(expected a run directory with metrics.jsonl)"
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no metrics.jsonl here or in its sub-folders" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real browser

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_headless_chromium_renders_the_report_with_its_figures(runs, tmp_path):
    from PIL import Image

    group, _ = runs
    page_path = build_report([group], ReportConfig(out=str(tmp_path / "r")))
    shot = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), str(page_path),
                           "--out", str(shot), "--full"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        width, height = rgb.size
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert width == 1280 and height > 3000  # the whole page: tables and every figure laid out
    # matplotlib's tab10 blue and orange (the two runs) are on screen, i.e. the PNGs loaded
    present = {c for _, c in colours}
    assert (31, 119, 180) in present and (255, 127, 14) in present
