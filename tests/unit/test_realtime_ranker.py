"""Ranker: outputs, request path == tiled batch, ablations, weighted-loss training on a separable toy."""
import numpy as np
import pytest
import tensorflow as tf

from pinrank.models.realtime import (
    CANDIDATE_EMB,
    PF_CANDIDATE_EMB,
    PINNERFORMER_EMB,
    REQUEST_TS,
    RT_ACTION_TS,
    RT_ACTION_TYPE,
    RT_ITEM_EMB,
    Ranker,
    candidate_feature_keys,
    make_optimizer,
    tiny,
    user_feature_keys,
)

CFG = tiny()
P, DE, DP = CFG.realtime.seq_len, CFG.item_emb_dim, CFG.pinnerformer_dim
REQ = 1_700_000_000


def _features(rng, b):
    lengths = rng.integers(0, P + 1, b)
    real = np.arange(P)[None] < lengths[:, None]
    return {
        "surface": rng.integers(0, 9, b),  # 7 and 8 are out of vocabulary (size 7) -> OOV row
        "hour_of_day": rng.integers(0, 24, b),
        "user_age_days": rng.normal(size=b).astype(np.float32),  # already log-scaled / standardised
        PINNERFORMER_EMB: rng.normal(size=(b, DP)).astype(np.float32),
        RT_ACTION_TYPE: np.where(real, rng.integers(1, 5, (b, P)), 0),
        RT_ITEM_EMB: np.where(real[..., None], rng.normal(size=(b, P, DE)), 0).astype(np.float32),
        RT_ACTION_TS: REQ - np.sort(rng.integers(-60, 7200, (b, P)), axis=1),
        REQUEST_TS: np.full(b, REQ),
        CANDIDATE_EMB: rng.normal(size=(b, DE)).astype(np.float32),
        "candidate_interest": rng.integers(0, 9, b),
        PF_CANDIDATE_EMB: rng.normal(size=(b, DP)).astype(np.float32),
    }


def _probs(out, heads):
    return np.stack([out[h].numpy() for h in heads], -1)


def test_outputs_and_feature_key_partition():
    model = Ranker(CFG, seed=0)
    out = model(_features(np.random.default_rng(0), 5), training=True)
    assert set(out) == set(CFG.heads)
    p = _probs(out, CFG.heads)
    assert p.shape == (5, 4) and np.all((p > 0) & (p < 1))
    keys = set(_features(np.random.default_rng(0), 1)) - {PF_CANDIDATE_EMB}  # use_pf_dot only
    assert set(user_feature_keys(CFG)) | set(candidate_feature_keys(CFG)) == keys
    assert not set(user_feature_keys(CFG)) & set(candidate_feature_keys(CFG))
    names = [v.name for v in model.trainable_variables]
    assert any("transact" in n for n in names) and any("dcn" in n for n in names)


@pytest.mark.parametrize("overrides", [
    {},
    {"realtime": {"fusion": "append"}},
    {"realtime": {"fusion": "none"}},
    {"use_realtime": False},
    {"use_pinnerformer": False, "use_realtime": False, "context_categorical": (), "context_numeric": ()},
    {"use_pf_dot": True},
    {"use_pf_dot": True, "use_realtime": False, "context_categorical": (), "context_numeric": ()},
])
def test_rank_request_equals_tiled_batch(overrides):
    cfg = CFG.replace(**overrides, dropout=0.2)  # dropout must be inactive at inference
    model = Ranker(cfg, seed=0)
    rng = np.random.default_rng(1)
    warm = _features(rng, 8)
    model(warm, training=True)  # moves the BatchNorm statistics away from their init
    n = 6
    req = _features(rng, 1)
    req[RT_ACTION_TYPE][0, :5] = [1, 2, 3, 0, 0]
    cands = _features(rng, n)
    user = {k: req[k][0] for k in user_feature_keys(cfg)}
    cand = {k: cands[k] for k in candidate_feature_keys(cfg)}
    tiled = {k: np.repeat(req[k], n, axis=0) for k in user_feature_keys(cfg)}
    tiled.update(cand)
    ref = _probs(model(tiled, training=False), cfg.heads)
    got = _probs(model.rank_request(user, cand), cfg.heads)
    assert got.shape == (n, len(cfg.heads))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.abs(got - got[:1]).max() > 1e-4  # candidates are actually scored differently


def test_pinnerformer_and_realtime_ablations_change_inputs():
    rng = np.random.default_rng(2)
    feats = _features(rng, 4)
    full = Ranker(CFG, seed=0)
    full(feats)
    no_pf = Ranker(CFG.replace(use_pinnerformer=False), seed=0)
    no_pf({k: v for k, v in feats.items() if k != PINNERFORMER_EMB})  # PinnerFormer input not needed
    no_rt = Ranker(CFG.replace(use_realtime=False), seed=0)
    no_rt({k: v for k, v in feats.items() if not k.startswith("rt_")})
    d_rt = CFG.realtime.output_dim
    def width(m):
        return m.cross.cross_layers[0].kernel.shape[0]
    assert width(full) - width(no_pf) == DP
    assert width(full) - width(no_rt) == d_rt
    assert no_rt.transact is None


def test_pf_dot_feature_is_the_dot_product_in_x0():
    """use_pf_dot adds one column to x0: sum_d user_pf[d] * pf_candidate[d] (numpy reference),
    0 for a user without an embedding (the Featurizer zeroes it)."""
    cfg = CFG.replace(use_pf_dot=True)
    assert PF_CANDIDATE_EMB in candidate_feature_keys(cfg)
    feats = _features(np.random.default_rng(3), 5)
    feats[PINNERFORMER_EMB][4] = 0.0
    model = Ranker(cfg, seed=0)
    model(feats)
    got = model.pf_dot(feats[PINNERFORMER_EMB], feats).numpy()
    ref = (feats[PINNERFORMER_EMB].astype(np.float64) * feats[PF_CANDIDATE_EMB]).sum(1, keepdims=True)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert got[4, 0] == 0.0
    plain = Ranker(CFG, seed=0)
    plain(feats)
    width = lambda m: m.cross.cross_layers[0].kernel.shape[0]  # noqa: E731
    assert width(model) - width(plain) == 1
    with pytest.raises(ValueError, match="use_pf_dot needs use_pinnerformer"):
        CFG.replace(use_pf_dot=True, use_pinnerformer=False)


def _toy(rng, b):
    """Separable toy: each head fires from the sign of one candidate-embedding coordinate."""
    f = _features(rng, b)
    c = f[CANDIDATE_EMB]
    y = np.stack([c[:, 0] > 0.5, c[:, 1] > 0.5, c[:, 2] > 0.5, c[:, 3] > 1.0], -1).astype(np.float32)
    return f, y


def test_fit_reduces_weighted_loss_and_label_formats_agree():
    import tf_keras as keras
    keras.utils.set_random_seed(3)  # initial weights must not depend on tests run before
    cfg = CFG.replace(num_cross_layers=1)
    model = Ranker(cfg, seed=3)
    model.compile(optimizer=make_optimizer(cfg))
    rng = np.random.default_rng(3)
    train_f, train_y = _toy(rng, 256)
    eval_f, eval_y = _toy(rng, 128)
    model(eval_f)
    model.optimizer.build(model.trainable_variables)  # one trace of train_step instead of two

    def eval_loss():
        logits = model(eval_f, training=False, return_logits=True)
        return float(model.compute_weighted_loss(eval_y, tf.stack([logits[h] for h in cfg.heads], -1)))

    before = eval_loss()
    as_dict = {h: eval_y[:, i] for i, h in enumerate(cfg.heads)}
    logits = tf.stack([v for v in model(eval_f, return_logits=True).values()], -1)
    assert float(model.compute_weighted_loss(as_dict, logits)) == pytest.approx(before, rel=1e-6)
    ds = tf.data.Dataset.from_tensor_slices((train_f, train_y)).batch(32)
    hist = model.fit(ds, epochs=15, verbose=0)
    after = eval_loss()
    assert np.all(np.isfinite(hist.history["loss"]))
    assert after < 0.6 * before, (before, after)
    assert model.evaluate(ds.take(1), verbose=0) > 0


def test_bfloat16_ranker_matches_float32_and_trains():
    """ranker_train.mixed_precision="mixed_bfloat16" on CPU (untested on GPU): bfloat16 layers,
    float32 variables, probabilities and loss; close to the float32 model with the same weights."""
    import tf_keras as keras

    from pinrank.models.pinnerformer import train
    cfg = CFG.replace(realtime={"fusion": "append"})  # the candidate token's lookup too
    rng = np.random.default_rng(4)
    feats, y = _toy(rng, 32)
    ref = Ranker(cfg, seed=0)
    with train.precision_policy("mixed_bfloat16"):
        model = Ranker(cfg, seed=0)
        model.compile(optimizer=train.loss_scaled(make_optimizer(cfg), "mixed_bfloat16"))
    assert keras.mixed_precision.global_policy().name == "float32"
    ref(feats)
    model(feats)
    model.set_weights(ref.get_weights())
    assert model.compute_dtype == "float32"
    assert model.transact.blocks[0].attn.compute_dtype == "bfloat16"
    assert model.cross.cross_layers[0].compute_dtype == "bfloat16"
    assert all(v.dtype in (tf.float32, tf.int64) for v in model.variables)

    def loss(m):
        out = m(feats, training=False, return_logits=True)
        assert all(v.dtype == tf.float32 for v in out.values())
        return float(m.compute_weighted_loss(y, tf.stack([out[h] for h in cfg.heads], -1)))

    probs = model(feats, training=False)
    assert all(v.dtype == tf.float32 for v in probs.values())
    np.testing.assert_allclose(_probs(probs, cfg.heads), _probs(ref(feats, training=False), cfg.heads),
                               atol=0.03)
    assert loss(model) == pytest.approx(loss(ref), rel=2e-2)
    user = {k: feats[k][0] for k in user_feature_keys(cfg)}
    cand = {k: feats[k][:5] for k in candidate_feature_keys(cfg)}
    scores = model.rank_request(user, cand)
    assert all(v.dtype == tf.float32 for v in scores.values())

    before = loss(model)
    hist = model.fit(tf.data.Dataset.from_tensors((feats, y)).repeat(), steps_per_epoch=3, epochs=1,
                     verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    assert all(v.dtype in (tf.float32, tf.int64) for v in model.variables)
    assert loss(model) < before
