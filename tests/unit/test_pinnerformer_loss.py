import math

import numpy as np
import pytest
import tensorflow as tf

from pinrank.models.pinnerformer.losses import (
    assemble_negatives,
    in_batch_log_q,
    per_user_mean,
    sampled_softmax_loss,
    user_positive_mask,
)


def _np_loss(u, p, pos_logq, n, neg_logq, valid, users, tau, logq):
    """Independent reference: explicit loops over pairs and users, float64."""
    per = []
    for i in range(len(u)):
        s_pos = u[i] @ p[i] / tau - (pos_logq[i] if logq else 0.0)
        terms = [s_pos] + [u[i] @ n[j] / tau - (neg_logq[j] if logq else 0.0)
                           for j in range(len(n)) if valid[i, j]]
        mx = max(terms)
        per.append(mx + math.log(sum(math.exp(t - mx) for t in terms)) - s_pos)
    per = np.array(per)
    by_user = {}
    for i, usr in enumerate(users):
        by_user.setdefault(usr, []).append(per[i])
    return np.mean([np.mean(v) for v in by_user.values()]), per


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("logq", [True, False])
def test_loss_matches_numpy(logq):
    rng = np.random.default_rng(0)
    P, N, D = 6, 7, 4
    u, p, n = _unit(rng.normal(size=(P, D))), _unit(rng.normal(size=(P, D))), _unit(rng.normal(size=(N, D)))
    pos_logq, neg_logq = np.log(rng.uniform(.01, 1, P)), np.log(rng.uniform(.01, 1, N))
    valid = rng.uniform(size=(P, N)) < 0.6
    valid[2] = False  # a pair with every negative masked: loss 0
    users = np.array([0, 0, 0, 0, 3, 3], np.int32)  # unequal pair counts; users 1, 2 have none
    tau = 0.1
    loss, per = sampled_softmax_loss(u, p, pos_logq, n, neg_logq, valid, users, tau, logq_correction=logq)
    ref_loss, ref_per = _np_loss(u, p, pos_logq, n, neg_logq, valid, users, tau, logq)
    np.testing.assert_allclose(per.numpy(), ref_per, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-5)
    assert per.numpy()[2] == pytest.approx(0.0, abs=1e-6)
    # Equal user weight: not the plain mean over pairs.
    assert abs(ref_loss - ref_per.mean()) > 1e-3


@pytest.mark.parametrize("logq", [True, False])
def test_loss_gradients_match_numpy_finite_differences(logq):
    """The loss's hand-written backward pass (softmax minus one-hot) against central differences
    of the float64 reference, for the user, positive and negative embeddings and the temperature."""
    rng = np.random.default_rng(5)
    P, N, D = 5, 6, 3
    u, p, n = rng.normal(size=(P, D)), rng.normal(size=(P, D)), rng.normal(size=(N, D))
    pos_logq, neg_logq = np.log(rng.uniform(.01, 1, P)), np.log(rng.uniform(.01, 1, N))
    valid = rng.uniform(size=(P, N)) < 0.6
    valid[1] = False
    users = np.array([0, 0, 1, 2, 2], np.int32)
    tau = 0.3
    tf_args = [tf.Variable(x.astype(np.float32)) for x in (u, p, n)] + [tf.Variable(np.float32(tau))]
    with tf.GradientTape() as tape:
        loss, _ = sampled_softmax_loss(tf_args[0], tf_args[1], pos_logq, tf_args[2], neg_logq, valid, users,
                                       tf_args[3], logq_correction=logq)
    got = tape.gradient(loss, tf_args)
    args, eps = [u, p, n, np.array(tau)], 1e-6
    for k, (x, g) in enumerate(zip(args, got)):
        ref = np.zeros(x.shape)
        for idx in np.ndindex(x.shape):
            hi, lo = [a.copy() for a in args], [a.copy() for a in args]
            hi[k][idx] += eps
            lo[k][idx] -= eps
            f_hi = _np_loss(hi[0], hi[1], pos_logq, hi[2], neg_logq, valid, users, float(hi[3]), logq)[0]
            f_lo = _np_loss(lo[0], lo[1], pos_logq, lo[2], neg_logq, valid, users, float(lo[3]), logq)[0]
            ref[idx] = (f_hi - f_lo) / (2 * eps)
        np.testing.assert_allclose(g.numpy(), ref, rtol=2e-4, atol=2e-5)


def test_logq_is_a_per_item_logit_shift():
    rng = np.random.default_rng(1)
    u, p, n = _unit(rng.normal(size=(2, 3))), _unit(rng.normal(size=(2, 3))), _unit(rng.normal(size=(3, 3)))
    valid = np.ones((2, 3), bool)
    off, _ = sampled_softmax_loss(u, p, np.log([.5, .2]), n, np.log([.9, .1, .3]), valid, [0, 1], 0.05, False)
    # A constant log Q on every item cancels out of the softmax ...
    const, _ = sampled_softmax_loss(u, p, [-2., -2.], n, [-2., -2., -2.], valid, [0, 1], 0.05, True)
    np.testing.assert_allclose(const.numpy(), off.numpy(), rtol=1e-6)
    # ... a popular (high Q) negative is down-weighted: lowering its logit lowers the loss.
    pop, _ = sampled_softmax_loss(u, p, [-2., -2.], n, [-2., 0., -2.], valid, [0, 1], 0.05, True)
    assert pop.numpy() < off.numpy() - 1e-4


def test_no_pairs_and_gradients_are_finite():
    loss, per = sampled_softmax_loss(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.ones((2, 3)),
                                     np.zeros(2), np.zeros((0, 2), bool), np.zeros(0, np.int32), 0.1, True)
    assert loss.numpy() == 0.0 and per.shape == (0,)
    u = tf.Variable(_unit(np.random.default_rng(2).normal(size=(2, 3))).astype(np.float32))
    with tf.GradientTape() as tape:
        loss, _ = sampled_softmax_loss(u, u, [0., 0.], u, [0., 0.], np.array([[False, True], [False, False]]),
                                       [0, 1], 0.01, True)
    assert np.all(np.isfinite(tape.gradient(loss, u).numpy()))


def test_per_user_mean():
    got = per_user_mean(tf.constant([1., 3., 10., 4.]), tf.constant([2, 2, 0, 2]), num_users=5)
    assert got.numpy() == pytest.approx(((1 + 3 + 4) / 3 + 10) / 2)


def test_in_batch_log_q():
    got = in_batch_log_q(tf.constant([0, 1, 5, 1000], tf.int64), 1000, 10).numpy()
    np.testing.assert_allclose(got, np.log([10 / 1000, 10 / 1000, 50 / 1000, 1.0]), rtol=1e-6)


def test_user_positive_mask_matches_brute_force():
    rng = np.random.default_rng(3)
    B, K, N, P = 4, 5, 9, 11
    user_pos = rng.integers(0, 12, (B, K)).astype(np.int64) * 10**11  # large ids
    user_valid = rng.uniform(size=(B, K)) < 0.7
    items = rng.integers(0, 12, N).astype(np.int64) * 10**11
    pair_user = rng.integers(0, B, P).astype(np.int32)
    got = user_positive_mask(items, pair_user, user_pos, user_valid).numpy()
    ref = np.array([[any(user_valid[b, k] and user_pos[b, k] == it for k in range(K)) for it in items]
                    for b in pair_user])
    np.testing.assert_array_equal(got, ref)


def test_assemble_negatives_masks_users_own_positives():
    # Pairs: user 0 has labels 5, 6; user 1 has labels 6, 7, 7. User 0 also has positive 9 (not a label).
    label = np.array([5, 6, 6, 7, 7], np.int64)
    label_log_q = np.log([.1, .2, .2, .3, .3])
    pair_user = np.array([0, 0, 1, 1, 1], np.int32)
    user_pos = np.array([[5, 6, 9, 0], [6, 7, 0, 0]], np.int64)
    user_valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    random = np.array([9, 8, 5], np.int64)
    neg = assemble_negatives(label, label_log_q, pair_user, user_pos, user_valid, random, math.log(3 / 50),
                             max_in_batch=100, seed=[0, 0])
    items = neg.item.numpy()
    assert sorted(items[:3]) == [5, 6, 7] and list(items[3:]) == [9, 8, 5]  # distinct in-batch, then random
    expect_q = {5: .1, 6: .2, 7: .3}
    np.testing.assert_allclose(neg.log_q.numpy(), np.log([expect_q[i] for i in items[:3]] + [3 / 50] * 3),
                               rtol=1e-6)
    own = {0: {5, 6, 9}, 1: {6, 7}}
    ref_valid = np.array([[it not in own[u] for it in items] for u in pair_user])
    np.testing.assert_array_equal(neg.valid.numpy(), ref_valid)
    np.testing.assert_array_equal(neg.is_random.numpy(), [0, 0, 0, 1, 1, 1])


def test_assemble_negatives_cap_subsamples_and_rescales_q():
    label = np.arange(10, 20, dtype=np.int64)
    log_q = np.log(np.linspace(.1, 1, 10))
    seen = set()
    for s in range(20):
        neg = assemble_negatives(label, log_q, np.zeros(10, np.int32), np.zeros((1, 1), np.int64),
                                 np.zeros((1, 1), bool), np.zeros(0, np.int64), 0.0, max_in_batch=4, seed=[s, 1])
        items = neg.item.numpy()
        assert len(items) == 4 == len(set(items)) and set(items) <= set(label)
        np.testing.assert_allclose(neg.log_q.numpy(), log_q[items - 10] + np.log(4 / 10), rtol=1e-5)
        seen |= set(items)
    assert seen == set(label)  # the subset is random, not always the first 4


def test_temperature_clamp():
    from pinrank.models.pinnerformer import PinnerFormer
    from pinrank.pipeline.config import PinnerFormerConfig
    cfg = PinnerFormerConfig(seq_len=4, hidden=8, num_heads=2, num_layers=1, output_dim=4, sketch_width=8)
    m = PinnerFormer(cfg, np.arange(3), np.eye(3, dtype=np.float32), num_actions=4, num_surfaces=4)
    assert m.temperature.numpy() == pytest.approx(0.07, rel=1e-5)
    m.log_temperature.assign(math.log(0.001))
    assert m.temperature.numpy() == pytest.approx(0.01)
    m.log_temperature.assign(math.log(0.5))
    assert m.temperature.numpy() == pytest.approx(0.5, rel=1e-6)
    assert m.log_temperature.trainable
