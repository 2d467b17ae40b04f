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

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)

from pipeline import features as F  # noqa: E402
from pipeline import local_runner  # noqa: E402
from pipeline.config import apply_overrides, preset  # noqa: E402

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
    ap.add_argument("--out", default="runs/ranker_ablations/results.json")
    args = ap.parse_args(argv)

    results = []
    for seed in args.seeds:
        for variant in args.variants:
            cfg = apply_overrides(preset(args.preset, args.source),
                                  args.set + VARIANTS[variant] + [f"ranker.seed={seed}"])
            ranker = local_runner.run(cfg, args.home)["ranker"]["overall"]
            row = {"variant": variant, "seed": seed,
                   **{f"{m}/{h}": ranker[h][m] for h in F.HEADS for m in ("hit@3", "auc")}}
            results.append(row)
            print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)

    cols = [f"{m}/{h}" for m in ("hit@3", "auc") for h in F.HEADS]
    print(f"\n{args.source} ({args.preset}), seeds {args.seeds}")
    print(f"{'variant':<16}" + "".join(f"{c:>20}" for c in cols))
    for variant in args.variants:
        rows = [r for r in results if r["variant"] == variant]
        print(f"{variant:<16}" + "".join(
            f"{np.mean([r[c] for r in rows]):>11.4f}±{np.std([r[c] for r in rows]):.4f}"
            for c in cols))


if __name__ == "__main__":
    main()
