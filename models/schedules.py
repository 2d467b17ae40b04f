"""The learning-rate schedule of both models (PinnerFormer and the realtime ranker).

Not tf_keras.optimizers.schedules.CosineDecay(warmup_target=, warmup_steps=): Keras' warmup
starts at initial_learning_rate at step 0 and reaches the peak at step `warmup`, ours is
peak * (step + 1) / warmup; no initial_learning_rate reproduces it
(tests/unit/test_schedules.py), so the library would change training.
"""
from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak` over `warmup` steps, then cosine decay to `peak * floor` over `decay` steps
    (constant afterwards; decay = 0 keeps the peak). TransAct's schedule; docs/models.md, "DCNv2 and heads"."""

    def __init__(self, peak: float, warmup: int, decay: int, floor: float = 0.0):
        self.peak, self.warmup, self.decay, self.floor = float(peak), int(warmup), int(decay), float(floor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * tf.minimum(1.0, (step + 1.0) / max(self.warmup, 1))
        if self.decay <= 0:
            return warm
        frac = tf.clip_by_value((step - self.warmup) / self.decay, 0.0, 1.0)
        cos = self.floor + (1.0 - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * frac))
        return tf.where(step < self.warmup, warm, self.peak * cos)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "decay": self.decay, "floor": self.floor}
