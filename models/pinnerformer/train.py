"""Training loop pieces shared by run_fn and the benchmark scripts (no TFX here)."""
from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from pipeline.config import PipelineConfig


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak`, then cosine decay to 0 at `total_steps`."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak, self.warmup, self.total = float(peak), int(warmup_steps), int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup, 1)
        frac = tf.clip_by_value((step - self.warmup) / max(self.total - self.warmup, 1), 0.0, 1.0)
        cos = 0.5 * self.peak * (1.0 + tf.cos(math.pi * frac))
        return tf.where(step < self.warmup, warm, cos)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup, "total_steps": self.total}


def make_optimizer(cfg: PipelineConfig) -> keras.optimizers.Optimizer:
    t = cfg.train
    opt = keras.optimizers.AdamW(
        learning_rate=WarmupCosine(t.learning_rate, t.warmup_steps, t.train_steps),
        weight_decay=t.weight_decay, clipnorm=1.0)
    # Decaying log(temperature) would pull tau towards 1 instead of letting it learn.
    opt.exclude_from_weight_decay(var_names=["log_temperature"])
    return opt


def fit(model: keras.Model, cfg: PipelineConfig, train_ds: tf.data.Dataset,
        eval_ds: tf.data.Dataset, log_dir: str, verbose: int = 2):
    """model.fit in `train_steps / steps_per_epoch` epochs with TensorBoard logs in log_dir,
    stopping early on the validation loss when configured."""
    t = cfg.train
    steps_per_epoch = max(1, min(t.steps_per_epoch, t.train_steps))
    epochs = max(1, math.ceil(t.train_steps / steps_per_epoch))
    callbacks = [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=max(1, steps_per_epoch // 4))]
    if t.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=t.early_stopping_patience, restore_best_weights=True,
            verbose=1))
    return model.fit(train_ds, steps_per_epoch=steps_per_epoch, epochs=epochs,
                     validation_data=eval_ds, validation_steps=t.eval_steps,
                     callbacks=callbacks, verbose=verbose)
