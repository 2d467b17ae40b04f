"""Hybrid ablation of the ranker (TransAct Table 2) through the real pipeline:

  (a) no sequence features   ranker.use_pinnerformer=false ranker.use_realtime=false
  (b) + PinnerFormer only    ranker.use_realtime=false
  (c) + realtime only        ranker.use_pinnerformer=false
  (d) hybrid                 (default)

  python benchmarks/ranker_ablations.py --preset cpu --source movielens --seeds 0 1 2

All runs share one home, so the data components and PinnerFormer are cache hits; only the
ranker's Trainer -> Evaluator (-> Pusher) re-run. Prints mean ± std of HIT@3 and AUC per head
and writes the raw numbers as JSON.
"""
import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import json

import numpy as np

from pinrank.pipeline import features as F
from pinrank.pipeline import local_runner
from pinrank.pipeline.config import apply_overrides, preset

# Hides among the top 3 by the repin score (lower is better): the "hide improving" check.
HIDE_HIT = "hide_hit@3/repin"
COLORS = {"a_no_sequence": "#999999", "b_pinnerformer": "#6baed6", "c_realtime": "#fd8d3c",
          "d_hybrid": "#31a354"}
VARIANTS = {
    "a_no_sequence": ["ranker.use_pinnerformer=false", "ranker.use_realtime=false"],
    "b_pinnerformer": ["ranker.use_realtime=false"],
    "c_realtime": ["ranker.use_pinnerformer=false"],
    "d_hybrid": [],
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--source", default="movielens")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--home", default="runs/ranker_ablations")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="runs/ranker_ablations/results.json",
                    help="raw rows (JSON); the table goes to .md and the plot to .png beside it")
    ap.add_argument("--from-json", metavar="FILE",
                    help="only tabulate and plot the rows of an earlier run")
    args = ap.parse_args(argv)

    if args.from_json:
        with open(args.from_json) as fh:
            results = json.load(fh)
    else:
        results = run(args)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)
    title = f"{args.source} ({args.preset}), seeds {sorted({r['seed'] for r in results})}"
    table = markdown_table(results, title)
    print("\n" + table)
    stem = os.path.splitext(args.from_json or args.out)[0]
    with open(stem + ".md", "w") as fh:
        fh.write(table + "\n")
    plot(results, title, stem + ".png")
    print(f"wrote {stem}.md and {stem}.png")


def run(args) -> list:
    results = []
    for seed in args.seeds:
        for variant in args.variants:
            cfg = apply_overrides(preset(args.preset, args.source),
                                  args.set + VARIANTS[variant] + [f"ranker.seed={seed}"])
            summary = local_runner.run(cfg, args.home)["ranker"]
            ranker = summary["overall"]
            row = {"variant": variant, "seed": seed,
                   **{f"{m}/{h}": ranker[h][m] for h in F.HEADS for m in ("hit@3", "auc")},
                   HIDE_HIT: ranker[F.HEADS[0]][HIDE_HIT.split("/")[0]],
                   "evaluation_uri": summary["evaluation_uri"]}
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


def _columns(results) -> list:
    cols = [f"{m}/{h}" for m in ("hit@3", "auc") for h in F.HEADS] + [HIDE_HIT]
    return [c for c in cols if all(c in r for r in results)]


def markdown_table(results, title: str) -> str:
    """mean ± std over seeds per variant (std: population, over the seeds run)."""
    cols = _columns(results)
    lines = [f"**{title}**", "", "| variant | " + " | ".join(cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for variant in [v for v in VARIANTS if any(r["variant"] == v for r in results)]:
        rows = [r for r in results if r["variant"] == variant]
        lines.append(f"| {variant} | " + " | ".join(
            f"{np.mean([r[c] for r in rows]):.4f} ± {np.std([r[c] for r in rows]):.4f}"
            for c in cols) + " |")
    return "\n".join(lines)


def plot(results, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(results)
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in results)]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.2 * len(cols), 3.2), squeeze=False)
    for ax, c in zip(axes[0], cols):
        vals = [[r[c] for r in results if r["variant"] == v] for v in variants]
        ax.bar(range(len(variants)), [np.mean(x) for x in vals],
               yerr=[np.std(x) for x in vals], capsize=3,
               color=[COLORS[v] for v in variants])
        for i, x in enumerate(vals):  # every seed, so the spread is visible
            ax.plot([i] * len(x), x, "k.", ms=3)
        ax.set_xticks(range(len(variants)), [v.split("_")[0] for v in variants])
        lo = min(min(x) for x in vals)
        ax.set_ylim(max(0.0, lo - 0.1), None)
        ax.set_title(c, fontsize=8)
    fig.suptitle(f"ranker ablations: {title} (a none, b +PF, c +realtime, d hybrid)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
