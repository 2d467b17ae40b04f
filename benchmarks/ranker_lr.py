"""The ranker at a learning rate and gradient clipping of your choice, on a pipeline run's data.

    python benchmarks/ranker_lr.py runs/pinrank/movielens/pipeline_root --lr 3e-3 [--clipnorm 1.0]

Trains the `cpu` ranker (models/realtime) the way its run_fn does, for `--steps` steps in epochs
of 100, from the run's TransformRanker output and item embeddings, with Adam on the preset's
warmup + cosine schedule (`--clipnorm`: Keras' per-variable gradient-norm clip). Prints one JSON
line: the eval split's AUC per head (models/realtime/metrics.py), the spread of the repin scores
(a collapsed ranker has ~0) and the training loss per epoch. The eval split is the gate's, so
this is a diagnostic for stability, not a way to choose the learning rate. Findings:
docs/status.md, "Session 15: where the demo's time goes, a popularity penalty, fused projections".
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import numpy as np
import tensorflow_transform as tft
import tf_keras as keras
from tfx_bsl.public import tfxio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.popularity_debias import one_output
from pinrank.models.realtime import metrics as RM
from pinrank.models.realtime import ranker as R
from pinrank.models.realtime import serving_model as S
from pinrank.models.realtime.run import ranker_config
from pinrank.pipeline import features as F
from pinrank.pipeline.artifacts import load_item_embeddings
from pinrank.pipeline.config import apply_overrides, preset


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="a pipeline root (…/pipeline_root) with one TransformRanker output")
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--clipnorm", type=float, default=0.0, help="0: no clipping (the preset)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", default="movielens")
    args = ap.parse_args(argv)
    cfg = apply_overrides(preset("cpu", args.source),
                          [f"ranker.learning_rate={args.lr}", f"ranker.seed={args.seed}"])
    keras.utils.set_random_seed(args.seed)
    tft_out = tft.TFTransformOutput(one_output(args.root, "TransformRanker", "transform_graph"))
    item_ids, item_emb, interests = load_item_embeddings(
        one_output(args.root, "ItemEmbeddingGen", "item_embeddings"))
    featurizer = S.Featurizer(item_ids, item_emb, interests)
    rcfg = ranker_config(cfg, tft_out, item_emb.shape[1], featurizer.num_interests)
    examples = one_output(args.root, "TransformRanker", "transformed_examples")

    def dataset(split: str, train: bool):
        record = tfxio.TFExampleRecord(
            file_pattern=glob.glob(os.path.join(examples, f"Split-{split}", "*")),
            schema=tft_out.transformed_metadata.schema, telemetry_descriptors=["pinrank"])
        return S.featurized_dataset(record.TensorFlowDataset(tfxio.TensorFlowDatasetOptions(
            batch_size=rcfg.batch_size, shuffle=train, shuffle_seed=args.seed,
            num_epochs=None if train else 1, drop_final_batch=train)), featurizer)

    model = R.Ranker(rcfg, seed=args.seed)
    optimizer = R.make_optimizer(rcfg)  # the run_fn's; clipnorm is read when gradients apply
    if args.clipnorm > 0:
        optimizer.clipnorm = args.clipnorm
    model.compile(optimizer=optimizer)
    start = time.time()
    per_epoch = min(100, args.steps)
    history = model.fit(dataset("train", True), steps_per_epoch=per_epoch,
                        epochs=max(1, args.steps // per_epoch), verbose=0)
    labels, scores = {h: [] for h in F.HEADS}, {h: [] for h in F.HEADS}
    for x, y in dataset("eval", False):
        out = model(x, training=False)
        for h in F.HEADS:
            labels[h].append(np.ravel(y[h]))
            scores[h].append(np.ravel(out[h]))
    cat = {h: (np.concatenate(scores[h]), np.concatenate(labels[h])) for h in F.HEADS}
    print(json.dumps({
        "lr": args.lr, "clipnorm": args.clipnorm, "seed": args.seed, "steps": args.steps,
        "auc": {h: round(float(RM.auc(s, y > 0)), 4) for h, (s, y) in cat.items()},
        "repin_score_std": round(float(np.std(cat["repin"][0])), 5),
        "loss": [round(v, 3) for v in history.history["loss"]],
        "train_s": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main()
