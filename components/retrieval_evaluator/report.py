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


def gate_decision(metrics: dict, baseline_metrics: dict | None, *, k: int, min_recall: float,
                  min_coverage: float, max_recall_drop: float) -> dict:
    """Bless only if recall@k >= min_recall, p90_coverage@k >= min_coverage and, when a baseline
    is given, recall@k >= baseline recall@k - max_recall_drop.

    Coverage has a floor because a collapsed model can keep recall while serving everyone the same
    few items. Missing or NaN numbers fail their check. Returns {"blessed", "reasons" (one line
    per failed check, with the numbers), "thresholds"}."""
    reasons = []

    def value(m: dict, key: str) -> float:
        v = m.get(key)
        return float("nan") if v is None else float(v)

    recall, coverage = value(metrics, f"recall@{k}"), value(metrics, f"p90_coverage@{k}")
    if not recall >= min_recall:  # `not >=` so that NaN fails
        reasons.append(f"recall@{k} {recall:.4f} < min_recall {min_recall:.4f}")
    if not coverage >= min_coverage:
        reasons.append(f"p90_coverage@{k} {coverage:.4f} < min_coverage {min_coverage:.4f}")
    if baseline_metrics is not None:
        base = value(baseline_metrics, f"recall@{k}")
        if not recall >= base - max_recall_drop:
            reasons.append(f"recall@{k} {recall:.4f} < baseline recall@{k} {base:.4f} "
                           f"- max_recall_drop {max_recall_drop:.4f}")
    return {
        "blessed": not reasons,
        "reasons": reasons,
        "thresholds": {"k": k, "min_recall": min_recall, "min_coverage": min_coverage,
                       "max_recall_drop": max_recall_drop},
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


def _plot(path: str, metrics: dict, baseline: dict | None) -> None:
    # Agg canvas on a bare Figure: no pyplot, no global backend switch, works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = _headline_keys(metrics)
    curves = [(name, m["recall_at_k_curve"]) for name, m in (("candidate", metrics),
                                                             ("baseline", baseline))
              if m and m.get("recall_at_k_curve")]
    n_panels = len(keys) + (1 if curves else 0)
    fig = Figure(figsize=(3.2 * max(n_panels, 1), 3.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(n_panels, 1), squeeze=False)
    for ax, key in zip(axes[0], keys):  # one panel per metric: the scales differ
        names = ["candidate"] + (["baseline"] if baseline else [])
        vals = [metrics.get(key)] + ([baseline.get(key)] if baseline else [])
        vals = [float("nan") if v is None else float(v) for v in vals]
        ax.bar(names, vals, color=["tab:blue", "tab:gray"][: len(names)])
        ax.set_title(key)
    if curves:
        ax = axes[0][len(keys)]
        for name, curve in curves:
            ks = sorted(curve, key=int)
            ax.plot([int(c) for c in ks], [curve[c] for c in ks], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_title("recall@k")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _fmt(v: Any) -> str:
    if v is None:
        return "&mdash;"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return html.escape(str(v))


def _html(metrics: dict, baseline: dict | None, gate: dict, png: bytes) -> str:
    keys = [key for key in metrics if not isinstance(metrics[key], dict)]
    rows = "\n".join(
        f"<tr><td>{html.escape(key)}</td><td>{_fmt(metrics[key])}</td>"
        f"<td>{_fmt(baseline.get(key) if baseline else None)}</td></tr>" for key in keys)
    thresholds = "\n".join(f"<tr><td>{html.escape(str(key))}</td><td>{_fmt(v)}</td></tr>"
                           for key, v in gate.get("thresholds", {}).items())
    verdict = "BLESSED" if gate["blessed"] else "NOT BLESSED"
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in gate.get("reasons", []))
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Retrieval evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} td:first-child{{text-align:left}}
.ok{{color:#080}} .bad{{color:#b00}}</style></head>
<body>
<h1>Retrieval evaluation</h1>
<h2 class="{'ok' if gate['blessed'] else 'bad'}">{verdict}</h2>
<ul>{reasons}</ul>
<table><tr><th>metric</th><th>candidate</th><th>baseline</th></tr>
{rows}
</table>
<h3>Gate thresholds</h3>
<table>{thresholds}</table>
<img alt="summary chart" src="data:image/png;base64,{image}">
</body></html>
"""


def write_report(out_dir: str, metrics: dict, baseline_metrics: dict | None,
                 gate: dict) -> dict:
    """Write `metrics.json` ({"candidate", "baseline", "gate"}; NaN stored as null, dict keys as
    strings), `summary.png` and `summary.html` into out_dir. `gate` is `gate_decision`'s output.
    Returns {"metrics_json", "summary_png", "summary_html"} paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, file) for name, file in
             (("metrics_json", "metrics.json"), ("summary_png", "summary.png"),
              ("summary_html", "summary.html"))}
    record = _jsonable({"candidate": metrics, "baseline": baseline_metrics, "gate": gate})
    with open(paths["metrics_json"], "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, allow_nan=False)
    _plot(paths["summary_png"], metrics, baseline_metrics)
    with open(paths["summary_png"], "rb") as f:
        png = f.read()
    with open(paths["summary_html"], "w") as f:
        f.write(_html(metrics, baseline_metrics, gate, png))
    return paths
