"""Human- and DVC-readable views of `metrics/eval.json`: plot CSVs and one self-contained HTML report.

The HTML has inline CSS and inline SVG bar charts only (no scripts, no external files), so it can be
mailed or attached to an MLflow run as it is.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from components.config import TASKS
from components.evaluation.report_scoreboard import scoreboard_sections
from components.evaluation.scoring import LOWER_IS_BETTER, headline_metric

SERIES_COLOURS = {"unirec": "#2563eb", "unirec_unseen": "#93c5fd", "pop": "#9ca3af", "sasrec": "#f59e0b",
                  "mf": "#10b981", "ctr_expert": "#8b5cf6"}
CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#111;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px;margin:4px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0 14px}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}.best{font-weight:700}
.grid{display:flex;flex-wrap:wrap;gap:18px}.card{border:1px solid #e5e5e5;border-radius:6px;padding:8px}
.muted{color:#666;font-size:12px}code{background:#f3f3f3;padding:0 3px}"""


def series(payload: dict[str, Any], task: str) -> dict[str, dict[str, float]]:
    """`{series: metrics}` of one task: unirec (seen templates), unirec_unseen, then each expert."""
    out = {"unirec": payload["model"].get(task, {}), "unirec_unseen": payload["unseen"].get(task, {})}
    out.update({name: per[task] for name, per in payload["baselines"].items() if task in per})
    return {k: v for k, v in out.items() if v}


def _tasks(payload: dict[str, Any]) -> list[str]:
    return [t for t in TASKS if t in payload["model"] or t in payload["unseen"]]


def _write_csv(path: Path, header: list[str], rows: Iterable[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_plots(payload: dict[str, Any], plots_dir: Path, top_k: int) -> dict[str, Path]:
    """comparison.csv (task,metric,model,value), headline.csv (label,task,model,metric,value) and
    sensitivity.csv (task,template_id,kind,metric,value) under `plots_dir`."""
    comparison, headline = [], []
    for task in _tasks(payload):
        metric = headline_metric(task, top_k)
        for name, metrics in series(payload, task).items():
            comparison += [[task, m, name, v] for m, v in metrics.items()]
            if metric in metrics:
                headline.append([f"{task}: {name}", task, name, metric, metrics[metric]])
    sensitivity = [[task, tid, rec["kind"], table["metric"], rec["value"]]
                   for task, table in payload["prompt_sensitivity"].items() for tid, rec in table["templates"].items()]
    return {"comparison": _write_csv(plots_dir / "comparison.csv", ["task", "metric", "model", "value"], comparison),
            "headline": _write_csv(plots_dir / "headline.csv", ["label", "task", "model", "metric", "value"], headline),
            "sensitivity": _write_csv(plots_dir / "sensitivity.csv", ["task", "template_id", "kind", "metric", "value"],
                                      sensitivity)}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def bar_chart(title: str, bars: dict[str, float], lower_is_better: bool) -> str:
    """Inline SVG horizontal bar chart of `bars` (label -> value >= 0)."""
    width, label_w, bar_h, gap = 380, 110, 16, 6
    top = max([abs(v) for v in bars.values()] + [1e-12])
    height = 22 + len(bars) * (bar_h + gap)
    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}"><text x="0" y="14" font-size="12" font-weight="600">'
             f'{html.escape(title)}{" (lower is better)" if lower_is_better else ""}</text>']
    for i, (name, value) in enumerate(bars.items()):
        y = 22 + i * (bar_h + gap)
        w = max(1.0, (width - label_w - 60) * abs(value) / top)
        colour = SERIES_COLOURS.get(name, "#64748b")
        parts.append(f'<text x="0" y="{y + 12}" font-size="11">{html.escape(name)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="11">{value:.4f}</text>')
    return "".join(parts) + "</svg>"


def _task_table(task: str, per_series: dict[str, dict[str, float]]) -> str:
    names = list(per_series)
    metrics = list(dict.fromkeys(m for s in per_series.values() for m in s))
    rows = []
    for m in metrics:
        values = {n: per_series[n][m] for n in names if m in per_series[n]}
        pick = min if m.split("/")[-1] in LOWER_IS_BETTER else max
        best = pick(values.values()) if values else None
        cells = "".join(f'<td class="best">{_fmt(values[n])}</td>' if n in values and values[n] == best
                        else f"<td>{_fmt(values[n]) if n in values else '–'}</td>" for n in names)
        rows.append(f"<tr><td>{html.escape(m)}</td>{cells}</tr>")
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    return f"<h3>{html.escape(task)}</h3><table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _sensitivity_table(payload: dict[str, Any]) -> str:
    tables = payload["prompt_sensitivity"]
    columns = sorted({tid.split("/")[-1] for t in tables.values() for tid in t["templates"]},
                     key=lambda c: (not c.startswith("seen"), c))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for task, t in tables.items():
        by_col = {tid.split("/")[-1]: rec["value"] for tid, rec in t["templates"].items()}
        cells = "".join(f"<td>{_fmt(by_col[c]) if c in by_col else '–'}</td>" for c in columns)
        stats = "".join(f"<td>{_fmt(t[s]) if s in t else '–'}</td>" for s in ("mean", "std", "min", "max"))
        rows.append(f"<tr><td>{html.escape(task)}</td><td>{html.escape(t['metric'])}</td>{cells}{stats}</tr>")
    return (f"<table><tr><th>task</th><th>metric</th>{head}<th>mean</th><th>std</th><th>min</th><th>max</th></tr>"
            f"{''.join(rows)}</table>")


def _meta_section(meta: dict[str, Any]) -> str:
    wall = meta.get("wall_seconds", {})
    rows = []
    for task, users in meta.get("users", {}).items():
        r = meta.get("rows", {}).get(task, {})
        rows.append(f"<tr><td>{html.escape(task)}</td><td>{users['evaluated']}</td><td>{users['eligible']}</td>"
                    f"<td>{r.get('seen', 0)}</td><td>{r.get('unseen', 0)}</td><td>{r.get('baseline', 0)}</td>"
                    f"<td>{_fmt(wall.get('model', {}).get(task, 0.0))}</td></tr>")
    conventions = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
                          for k, v in meta.get("conventions", {}).items())
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in wall.items() if isinstance(v, float))
    inference = ", ".join(f"{k} {v}" for k, v in meta.get("inference", {}).items())
    return ("<table><tr><th>task</th><th>users</th><th>eligible users</th><th>seen rows</th><th>unseen rows</th>"
            f"<th>expert rows</th><th>model s</th></tr>{''.join(rows)}</table>"
            f"<p class=\"muted\">Wall time: {html.escape(timing)}. Inference: {html.escape(inference)}.</p>"
            f"<ul>{conventions}</ul>")


def render_html(payload: dict[str, Any], top_k: int, curves: dict[str, Any] | None = None) -> str:
    """The whole report as one HTML string (inline CSS + SVG, nothing external); `curves`: the experts' training
    record (`baselines.metrics_file`) for their validation curves."""
    meta = payload["meta"]
    charts, tables = [], []
    for task in _tasks(payload):
        metric = headline_metric(task, top_k)
        per = series(payload, task)
        bars = {n: m[metric] for n, m in per.items() if metric in m}
        charts.append(f'<div class="card">{bar_chart(f"{task} — {metric}", bars, metric in LOWER_IS_BETTER)}</div>')
        tables.append(_task_table(task, per))
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>unirec evaluation — "
            f"{html.escape(payload['dataset'])}</title><style>{CSS}</style></head><body>"
            f"<h1>unirec evaluation — {html.escape(payload['dataset'])} ({html.escape(meta['split'])} split)</h1>"
            f"<p class=\"muted\">unirec = universal model pooled over the seen prompt templates; unirec_unseen = "
            f"pooled over the held-out templates; pop, sasrec, mf, ctr_expert = expert baselines on the same users "
            f"and rows. {html.escape(meta['conventions'].get('ranking', ''))}</p>"
            f"{scoreboard_sections(payload, top_k, curves)}"
            f"<h2>Headline metric per task</h2><div class=\"grid\">{''.join(charts)}</div>"
            f"<h2>Model vs baselines, every metric</h2>{''.join(tables)}"
            f"<h2>Prompt sensitivity (headline metric per template)</h2>{_sensitivity_table(payload)}"
            f"<h2>Users, rows, timings, conventions</h2>{_meta_section(meta)}</body></html>\n")
