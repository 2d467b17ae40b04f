"""The warmup + cosine learning-rate schedule (models/schedules.py) that both models train with,
and why it is not tf_keras' CosineDecay with warmup."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pinrank.models.schedules import WarmupCosine

STEPS = tf.range(0, 25000, dtype=tf.int64)
CASES = [(3e-4, 100, 2900, 0.0), (3e-3, 10, 50, 0.0), (1e-3, 100, 5000, 0.1),
         (0.0048, 5000, 100000, 0.0), (5e-4, 2000, 18000, 0.25)]


@pytest.mark.parametrize("peak,warmup,decay,floor", CASES)
def test_keras_cosine_decay_is_not_the_same_schedule(peak, warmup, decay, floor):
    """Keras' warmup starts at initial_learning_rate at step 0 and reaches the peak at step
    `warmup`; ours is peak * (step + 1) / warmup. No initial_learning_rate reproduces it, so
    replacing the schedule would change training: the project keeps its own."""
    ours = WarmupCosine(peak, warmup, decay, floor)(STEPS).numpy()
    lib = keras.optimizers.schedules.CosineDecay(peak / warmup, decay, alpha=floor,
                                                 warmup_target=peak, warmup_steps=warmup)
    theirs = np.array([float(lib(s)) for s in range(0, 25000, 7)], np.float32)
    ours, after = ours[::7], np.arange(0, 25000, 7) >= warmup
    assert not np.allclose(theirs[~after], ours[~after], rtol=0, atol=1e-7)
    # After the warmup both are the same cosine, up to float32 rounding.
    np.testing.assert_allclose(theirs[after], ours[after], rtol=1e-6, atol=1e-6 * peak)


@pytest.mark.parametrize("peak,warmup,decay,floor", CASES)
def test_schedule_values(peak, warmup, decay, floor):
    """Linear warmup peak * (step + 1) / warmup, cosine to peak * floor over `decay` steps,
    then constant (float64 reference)."""
    s = np.arange(25000, dtype=np.float64)
    frac = np.clip((s - warmup) / decay, 0.0, 1.0)
    ref = np.where(s < warmup, peak * (s + 1) / warmup,
                   peak * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * frac))))
    np.testing.assert_allclose(WarmupCosine(peak, warmup, decay, floor)(STEPS).numpy(), ref,
                               rtol=1e-6, atol=1e-6 * peak)


def test_warmup_cosine_schedule():
    s = WarmupCosine(peak=0.01, warmup=10, decay=20, floor=0.1)
    def lr(step):
        return float(s(step))
    assert lr(0) == pytest.approx(0.001) and lr(9) == pytest.approx(0.01)
    assert lr(10) == pytest.approx(0.01) and lr(20) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))
    assert lr(30) == pytest.approx(0.001) and lr(1000) == pytest.approx(0.001)
    assert float(WarmupCosine(0.02, 0, 0)(5)) == pytest.approx(0.02)
