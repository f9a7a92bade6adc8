"""Self-contained HTML: escaped tables and text, figures as PNG files beside the page or inlined.

Nothing is loaded from the network (no scripts, fonts or stylesheets from a CDN).
"""
from __future__ import annotations

import base64
import html
import io
import math
import re
from pathlib import Path

STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1180px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right;vertical-align:top}th{background:#f3f3f3}td.text,th.text{text-align:left}
td.text{max-width:32em;white-space:pre-wrap;word-break:break-word}
.nonfinite{color:#b00020;font-weight:600}.missing{color:#aaa}
img{max-width:100%;height:auto;display:block;margin:.4em 0}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:.82em;max-height:36em}
.meta{color:#666;font-size:.9em}.note{color:#8a5a00}details{margin:.4em 0}summary{cursor:pointer}
nav a{margin-right:.9em}.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;
margin-right:.35em;vertical-align:-.1em}"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def number(value) -> str:
    """A cell for a number: 4 significant digits; NaN and ±inf marked, never blank or a crash."""
    if value is None:
        return "<span class='missing'>–</span>"
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "<span class='nonfinite' title='not a number'>NaN</span>"
        if math.isinf(value):
            return f"<span class='nonfinite'>{'+' if value > 0 else '−'}∞</span>"
        return f"{value:.4g}"
    if isinstance(value, int):
        return str(value)
    return esc(value)


def _is_text(value) -> bool:
    return value is not None and not isinstance(value, (int, float))


def _cell(value, text: bool) -> str:
    if _is_text(value):
        return f"<td class='text'>{esc(value)}</td>"
    return f"<td class='text'>{number(value)}</td>" if text else f"<td>{number(value)}</td>"


def table_html(rows: list[dict], columns: list[str] | None = None) -> str:
    """A table of ``rows`` (dicts): number columns right-aligned, text columns left-aligned,
    missing cells dashed, NaN and infinities marked."""
    if not rows:
        return "<p class='meta'>(no rows)</p>"
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    text = {c: any(_is_text(r.get(c)) for r in rows) for c in columns}
    head = "".join(f"<th class='text'>{esc(c)}</th>" if text[c] else f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c), text[c]) for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def paragraph(text: str, cls: str = "") -> str:
    return f"<p class='{cls}'>{esc(text)}</p>" if cls else f"<p>{esc(text)}</p>"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


class Figures:
    """Turns matplotlib figures into ``<img>`` tags: PNG files written to ``files_dir`` and
    referenced as ``<src_prefix>/<name>.png`` (relative to the page), or, with ``inline``,
    base64 data URIs inside the page."""

    def __init__(self, files_dir: Path | None, src_prefix: str = "", inline: bool = False):
        self.files_dir, self.src_prefix, self.inline = files_dir, src_prefix, inline
        self.written: list[str] = []

    def img(self, fig, name: str, alt: str) -> str:
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)  # the figures are laid out tight already
        plt.close(fig)
        data = buf.getvalue()
        if self.inline or self.files_dir is None:
            src = "data:image/png;base64," + base64.b64encode(data).decode()
        else:
            filename = f"{slug(name)}.png"
            n = 2
            while filename in self.written:
                filename, n = f"{slug(name)}-{n}.png", n + 1
            self.files_dir.mkdir(parents=True, exist_ok=True)
            (self.files_dir / filename).write_bytes(data)
            self.written.append(filename)
            src = f"{self.src_prefix}/{filename}" if self.src_prefix else filename
        return f"<img src='{esc(src)}' alt='{esc(alt)}'/>"


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """One HTML page of ``sections`` (id, heading, body HTML), with a table of contents."""
    nav = "".join(f"<a href='#{esc(sid)}'>{esc(heading)}</a>" for sid, heading, _ in sections)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
             f"<h1>{esc(title)}</h1><p class='meta'>{esc(subtitle)}</p><nav>{nav}</nav>"]
    for sid, heading, body in sections:
        parts.append(f"<section id='{esc(sid)}'><h2>{esc(heading)}</h2>{body}</section>")
    parts.append("</body></html>")
    return "".join(parts)


def write_text_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
