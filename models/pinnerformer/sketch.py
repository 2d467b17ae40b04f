"""Streaming count-min sketch of label-item frequencies, for the logQ correction
(docs/models.md, "Sampled softmax, negatives and logQ correction").

Hash family (Carter-Wegman): h_d(x) = ((a_d * (x mod p) + b_d) mod p) mod width with p = 2^31 - 1 and
1 <= a_d < p, 0 <= b_d < p drawn from a seeded numpy RNG. Every intermediate fits in int64 (a*x < 2^62), so
TF and numpy agree bit for bit. Ids are reduced mod p first: ids that differ by a multiple of p collide,
which a count-min sketch tolerates (it only ever over-estimates).

State lives in non-trainable int64 variables placed on the CPU (int64 scatter kernels are not guaranteed on
accelerators; the sketch is tiny). Under a multi-replica strategy every replica keeps its own copy (ON_READ
variables, saved from the first replica); model.py updates every copy with all replicas' labels, so the
copies stay equal.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

PRIME = (1 << 31) - 1


def hash_params(depth: int, seed: int):
    """(a [depth], b [depth]) int64 for the hash family, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, PRIME, size=depth, dtype=np.int64)
    b = rng.integers(0, PRIME, size=depth, dtype=np.int64)
    return a, b


def hash_ids(ids, a, b, width: int):
    """Bucket of every id under every hash row: int64 [depth, n]. Works for numpy and TF inputs alike."""
    if isinstance(ids, np.ndarray):
        x = np.mod(ids.astype(np.int64), PRIME)
        return np.mod(np.mod(a[:, None] * x[None, :] + b[:, None], PRIME), width)
    x = tf.math.floormod(tf.cast(ids, tf.int64), PRIME)
    a = tf.cast(a, tf.int64)
    b = tf.cast(b, tf.int64)
    return tf.math.floormod(tf.math.floormod(a[:, None] * x[None, :] + b[:, None], PRIME), width)


class CountMinSketch(tf.Module):
    """count[depth, width] int64 plus `total` (number of ids ever added)."""

    def __init__(self, width: int, depth: int, seed: int = 0, name: str = "count_min_sketch"):
        super().__init__(name=name)
        if width < 1 or depth < 1:
            raise ValueError("width and depth must be >= 1")
        self.width = int(width)
        self.depth = int(depth)
        a, b = hash_params(self.depth, seed)
        with tf.device("/CPU:0"):
            # Hash parameters are variables too, so a restored sketch always hashes like the saved one.
            local = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.a = tf.Variable(a, name="hash_a", **local)
            self.b = tf.Variable(b, name="hash_b", **local)
            self.counts = tf.Variable(tf.zeros([self.depth, self.width], tf.int64), name="counts", **local)
            self.total = tf.Variable(tf.constant(0, tf.int64), name="total", **local)

    def hash_params(self):
        """(a, b, prime, width) as numpy, for an independent reference implementation."""
        return self.a.numpy(), self.b.numpy(), PRIME, self.width

    def _indices(self, ids):
        ids = tf.reshape(tf.cast(ids, tf.int64), [-1])
        buckets = hash_ids(ids, self.a, self.b, self.width)  # [depth, n]
        rows = tf.broadcast_to(tf.range(self.depth, dtype=tf.int64)[:, None], tf.shape(buckets))
        return ids, tf.stack([rows, buckets], axis=-1)  # [depth, n, 2]

    def update(self, ids):
        """Adds one occurrence of every id (duplicates count several times). Returns the update op."""
        with tf.device("/CPU:0"):
            ids, idx = self._indices(ids)
            n = tf.size(ids, out_type=tf.int64)
            idx, ones = tf.reshape(idx, [-1, 2]), tf.ones([self.depth * n], tf.int64)
            if isinstance(self.counts, tf.distribute.DistributedValues):
                # Distributed variables have no scatter_nd_add: a dense depth x width delta.
                self.counts.assign_add(tf.scatter_nd(idx, ones, tf.constant([self.depth, self.width], tf.int64)))
            else:
                self.counts.scatter_nd_add(idx, ones)
            return self.total.assign_add(n)

    def estimate(self, ids):
        """Upper-bound estimate of each id's count: min over the hash rows. int64, shape of `ids`."""
        with tf.device("/CPU:0"):
            ids_t = tf.convert_to_tensor(ids)
            _, idx = self._indices(ids_t)
            est = tf.reduce_min(tf.gather_nd(self.counts, idx), axis=0)
            return tf.reshape(est, tf.shape(ids_t))

    def reset(self):
        self.counts.assign(tf.zeros_like(self.counts))
        self.total.assign(0)
