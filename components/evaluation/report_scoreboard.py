"""The scoreboard sections of reports/eval.html (inline SVG and tables only, nothing external):

* per task, the model vs the best expert (chosen on validation) vs popularity, each difference with its 95 %
  paired-bootstrap interval and verdict, and an interval strip per difference (0 marked);
* one chart of every ablation: the change of the headline metric (ablated − full) relative to the full model, with
  its 95 % interval, per task and variant;
* the steering tests (eval.json `steering`): objective swap, query swap and paraphrased templates, one row per
  test with both sides, the difference, its 95 % interval and the criterion it is read against;
* seen vs unseen templates per task;
* the experts' validation curves from the `baselines` step's training record (`baselines.metrics_file`).
"""

from __future__ import annotations

import html
from typing import Any

from components.config import TASKS
from components.evaluation.scoring import LOWER_IS_BETTER, headline_metric

VARIANT_COLOURS = {"llm_off": "#2563eb", "history_off": "#f59e0b", "neighbours_off": "#10b981",
                   "id_modality_off": "#8b5cf6"}
POPULARITY = "pop"
VERDICT_STYLE = {"beats": "color:#047857;font-weight:600", "loses": "color:#b91c1c;font-weight:600", "ties": "color:#555"}


def _num(v: float) -> str:
    return f"{v:+.4f}" if v else "0"


def interval_strip(diff: float, lo: float, hi: float, width: int = 160, height: int = 16) -> str:
    """Inline SVG: a point at `diff` with its interval [lo, hi] on an axis symmetric around 0 (a tick at 0)."""
    span = max(abs(lo), abs(hi), abs(diff), 1e-12) * 1.1
    x = lambda v: width / 2 + (width / 2 - 4) * v / span  # noqa: E731
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="interval {lo:.4f} to {hi:.4f}">'
            f'<line x1="{width / 2}" y1="0" x2="{width / 2}" y2="{height}" stroke="#999" stroke-dasharray="2,2"/>'
            f'<line x1="{x(lo):.1f}" y1="{height / 2}" x2="{x(hi):.1f}" y2="{height / 2}" stroke="#111" stroke-width="2"/>'
            f'<circle cx="{x(diff):.1f}" cy="{height / 2}" r="3.5" fill="#2563eb"/></svg>')


def _cmp_cells(rec: dict[str, Any] | None) -> str:
    if not rec:
        return "<td>–</td><td>–</td><td>–</td>"
    lo, hi = rec["ci95"]
    style = VERDICT_STYLE.get(rec["verdict"], "")
    return (f"<td>{rec['expert']:.4f}</td><td>{_num(rec['diff'])} [{_num(lo)}, {_num(hi)}] "
            f"<span style=\"{style}\">{html.escape(rec['verdict'])}</span></td>"
            f"<td>{interval_strip(rec['diff'], lo, hi)}</td>")


def comparison_table(payload: dict[str, Any], top_k: int) -> str:
    """Per task: the model, the best expert (validation) and popularity, each diff with its interval and verdict."""
    comparisons, best = payload.get("comparisons", {}), payload.get("best_expert", {})
    rows = []
    for task in (t for t in TASKS if t in comparisons):
        per = comparisons[task]
        name = best.get(task)
        first = per.get(name) if name else None
        model = next(iter(per.values()))["model"]
        pop = per.get(POPULARITY) if name != POPULARITY else None
        rows.append(f"<tr><td>{html.escape(task)}</td><td>{html.escape(headline_metric(task, top_k))}</td>"
                    f"<td>{model:.4f}</td><td>{html.escape(name or '–')}</td>{_cmp_cells(first)}{_cmp_cells(pop)}"
                    f"<td>{next(iter(per.values()))['users']}</td></tr>")
    if not rows:
        return "<p class=\"muted\">No expert comparisons.</p>"
    return ("<table><tr><th>task</th><th>metric</th><th>unirec</th><th>best expert (validation)</th><th>expert</th>"
            "<th>diff [95 % CI]</th><th>interval</th><th>popularity</th><th>diff [95 % CI]</th><th>interval</th>"
            f"<th>users</th></tr>{''.join(rows)}</table>")


def ablation_chart(payload: dict[str, Any]) -> str:
    """One inline SVG: per (task, variant) the relative change (ablated − full) / full with its 95 % interval."""
    entries = [(task, variant, rec) for variant, per in payload.get("ablations", {}).items()
               for task, rec in per.items()]
    entries.sort(key=lambda e: (TASKS.index(e[0]) if e[0] in TASKS else 99, e[1]))
    if not entries:
        return "<p class=\"muted\">No ablations.</p>"
    rel = [(t, v, r, 100 * r["diff"] / r["full"] if r["full"] else 0.0,
            [100 * c / r["full"] if r["full"] else 0.0 for c in r["ci95"]]) for t, v, r in entries]
    span = max(max(abs(d), abs(lo), abs(hi)) for *_, d, (lo, hi) in rel) * 1.1 or 1.0
    label_w, plot_w, row_h = 260, 420, 16
    height = 30 + len(rel) * row_h
    x = lambda v: label_w + plot_w / 2 + (plot_w / 2 - 6) * v / span  # noqa: E731
    parts = [f'<svg width="{label_w + plot_w + 80}" height="{height}" role="img" aria-label="ablations">',
             f'<text x="0" y="12" font-size="12" font-weight="600">change of the headline metric when a part is '
             f'switched off, % of the full model (95 % interval; ↓ = lower is better)</text>',
             f'<line x1="{x(0):.1f}" y1="18" x2="{x(0):.1f}" y2="{height}" stroke="#999" stroke-dasharray="2,2"/>',
             f'<text x="{x(-span) :.1f}" y="{height - 2}" font-size="10">{-span:.1f} %</text>'
             f'<text x="{x(span) - 30:.1f}" y="{height - 2}" font-size="10">+{span:.1f} %</text>']
    for i, (task, variant, rec, d, (lo, hi)) in enumerate(rel):
        y = 24 + i * row_h
        colour = VARIANT_COLOURS.get(variant, "#64748b")
        arrow = " ↓" if rec["metric"] in LOWER_IS_BETTER else ""
        parts.append(f'<text x="0" y="{y + 10}" font-size="11">{html.escape(task)} {html.escape(rec["metric"])}{arrow}'
                     f' — {html.escape(variant)}</text>'
                     f'<line x1="{x(lo):.1f}" y1="{y + 6}" x2="{x(hi):.1f}" y2="{y + 6}" stroke="{colour}" stroke-width="2"/>'
                     f'<circle cx="{x(d):.1f}" cy="{y + 6}" r="3.5" fill="{colour}"/>'
                     f'<text x="{label_w + plot_w + 4}" y="{y + 10}" font-size="10">{d:+.1f} %</text>')
    return "".join(parts) + "</svg>"


def _steer_row(test: str, rec: dict[str, Any], a: str, b: str, criterion: str, holds: object) -> str:
    cut = f"{rec['pairs_cut']} / {rec['pairs']}" if "pairs" in rec else "–"
    if not rec.get("users"):
        return (f"<tr><td>{html.escape(test)}</td><td>{html.escape(rec.get('metric', ''))}</td>"
                f"<td>{rec.get('gate', float('nan')):g}</td><td>0</td><td colspan=\"5\">no user</td><td>{cut}</td>"
                "<td>–</td></tr>")
    lo, hi = rec["ci95"]
    mark, word = {True: (VERDICT_STYLE["beats"], "yes"), False: (VERDICT_STYLE["loses"], "no")}.get(
        holds, (VERDICT_STYLE["ties"], "–"))  # type: ignore[call-overload]
    return (f"<tr><td>{html.escape(test)}</td><td>{html.escape(rec['metric'])}</td><td>{rec['gate']:g}</td>"
            f"<td>{rec['users']}</td><td>{html.escape(a)} {rec[a]:.4f}</td><td>{html.escape(b)} {rec[b]:.4f}</td>"
            f"<td>{_num(rec['diff'])} [{_num(lo)}, {_num(hi)}]</td><td>{interval_strip(rec['diff'], lo, hi)}</td>"
            f"<td>{cut}</td><td>{html.escape(criterion)}</td><td><span style=\"{mark}\">{word}</span></td></tr>")


def steering_table(payload: dict[str, Any]) -> str:
    """One table of the steering tests: the two sides, diff = first − second with its 95 % paired interval, the
    criterion and whether it holds; a task at gate 0 cannot be steered by its prompt (diff 0)."""
    st = payload.get("steering")
    if not st:
        return "<p class=\"muted\">No steering tests (evaluate.steering.enabled is false).</p>"
    rows = []
    obj = st.get("objective_swap")
    if obj:
        rows.append(_steer_row("objective swap, liked targets", {**obj["liked"], "metric": obj["metric"],
                               "gate": obj["gate"]}, "like", "watch", "interval > 0", obj["liked"]["holds"]))
        rows.append(_steer_row("objective swap, not-liked targets", {**obj["not_liked"], "metric": obj["metric"],
                               "gate": obj["gate"]}, "watch", "like", "interval > 0", obj["not_liked"]["holds"]))
    if st.get("query_swap"):
        q = st["query_swap"]
        rows.append(_steer_row("query swap (genre-disjoint donor)", q, "true", "swapped", "interval > 0", q["holds"]))
    minimum = st.get("meta", {}).get("paraphrase_min_ratio", float("nan"))
    for task in (t for t in TASKS if t in st.get("paraphrase", {})):
        rec = st["paraphrase"][task]
        ratio = "–" if rec.get("ratio") is None else f"{rec['ratio']:.3f}"
        rows.append(_steer_row(f"paraphrase, {task}", rec, "paraphrased", "seen", f"ratio {ratio} >= {minimum:g}",
                               rec["holds"]))
    note = ("<p class=\"muted\">diff = first − second prompt on the same users and instances, 95 % paired bootstrap "
            "over users. A gate of 0 (select-gates) means the task's answer ignores the prompt's words: its diff is 0 "
            "by construction, not evidence either way. cut = prompt pairs whose changed words fell to the left cut at "
            "train.max_prompt_tokens (both encode to the same tokens) / all pairs.</p>")
    return (f"{note}<table><tr><th>test</th><th>metric</th><th>gate</th><th>users</th><th>first</th><th>second</th>"
            f"<th>diff [95 % CI]</th><th>interval</th><th>cut</th><th>criterion</th><th>holds</th></tr>"
            f"{''.join(rows)}</table>")


def seen_unseen_table(payload: dict[str, Any], top_k: int) -> str:
    rows = []
    for task in (t for t in TASKS if t in payload.get("model", {})):
        metric = headline_metric(task, top_k)
        seen, unseen = payload["model"][task].get(metric), payload.get("unseen", {}).get(task, {}).get(metric)
        if seen is None:
            continue
        gap = "–" if unseen is None else f"{unseen - seen:+.4f}"
        rows.append(f"<tr><td>{html.escape(task)}</td><td>{html.escape(metric)}</td><td>{seen:.4f}</td>"
                    f"<td>{'–' if unseen is None else f'{unseen:.4f}'}</td><td>{gap}</td></tr>")
    return ("<table><tr><th>task</th><th>metric</th><th>seen templates</th><th>unseen templates</th>"
            f"<th>unseen − seen</th></tr>{''.join(rows)}</table>")


def curve_chart(name: str, record: dict[str, Any], width: int = 300, height: int = 110) -> str:
    """Inline SVG line chart of one expert's validation curve (`curve` per epoch), the best epoch marked."""
    curve = [float(v) for v in record.get("curve", [])]
    if len(curve) < 2:
        return ""
    lo, hi = min(curve), max(curve)
    span = (hi - lo) or 1.0
    px = lambda i: 8 + (width - 16) * i / (len(curve) - 1)  # noqa: E731
    py = lambda v: 22 + (height - 30) * (1 - (v - lo) / span)  # noqa: E731
    points = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(curve))
    best = int(record.get("best_epoch", 0)) - 1
    mark = (f'<circle cx="{px(best):.1f}" cy="{py(curve[best]):.1f}" r="3.5" fill="#b91c1c"/>'
            if 0 <= best < len(curve) else "")
    title = f"{name}: {record.get('monitor', 'validation')} per epoch (best {record.get('best_value', float('nan')):.4f})"
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">'
            f'<text x="0" y="12" font-size="11" font-weight="600">{html.escape(title)}</text>'
            f'<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="{points}"/>{mark}</svg>')


def curves_section(curves: dict[str, Any] | None) -> str:
    charts = [curve_chart(name, rec) for name, rec in (curves or {}).get("models", {}).items()
              if isinstance(rec, dict)]
    charts = [c for c in charts if c]
    if not charts:
        return "<p class=\"muted\">No expert validation curves (baselines.metrics_file absent or without curves).</p>"
    return '<div class="grid">' + "".join(f'<div class="card">{c}</div>' for c in charts) + "</div>"


def scoreboard_sections(payload: dict[str, Any], top_k: int, curves: dict[str, Any] | None) -> str:
    """The HTML of the scoreboard sections (headings included)."""
    best = payload.get("best_expert_valid", {})
    note = ("<p class=\"muted\">diff = unirec − expert on the seen-template rows, 95 % paired bootstrap interval "
            "over users; the best expert of each task is chosen on validation rows. Validation figures: "
            + html.escape("; ".join(f"{t}: " + ", ".join(f"{e} {v:.4f}" for e, v in f.items()) for t, f in best.items()))
            + "</p>")
    return (f"<h2>Model vs best expert vs popularity (95 % intervals)</h2>{note}{comparison_table(payload, top_k)}"
            f"<h2>Ablations</h2>{ablation_chart(payload)}"
            f"<h2>Steering tests (95 % intervals)</h2>{steering_table(payload)}"
            f"<h2>Seen vs unseen templates</h2>{seen_unseen_table(payload, top_k)}"
            f"<h2>Experts' validation curves</h2>{curves_section(curves)}")
