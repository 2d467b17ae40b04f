"""TransAct module: masks, time-window draws, encoder vs numpy, output compression, fusion, request path."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from pinrank.models.realtime import RealtimeConfig, TransAct

P, DE, V, B = 8, 4, 4, 3
REQ = 100_000
CFG = RealtimeConfig(seq_len=P, num_action_types=V, action_emb_dim=4, item_emb_dim=DE, num_layers=2,
                     num_heads=1, ffn_dim=8, dropout=0.0, time_window_s=3600, latest_k=3)


def _inputs(rng, b=B, lengths=None, ages=None):
    lengths = np.full(b, P) if lengths is None else np.asarray(lengths)
    real = np.arange(P)[None] < lengths[:, None]
    if ages is None:
        ages = np.sort(rng.integers(0, 7200, (b, P)), axis=1)  # newest first
    return {
        "action_type": np.where(real, rng.integers(1, V + 1, (b, P)), 0).astype(np.int64),
        "item_emb_seq": np.where(real[..., None], rng.normal(size=(b, P, DE)), 0).astype(np.float32),
        "action_ts": (REQ - np.asarray(ages)).astype(np.int64),
        "request_ts": np.full(b, REQ, np.int64),
        "candidate_emb": rng.normal(size=(b, DE)).astype(np.float32),
    }


def _layer(cfg=CFG, seed=7):
    layer = TransAct(cfg, seed=seed)
    layer(_inputs(np.random.default_rng(0)))  # build
    return layer


@pytest.fixture(scope="module")
def layer():
    return _layer()


def _mask(layer, x, **kw):
    valid, t = layer.key_mask(x["action_type"], x["action_ts"], x["request_ts"], **kw)
    return valid.numpy(), int(t.numpy())


# ------------------------------------------------------------------------------------------------ masks
def test_padding_mask_and_position_zero(layer):
    x = _inputs(np.random.default_rng(1), lengths=[P, 3, 0])
    x["action_type"][0, 5] = -1  # official-code style padding id: also padding
    x["action_type"][0, 6] = V + 3  # unknown real action type: OOV row, NOT padding
    valid, t = _mask(layer, x, training=False)
    assert t == 0
    expected = np.arange(P)[None] < np.array([P, 3, 0])[:, None]
    expected[0, 5] = False
    expected[2, 0] = True  # position 0 is always unmasked, even when it is padding
    np.testing.assert_array_equal(valid, expected)


def test_time_window_edges_and_future_actions(layer):
    ages = np.array([[100, -5, 0, 9, 10, 11, 20, 3600]])  # age = request_ts - action_ts; -5 = future
    x = _inputs(np.random.default_rng(2), b=1, ages=ages)
    valid, t = _mask(layer, x, training=False)  # inference: only future actions (age < 0) are masked
    assert t == 0
    np.testing.assert_array_equal(valid[0], [1, 0, 1, 1, 1, 1, 1, 1])
    valid, t = _mask(layer, x, training=True, time_window=10)  # masked iff age < T
    assert t == 10
    np.testing.assert_array_equal(valid[0], [1, 0, 0, 0, 1, 1, 1, 1])  # age exactly T stays visible
    valid, _ = _mask(layer, x, training=True, time_window=0)
    np.testing.assert_array_equal(valid[0], [1, 0, 1, 1, 1, 1, 1, 1])
    x["action_ts"][0, 0] = REQ - 5  # position 0 inside the window: still forced visible
    valid, _ = _mask(layer, x, training=True, time_window=10)
    assert valid[0, 0]


def test_window_drawn_once_per_batch_and_seeded():
    w = CFG.time_window_s
    ages = np.tile(np.linspace(0, w, P).astype(np.int64), (16, 1))  # every row spans the whole window
    x = _inputs(np.random.default_rng(3), b=16, ages=ages)
    a, b = TransAct(CFG, seed=11), TransAct(CFG, seed=11)
    draws = []
    for step in range(1, 7):
        valid, t = _mask(a, x, training=True)
        assert 0 <= t <= w
        expected = tf.random.stateless_uniform([], seed=[11, step], minval=0, maxval=w + 1,
                                               dtype=tf.int64).numpy()
        assert t == expected  # the documented stateless hook: k-th training call uses seed (seed, k)
        rule = (ages >= t)
        rule[:, 0] = True
        np.testing.assert_array_equal(valid, rule)  # ONE T for all 16 rows
        assert _mask(b, x, training=True)[1] == t  # same seed -> same sequence of windows
        draws.append(t)
    assert len(set(draws)) > 1
    # Evaluation never draws (the counter does not move) and never applies the window.
    before = int(a._draws.numpy())
    valid, t = _mask(a, x, training=False)
    assert t == 0 and int(a._draws.numpy()) == before
    np.testing.assert_array_equal(valid, np.ones_like(valid))


def test_call_uses_the_drawn_window_and_eval_uses_none():
    layer = _layer(seed=5)
    x = _inputs(np.random.default_rng(4))
    k = int(layer._draws.numpy()) + 1
    t = tf.random.stateless_uniform([], seed=[5, k], minval=0, maxval=CFG.time_window_s + 1, dtype=tf.int64)
    train_out = layer(x, training=True).numpy()  # dropout is 0: only the mask differs from eval
    np.testing.assert_allclose(train_out, layer(x, training=False, time_window=t).numpy(), atol=1e-6)
    eval_out = layer(x, training=False).numpy()
    np.testing.assert_allclose(eval_out, layer(x, training=False, time_window=0).numpy(), atol=1e-6)
    np.testing.assert_allclose(eval_out, layer(x, training=False).numpy(), atol=1e-6)  # deterministic


def test_fully_masked_rows_give_finite_outputs():
    layer = _layer(dataclasses.replace(CFG, time_window_s=10**9))
    x = _inputs(np.random.default_rng(5), lengths=[0, P, 1])
    assert np.all(np.isfinite(layer(x, training=False).numpy()))
    assert np.all(np.isfinite(layer(x, training=True).numpy()))  # nearly every key hidden by the window
    for exclude in (False, True):
        lay = _layer(dataclasses.replace(CFG, exclude_masked_from_output=exclude))
        assert np.all(np.isfinite(lay(x, training=True, time_window=10**9).numpy()))


# ------------------------------------------------------------------------------------------------ encoder
def _ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _np_block(block, x, valid, heads):
    wq, bq, wk, bk, wv, bv, wo, bo = block.attn.get_weights()
    kd = wq.shape[-1]
    q = np.einsum("bld,dhk->bhlk", x, wq) + bq[None, :, None, :]
    k = np.einsum("bld,dhk->bhlk", x, wk) + bk[None, :, None, :]
    v = np.einsum("bld,dhk->bhlk", x, wv) + bv[None, :, None, :]
    s = np.einsum("bhqk,bhsk->bhqs", q, k) / np.sqrt(kd)
    s = np.where(valid[:, None, None, :], s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    attn = np.einsum("bhqs,bhsk->bqhk", a, v)
    attn = np.einsum("bqhk,hkd->bqd", attn, wo) + bo
    g1, b1 = block.ln_attn.get_weights()
    g2, b2 = block.ln_ffn.get_weights()
    w1, c1 = block.ffn_in.get_weights()
    w2, c2 = block.ffn_out.get_weights()
    eps = block.ln_attn.epsilon
    x = _ln(x + attn, g1, b1, eps)
    return _ln(x + np.maximum(x @ w1 + c1, 0) @ w2 + c2, g2, b2, eps)


@pytest.mark.parametrize("heads", [1, 2])
def test_encoder_matches_numpy_post_ln_reference(heads):
    cfg = dataclasses.replace(CFG, num_heads=heads)
    layer = _layer(cfg)
    x = _inputs(np.random.default_rng(6), lengths=[P, 5, 2])
    out, valid = layer.encode(x, training=True, time_window=1000)
    rows, _ = layer.sequence_rows(x["action_type"], x["item_emb_seq"])
    h = np.concatenate([rows.numpy(), np.repeat(x["candidate_emb"][:, None], P, 1)], -1)  # concat fusion
    ages = REQ - x["action_ts"]
    ref_valid = (x["action_type"] > 0) & (ages >= 1000)
    ref_valid[:, 0] = True
    np.testing.assert_array_equal(valid.numpy(), ref_valid)
    for block in layer.blocks:
        h = _np_block(block, h, ref_valid, heads)
    np.testing.assert_allclose(out.numpy(), h, atol=1e-4)
    assert abs(layer.blocks[0].ln_attn.epsilon - 1e-5) < 1e-12


def test_mask_is_key_only_and_no_positional_encoding(layer):
    x = _inputs(np.random.default_rng(7))
    x["action_ts"][:, 4] = REQ + 50  # position 4 is a future action: a masked key
    out, _ = layer.encode(x, training=False)
    x2 = {k: v.copy() for k, v in x.items()}
    x2["item_emb_seq"][:, 4] += 3.0
    out2, valid2 = layer.encode(x2, training=False)
    assert not valid2.numpy()[:, 4].any()
    keep = [i for i in range(P) if i != 4]
    np.testing.assert_allclose(out2.numpy()[:, keep], out.numpy()[:, keep], atol=1e-5)  # nobody attends it
    assert np.abs(out2.numpy()[:, 4] - out.numpy()[:, 4]).max() > 1e-3  # its own row still changes
    # No positional encoding: permuting the (valid) rows permutes the encoder output.
    x = _inputs(np.random.default_rng(13))
    out, _ = layer.encode(x, training=False)
    perm = np.r_[0, np.random.default_rng(0).permutation(np.arange(1, P))]
    xp = {k: (v[:, perm] if k in ("action_type", "item_emb_seq", "action_ts") else v) for k, v in x.items()}
    outp, _ = layer.encode(xp, training=False)
    np.testing.assert_allclose(outp.numpy(), out.numpy()[:, perm], atol=1e-5)


def test_padded_slots_are_ignored_and_width_is_normalised(layer):
    rng = np.random.default_rng(8)
    x = _inputs(rng, lengths=[5, 2, P])
    base = layer(x).numpy()
    junk = {k: v.copy() for k, v in x.items()}
    pad = junk["action_type"] == 0
    junk["item_emb_seq"][pad] = rng.normal(size=(pad.sum(), DE))
    junk["action_ts"][pad] = REQ - 1
    np.testing.assert_allclose(layer(junk).numpy(), base, atol=1e-6)
    wide = {k: (np.concatenate([v, v[:, :3]], 1) if k in ("action_type", "item_emb_seq", "action_ts") else v)
            for k, v in x.items()}
    np.testing.assert_allclose(layer(wide).numpy(), base, atol=1e-6)  # truncated to the first P
    narrow = {k: (v[:, :5] if k in ("action_type", "item_emb_seq", "action_ts") else v) for k, v in x.items()}
    np.testing.assert_allclose(layer(narrow).numpy()[0], base[0], atol=1e-6)  # padded at the old end


# ------------------------------------------------------------------------------------------------ output
@pytest.mark.parametrize("exclude", [False, True])
def test_compression_matches_manual_max_pool_and_first_k(exclude):
    cfg = dataclasses.replace(CFG, exclude_masked_from_output=exclude)
    layer = _layer(cfg)
    x = _inputs(np.random.default_rng(9), lengths=[P, 2, 1])
    got = layer(x, training=False, time_window=3000).numpy()
    out, valid = layer.encode(x, training=False, time_window=3000)
    o, v = out.numpy(), valid.numpy()
    d, k = cfg.model_dim, cfg.latest_k
    w, b = layer.out_linear.get_weights()
    if exclude:
        pooled = np.where(v[..., None], o, -np.inf).max(1)
        first = np.where(v[:, :k, None], o[:, :k], 0.0)
    else:
        pooled, first = o.max(1), o[:, :k]
    expected = np.concatenate([pooled @ w + b, first.reshape(len(o), k * d)], axis=1)
    assert got.shape == (B, d + k * d) == (B, cfg.output_dim)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    if exclude:
        blocks = got[:, d:].reshape(B, k, d)
        assert (~v[:, :k]).sum() >= 3 and np.all(blocks[~v[:, :k]] == 0)  # masked first-K rows zeroed


@pytest.mark.parametrize("fusion,d,length", [("concat", 4 + 2 * DE, P), ("append", 4 + DE, P + 1),
                                             ("none", 4 + DE, P)])
def test_fusion_shapes(fusion, d, length):
    cfg = dataclasses.replace(CFG, fusion=fusion, num_heads=2)
    layer = _layer(cfg)
    x = _inputs(np.random.default_rng(10))
    out, valid = layer.encode(x)
    assert cfg.model_dim == d and out.shape == (B, length, d)
    assert layer(x).shape == (B, d + cfg.latest_k * d)
    if fusion == "append":
        assert valid.numpy()[:, -1].all()  # the candidate token is always attendable
    if fusion == "none":
        x2 = dict(x, candidate_emb=x["candidate_emb"] + 1.0)
        np.testing.assert_allclose(layer(x2).numpy(), layer(x).numpy(), atol=1e-6)
        assert layer({k: v for k, v in x.items() if k != "candidate_emb"}).shape == (B, (1 + cfg.latest_k) * d)
    else:
        x2 = dict(x, candidate_emb=x["candidate_emb"] + 1.0)
        assert np.abs(layer(x2).numpy() - layer(x).numpy()).max() > 1e-3


def test_paper_shape_and_options():
    cfg = RealtimeConfig(dropout=0.0)
    assert (cfg.model_dim, cfg.output_dim) == (96, 1056)
    layer = TransAct(cfg)
    rng = np.random.default_rng(11)
    x = {"action_type": rng.integers(0, 5, (2, 100)), "item_emb_seq": rng.normal(size=(2, 100, 32)),
         "action_ts": np.zeros((2, 100), np.int64), "request_ts": np.array([[5], [5]]),
         "candidate_emb": rng.normal(size=(2, 32))}
    assert layer(x, training=True).shape == (2, 1056)
    no_pool = _layer(dataclasses.replace(CFG, max_pool=False))
    assert no_pool(_inputs(rng)).shape == (B, CFG.latest_k * CFG.model_dim)
    pre = _layer(dataclasses.replace(CFG, post_ln=False))
    assert pre.final_ln is not None and np.all(np.isfinite(pre(_inputs(rng)).numpy()))


@pytest.mark.parametrize("fusion", ["concat", "append", "none"])
def test_call_request_equals_tiled_batch(fusion):
    layer = _layer(dataclasses.replace(CFG, fusion=fusion, dropout=0.1))  # dropout must be off at inference
    rng = np.random.default_rng(12)
    user = _inputs(rng, b=1, lengths=[6])
    user["action_ts"][0, 1] = REQ + 10  # a future action, masked at inference
    n = 5
    cands = rng.normal(size=(n, DE)).astype(np.float32)
    tiled = {k: np.repeat(v, n, axis=0) for k, v in user.items() if k != "candidate_emb"}
    ref = layer(dict(tiled, candidate_emb=cands), training=False).numpy()
    got = layer.call_request(user["action_type"][0], user["item_emb_seq"][0], user["action_ts"][0],
                             REQ, cands).numpy()
    assert got.shape == (n, layer.cfg.output_dim)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    got1 = layer.call_request(user["action_type"], user["item_emb_seq"], user["action_ts"],
                              user["request_ts"], cands).numpy()
    np.testing.assert_allclose(got1, ref, atol=1e-5)
