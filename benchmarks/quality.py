"""PinnerFormer quality against the non-learned baselines, through the real pipeline.

  # choose on a validation split of *training* users (test users never seen):
  python benchmarks/quality.py run --source movielens --protocol validation \
      --variant paper= --variant no_logq=model.logq_correction=false --seeds 0 1 2
  # then measure the chosen settings on the test users (and out of time):
  python benchmarks/quality.py run --source movielens --protocol test --seeds 0 1 2
  # one HTML page from any number of result files:
  python benchmarks/quality.py report runs/quality/*.json --out docs/quality/index.html

A variant is `name=override[,override...]` (overrides as for `pinrank run --set`). Each
(variant, seed) is one pipeline run (the data components are cache hits), and the
RetrievalEvaluator scores the candidate and every baseline on the same users and anchors; the
runs' `metrics.json` carry the per-run bootstrap intervals. The summary pools seeds: mean over
seeds and the range of the per-run 95 % intervals.
"""
from __future__ import annotations

import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import base64
import html
import io
import json
import time

import numpy as np

PROTOCOLS = {
    "test": [],
    "validation": ["examples.eval_users=validation"],
    # out of time: anchors in the last 30 % of the data, 3 per eval user, training cut there
    "oot": ["examples.eval_after_time_quantile=0.7", "examples.eval_anchors_per_user=3"],
}


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    return name, [o for o in rest.split(",") if o]


def pipeline_run(preset_name: str, source: str, sets: list[str], seed: int, home: str) -> dict:
    """One PinnerFormer pipeline run (ranker off) with `train.seed=seed`; its summary."""
    from pinrank.pipeline import local_runner
    from pinrank.pipeline.config import apply_overrides, preset

    cfg = apply_overrides(preset(preset_name, source),
                          sets + [f"train.seed={seed}", "ranker_train.enabled=false"])
    return local_runner.run(cfg, home)


def cmd_run(args) -> None:
    variants = [parse_variant(v) for v in (args.variant or ["default="])]
    out = args.out or os.path.join(args.home, f"{args.source}-{args.protocol}.json")
    results = []
    for seed in args.seeds:
        for name, overrides in variants:
            start = time.time()
            summary = pipeline_run(args.preset, args.source,
                                   PROTOCOLS[args.protocol] + args.set + overrides, seed,
                                   os.path.join(args.home, args.protocol))
            ev = summary["evaluation"]
            row = {"variant": name, "seed": seed, "overrides": overrides, "set": args.set,
                   "source": args.source, "protocol": args.protocol, "preset": args.preset,
                   "wall_s": round(time.time() - start, 1), "methods": ev["methods"],
                   "comparison": ev["comparison"], "gate": ev["gate"]}
            results.append(row)
            cand = ev["methods"]["candidate"]
            pop = ev["gate"].get("popularity")
            print(json.dumps({"variant": name, "seed": seed, "recall@10": cand["recall@10"],
                              "p90_coverage@10": cand["p90_coverage@10"],
                              "lift_vs_" + str(pop): ev["comparison"].get(pop, {}).get("lift"),
                              "wall_s": row["wall_s"]}), flush=True)
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as fh:  # after every run: a stopped sweep keeps what it has
                json.dump(results, fh, indent=2)
    print(render_markdown(results))


# ---------------------------------------------------------------------------------------- summary
BASELINES = ("popularity_all", "popularity_30d", "cooccurrence")


def summarize(results: list[dict]) -> list[dict]:
    """One row per (source, protocol, variant): mean over seeds of recall@10, coverage, the
    strongest baseline's recall and the candidate's lift over it (with the widest per-run
    interval)."""
    groups: dict = {}
    for r in results:
        groups.setdefault((r["source"], r["protocol"], r["variant"]), []).append(r)
    rows = []
    for (source, protocol, variant), rs in groups.items():
        recall = [r["methods"]["candidate"]["recall@10"] for r in rs]
        cov = [r["methods"]["candidate"]["p90_coverage@10"] for r in rs]
        base = {b: np.mean([r["methods"][b]["recall@10"] for r in rs])
                for b in rs[0]["methods"] if b in BASELINES}
        best = max(base, key=base.get) if base else None
        lifts = [r["comparison"][best]["lift"] for r in rs] if best else []
        lo = min(r["comparison"][best]["lift_interval"][0] for r in rs) if best else None
        hi = max(r["comparison"][best]["lift_interval"][1] for r in rs) if best else None
        ci_lo = min(r["comparison"]["candidate"]["interval"][0] for r in rs)
        ci_hi = max(r["comparison"]["candidate"]["interval"][1] for r in rs)
        rows.append({"source": source, "protocol": protocol, "variant": variant,
                     "seeds": [r["seed"] for r in rs], "recall@10": float(np.mean(recall)),
                     "recall_seed_std": float(np.std(recall)), "recall_interval": [ci_lo, ci_hi],
                     "p90_coverage@10": float(np.mean(cov)), "baselines": base,
                     "best_baseline": best, "lift": float(np.mean(lifts)) if lifts else None,
                     "lift_interval": [lo, hi], "users": rs[0]["methods"]["candidate"]["num_users"]})
    return rows


def render_markdown(results: list[dict]) -> str:
    lines = ["| data | protocol | variant | users | seeds | Recall@10 (95 % CI) | P90 cov@10 | "
             "best baseline | its Recall@10 | lift (95 % CI) |", "|" + "---|" * 10]
    for s in summarize(results):
        lift = ("—" if s["lift"] is None else
                f"{s['lift']:+.1%} [{s['lift_interval'][0]:+.1%}, {s['lift_interval'][1]:+.1%}]")
        lines.append(
            f"| {s['source']} | {s['protocol']} | {s['variant']} | {s['users']} | "
            f"{len(s['seeds'])} | {s['recall@10']:.4f} ± {s['recall_seed_std']:.4f} "
            f"[{s['recall_interval'][0]:.3f}, {s['recall_interval'][1]:.3f}] | "
            f"{s['p90_coverage@10']:.3f} | {s['best_baseline']} | "
            f"{s['baselines'].get(s['best_baseline'], float('nan')):.4f} | {lift} |")
    return "\n".join(lines)


def _figure(rows: list[dict]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = sorted({(r["source"], r["protocol"]) for r in rows})
    fig = Figure(figsize=(4.5 * max(len(keys), 1), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(keys), 1), squeeze=False)[0]
    for ax, (source, protocol) in zip(axes, keys):
        sub = [r for r in rows if (r["source"], r["protocol"]) == (source, protocol)]
        names = [r["variant"] for r in sub] + (list(sub[0]["baselines"]) if sub else [])
        vals = [r["recall@10"] for r in sub] + (list(sub[0]["baselines"].values()) if sub else [])
        err = [r["recall_seed_std"] for r in sub] + [0.0] * (len(names) - len(sub))
        colors = ["tab:blue"] * len(sub) + ["tab:gray"] * (len(names) - len(sub))
        ax.bar(range(len(names)), vals, yerr=err, color=colors, capsize=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
        ax.set_title(f"{source} / {protocol}: Recall@10")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _curves(results: list[dict]) -> bytes:
    """Recall@k curves of the candidate (first seed of each variant) and the baselines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = sorted({(r["source"], r["protocol"]) for r in results})
    fig = Figure(figsize=(4.5 * max(len(keys), 1), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(keys), 1), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        seen = set()
        for r in results:
            if (r["source"], r["protocol"]) != key or r["variant"] in seen:
                continue
            seen.add(r["variant"])
            for name, m in r["methods"].items():
                if name == "last_blessed" or (name in BASELINES and name in seen):
                    continue
                label = r["variant"] if name == "candidate" else name
                seen.add(name)
                curve = m["recall_at_k_curve"]
                ks = sorted(curve, key=int)
                ax.plot([int(k) for k in ks], [curve[k] for k in ks], marker="o", label=label,
                        ls="-" if name == "candidate" else "--")
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_title(f"{key[0]} / {key[1]}: Recall@k")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def cmd_report(args) -> None:
    results = [r for path in args.results for r in json.load(open(path))]
    rows = summarize(results)
    md = render_markdown(results)
    table = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
        + "</tr>" for line in md.splitlines()[2:])
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in md.splitlines()[0].strip("|").split("|"))
    img = base64.b64encode(_figure(rows)).decode()
    curves = base64.b64encode(_curves(results)).decode()
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>pinrank quality</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px}}</style></head>
<body><h1>PinnerFormer vs non-learned baselines</h1>
<p>Every figure is a pipeline run; the baselines are scored on exactly the same eval users,
anchors, labels and exclusions (see docs/protocol.md). Recall@10: mean ± std over seeds, and
the range of the per-run 95 % bootstrap intervals over users. Lift: candidate over the strongest
baseline, mean over seeds, with the range of the per-run paired 95 % intervals.</p>
<table><tr>{head}</tr>{table}</table>
<img src="data:image/png;base64,{img}"><br>
<img src="data:image/png;base64,{curves}">
<p>Generated by <code>benchmarks/quality.py report</code> from {len(results)} runs.</p>
</body></html>"""
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(page)
    print(md)
    print(args.out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--preset", default="cpu")
    r.add_argument("--source", default="movielens")
    r.add_argument("--protocol", default="validation", choices=sorted(PROTOCOLS))
    r.add_argument("--variant", action="append", help="name=override[,override...]")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--set", action="append", default=[], help="override for every variant")
    r.add_argument("--home", default="runs/quality")
    r.add_argument("--out", help="results JSON (default <home>/<source>-<protocol>.json)")
    r.set_defaults(func=cmd_run)
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    p.add_argument("--out", default="runs/quality/index.html")
    p.set_defaults(func=cmd_report)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
