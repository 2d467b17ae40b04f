"""Weighted multi-task BCE of the ranker (TransAct Eq. 1-2; docs/models.md, "Weighted loss"), as pure functions.

    L = (1/B) * sum_i w_u(i) * sum_h w_h(i) * BCE(y_ih, f_ih)
    BCE(y, f) = -[ y log f + (1 - y) log(1 - f) ]      (the paper's "(1 - log f)" is a typo)

Head weights (exact rule, `head_weights`):
    row i has at least one action (any y_ia > 0):  w_h(i) = sum_a M[h, a] * y_ia
    row i has no action at all:                    w_h(i) = no_action_weight          (every head)
M is H x H (rows = heads, columns = label actions in head order). The no-action branch is our default
impression weight: with the paper's formula alone an impression without any action would weigh 0 everywhere.
For rows with actions, heads that M gives 0 stay at 0 (the paper's formula, unchanged).
w_u is the optional per-row (user) weight, e.g. w_state * w_location * w_gender (1 when absent).
The loss is normalised by the batch size B (Keras' SUM_OVER_BATCH_SIZE), not by the sum of weights, so a
batch full of hides really weighs 100x more.
"""
from __future__ import annotations

import tensorflow as tf

_EPS = 1e-7


def head_weights(labels, label_weights, no_action_weight: float = 1.0):
    """labels [B, H] (0/1), label_weights M [H, H] -> w [B, H] (see the module docstring)."""
    y = tf.cast(labels, tf.float32)
    m = tf.cast(tf.convert_to_tensor(label_weights), tf.float32)
    w = tf.matmul(y, m, transpose_b=True)  # w[i, h] = sum_a y[i, a] * M[h, a]
    any_action = tf.reduce_any(y > 0, axis=-1, keepdims=True)
    return tf.where(any_action, w, tf.cast(no_action_weight, tf.float32))


def _reduce(per_head, weights, sample_weight):
    per_row = tf.reduce_sum(tf.cast(weights, tf.float32) * per_head, axis=-1)  # [B]
    if sample_weight is not None:
        per_row = per_row * tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    b = tf.cast(tf.shape(per_row)[0], tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_row), b)


def weighted_bce(labels, probs, weights, sample_weight=None, eps: float = _EPS):
    """Scalar loss from probabilities [B, H] (clipped to [eps, 1 - eps]); weights [B, H]; sample_weight [B]."""
    y = tf.cast(labels, tf.float32)
    p = tf.clip_by_value(tf.cast(probs, tf.float32), eps, 1.0 - eps)
    per_head = -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
    return _reduce(per_head, weights, sample_weight)


def weighted_bce_from_logits(labels, logits, weights, sample_weight=None):
    """Same loss from logits (numerically stable; what training uses)."""
    y = tf.cast(labels, tf.float32)
    per_head = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=tf.cast(logits, tf.float32))
    return _reduce(per_head, weights, sample_weight)
