"""The ranker at a learning rate, gradient clip, hide weight or feature set of your choice, on a run's data.

    python benchmarks/ranker_select.py PIPELINE_ROOT [--lr 1e-3] [--clipnorm 1.0] \
        [--hide-weight 10] [--pf-dot on|off] [--set PATH=VALUE] [--protocol validation|eval] [--seed 0]

Trains the `cpu` ranker (models/realtime) the way its run_fn does, for `--steps` steps in epochs
of 100, from the run's TransformRanker output and item embeddings, with Adam on the preset's
warmup + cosine schedule (`--clipnorm`: Keras' per-variable gradient-norm clip) and
`--hide-weight` as the weight a hide gives the repin and click heads (losses.py; default: the
preset's, 10 in `cpu`, where the paper has 100). `--pf-dot` sets `ranker.use_pf_dot`: the
run's PinnerFormer (the one that built its ranking examples) gives the pin-tower table.

`--protocol validation` (the default, for choosing settings): the ranker trains on the train
requests before the 85th percentile of the train request times and is scored on the train
requests at or after it; the gate's eval requests are not used. `--protocol eval` trains on
the whole train split and scores the gate's eval split: a diagnostic, never a way to choose.
Either way the scored requests go through the `serving_default` path (Transform graph,
Featurizer, model) and are compared with RankerBaselineCheck's non-learned rankers
(components/ranker_eval/baseline_check.py: two popularity rankers and the PinnerFormer dot
product) on the same requests: AUC/repin and HIT@3/repin.
Prints one JSON line, with the spread of the repin scores (a collapsed ranker has ~0) and the
training loss per epoch. `--set PATH=VALUE` overrides any other config field (as `pinrank run
--set`). Findings: docs/status.md, "Session 15: where the demo's time goes, a popularity
penalty, fused projections" (learning rate, clipping), "Session 16: the ranker's hide weight"
(hide weight) and "Session 17: three candidate features on validation requests" (features).
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
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx.utils import path_utils
from tfx_bsl.public import tfxio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.popularity_debias import one_output
from pinrank.components.ranker_eval import baseline_check as BC
from pinrank.models.realtime import metrics as RM
from pinrank.models.realtime import ranker as R
from pinrank.models.realtime import serving_model as S
from pinrank.models.realtime.run import ranker_config
from pinrank.pipeline import features as F
from pinrank.pipeline.artifacts import load_item_embeddings
from pinrank.pipeline.config import apply_overrides, default_label_weights, preset

VALIDATION_QUANTILE = 0.85  # train requests at or after this quantile of their times validate


def requests(root: str, protocol: str):
    """(raw requests to score, the training cut-off: train requests before it train)."""
    examples = one_output(root, "RankingExampleGen", "examples")
    if protocol == "eval":
        return BC.read_requests(examples, "eval"), None
    # Two passes over the train split, holding only the request times and then the kept rows
    # (a large split's parsed examples do not fit in memory).
    spec = {F.REQUEST_TS: tf.io.FixedLenFeature([1], tf.int64)}
    records = BC.split_records(examples, "train")
    times = np.concatenate([tf.io.parse_example(b, spec)[F.REQUEST_TS].numpy().reshape(-1)
                            for b in records.batch(4096)])
    cut = int(np.quantile(np.unique(times), VALIDATION_QUANTILE))
    rows = [r.numpy() for r, t in zip(records, times) if t >= cut]
    return BC.requests_of(rows), cut


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="a pipeline root (…/pipeline_root) with one TransformRanker output")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    ap.add_argument("--clipnorm", type=float, default=0.0, help="0: no clipping (the preset)")
    ap.add_argument("--hide-weight", type=float, default=None,
                    help="M[repin|click, hide] (default: the preset's label_weights)")
    ap.add_argument("--pf-dot", choices=("on", "off"), default=None,
                    help="ranker.use_pf_dot (default: the preset's)")
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                    help="any other config override, as `pinrank run --set`")
    ap.add_argument("--protocol", choices=("validation", "eval"), default="validation")
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's ranker_train.train_steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", default="movielens")
    args = ap.parse_args(argv)
    overrides = [f"ranker.seed={args.seed}"]
    if args.lr is not None:
        overrides.append(f"ranker.learning_rate={args.lr}")
    if args.pf_dot is not None:
        overrides.append(f"ranker.use_pf_dot={'true' if args.pf_dot == 'on' else 'false'}")
    cfg = apply_overrides(preset("cpu", args.source), overrides + args.set)
    if args.hide_weight is not None:
        cfg = cfg.replace(ranker={"label_weights": default_label_weights(cfg.ranker.heads,
                                                                         args.hide_weight)})
    steps = args.steps or cfg.ranker_train.train_steps
    keras.utils.set_random_seed(args.seed)
    tft_out = tft.TFTransformOutput(one_output(args.root, "TransformRanker", "transform_graph"))
    item_dir = one_output(args.root, "ItemEmbeddingGen", "item_embeddings")
    item_ids, item_emb, interests = load_item_embeddings(item_dir)
    # The PinnerFormer that built the examples: the gate's second non-learned ranker, and the
    # pin-tower table of use_pf_dot.
    pf_dir = path_utils.serving_model_path(one_output(args.root, "ItemAwareTrainer", "model"))
    pf_items = S.pinnerformer_item_table(pf_dir, item_ids)
    featurizer = S.Featurizer(item_ids, item_emb, interests,
                              pf_items if cfg.ranker.use_pf_dot else None)
    rcfg = ranker_config(cfg, tft_out, item_emb.shape[1], featurizer.num_interests,
                         featurizer.num_items)
    scored, cut = requests(args.root, args.protocol)
    examples = one_output(args.root, "TransformRanker", "transformed_examples")

    record = tfxio.TFExampleRecord(
        file_pattern=glob.glob(os.path.join(examples, "Split-train", "*")),
        schema=tft_out.transformed_metadata.schema, telemetry_descriptors=["pinrank"])
    train = record.TensorFlowDataset(tfxio.TensorFlowDatasetOptions(
        batch_size=rcfg.batch_size, shuffle=True, shuffle_seed=args.seed, num_epochs=None,
        drop_final_batch=True))
    if cut is not None:  # validation: only the requests before the cut train
        train = (train.unbatch().filter(lambda xf: xf[F.xf(F.REQUEST_TS)] < cut)
                 .batch(rcfg.batch_size, drop_remainder=True))

    model = R.Ranker(rcfg, seed=args.seed)
    optimizer = R.make_optimizer(rcfg)  # the run_fn's; clipnorm is read when gradients apply
    if args.clipnorm > 0:
        optimizer.clipnorm = args.clipnorm
    model.compile(optimizer=optimizer)
    start = time.time()
    per_epoch = min(100, steps)
    history = model.fit(S.featurized_dataset(train, featurizer), steps_per_epoch=per_epoch,
                        epochs=max(1, steps // per_epoch), verbose=0)
    train_s = time.time() - start

    # The serving_default signature the pipeline exports (the path TFMA and the gate score).
    serving_default = S.signatures(model, featurizer, tft_out)["serving_default"]
    scored_heads = BC.score_signature(serving_default, scored)
    heads = {h: scored_heads[:, i] for i, h in enumerate(F.HEADS)}
    positives = BC.read_positives(one_output(args.root, "DatasetGen", "events"), item_ids)
    # The Featurizer's id -> row table: row 0 (an unknown candidate) scores 0.
    padded = np.vstack([np.zeros((1, pf_items.shape[1]), np.float32), pf_items])
    cand_pf = padded[featurizer.rows(scored["cand_item"]).numpy()]
    methods = {"ranker": heads[BC.HEAD], **BC.popularity_scores(
        positives, item_ids, scored["request_ts"], scored["cand_item"],
        cfg.ranker_eval.popularity_window_days),
        "pinnerformer_dot": np.sum(cand_pf * scored["pf_embedding"], axis=1)}
    metrics = BC.compare(methods, scored["label"], scored["request_id"], k=3)
    print(json.dumps({
        "protocol": args.protocol, "seed": args.seed, "steps": steps, "lr": rcfg.learning_rate,
        "clipnorm": args.clipnorm, "hide_weight": args.hide_weight,
        "pf_dot": cfg.ranker.use_pf_dot, "set": args.set,
        "requests": int(len(np.unique(scored["request_id"]))),
        "repin": {m: {k: round(v, 4) for k, v in d.items()} for m, d in metrics.items()},
        "auc_per_head": {h: round(float(RM.auc(heads[h], scored["labels"][:, i] > 0)), 4)
                         for i, h in enumerate(F.HEADS)},
        "repin_score_std": round(float(np.std(heads[BC.HEAD])), 5),
        "loss": [round(v, 3) for v in history.history["loss"]],
        "train_s": round(train_s, 1)}))


if __name__ == "__main__":
    main()
