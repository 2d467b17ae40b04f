"""PinnerFormer objectives on one data set, several seeds, through the real pipeline.

  python benchmarks/compare_objectives.py --preset cpu --source movielens \
      --objectives dense_all_action next_action --seeds 0 1 2

Each (objective, seed) is a pipeline run in one home, so the data components are cache hits and
only Trainer -> RetrievalEvaluator (-> Pusher) re-run. Prints mean ± std of Recall@10, P90
coverage@10 and interest entropy@50 per objective, and writes the raw numbers as JSON.
"""
import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import json
import time

import numpy as np

from pinrank.pipeline import local_runner
from pinrank.pipeline.config import apply_overrides, preset

METRICS = ("recall@10", "p90_coverage@10", "interest_entropy@50")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--source", default="movielens")
    ap.add_argument("--objectives", nargs="+", default=["dense_all_action", "next_action"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--home", default="runs/compare_objectives")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="runs/compare_objectives/results.json")
    args = ap.parse_args(argv)

    results = []
    for seed in args.seeds:
        for objective in args.objectives:
            cfg = apply_overrides(preset(args.preset, args.source),
                                  args.set + [f"model.objective={objective}", f"train.seed={seed}"])
            start = time.time()
            summary = local_runner.run(cfg, args.home)
            cand = summary["evaluation"]["candidate"]
            row = {"objective": objective, "seed": seed, "wall_s": round(time.time() - start, 1),
                   **{m: cand[m] for m in METRICS}, "num_users": cand["num_users"]}
            results.append(row)
            print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)

    print(f"\n{args.source} ({args.preset}), seeds {args.seeds}")
    print(f"{'objective':<18}" + "".join(f"{m:>26}" for m in METRICS))
    for objective in args.objectives:
        rows = [r for r in results if r["objective"] == objective]
        cells = [f"{np.mean([r[m] for r in rows]):.4f} ± {np.std([r[m] for r in rows]):.4f}"
                 for m in METRICS]
        print(f"{objective:<18}" + "".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
