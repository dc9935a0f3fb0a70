"""The gallery's static HTML page: title, colour legend, metrics table and one row per item (relative links only)."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

import numpy as np

from segpipe.gallery.pixels import LEGEND, PANELS

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; } table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.legend span.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #555;
  vertical-align: middle; margin: 0 0.3em 0 1em; }
img.tile { max-width: 720px; image-rendering: pixelated; }
.tag-worst { color: #b00; font-weight: bold; } .tag-sample { color: #555; }
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


def _metrics_html(metrics: dict[str, Any]) -> str:
    rows = [
        f"<tr><th>{html.escape(str(k))}</th><td class='num'>{html.escape(_fmt(v))}</td></tr>"
        for k, v in metrics.items()
        if not isinstance(v, (dict, list))
    ]
    rows += [  # short lists of numbers, such as tta_sizes, on one line (others, such as models, are not shown)
        f"<tr><th>{html.escape(str(k))}</th><td class='num'>{html.escape(', '.join(_fmt(x) for x in v))}</td></tr>"
        for k, v in metrics.items()
        if isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    ]
    per_class = metrics.get("iou")
    if isinstance(per_class, dict):
        dice = metrics.get("dice_per_class") or {}
        rows += [
            f"<tr><th>IoU / Dice: {html.escape(str(name))}</th>"
            f"<td class='num'>{html.escape(_fmt(iou))} / {html.escape(_fmt(dice.get(name)))}</td></tr>"
            for name, iou in per_class.items()
        ]
    return "<h2>Metrics</h2>\n<table class='metrics'>\n" + "\n".join(rows) + "\n</table>"


def _href(name: str) -> str:
    return html.escape(quote(name), quote=True)


def index_html(title: str, metrics: dict[str, Any] | None, records: list[dict[str, Any]], sheets: list[str]) -> str:
    esc = html.escape
    legend = "".join(
        f"<span class='swatch' style='background: rgb{rgb}'></span>{esc(name)}" for name, rgb in LEGEND
    )
    rows = "\n".join(
        f"<tr><td class='num'>{i + 1}</td><td>{esc(str(r['id']))}</td><td class='num'>{r['iou']:.4f}</td>"
        f"<td class='tag-{esc(r['tag'])}'>{esc(r['tag'])}</td>"
        f"<td><a href='{_href(r['tile'])}'><img class='tile' src='{_href(r['tile'])}' "
        f"alt='{esc(str(r['id']), quote=True)}'></a></td></tr>"
        for i, r in enumerate(records)
    )
    sheet_links = " ".join(f"<a href='{_href(s)}'>{esc(s)}</a>" for s in sheets) or "none"
    body = [
        f"<h1>{esc(title)}</h1>",
        f"<p class='legend'>Colours:{legend}</p>",
        f"<p>Panels: {esc(' | '.join(PANELS))} (prediction over input). Contact sheets: {sheet_links}</p>",
        _metrics_html(metrics) if metrics else "",
        f"<h2>Items ({len(records)})</h2>",
        "<table class='items'><tr><th>#</th><th>id</th><th>IoU</th><th>tag</th><th>images</th></tr>",
        rows if rows else "<tr><td colspan='5'>No items.</td></tr>",
        "</table>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(b for b in body if b)
        + "\n</body></html>\n"
    )

