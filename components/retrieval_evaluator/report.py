"""Blessing gate and human-readable report for the retrieval evaluator.

`gate_decision` turns metrics into a bless / don't-bless verdict with reasons; `write_report` stores
the numbers (`metrics.json`, the machine-readable record), a chart (`summary.png`) and a
self-contained page (`summary.html`, PNG embedded) so a run can be judged without tooling.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
from typing import Any

from pinrank.components.retrieval_evaluator.metrics import PER_USER
from pinrank.components.retrieval_evaluator.slices import slice_gate_reasons

CANDIDATE, LAST_BLESSED = "candidate", "last_blessed"


def strongest_popularity(methods: dict, k: int) -> str | None:
    """Name of the popularity baseline with the highest recall@k ("popularity" in the gate)."""
    pops = [n for n in methods if n.startswith("popularity_")]
    return max(pops, key=lambda n: _value(methods[n], f"recall@{k}"), default=None)


def _value(m: dict, key: str) -> float:
    v = m.get(key)
    return float("nan") if v is None else float(v)


def gate_decision(methods: dict, comparison: dict | None, *, k: int, min_recall: float,
                  min_coverage: float, max_recall_drop: float,
                  min_lift_over_popularity: float | None = None,
                  confidence: float = 0.95, slices: dict | None = None,
                  gate_slices: tuple = (),
                  min_slice_lift_over_popularity: float | None = None) -> dict:
    """Bless only if, for the candidate (`methods["candidate"]`):
    - recall@k >= min_recall and p90_coverage@k >= min_coverage (a collapsed model can keep
      recall while serving everyone the same few items);
    - it beats the strongest popularity baseline: relative lift in recall@k >
      min_lift_over_popularity (None: not checked);
    - it is not worse than the last blessed model (`methods["last_blessed"]`) by more than
      max_recall_drop *with the given confidence*: refused when the one-sided upper bound of the
      paired per-user difference is below -max_recall_drop. Retraining the same model with
      another seed moves recall by more than the interval of one user sample, so a point rule
      would refuse equally good models by chance;
    - on every reported slice (slices.slice_report) of the families in `gate_slices`, it beats
      popularity: lift > min_slice_lift_over_popularity (None: slices reported, not gated).
    `comparison` is stats.compare's output (paired bootstrap over users). Missing or NaN numbers
    fail their check. Returns {"blessed", "reasons" (one line per failed check, with the
    numbers), "thresholds", "popularity"}."""
    reasons = []
    metrics = methods[CANDIDATE]
    recall, coverage = _value(metrics, f"recall@{k}"), _value(metrics, f"p90_coverage@{k}")
    if not recall >= min_recall:  # `not >=` so that NaN fails
        reasons.append(f"recall@{k} {recall:.4f} < min_recall {min_recall:.4f}")
    if not coverage >= min_coverage:
        reasons.append(f"p90_coverage@{k} {coverage:.4f} < min_coverage {min_coverage:.4f}")
    pop = strongest_popularity(methods, k)
    if min_lift_over_popularity is not None:
        row = (comparison or {}).get(pop) if pop else None
        lift = float("nan") if row is None else float(row["lift"])
        if not lift > min_lift_over_popularity:
            what = (f"{pop} (recall@{k} {_value(methods[pop], f'recall@{k}'):.4f})" if pop
                    else "popularity (no baseline computed)")
            reasons.append(f"recall@{k} {recall:.4f} does not beat {what}: lift {lift:+.1%} <= "
                           f"min_lift_over_popularity {min_lift_over_popularity:+.1%}")
    if min_slice_lift_over_popularity is not None:
        reasons += slice_gate_reasons(slices, gate_slices, k=k,
                                      min_lift=min_slice_lift_over_popularity)
    if LAST_BLESSED in methods:
        row = (comparison or {}).get(LAST_BLESSED)
        upper = float("nan") if row is None else float(row["diff_upper"])
        if not upper >= -max_recall_drop:
            base = _value(methods[LAST_BLESSED], f"recall@{k}")
            reasons.append(
                f"recall@{k} {recall:.4f} is worse than the last blessed model's {base:.4f} by "
                f"more than max_recall_drop {max_recall_drop:.4f} with {confidence:.0%} "
                f"confidence (paired difference upper bound {upper:+.4f})")
    return {
        "blessed": not reasons,
        "reasons": reasons,
        "popularity": pop,
        "thresholds": {"k": k, "min_recall": min_recall, "min_coverage": min_coverage,
                       "max_recall_drop": max_recall_drop,
                       "min_lift_over_popularity": min_lift_over_popularity,
                       "confidence": confidence, "gate_slices": list(gate_slices),
                       "min_slice_lift_over_popularity": min_slice_lift_over_popularity},
    }


def _jsonable(x: Any) -> Any:
    """numpy scalars -> python, NaN/inf -> None (strict JSON), dict keys -> str."""
    if isinstance(x, dict):
        return {str(key): _jsonable(v) for key, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):  # numpy scalar
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _headline_keys(metrics: dict) -> list[str]:
    """The three gate-relevant metric names of a metrics dict, in display order."""
    def find(prefix: str, exclude: str = "") -> list[str]:
        return [key for key in metrics
                if key.startswith(prefix) and not (exclude and key.endswith(exclude))]
    return find("recall@", "_global")[:1] + find("p90_coverage@")[:1] + find("interest_entropy@")[:1]


_COLORS = {CANDIDATE: "tab:blue", LAST_BLESSED: "tab:gray"}


def _plot(path: str, methods: dict, comparison: dict | None) -> None:
    """Bars per headline metric (recall with its bootstrap interval) + all recall@k curves."""
    # Agg canvas on a bare Figure: no pyplot, no global backend switch, works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = _headline_keys(methods[CANDIDATE])
    names = list(methods)
    colors = [_COLORS.get(n, f"C{i + 2}") for i, n in enumerate(names)]
    curves = [(n, methods[n]["recall_at_k_curve"]) for n in names
              if methods[n].get("recall_at_k_curve")]
    n_panels = len(keys) + (1 if curves else 0)
    fig = Figure(figsize=(3.6 * max(n_panels, 1), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(n_panels, 1), squeeze=False)
    for ax, key in zip(axes[0], keys):  # one panel per metric: the scales differ
        vals = [_value(methods[n], key) for n in names]
        err = None
        if key.startswith("recall@") and comparison:
            lo_hi = [comparison.get(n, {}).get("interval", [v, v]) for n, v in zip(names, vals)]
            err = [[max(v - lh[0], 0) for v, lh in zip(vals, lo_hi)],
                   [max(lh[1] - v, 0) for v, lh in zip(vals, lo_hi)]]
        ax.bar(range(len(names)), vals, color=colors, yerr=err, capsize=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
        ax.set_title(key)
    if curves:
        ax = axes[0][len(keys)]
        for (name, curve), color in zip(curves, colors):
            ks = sorted(curve, key=int)
            ax.plot([int(c) for c in ks], [curve[c] for c in ks], marker="o", label=name,
                    color=_COLORS.get(name, color), lw=2.5 if name == CANDIDATE else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_title("recall@k")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_slices(path: str, slices: dict, k: int) -> None:
    """One panel per slice family: candidate and popularity recall@k per slice, with intervals."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fams = [(f, d["slices"]) for f, d in slices["families"].items() if d["slices"]]
    fig = Figure(figsize=(3.6 * max(len(fams), 1), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(fams), 1), squeeze=False)
    pop = slices.get("popularity")
    for ax, (family, rows) in zip(axes[0], fams):
        x = list(range(len(rows)))
        series = [(CANDIDATE, "candidate", _COLORS[CANDIDATE])]
        if pop:
            series.append((pop, "popularity", "tab:orange"))
        width = 0.8 / len(series)
        for j, (label, key, color) in enumerate(series):
            vals = [float("nan") if r[key] is None else r[key]["mean"] for r in rows]
            err = [[max(v - (r[key] or {}).get("interval", [v, v])[0], 0) for v, r in zip(vals, rows)],
                   [max((r[key] or {}).get("interval", [v, v])[1] - v, 0) for v, r in zip(vals, rows)]]
            ax.bar([i + (j - (len(series) - 1) / 2) * width for i in x], vals, width, yerr=err,
                   capsize=2, color=color, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r['value']}\n({r['num_users']})" for r in rows], fontsize=7)
        ax.set_title(f"recall@{k} by {family}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _slices_html(slices: dict | None, k: int) -> str:
    if not slices or not slices.get("families"):
        return ""
    pop = slices.get("popularity")
    parts = [f"<h3>Slices: recall@{k} per slice (users with at least {slices['min_users']} "
             f"per slice; 95 % bootstrap intervals)</h3>",
             "<table><tr><th>slice</th><th>users</th><th>candidate</th><th>interval</th>"
             f"<th>{html.escape(str(pop))}</th><th>candidate's lift</th>"
             "<th>P(candidate worse)</th></tr>"]
    notes = []
    for family, d in slices["families"].items():
        for r in d["slices"]:
            c, p = r["candidate"], r.get("popularity") or {}
            parts.append(
                f"<tr><td>{html.escape(family)} = {html.escape(str(r['value']))}</td>"
                f"<td>{r['num_users']}</td><td>{_fmt(c['mean'])}</td>"
                f"<td>[{_fmt(c['interval'][0])}, {_fmt(c['interval'][1])}]</td>"
                f"<td>{_fmt(p.get('mean'))}</td>"
                f"<td>{_pct(r.get('lift'), r.get('lift_interval'))}</td>"
                f"<td>{_fmt(r.get('p_worse'))}</td></tr>")
        for r in d["skipped"]:
            notes.append(f"{family} = {r['value']}: {r['num_users']} users, skipped")
        gap = d.get("gap")
        if gap:
            lo, hi = gap["diff_interval"]
            notes.append(f"{family}: best group {gap['best']} minus worst group {gap['worst']} "
                         f"= {_fmt(gap['diff'])} [{_fmt(lo)}, {_fmt(hi)}]")
    parts.append("</table>")
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(parts)


def _fmt(v: Any) -> str:
    if v is None:
        return "&mdash;"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return html.escape(str(v))


def _pct(v, interval=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "&mdash;"
    out = f"{v:+.1%}"
    if interval:
        out += f" [{interval[0]:+.1%}, {interval[1]:+.1%}]"
    return out


def _html(methods: dict, comparison: dict | None, gate: dict, png: bytes,
          slices: dict | None = None, slices_png: bytes | None = None) -> str:
    cand = methods[CANDIDATE]
    k = gate.get("thresholds", {}).get("k", 10)
    keys = [key for key in cand if not isinstance(cand[key], dict)]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in methods)
    rows = "\n".join(
        f"<tr><td>{html.escape(key)}</td>"
        + "".join(f"<td>{_fmt(m.get(key))}</td>" for m in methods.values()) + "</tr>"
        for key in keys)
    comp_rows = ""
    if comparison:
        def ci(v):
            return f"[{v[0]:.4f}, {v[1]:.4f}]" if v else "&mdash;"
        comp_rows = "\n".join(
            f"<tr><td>{html.escape(n)}</td><td>{_fmt(c['mean'])}</td><td>{ci(c['interval'])}</td>"
            f"<td>{_pct(c.get('lift'), c.get('lift_interval'))}</td>"
            f"<td>{_fmt(c.get('diff'))} {ci(c.get('diff_interval')) if 'diff' in c else ''}</td>"
            f"<td>{_fmt(c.get('p_worse'))}</td></tr>" for n, c in comparison.items())
    thresholds = "\n".join(f"<tr><td>{html.escape(str(key))}</td><td>{_fmt(v)}</td></tr>"
                           for key, v in gate.get("thresholds", {}).items())
    verdict = "BLESSED" if gate["blessed"] else "NOT BLESSED"
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in gate.get("reasons", []))
    image = base64.b64encode(png).decode("ascii")
    slice_part = _slices_html(slices, k)
    if slices_png:
        slice_part += ('\n<img alt="slices chart" src="data:image/png;base64,'
                       f'{base64.b64encode(slices_png).decode("ascii")}">')
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Retrieval evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} td:first-child{{text-align:left}}
.ok{{color:#080}} .bad{{color:#b00}}</style></head>
<body>
<h1>Retrieval evaluation</h1>
<h2 class="{'ok' if gate['blessed'] else 'bad'}">{verdict}</h2>
<ul>{reasons}</ul>
<h3>Candidate vs baselines: recall@{k}, 95 % bootstrap intervals over users (paired)</h3>
<table><tr><th>method</th><th>recall@{k}</th><th>interval</th><th>candidate's lift</th>
<th>candidate &minus; method</th><th>P(candidate worse)</th></tr>
{comp_rows}
</table>
<p>Baselines count training users' positive engagements strictly before each eval user's
anchor: popularity over all time or a trailing window, and item-to-item co-occurrence with the
user's recent positives. "popularity" in the gate is the stronger of the popularity baselines
({html.escape(str(gate.get('popularity')))}).</p>
<img alt="summary chart" src="data:image/png;base64,{image}">
{slice_part}
<h3>All metrics</h3>
<table><tr><th>metric</th>{head}</tr>
{rows}
</table>
<h3>Gate thresholds</h3>
<table>{thresholds}</table>
</body></html>
"""


def write_report(out_dir: str, methods: dict, comparison: dict | None, gate: dict,
                 slices: dict | None = None) -> dict:
    """Write `metrics.json` ({"candidate", "baseline" (the last blessed model or null),
    "methods" {name: metrics}, "comparison", "gate", "slices" (slices.slice_report's output or
    null)}; NaN stored as null, dict keys as strings), `summary.png`, `slices.png` (when some
    slice was reported) and `summary.html` into out_dir. `methods` maps names to metrics dicts
    ("candidate" first), `gate` is `gate_decision`'s output. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, file) for name, file in
             (("metrics_json", "metrics.json"), ("summary_png", "summary.png"),
              ("summary_html", "summary.html"))}
    methods = {n: {key: v for key, v in m.items() if key != PER_USER} for n, m in methods.items()}
    record = _jsonable({"candidate": methods[CANDIDATE], "baseline": methods.get(LAST_BLESSED),
                        "methods": methods, "comparison": comparison, "gate": gate,
                        "slices": slices})
    with open(paths["metrics_json"], "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, allow_nan=False)
    _plot(paths["summary_png"], methods, comparison)
    with open(paths["summary_png"], "rb") as f:
        png = f.read()
    slices_png = None
    if slices and any(d["slices"] for d in slices["families"].values()):
        paths["slices_png"] = os.path.join(out_dir, "slices.png")
        _plot_slices(paths["slices_png"], slices, gate.get("thresholds", {}).get("k", 10))
        with open(paths["slices_png"], "rb") as f:
            slices_png = f.read()
    with open(paths["summary_html"], "w") as f:
        f.write(_html(methods, comparison, gate, png, slices, slices_png))
    return paths
