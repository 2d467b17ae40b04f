import numpy as np
import tensorflow as tf

from pinrank.models.pinnerformer.sketch import CountMinSketch, hash_ids


def _numpy_count_min(batches, a, b, prime, width):
    counts = np.zeros((len(a), width), np.int64)
    for ids in batches:
        x = np.mod(ids, prime)
        for d in range(len(a)):
            np.add.at(counts[d], ((a[d] * x + b[d]) % prime) % width, 1)
    return counts


def _numpy_estimate(counts, ids, a, b, prime, width):
    x = np.mod(ids, prime)
    return np.min([counts[d, ((a[d] * x + b[d]) % prime) % width] for d in range(len(a))], axis=0)


def test_matches_numpy_and_upper_bounds_exact_counts():
    rng = np.random.default_rng(1)
    sk = CountMinSketch(width=64, depth=3, seed=7)
    batches = [rng.zipf(1.3, size=40).astype(np.int64) + 10**12 for _ in range(5)]  # large ids too
    for ids in batches:
        sk.update(tf.constant(ids))
    a, b, prime, width = sk.hash_params()
    ref_counts = _numpy_count_min(batches, a, b, prime, width)
    np.testing.assert_array_equal(sk.counts.numpy(), ref_counts)
    assert sk.total.numpy() == 200
    query = np.unique(np.concatenate(batches + [np.array([5, -1], np.int64)]))
    est = sk.estimate(tf.constant(query)).numpy()
    np.testing.assert_array_equal(est, _numpy_estimate(ref_counts, query, a, b, prime, width))
    allids = np.concatenate(batches)
    exact = np.array([(allids == q).sum() for q in query])
    assert np.all(est >= exact)
    assert np.any(est > exact)  # width 64 is small enough to collide on this stream


def test_exact_without_collisions():
    sk = CountMinSketch(width=1 << 16, depth=4, seed=0)
    ids = np.array([3, 3, 3, 9, 11, 11, 123456789], np.int64)
    sk.update(ids)
    a, b, prime, width = sk.hash_params()
    q = np.array([3, 9, 11, 123456789, 42], np.int64)
    buckets = hash_ids(q, a, b, width)
    assert all(len(set(row)) == len(q) for row in buckets)  # no collisions in any row
    np.testing.assert_array_equal(sk.estimate(q).numpy(), [3, 1, 2, 1, 0])
    np.testing.assert_array_equal(hash_ids(tf.constant(q), a, b, width).numpy(), buckets)
    # estimate keeps the input shape
    assert sk.estimate(tf.constant([[3, 9]], tf.int64)).shape == (1, 2)


def test_seeded_hashes_and_state_not_trainable():
    a1 = CountMinSketch(128, 2, seed=3).hash_params()
    a2 = CountMinSketch(128, 2, seed=3).hash_params()
    a3 = CountMinSketch(128, 2, seed=4).hash_params()
    np.testing.assert_array_equal(a1[0], a2[0])
    assert not np.array_equal(a1[0], a3[0])
    assert CountMinSketch(16, 2).trainable_variables == ()
