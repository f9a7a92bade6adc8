"""Self-contained HTML reports: matplotlib figures embedded as PNG, plus summary tables."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path


def figure_png(fig) -> str:
    """A matplotlib figure as a base64 PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def table_html(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}img{max-width:100%}h2{border-bottom:1px solid #ddd;padding-bottom:4px}
pre{background:#f7f7f7;padding:8px;overflow-x:auto}"""


def write_report(path: Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write ``sections`` (heading, HTML body) as one HTML page; returns the path."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("</body></html>")
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path


def img(uri: str) -> str:
    return f"<img src='{uri}'/>"
