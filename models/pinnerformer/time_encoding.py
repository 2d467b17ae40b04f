"""Time2Vec-style periodic time encoding with fixed periods and learned phases
(PinnerFormer, App. A.1; docs/models.md, "Inputs and per-action features").

    r(t)_{2i-1} = cos(2*pi*t/p_i + phi_{2i-1}),  r(t)_{2i} = sin(2*pi*t/p_i + phi_{2i}),  r(t)_{2P+1} = log(t + 1)

Absolute timestamps are ~1.7e9 s: in float32 the phase 2*pi*t/p would be garbage for the short periods
(float32 has ~7 significant digits), so the fraction of a period, (t mod p) / p, is computed in float64
and only the final angle in [0, 2*pi) is cast to float32.

Mixed precision (train.mixed_precision): the encoding is always computed in float32, phases
included (a bfloat16 angle has ~3 significant digits), and only the result is cast to the layer's
compute dtype; ActionFeatures builds it with dtype="float32", so it stays float32 throughout.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tf_keras as keras

HOUR_S = 3600.0
DAY_S = 86400.0


def abs_periods() -> np.ndarray:
    """The 12 hand-picked periods (seconds) for the absolute timestamp."""
    hours = [0.25, 0.5, 0.75, 1.0, 2.0, 4.0, 8.0, 16.0]
    days = [1.0, 7.0, 28.0, 365.0]
    return np.array([h * HOUR_S for h in hours] + [d * DAY_S for d in days], dtype=np.float64)


def rel_periods(num: int = 32) -> np.ndarray:
    """`num` periods evenly spaced on a log scale from 1 s to 28 days (relative times)."""
    return np.geomspace(1.0, 28.0 * DAY_S, num).astype(np.float64)


class PeriodicTimeEncoding(keras.layers.Layer):
    """Maps times t (seconds, any numeric dtype, shape [...]) to [..., 2P + 1], computed in float32
    and returned in the layer's compute dtype (float32 unless the layer has a mixed policy).

    Output layout: [cos_1, sin_1, cos_2, sin_2, ..., cos_P, sin_P, log(t + 1)], with one learned phase per
    output coordinate (`phase[i, 0]` for cos_i, `phase[i, 1]` for sin_i), initialised to 0.
    Negative t is clamped to 0 for the log term (the periodic terms use t as given).
    `log(t + 1)` instead of the paper's `log t` keeps t = 0 finite (docs/models.md, "Deviations").
    """

    def __init__(self, periods, **kwargs):
        # autocast=False: Keras would otherwise cast float64 inputs to float32 before `call`.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.periods = np.asarray(periods, dtype=np.float64).reshape(-1)
        if self.periods.size == 0 or np.any(self.periods <= 0):
            raise ValueError("periods must be a non-empty list of positive numbers")
        self.phase = self.add_weight(
            name="phase", shape=(self.periods.size, 2), initializer="zeros", trainable=True,
            dtype=tf.float32)

    @property
    def output_dim(self) -> int:
        return 2 * self.periods.size + 1

    def call(self, t):
        t64 = tf.cast(t, tf.float64)
        periods = tf.constant(self.periods, tf.float64)
        # (t mod p) / p as q - floor(q): float64 FloorMod is a slow scalar kernel on CPU.
        q = t64[..., None] / periods
        frac = q - tf.floor(q)  # [..., P] in [0, 1)
        angle = tf.cast(2.0 * math.pi * frac, tf.float32)
        # Under a mixed policy the float32 phase variable reads as the compute dtype: back to float32.
        phase = tf.cast(self.phase, tf.float32)
        cos = tf.cos(angle + phase[:, 0])
        sin = tf.sin(angle + phase[:, 1])
        periodic = tf.reshape(tf.stack([cos, sin], axis=-1),
                              tf.concat([tf.shape(angle)[:-1], [2 * self.periods.size]], 0))
        log_t = tf.cast(tf.math.log1p(tf.maximum(t64, 0.0)), tf.float32)[..., None]
        return tf.cast(tf.concat([periodic, log_t], axis=-1), self.compute_dtype)

    def get_config(self):
        cfg = super().get_config()
        cfg["periods"] = self.periods.tolist()
        return cfg
