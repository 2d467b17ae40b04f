"""Reading the Transform output contract (pipeline/features.py) into well-shaped tensors.

Scalars may arrive as [B] or [B, 1]; sequences as [B, M]. Masks always come from the lengths, never from
the padding values.
"""
from __future__ import annotations

import tensorflow as tf

from pinrank.pipeline import features as F


def sequence(features, name: str, dtype=tf.int64) -> tf.Tensor:
    """A transformed sequence feature `xf(name)` as a [B, M] tensor of `dtype`."""
    x = features[F.xf(name)]
    if isinstance(x, (tf.SparseTensor, tf.RaggedTensor)):
        raise TypeError(f"{F.xf(name)} must be a dense padded tensor, got {type(x).__name__}")
    x = tf.convert_to_tensor(x)
    if x.shape.rank == 3:  # [B, M, 1]
        x = tf.squeeze(x, -1)
    return tf.cast(x, dtype)


def length(features, key: str, width) -> tf.Tensor:
    """A length feature (`SEQ_LEN_XF` / `FUT_LEN_XF`) as int32 [B], clipped to [0, width]."""
    n = tf.reshape(tf.cast(tf.convert_to_tensor(features[key]), tf.int32), [-1])
    return tf.clip_by_value(n, 0, tf.cast(width, tf.int32))


def width(x: tf.Tensor):
    """Static width of a [B, W] tensor when known, else the dynamic one."""
    return x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
