import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pinrank.models.pinnerformer import PeriodicTimeEncoding, PinnerFormer, abs_periods, attention_mask, train
from pinrank.pipeline import features as F
from pinrank.pipeline.config import OBJECTIVES, PinnerFormerConfig, PipelineConfig, RankerTrainConfig, TrainConfig

M, FUT, N_ITEMS, DIN = 8, 5, 40, 6
CFG = PinnerFormerConfig(seq_len=M, hidden=16, num_layers=2, num_heads=2, output_dim=8, action_emb_dim=4,
                         surface_emb_dim=4, dropout=0.0, num_sampled_positions=3, max_labels=4,
                         num_random_negatives=16, max_in_batch_negatives=50, sketch_width=64, sketch_depth=2)
ITEM_IDS = np.arange(1000, 1000 + N_ITEMS, dtype=np.int64)
SEQ_KEYS = [F.xf(n) for n in F.HIST_FEATURES]


def _batch(rng, n, seq_len=None):
    L = rng.integers(1, M + 1, n) if seq_len is None else np.asarray(seq_len)
    real = np.arange(M)[None] < L[:, None]
    ts = np.sort(rng.integers(1_650_000_000, 1_650_000_000 + 50 * 86400, (n, M)), 1)[:, ::-1]
    fl = rng.integers(0, FUT + 1, n)
    fts = ts[:, :1] + np.sort(rng.integers(1, 30 * 86400, (n, FUT)), 1)
    feats = {
        F.xf(F.HIST_ITEM): np.where(real, rng.choice(ITEM_IDS, (n, M)), F.PAD_ITEM),
        F.xf(F.HIST_ACTION): np.where(real, rng.integers(1, 6, (n, M)), 0),
        F.xf(F.HIST_SURFACE): np.where(real, rng.integers(1, 7, (n, M)), 0),
        F.xf(F.HIST_TS): np.where(real, ts, 0),
        F.xf(F.HIST_DURATION): np.where(real, rng.exponential(20, (n, M)), 0).astype(np.float32),
        F.xf(F.HIST_POS): np.where(real, rng.integers(0, 2, (n, M)), 0),
        F.SEQ_LEN_XF: L.astype(np.int64),
        F.xf(F.FUT_ITEM): np.where(np.arange(FUT)[None] < fl[:, None], rng.choice(ITEM_IDS, (n, FUT)), -1),
        F.xf(F.FUT_TS): fts, F.FUT_LEN_XF: fl[:, None].astype(np.int64),
    }
    return {k: v.astype(np.int64) if v.dtype != np.float32 else v for k, v in feats.items()}


def _model(cfg=CFG, seed=0):
    emb = np.random.default_rng(seed).normal(size=(N_ITEMS, DIN)).astype(np.float32)
    return PinnerFormer(cfg, ITEM_IDS, emb, num_actions=6, num_surfaces=7, seed=seed)


@pytest.fixture(scope="module")
def model():
    return _model()


def _encode(model, feats):
    return model.encode({k: tf.constant(v) for k, v in feats.items()}).numpy()


def test_attention_mask():
    mask = attention_mask(tf.constant([3, 0]), 4).numpy()
    np.testing.assert_array_equal(mask[0], [[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(mask[1], np.eye(4))  # padded queries see only themselves (no NaN)


def test_causal_newest_first(model):
    feats = _batch(np.random.default_rng(0), 2, seq_len=[M, 6])
    base = _encode(model, feats)
    newer = {k: v.copy() for k, v in feats.items()}
    newer[F.xf(F.HIST_ITEM)][:, 0] = ITEM_IDS[[7, 8]]  # position 0 is the newest action
    newer[F.xf(F.HIST_ACTION)][:, 0] = 5
    newer[F.xf(F.HIST_DURATION)][:, 0] += 100.0
    out = _encode(model, newer)
    np.testing.assert_allclose(out[:, 1:], base[:, 1:], atol=1e-6)  # older positions cannot see it
    assert np.abs(out[:, 0] - base[:, 0]).max() > 1e-3
    older = {k: v.copy() for k, v in feats.items()}
    older[F.xf(F.HIST_ITEM)][:, 3] = ITEM_IDS[[9, 10]]
    older[F.xf(F.HIST_SURFACE)][:, 3] = 6  # 6 = OOV for 7 surfaces: dropped, but the item still changed
    out = _encode(model, older)
    np.testing.assert_allclose(out[:, 4:6], base[:, 4:6], atol=1e-6)
    assert np.all(np.abs(out[:, :4] - base[:, :4]).max(-1) > 1e-4)  # every newer position sees it


def test_padding_invariance(model):
    rng = np.random.default_rng(1)
    feats = _batch(rng, 3, seq_len=[5, 2, 5])
    base = _encode(model, feats)
    garbage = {k: v.copy() for k, v in feats.items()}
    for k in SEQ_KEYS:  # random junk in the padded slots: masks come from seq_len only
        pad = np.arange(M)[None] >= feats[F.SEQ_LEN_XF][:, None]
        garbage[k] = np.where(pad, _batch(rng, 3, seq_len=[M] * 3)[k], feats[k])
    np.testing.assert_allclose(_encode(model, garbage)[:, :5], base[:, :5], atol=1e-6)
    # Narrower input (width 5, no extra padding) gives the same embeddings at the real positions.
    narrow = {k: (v[:, :5] if k in SEQ_KEYS else v) for k, v in feats.items()}
    got = _encode(model, narrow)
    assert got.shape == (3, 5, CFG.output_dim)
    np.testing.assert_allclose(got[0], base[0, :5], atol=1e-6)
    np.testing.assert_allclose(got[1, :2], base[1, :2], atol=1e-6)
    # [B] and [B, 1] scalars are interchangeable.
    col = dict(feats, **{F.SEQ_LEN_XF: feats[F.SEQ_LEN_XF][:, None]})
    np.testing.assert_allclose(_encode(model, col), base, atol=1e-6)


def test_unit_norm_and_empty_history(model):
    rng = np.random.default_rng(2)
    feats = _batch(rng, 4, seq_len=[0, 3, 0, M])
    feats[F.xf(F.HIST_ITEM)][2] = ITEM_IDS[:M]  # junk behind seq_len 0
    out = _encode(model, feats)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    user = model({k: tf.constant(v) for k, v in feats.items()}).numpy()
    np.testing.assert_allclose(user, out[:, 0], atol=1e-6)
    np.testing.assert_allclose(user[0], user[2], atol=1e-6)  # empty history = one learned embedding


def test_item_tower(model):
    emb = model.item_embedding(tf.constant(np.r_[ITEM_IDS[:3], [-1, 5]])).numpy()
    assert emb.shape == (5, CFG.output_dim)
    np.testing.assert_allclose(np.linalg.norm(emb[:3], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[3], emb[4], atol=1e-7)  # unknown ids share the zero-input row
    np.testing.assert_array_equal(model.item_rows(tf.constant([1000, 1039, 7])).numpy(), [1, 40, 0])
    assert not model.frozen_item_embeddings.trainable
    assert all("frozen_item" not in v.name for v in model.trainable_variables)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_gives_a_finite_loss(objective):
    m = _model(dataclasses.replace(CFG, objective=objective))
    feats = {k: tf.constant(v) for k, v in _batch(np.random.default_rng(3), 6).items()}
    with tf.GradientTape() as tape:
        loss, n_pairs = m.pair_loss(feats, training=True, seed=[0, 1], update_sketch=True)
    assert np.isfinite(loss.numpy()) and loss.numpy() > 0 and n_pairs.numpy() > 0
    assert m.sketch.total.numpy() == n_pairs.numpy()
    grads = tape.gradient(loss, m.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads)


def test_batch_without_pairs_gives_zero_loss_and_zero_grads(model):
    feats = {k: tf.constant(v) for k, v in _batch(np.random.default_rng(5), 3, seq_len=[0, 0, 0]).items()}
    with tf.GradientTape() as tape:
        loss, n_pairs = model.pair_loss(feats, training=True, seed=[0, 0], update_sketch=False)
    assert n_pairs.numpy() == 0 and loss.numpy() == 0.0
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is None or not np.any(tf.convert_to_tensor(g).numpy()) for g in grads)


def test_fit_reduces_loss_then_export_round_trip(tmp_path):
    m = _model(dataclasses.replace(CFG, num_layers=1), seed=1)
    m.compile(optimizer=keras.optimizers.Adam(5e-3))
    data = _batch(np.random.default_rng(4), 32)
    ds = tf.data.Dataset.from_tensor_slices(data).batch(16)

    def eval_loss():  # what test_step computes (fixed seed (seed, -1), no sketch update), eagerly
        losses = [m.pair_loss(b, training=False, seed=[1, -1], update_sketch=False)[0].numpy() for b in ds]
        return float(np.mean(losses))

    before = eval_loss()
    hist = m.fit(ds.repeat(), steps_per_epoch=40, epochs=1, verbose=0)
    assert set(hist.history) == {"loss", "temperature"}
    total = m.sketch.total.numpy()
    assert total > 0  # train_step updates the sketch ...
    m.loss_tracker.reset_state()
    for b in ds:  # Keras' test_step, run eagerly (tracing `evaluate` would add seconds to the test)
        after = m.test_step(b)
    assert m.sketch.total.numpy() == total  # ... test_step does not
    assert after["loss"].numpy() == pytest.approx(eval_loss(), rel=1e-5)
    assert after["loss"].numpy() < before - 0.5, (before, after)

    # Export with caller-defined signatures ([None, M] history, [None] item ids) and reload.
    spec = {k: tf.TensorSpec([None, M], tf.float32 if k == F.xf(F.HIST_DURATION) else tf.int64, name=k)
            for k in SEQ_KEYS}
    spec[F.SEQ_LEN_XF] = tf.TensorSpec([None], tf.int64, name=F.SEQ_LEN_XF)
    serve = tf.function(lambda f: {"embedding": m(f, training=False)}, input_signature=[spec])
    items = tf.function(lambda i: {"embedding": m.item_embedding(i)},
                        input_signature=[tf.TensorSpec([None], tf.int64, name="item_id")])
    path = os.path.join(tmp_path, "export")
    tf.saved_model.save(m, path, signatures={"serving_default": serve, "item_embedding": items})
    loaded = tf.saved_model.load(path)
    x = {k: tf.constant(data[k][:5]) for k in spec}
    np.testing.assert_allclose(loaded.signatures["serving_default"](**x)["embedding"].numpy(),
                               m(x).numpy(), atol=1e-6)
    q = tf.constant(np.r_[ITEM_IDS[::7], [-1, 123]])  # unknown ids go through the restored lookup table
    np.testing.assert_allclose(loaded.signatures["item_embedding"](item_id=q)["embedding"].numpy(),
                               m.item_embedding(q).numpy(), atol=1e-6)


def test_history_mean_skip_matches_numpy_when_the_towers_are_silent():
    """With the towers' last layers zeroed, the user embedding at position s is the normalised
    mean of the frozen vectors at s and older (padding excluded), and an item's embedding is
    its normalised frozen vector: the no-training retriever the skip starts from (output_dim
    = DIN so the identity projection is square)."""
    cfg = dataclasses.replace(CFG, output_dim=DIN, history_mean_skip=True)
    m = _model(cfg)
    feats = _batch(np.random.default_rng(5), 4)
    _encode(m, feats), m.item_embedding(tf.constant(ITEM_IDS[:1]))  # builds both towers
    for layer in (m.output_head.fc2, m.item_tower.fc2):
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    seq = _encode(m, feats)
    emb = np.random.default_rng(0).normal(size=(N_ITEMS, DIN)).astype(np.float32)
    for b in range(4):
        n = int(feats[F.SEQ_LEN_XF][b])
        rows = feats[F.xf(F.HIST_ITEM)][b] - ITEM_IDS[0]
        for s in range(n):
            ref = emb[rows[s:n]].mean(0)
            np.testing.assert_allclose(seq[b, s], ref / np.linalg.norm(ref), atol=1e-5)
    got = m.item_embedding(tf.constant(ITEM_IDS[:3])).numpy()
    np.testing.assert_allclose(got, emb[:3] / np.linalg.norm(emb[:3], axis=1, keepdims=True),
                               atol=1e-5)


# Early stopping on the validation users' Recall@k (train.early_stopping_metric=recall).
K = 3


def _reference_recall(user, item, hist, fut, k):
    """Per user: catalogue minus history minus positives is the index; a positive is a hit when
    fewer than k index items score strictly above it. Mean over users with a positive."""
    per_user = []
    for u, h, p in zip(user, hist, fut):
        pos = np.unique(p)
        if not len(pos):
            continue
        s = item @ u
        index = ~np.isin(ITEM_IDS, np.r_[h, pos])
        hits = [np.sum(s[index] > s[ITEM_IDS == q][0]) < k for q in pos]
        per_user.append(np.mean(hits))
    return float(np.mean(per_user))


def _reference_coverage(user, item, hist, k):
    """Each user is served the top k of the catalogue minus their history (ties: lower catalogue
    position first); the fraction of the catalogue, most-served first, that fills 90 % of slots."""
    served = []
    for u, h in zip(user, hist):
        s = item @ u
        order = [int(i) for i in np.lexsort((np.arange(len(s)), -s)) if ITEM_IDS[i] not in set(h)]
        served += order[:k]
    counts = np.sort(np.bincount(served, minlength=len(ITEM_IDS)))[::-1]
    needed = next(n for n in range(1, len(counts) + 1) if counts[:n].sum() >= 0.9 * counts.sum())
    return needed / len(ITEM_IDS)


def test_validation_recall_matches_numpy():
    # Keras' initializers draw from the global generator: seeded, so the weights (and a recall
    # strictly between 0 and 1 on these 21 users) do not depend on the tests that ran before.
    keras.utils.set_random_seed(7)  # recall 0.169 on these users
    m = _model(seed=3)
    data = _batch(np.random.default_rng(7), 21)
    cb = train.ValidationRecall(tf.data.Dataset.from_tensor_slices(data).batch(8), K)
    cb.set_model(m)
    user = m(data, training=False).numpy()
    item = m.item_embedding(tf.constant(ITEM_IDS)).numpy()
    lens = data[F.SEQ_LEN_XF]
    hist = [r[:n] for r, n in zip(data[F.xf(F.HIST_ITEM)], lens)]
    fut = [r[:n] for r, n in zip(data[F.xf(F.FUT_ITEM)], data[F.FUT_LEN_XF][:, 0])]
    want = _reference_recall(user, item, hist, fut, K)
    assert 0 < want < 1, want
    got = cb.scores()
    assert got["recall"] == pytest.approx(want, abs=1e-9)
    assert got["coverage"] == pytest.approx(_reference_coverage(user, item, hist, K), abs=1e-9)


def test_fit_keeps_the_epoch_with_the_best_recall(tmp_path):
    m = _model(dataclasses.replace(CFG, num_layers=1), seed=1)
    cfg = PipelineConfig()
    cfg = dataclasses.replace(
        cfg, eval=dataclasses.replace(cfg.eval, k=K),
        train=TrainConfig(train_steps=40, steps_per_epoch=5, eval_steps=1, early_stopping_patience=2,
                          early_stopping_metric="recall"))
    m.compile(optimizer=keras.optimizers.Adam(5e-3))
    data = _batch(np.random.default_rng(4), 32)
    ds = tf.data.Dataset.from_tensor_slices(data).batch(16)
    valid = tf.data.Dataset.from_tensor_slices(_batch(np.random.default_rng(5), 24)).batch(8)
    # With oneDNN on (pipeline/bootstrap.py), grappler's remapper makes the traced test_step of
    # this tiny model segfault (the cpu preset's model does not; docs/tfx-notes.md), so the
    # fusions are off for this fit only.
    tf.config.optimizer.set_experimental_options({"remapping": False})
    try:
        hist = train.fit(m, cfg, ds.repeat(), valid.repeat(), str(tmp_path), verbose=0,
                         valid_once=valid)
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": True})
    recalls = hist.history[f"val_recall@{K}"]
    assert len(recalls) >= 3 and len(set(recalls)) > 1  # it moved, so the choice matters
    cb = train.ValidationRecall(valid, K)
    cb.set_model(m)
    assert cb.scores()["recall"] == pytest.approx(max(recalls), abs=1e-9)
    assert len(hist.history[f"val_p90_coverage@{K}"]) == len(recalls)


def test_recall_criterion_without_validation_examples_is_refused(tmp_path):
    cfg = dataclasses.replace(PipelineConfig(), train=TrainConfig(early_stopping_metric="recall"))
    with pytest.raises(ValueError, match="valid_once"):
        train.fit(_model(), cfg, None, None, str(tmp_path))


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ValueError, match="early_stopping_metric"):
        TrainConfig(early_stopping_metric="ndcg")


# ----------------------------------------------------------------------------------- mixed precision
# train.mixed_precision: PinnerFormer under Keras' mixed policies. Tested on CPU (bfloat16, and
# float16's loss scaling); untested on GPU. Variables, the loss and the embeddings stay float32, the
# float32 path is unchanged (the tests above), and the policy is float32 again after building.

_MP_SEED = tf.constant([0, 1], tf.int64)


def _mp_cfg(precision: str) -> PipelineConfig:
    return PipelineConfig(train=TrainConfig(mixed_precision=precision, train_steps=8,
                                            steps_per_epoch=8, warmup_steps=0))


def _mp_feats(seed=0, n=16):
    return {k: tf.constant(v) for k, v in _batch(np.random.default_rng(seed), n).items()}


def _mp_loss(model, feats):
    return model.pair_loss(feats, training=False, seed=_MP_SEED, update_sketch=False)[0]


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ValueError, match="train.mixed_precision must be one of"):
        TrainConfig(mixed_precision="float16")
    with pytest.raises(ValueError, match="ranker_train.mixed_precision must be one of"):
        RankerTrainConfig(mixed_precision="bfloat16")
    assert TrainConfig().mixed_precision == "" and RankerTrainConfig().mixed_precision == ""
    cfg = PipelineConfig().replace(train={"mixed_precision": "mixed_bfloat16"})
    assert PipelineConfig.from_json(cfg.to_json()).train.mixed_precision == "mixed_bfloat16"


def test_policy_is_float32_again_after_the_block_even_on_errors():
    with pytest.raises(RuntimeError):
        with train.precision_policy("mixed_bfloat16"):
            assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
            raise RuntimeError("boom")
    assert keras.mixed_precision.global_policy().name == "float32"
    with train.precision_policy(""):
        assert keras.mixed_precision.global_policy().name == "float32"


def test_time_encoding_under_a_bfloat16_policy():
    """The known failure: a bfloat16 layer added its bfloat16 phases to the float32 angles."""
    ts = tf.constant([[1_650_000_000, 1_650_001_234], [0, 86_399]], tf.int64)
    ref = PeriodicTimeEncoding(abs_periods())(ts).numpy()
    out = PeriodicTimeEncoding(abs_periods(), dtype="mixed_bfloat16")(ts)
    assert out.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), ref, atol=0.1)  # bf16 rounding


def test_bfloat16_pinnerformer_matches_float32_and_trains():
    feats = _mp_feats()
    ref = _model()
    with train.precision_policy("mixed_bfloat16"):
        model = _model()
        model.compile(optimizer=train.make_optimizer(_mp_cfg("mixed_bfloat16")))
    assert keras.mixed_precision.global_policy().name == "float32"
    # Same weights as the float32 model (both built by one forward pass first).
    for m in (ref, model):
        _mp_loss(m, feats)
        m(feats)
    model.set_weights(ref.get_weights())

    block = model.blocks[0]
    assert block.ffn_in.compute_dtype == "bfloat16" and block.attn.compute_dtype == "bfloat16"
    assert model.action_features.compute_dtype == "bfloat16"
    assert model.action_features.abs_time.compute_dtype == "float32"  # time features stay float32
    assert model.compute_dtype == "float32"
    assert all(v.dtype in (tf.float32, tf.int64) for v in model.variables)

    user = model(feats)
    assert user.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(user.numpy(), axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(user.numpy(), ref(feats).numpy(), atol=0.05)
    item = model.item_embedding(tf.constant(ITEM_IDS[:5]))
    assert item.dtype == tf.float32

    loss, want = _mp_loss(model, feats), _mp_loss(ref, feats)
    assert loss.dtype == tf.float32
    assert float(loss) == pytest.approx(float(want), rel=2e-2)

    hist = model.fit(tf.data.Dataset.from_tensors(feats).repeat(), steps_per_epoch=4, epochs=1,
                     verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    assert all(v.dtype in (tf.float32, tf.int64) for v in model.variables)
    assert float(_mp_loss(model, feats)) < float(want)  # the steps were taken and helped

    # A serving signature as export.py builds them: float32 embeddings out.
    spec = {k: tf.TensorSpec([None, M], tf.float32 if k == F.xf(F.HIST_DURATION) else tf.int64)
            for k in SEQ_KEYS}
    spec[F.SEQ_LEN_XF] = tf.TensorSpec([None], tf.int64)
    serve = tf.function(lambda f: {"embedding": model(f, training=False)}, input_signature=[spec])
    assert serve.get_concrete_function().structured_outputs["embedding"].dtype == tf.float32


def test_float16_adds_loss_scaling():
    assert not isinstance(train.make_optimizer(_mp_cfg("")), keras.mixed_precision.LossScaleOptimizer)
    feats = _mp_feats(1)
    with train.precision_policy("mixed_float16"):
        model = _model()
        model.compile(optimizer=train.make_optimizer(_mp_cfg("mixed_float16")))
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    assert model.blocks[0].ffn_in.compute_dtype == "float16"
    assert model(feats).dtype == tf.float32
    hist = model.fit(tf.data.Dataset.from_tensors(feats).repeat(), steps_per_epoch=8, epochs=1,
                     verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    # Dynamic loss scaling skips the steps whose scaled gradients overflow and lowers the scale;
    # some of the 8 steps must have been applied.
    assert float(model.optimizer.loss_scale) < 2.0 ** 15
    assert float(model.temperature) != pytest.approx(CFG.init_temperature, abs=1e-7)
