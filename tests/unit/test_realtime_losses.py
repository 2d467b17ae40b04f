"""DCNv2 cross layers and the label-weighted BCE vs numpy references."""
import numpy as np
import pytest

from pinrank.models.realtime import (
    CrossLayer,
    CrossNetwork,
    default_label_weights,
    head_weights,
    weighted_bce,
    weighted_bce_from_logits,
)

HEADS = ("repin", "click", "closeup", "hide")


def test_cross_layer_matches_numpy():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(5, 6)).astype(np.float32)
    xl = rng.normal(size=(5, 6)).astype(np.float32)
    layer = CrossLayer()
    layer(x0, xl)
    w = rng.normal(size=(6, 6)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    layer.set_weights([w, b])
    np.testing.assert_allclose(layer(x0, xl).numpy(), x0 * (xl @ w + b) + xl, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(x0).numpy(), x0 * (x0 @ w + b) + x0, rtol=1e-5, atol=1e-5)
    assert layer.kernel.shape == (6, 6)  # full rank


def test_cross_network_matches_numpy_and_split():
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(4, 7)).astype(np.float32)
    net = CrossNetwork(3)
    net(x0)
    ref = x0
    for layer in net.cross_layers:
        w, b = [rng.normal(scale=0.3, size=v.shape).astype(np.float32) for v in layer.weights]
        layer.set_weights([w, b])
        ref = x0 * (ref @ w + b) + ref
    np.testing.assert_allclose(net(x0).numpy(), ref, rtol=1e-4, atol=1e-5)
    shared = rng.normal(size=(1, 3)).astype(np.float32)
    per_row = rng.normal(size=(4, 4)).astype(np.float32)
    full = np.concatenate([np.repeat(shared, 4, 0), per_row], 1)
    np.testing.assert_allclose(net.call_split(shared, per_row).numpy(), net(full).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(CrossNetwork(0)(x0).numpy(), x0)


def _np_weights(y, m, no_action):
    w = np.zeros(y.shape)
    for i in range(len(y)):
        for h in range(y.shape[1]):
            w[i, h] = sum(m[h][a] * y[i, a] for a in range(y.shape[1])) if y[i].any() else no_action
    return w


def test_head_weights_hide_and_no_action_rows():
    m = np.array(default_label_weights(HEADS))
    y = np.array([[0, 0, 0, 1],   # hide only: 100 on click and repin heads, 1 on closeup / hide
                  [0, 0, 0, 0],   # impression without action: no_action_weight everywhere
                  [1, 1, 0, 0],   # repin + click: 2 on every head
                  [0, 1, 0, 1]], np.float32)
    w = head_weights(y, m, no_action_weight=0.5).numpy()
    np.testing.assert_allclose(w[0], [100, 100, 1, 1])
    np.testing.assert_allclose(w[1], [0.5] * 4)
    np.testing.assert_allclose(w[2], [2] * 4)
    np.testing.assert_allclose(w[3], [101, 101, 2, 2])
    rng = np.random.default_rng(2)
    m2 = rng.uniform(0, 3, (4, 4))
    y2 = (rng.random((20, 4)) < 0.3).astype(np.float32)
    np.testing.assert_allclose(head_weights(y2, m2, 1.5).numpy(), _np_weights(y2, m2, 1.5), rtol=1e-6)


def test_weighted_bce_matches_numpy():
    rng = np.random.default_rng(3)
    y = (rng.random((16, 4)) < 0.3).astype(np.float32)
    y[0] = [0, 0, 0, 1]
    y[1] = 0
    logits = rng.normal(scale=2, size=(16, 4)).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    m = np.array(default_label_weights(HEADS))
    w = _np_weights(y, m, 1.0)
    uw = rng.uniform(0.5, 2, 16)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    ref = (w * bce).sum(1).mean()
    ref_u = (uw * (w * bce).sum(1)).sum() / 16
    tw = head_weights(y, m, 1.0)
    assert weighted_bce(y, p.astype(np.float32), tw).numpy() == pytest.approx(ref, rel=1e-5)
    assert weighted_bce_from_logits(y, logits, tw).numpy() == pytest.approx(ref, rel=1e-5)
    assert weighted_bce_from_logits(y, logits, tw, uw).numpy() == pytest.approx(ref_u, rel=1e-5)
    # The hide row dominates through its weight-100 click/repin terms.
    assert ((w * bce)[0, :2] == 100 * bce[0, :2]).all()
    # Extreme probabilities are clipped, never inf.
    assert np.isfinite(weighted_bce(np.ones((1, 4)), np.zeros((1, 4)), np.ones((1, 4))).numpy())
