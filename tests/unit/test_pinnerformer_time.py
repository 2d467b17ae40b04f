import numpy as np
import pytest
import tensorflow as tf

from pinrank.models.pinnerformer.time_encoding import PeriodicTimeEncoding, abs_periods, rel_periods

H, D = 3600.0, 86400.0


def _reference(t, periods, phase):
    """Independent float64 numpy encoding: interleaved cos/sin with per-coordinate phases, then log(t+1)."""
    t = np.asarray(t, np.float64)[..., None]
    ang = 2 * np.pi * t / periods
    cos = np.cos(ang + phase[:, 0])
    sin = np.sin(ang + phase[:, 1])
    out = np.stack([cos, sin], -1).reshape(t.shape[:-1] + (2 * len(periods),))
    return np.concatenate([out, np.log1p(np.maximum(t, 0))], -1)


def test_periods():
    np.testing.assert_allclose(abs_periods(), [.25 * H, .5 * H, .75 * H, H, 2 * H, 4 * H, 8 * H, 16 * H,
                                               D, 7 * D, 28 * D, 365 * D])
    rel = rel_periods()
    assert rel.shape == (32,)
    np.testing.assert_allclose([rel[0], rel[-1]], [1.0, 28 * D])
    ratios = rel[1:] / rel[:-1]
    np.testing.assert_allclose(ratios, ratios[0])  # log-spaced


def test_absolute_timestamps_match_float64():
    t = np.array([[1_700_000_000, 1_700_000_901], [1_699_999_123, 0]], np.int64)
    layer = PeriodicTimeEncoding(abs_periods())
    out = layer(tf.constant(t)).numpy()
    assert out.shape == (2, 2, 25) and out.dtype == np.float32
    ref = _reference(t, abs_periods(), np.zeros((12, 2)))
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # float64 input gives the same answer (autocast must not squash it to float32 first)
    np.testing.assert_allclose(layer(tf.constant(t, tf.float64)).numpy(), ref, atol=1e-4)
    # The precision guard matters: a naive float32 computation is wrong by O(1) at 1.7e9 s.
    naive = np.cos(2 * np.pi * np.float32(1_700_000_901) / np.float32(900.0), dtype=np.float32)
    assert abs(naive - ref[0, 1, 0]) > 1e-2


def test_learned_phases_shift_each_coordinate():
    periods = rel_periods()
    layer = PeriodicTimeEncoding(periods)
    assert [v.shape.as_list() for v in layer.trainable_variables] == [[32, 2]]
    np.testing.assert_array_equal(layer.phase.numpy(), 0.0)  # initialised at 0
    phase = np.random.default_rng(0).uniform(-3, 3, (32, 2))
    layer.phase.assign(phase)
    t = np.array([0, 1, 7, 3600, 86_399, 2_419_200, 31_536_000], np.int64)
    np.testing.assert_allclose(layer(tf.constant(t)).numpy(), _reference(t, periods, phase), atol=1e-4)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(layer(tf.constant(t)) ** 2 * tf.range(1, 66, dtype=tf.float32))
    grad = tape.gradient(y, layer.phase)
    assert np.all(np.abs(grad.numpy()) > 0)


@pytest.mark.parametrize("t", [0, 5])
def test_log_term(t):
    out = PeriodicTimeEncoding([10.0])(tf.constant([t], tf.int64)).numpy()
    np.testing.assert_allclose(out[0], [np.cos(2 * np.pi * t / 10), np.sin(2 * np.pi * t / 10), np.log1p(t)],
                               atol=1e-6)
