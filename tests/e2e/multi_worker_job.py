"""One training task for tests/e2e/test_multi_worker.py (run as a script, one process per task).

The trainer's own model, optimizer and Keras train function (models/pinnerformer/run.py) on a
fixed synthetic global batch, under the strategy TF_CONFIG asks for (models/distribute.py). Each
task trains on its rows of the global batch. Writes JSON to argv[1]: the per-step loss (the mean
over the global batch), the number of replicas, and the trainable weights before the first and
after the last step.

  python tests/e2e/multi_worker_job.py OUT.json STEPS [section.field=value ...]
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # benchmarks/

from pinrank.pipeline import bootstrap  # noqa: E402, F401  (environment before TensorFlow)

# isort: split

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from benchmarks.train_throughput import NUM_ACTIONS, NUM_SURFACES, synthetic_batch, synthetic_catalog  # noqa: E402
from pinrank.models import distribute  # noqa: E402
from pinrank.models.pinnerformer import train  # noqa: E402
from pinrank.models.pinnerformer.model import PinnerFormer  # noqa: E402
from pinrank.pipeline.config import apply_overrides, preset  # noqa: E402


def main(out: str, steps: int, overrides) -> None:
    cfg = apply_overrides(preset("tiny"), overrides)
    keras.utils.set_random_seed(cfg.train.seed)  # as run_fn: the same initial weights everywhere
    item_ids, item_emb = synthetic_catalog(cfg, 400)
    batch = synthetic_batch(cfg, item_ids, seed=1)  # the global batch
    strategy = distribute.strategy()
    replicas = strategy.num_replicas_in_sync  # one CPU replica per task
    task = int(distribute.tf_config().get("task", {}).get("index", 0))
    rows = cfg.train.batch_size // replicas
    local = {k: v[task * rows:(task + 1) * rows] for k, v in batch.items()}
    with strategy.scope():
        model = PinnerFormer(cfg.model, item_ids, item_emb, NUM_ACTIONS, NUM_SURFACES, seed=cfg.train.seed)
        model.compile(optimizer=train.make_optimizer(cfg))
        model.pair_loss({k: tf.constant(v) for k, v in local.items()}, training=False, seed=[0, 0],
                        update_sketch=False)  # creates every weight, as the first step would
    data = strategy.distribute_datasets_from_function(
        lambda _: tf.data.Dataset.from_tensors(local).repeat())
    initial = np.concatenate([w.numpy().ravel() for w in model.trainable_weights])
    iterator, step = iter(data), model.make_train_function()
    losses = []
    for _ in range(steps):
        model.loss_tracker.reset_state()  # per-step, not running, means
        # The loss metric's result is already the mean over all replicas, and Keras' train
        # function sums each replica's outputs ("auto" reduction): divide by the replicas.
        losses.append(float(step(iterator)["loss"]) / replicas)
    weights = np.concatenate([w.numpy().ravel() for w in model.trainable_weights])
    with open(out, "w") as fh:
        json.dump({"losses": losses, "replicas": replicas, "weights": weights.tolist(),
                   "initial": initial.tolist()}, fh)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
