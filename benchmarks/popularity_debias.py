"""Rescore trained PinnerFormer models with a popularity penalty at retrieval (issue 8, coverage).

    python benchmarks/popularity_debias.py runs/quality/validation/pinrank/movielens/pipeline_root

For every model under `<root>/ItemAwareTrainer/model/` the RetrievalEvaluator's own inputs and
metric code score `cos(user, item) - beta * log(1 + popularity of the item as of the anchor)`:
the training users' positives strictly before each eval anchor (all time, or the last 30 days),
as the popularity baselines count them, so nothing at or after the anchor is used. beta = 0 is the
model as evaluated. Run it on a `--protocol validation` home (benchmarks/quality.py): the test
users are for the chosen setting only. The root must hold one EventExampleGen output (one data
set), as a quality.py home does.

The scores are cosines (both towers L2-normalise) and the learned temperature is ~0.07, so
beta = 0.01 is ~0.14 logits per unit of log-popularity. Findings: docs/ablations/coverage_sweep.md,
"Session 15: a popularity penalty at retrieval".
"""
from __future__ import annotations

import argparse
import glob
import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import numpy as np
import tensorflow as tf
from tfx.utils import path_utils

from pinrank.components.event_example_gen import read_train_positives
from pinrank.components.retrieval_evaluator import baselines as B
from pinrank.components.retrieval_evaluator import component as C
from pinrank.components.retrieval_evaluator import metrics as M
from pinrank.pipeline import features as F
from pinrank.pipeline.artifacts import load_item_embeddings
from pinrank.pipeline.config import DAY_S

BETAS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.04)
WINDOWS = {"all": None, "30d": 30}


def one_output(root: str, component: str, key: str) -> str:
    """The artifact directory of `component`'s output `key` in a pipeline root holding one run's
    outputs (benchmarks/ranker_select.py uses it too)."""
    pattern = os.path.join(root, component, key, "*")
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"expected one artifact at {pattern}, found {len(found)}")
    return found[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="a pipeline root (…/pipeline_root)")
    ap.add_argument("--betas", nargs="+", type=float, default=list(BETAS))
    ap.add_argument("--windows", nargs="+", choices=sorted(WINDOWS), default=sorted(WINDOWS))
    args = ap.parse_args(argv)
    examples = one_output(args.root, "EventExampleGen", "examples")
    item_ids, _, interests = load_item_embeddings(one_output(args.root, "ItemEmbeddingGen", "item_embeddings"))
    serialized = C.read_examples(tf.io.gfile.glob(os.path.join(examples, "Split-eval", "*")))
    lists = C.parse_lists(serialized, (F.HIST_ITEM, F.FUT_ITEM, F.ANCHOR_TS))
    train = B.TrainPositives(*read_train_positives(examples), item_ids)
    anchors = [int(a[0]) for a in lists[F.ANCHOR_TS]]
    log_pop = {w: np.stack([np.log1p(train.counts_before(t, None if d is None else t - d * DAY_S))
                            for t in anchors]) for w, d in WINDOWS.items() if w in args.windows}
    print("model  window  beta    Recall@10  P90 cov@10")
    for model_dir in sorted(glob.glob(os.path.join(args.root, "ItemAwareTrainer", "model", "*")),
                            key=lambda p: int(os.path.basename(p))):
        model = tf.saved_model.load(path_utils.serving_model_path(model_dir))
        cos = C.embed_users(model, serialized) @ C.embed_items(model, item_ids).T
        for window, pop in log_pop.items():
            for beta in args.betas:
                scores = cos - beta * pop
                m = M.scored_metrics(lambda lo, hi: scores[lo:hi], len(scores), item_ids,
                                     lists[F.HIST_ITEM], lists[F.FUT_ITEM], interests)
                print(f"{os.path.basename(model_dir):>5}  {window:>6}  {beta:<6g}  "
                      f"{m['recall@10']:.4f}     {m['p90_coverage@10']:.3f}", flush=True)


if __name__ == "__main__":
    main()
