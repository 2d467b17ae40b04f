"""model.hand_gradients: GELU, LayerNorm and L2 normalisation with hand-written gradients give the values and
gradients of TF's autodiff within float tolerance, and so does the whole model's loss."""
import dataclasses

import numpy as np
import tensorflow as tf

from pinrank.models.pinnerformer import layers
from pinrank.models.pinnerformer.model import PinnerFormer
from pinrank.pipeline import features as F
from pinrank.pipeline.config import PinnerFormerConfig


def _value_and_grads(fn, *args):
    args = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(args)
        y = fn(*args)
        # A non-uniform upstream gradient, so every term of the backward pass matters.
        loss = tf.reduce_sum(tf.reshape(y, [-1]) * tf.sin(tf.range(tf.size(y), dtype=tf.float32)))
    return [y.numpy()] + [g.numpy() for g in tape.gradient(loss, args)]


def test_gelu_matches_autodiff():
    x = np.random.default_rng(0).normal(0, 3, (7, 33)).astype(np.float32)
    ref = _value_and_grads(layers.gelu_activation(False), x)
    got = _value_and_grads(layers.gelu_activation(True), x)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_layer_norm_matches_keras():
    rng = np.random.default_rng(1)
    x = rng.normal(2, 3, (4, 5, 16)).astype(np.float32)
    gamma, beta = rng.normal(1, .5, 16).astype(np.float32), rng.normal(0, .5, 16).astype(np.float32)
    out = []
    for hand in (False, True):
        ln = layers.LayerNorm(hand, epsilon=1e-6)
        ln.build(x.shape)
        ln.gamma.assign(gamma)
        ln.beta.assign(beta)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = ln(xt)
            loss = tf.reduce_sum(tf.reshape(y, [-1]) * tf.sin(tf.range(tf.size(y), dtype=tf.float32)))
        out.append([y.numpy()] + [g.numpy() for g in tape.gradient(loss, [xt, ln.gamma, ln.beta])])
    for r, g in zip(*out):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_model_loss_and_gradients_match_autodiff():
    m, fut, n_items = 8, 5, 40
    cfg = PinnerFormerConfig(seq_len=m, hidden=16, num_layers=2, num_heads=2, output_dim=8, action_emb_dim=4,
                             surface_emb_dim=4, dropout=0.0, num_sampled_positions=3, num_random_negatives=16,
                             max_in_batch_negatives=50, sketch_width=64, sketch_depth=2, history_mean_skip=True)
    rng = np.random.default_rng(2)
    ids = np.arange(1000, 1000 + n_items, dtype=np.int64)
    emb = rng.normal(size=(n_items, 6)).astype(np.float32)
    n = 6
    ts = np.sort(rng.integers(1_650_000_000, 1_650_000_000 + 50 * 86400, (n, m)), 1)[:, ::-1]
    feats = {
        F.xf(F.HIST_ITEM): rng.choice(ids, (n, m)), F.xf(F.HIST_ACTION): rng.integers(1, 5, (n, m)),
        F.xf(F.HIST_SURFACE): rng.integers(1, 6, (n, m)), F.xf(F.HIST_TS): ts,
        F.xf(F.HIST_DURATION): rng.exponential(20, (n, m)).astype(np.float32),
        F.xf(F.HIST_POS): rng.integers(0, 2, (n, m)), F.SEQ_LEN_XF: np.full(n, m),
        F.xf(F.FUT_ITEM): rng.choice(ids, (n, fut)), F.xf(F.FUT_TS): ts[:, :1] + np.arange(1, fut + 1) * 3600,
        F.FUT_LEN_XF: np.full((n, 1), fut),
    }
    feats = {k: tf.constant(v if v.dtype == np.float32 else v.astype(np.int64)) for k, v in feats.items()}
    results = []
    for hand in (False, True):
        model = PinnerFormer(dataclasses.replace(cfg, hand_gradients=hand), ids, emb, 6, 7, seed=0)
        seed = tf.constant([0, 1], tf.int64)
        model.pair_loss(feats, training=True, seed=seed, update_sketch=False)  # builds every layer
        if results:  # same weights as the autodiff model
            model.set_weights(results[0][2])
        with tf.GradientTape() as tape:
            loss, _ = model.pair_loss(feats, training=True, seed=seed, update_sketch=False)
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((float(loss), [tf.convert_to_tensor(g).numpy() for g in grads], model.get_weights()))
    (ref_loss, ref_grads, _), (loss, grads, _) = results
    assert ref_loss > 0.1  # pairs and negatives exist
    assert abs(loss - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))
    for r, g in zip(ref_grads, grads):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-5)


def test_l2_normalize_matches_autodiff():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (6, 9)).astype(np.float32)
    x[1] = 0.0  # no norm at all
    x[2] *= 1e-9  # below the epsilon clamp: a plain scaling there
    ref = _value_and_grads(lambda t: tf.math.l2_normalize(t, axis=-1), x)
    got = _value_and_grads(lambda t: layers.l2_normalize(t, True), x)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    assert np.abs(got[1][2]).max() > 1e5  # the clamped row's gradient is 1 / 1e-6 times dy


def test_embed_distinct_runs_once_and_matches_separate_calls():
    from pinrank.models.pinnerformer.model import embed_distinct
    table = tf.Variable(np.random.default_rng(4).normal(size=(10, 3)).astype(np.float32))
    calls = []

    def embed(rows):
        calls.append(int(tf.size(rows)))
        return tf.tanh(tf.gather(table, rows)) * tf.cast(rows[:, None] + 1, tf.float32)

    a = tf.constant([3, 1, 3, 7], tf.int64)
    b = tf.constant([1, 9, 7, 7, 0], tf.int64)
    w = tf.constant(np.random.default_rng(5).normal(size=(9, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        ea, eb = embed_distinct(embed, a, b)
        got = tf.reduce_sum(tf.concat([ea, eb], 0) * w)
    got_grad = tf.convert_to_tensor(tape.gradient(got, table)).numpy()
    assert calls == [5]  # 3, 1, 7, 9, 0 once each
    calls.clear()
    with tf.GradientTape() as tape:
        ra, rb = embed(a), embed(b)
        ref = tf.reduce_sum(tf.concat([ra, rb], 0) * w)
    ref_grad = tf.convert_to_tensor(tape.gradient(ref, table)).numpy()
    np.testing.assert_allclose(ea.numpy(), ra.numpy(), rtol=1e-6)
    np.testing.assert_allclose(eb.numpy(), rb.numpy(), rtol=1e-6)
    np.testing.assert_allclose(got_grad, ref_grad, rtol=1e-5, atol=1e-6)
