"""Training loop pieces shared by run_fn and the benchmark scripts (no TFX here)."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pinrank.components.retrieval_evaluator import metrics as M
from pinrank.models.pinnerformer import inputs, retrieval
from pinrank.models.schedules import WarmupCosine
from pinrank.pipeline import features as F
from pinrank.pipeline.config import PipelineConfig


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class FailOnNonFinite(keras.callbacks.Callback):
    """Fails the fit at the first NaN/Inf training or validation loss. Keras' TerminateOnNaN only
    stops fitting, after which run_fn would export the broken model and hand it to the gates;
    raising fails the Trainer, so the run stops there and names the step."""

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"epoch {self._epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"end of epoch {epoch + 1}")

    @staticmethod
    def _check(logs, where: str) -> None:
        for name, value in (logs or {}).items():
            if name.endswith("loss") and not math.isfinite(float(value)):
                raise NonFiniteLossError(f"{name} is {float(value)} at {where}: training "
                                         "diverged (lower the learning rate or check the "
                                         "inputs for NaN/Inf)")


def callbacks(log_dir: str, update_freq="epoch") -> list:
    """What every fit in this repository runs with: TensorBoard logs and the NaN/Inf guard."""
    return [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=update_freq),
            FailOnNonFinite()]


class ValidationRecall(keras.callbacks.Callback):
    """Adds `val_recall@k` and `val_p90_coverage@k` to each epoch's logs: the validation users'
    Recall@k over the whole catalogue and the P90 coverage of their top k, computed by the
    RetrievalEvaluator's metric code, so early stopping can select on what the gate measures
    rather than on the sampled-softmax loss (and TensorBoard shows both). One difference: the
    excluded history is the M most recent items the model sees, not the whole stored history."""

    def __init__(self, valid_ds: tf.data.Dataset, k: int):
        super().__init__()
        self.valid_ds = valid_ds  # one finite pass over the validation examples
        self.k = k
        self.key = f"val_recall@{k}"
        self.coverage_key = f"val_p90_coverage@{k}"

    def scores(self) -> dict:
        """{"recall": Recall@k, "coverage": P90 coverage@k} of the validation users."""
        model = self.model
        ids, items = retrieval.catalog_embeddings(model)
        users, history, positives = [], [], []
        for batch in self.valid_ds:
            features, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
            users.append(model(features, training=False).numpy())
            history += _rows(features, F.HIST_ITEM, F.SEQ_LEN_XF)
            positives += _rows(features, F.FUT_ITEM, F.FUT_LEN_XF)
        if not users:
            raise ValueError("train.early_stopping_metric=recall: the validation split has no "
                             "examples (examples.valid_user_percent)")
        no_interests = np.full((ids.size, 1), -1, np.int64)
        m = M.retrieval_metrics(np.concatenate(users), items, ids, history, positives,
                                no_interests, k=self.k, entropy_k=self.k, curve_ks=())
        return {"recall": m[f"recall@{self.k}"], "coverage": m[f"p90_coverage@{self.k}"]}

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            s = self.scores()
            logs[self.key], logs[self.coverage_key] = s["recall"], s["coverage"]


def _rows(features, name: str, length_key: str) -> list:
    """A padded transformed sequence as one int64 array per example (its first `length` ids)."""
    x = inputs.sequence(features, name).numpy()
    n = inputs.length(features, length_key, x.shape[1]).numpy()
    return [row[:m] for row, m in zip(x, n)]


def _epoch_steps(t) -> int:
    return max(1, min(t.steps_per_epoch, t.train_steps))


@contextlib.contextmanager
def precision_policy(name: str):
    """Keras' global dtype policy `name` ("" = float32) inside the block, float32 again after it
    (also on errors): layers take the global policy when they are built, so the model is built
    inside the block and later code and tests keep float32 (train.mixed_precision)."""
    keras.mixed_precision.set_global_policy(name or "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def make_optimizer(cfg: PipelineConfig) -> keras.optimizers.Optimizer:
    t = cfg.train
    ema = {}
    if t.ema_momentum > 0:  # the average replaces the weights at each epoch's last step
        ema = {"use_ema": True, "ema_momentum": t.ema_momentum,
               "ema_overwrite_frequency": _epoch_steps(t)}
    opt = keras.optimizers.AdamW(
        # Cosine to 0 at train_steps (at least one decay step).
        learning_rate=WarmupCosine(t.learning_rate, t.warmup_steps,
                                   max(t.train_steps - t.warmup_steps, 1)),
        weight_decay=t.weight_decay, clipnorm=1.0, **ema)
    # Decaying log(temperature) would pull tau towards 1 instead of letting it learn.
    opt.exclude_from_weight_decay(var_names=["log_temperature"])
    return loss_scaled(opt, t.mixed_precision)


def loss_scaled(opt: keras.optimizers.Optimizer, precision: str) -> keras.optimizers.Optimizer:
    """`opt` in Keras' LossScaleOptimizer (dynamic loss scaling against float16 gradient
    underflow) under "mixed_float16", else `opt` itself. The models' train_step call
    `optimizer.minimize`, which then scales the loss and unscales the gradients."""
    if precision == "mixed_float16":
        return keras.mixed_precision.LossScaleOptimizer(opt)
    return opt


def fit(model: keras.Model, cfg: PipelineConfig, train_ds: tf.data.Dataset,
        eval_ds: tf.data.Dataset, log_dir: str, verbose: int = 2,
        valid_once: tf.data.Dataset | None = None):
    """model.fit in `train_steps / steps_per_epoch` epochs with TensorBoard logs in log_dir,
    stopping early on the validation loss or recall when configured, failing on a NaN/Inf loss.
    valid_once: one finite pass over the validation examples (needed for the recall criterion)."""
    t = cfg.train
    steps_per_epoch = _epoch_steps(t)
    epochs = max(1, math.ceil(t.train_steps / steps_per_epoch))
    cbs = callbacks(log_dir, update_freq=max(1, steps_per_epoch // 4))
    if t.early_stopping_patience > 0:
        monitor, mode = "val_loss", "min"
        if t.early_stopping_metric == "recall":
            if valid_once is None:
                raise ValueError("train.early_stopping_metric=recall needs the validation "
                                 "examples (valid_once)")
            recall = ValidationRecall(valid_once, cfg.eval.k)
            cbs.insert(0, recall)  # before TensorBoard and EarlyStopping read the logs
            monitor, mode = recall.key, "max"
        cbs.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=t.early_stopping_patience,
            restore_best_weights=True, verbose=1))
    return model.fit(train_ds, steps_per_epoch=steps_per_epoch, epochs=epochs,
                     validation_data=eval_ds, validation_steps=t.eval_steps,
                     callbacks=cbs, verbose=verbose)
