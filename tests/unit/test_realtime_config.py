"""Realtime / ranker config: presets, defaults, validation, JSON round trip."""
import dataclasses
import json

import pytest

from pinrank.models.realtime import RankerConfig, RealtimeConfig, default_label_weights, preset
from pinrank.models.realtime.config import PRESETS


def test_paper_defaults():
    rt = RealtimeConfig()
    assert (rt.seq_len, rt.action_emb_dim, rt.item_emb_dim, rt.num_layers, rt.num_heads, rt.ffn_dim) == \
        (100, 32, 32, 2, 1, 32)
    assert (rt.dropout, rt.time_window_s, rt.fusion, rt.latest_k, rt.max_pool) == (0.1, 86400, "concat", 10, True)
    assert not rt.exclude_masked_from_output and rt.post_ln and rt.ln_epsilon == 1e-5
    assert (rt.model_dim, rt.output_dim) == (96, 1056)
    assert dataclasses.replace(rt, fusion="append").model_dim == 64
    assert dataclasses.replace(rt, max_pool=False).output_dim == 960
    p = preset("paper")
    assert p.realtime == rt and p.learning_rate == 0.0048 and p.warmup_steps == 5000 and p.batch_size == 12000


def test_default_label_weights_hide_row():
    heads = ("repin", "click", "closeup", "hide")
    m = default_label_weights(heads)
    hide = heads.index("hide")
    for h, row in zip(heads, m):
        for a, w in zip(heads, row):
            assert w == (100.0 if (a == "hide" and h in ("click", "repin")) else 1.0), (h, a)
    assert m[hide][hide] == 1.0
    assert RankerConfig().label_weights == m
    assert default_label_weights(("a", "b")) == ((1.0, 1.0), (1.0, 1.0))
    cfg = RankerConfig().replace(heads=("click", "hide"))
    assert cfg.label_weights == ((1.0, 100.0), (1.0, 1.0))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = preset(name)
    back = RankerConfig.from_json(json.dumps(json.loads(cfg.to_json())))
    assert back == cfg and isinstance(back.realtime, RealtimeConfig)
    assert isinstance(back.label_weights, tuple) and isinstance(back.label_weights[0], tuple)


@pytest.mark.parametrize("kwargs,match", [
    (dict(fusion="early"), "fusion"),
    (dict(latest_k=200), "latest_k"),
    (dict(latest_k=0, max_pool=False), "empty output"),
    (dict(num_heads=5), "divisible"),
    (dict(dropout=1.0), "dropout"),
    (dict(time_window_s=-1), "time_window_s"),
    (dict(seq_len=0), "seq_len"),
])
def test_realtime_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RealtimeConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(heads=("click", "click")), "duplicate"),
    (dict(heads=()), "heads"),
    (dict(label_weights=((1.0,),)), "4x4"),
    (dict(label_weights=((1, 1, 1, 1),) * 3 + ((1, 1, 1, -1),)), ">= 0"),
    (dict(no_action_weight=-1.0), "no_action_weight"),
    (dict(mlp_dims=(8, 0)), "mlp_dims"),
    (dict(context_categorical=(("surface", 0, 4),)), "vocab_size"),
    (dict(context_categorical=(("x", 3),)), "feature_name, vocab_size, emb_dim"),
    (dict(context_numeric=("surface",)), "unique"),
    (dict(learning_rate=0.0), "learning_rate"),
])
def test_ranker_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RankerConfig(**kwargs)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown RankerConfig"):
        RankerConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="unknown RealtimeConfig"):
        RankerConfig.from_dict({"realtime": {"nope": 1}})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


class _FakeTransformOutput:
    """What models.realtime.run.ranker_config reads from tft.TFTransformOutput."""

    def __init__(self, width, actions=4, surfaces=5):
        self.width, self.sizes = width, {"action_vocab": actions, "surface_vocab": surfaces}

    def vocabulary_size_by_name(self, name):
        return self.sizes[name]

    def transformed_feature_spec(self):
        import tensorflow as tf
        return {"hist_item_xf": tf.io.FixedLenFeature([self.width], tf.int64)}


def test_trainer_derives_only_the_documented_sizes_and_checks_the_rest():
    """The data decides vocabulary sizes (derived); configured widths and P are checked against
    the data and never overwritten."""
    from pinrank.models.realtime.run import ranker_config
    from pinrank.pipeline.config import ConfigError, apply_overrides
    from pinrank.pipeline.config import preset as pipeline_preset
    cfg = pipeline_preset("tiny")
    r = ranker_config(cfg, _FakeTransformOutput(12, actions=3), item_dim=16, num_interests=9, num_items=30)
    assert r.realtime.num_action_types == 3
    assert r.context_categorical == (("surface", 7, 8), ("hour_of_day", 24, 8))
    assert r.candidate_categorical == (("candidate_interest", 10, 8),)
    assert dataclasses.replace(r, realtime=cfg.ranker.realtime,
                               context_categorical=cfg.ranker.context_categorical,
                               candidate_categorical=cfg.ranker.candidate_categorical) == cfg.ranker
    dow = apply_overrides(cfg, ['ranker.context_categorical=[["day_of_week", 1, 4]]'])
    assert ranker_config(dow, _FakeTransformOutput(12), 16, 9, 30).context_categorical == \
        (("day_of_week", 7, 4),)  # the vocabulary size is the data's, the width the config's
    dims = apply_overrides(cfg, ['ranker.context_categorical=[["surface", 7, 3]]'])
    assert ranker_config(dims, _FakeTransformOutput(12), 16, 9, 30).context_categorical == \
        (("surface", 7, 3),)  # the configured embedding width stays
    ids = apply_overrides(cfg, ['ranker.candidate_categorical=[["candidate_id", 1, 4]]'])
    assert ranker_config(ids, _FakeTransformOutput(12), 16, 9, 30).candidate_categorical == \
        (("candidate_id", 31, 4),)  # the catalog's 30 rows + row 0 (unknown)
    with pytest.raises(ConfigError, match="item_emb_dim=16 but the item embeddings are 32-d"):
        ranker_config(cfg, _FakeTransformOutput(12), item_dim=32, num_interests=9, num_items=30)
    with pytest.raises(ConfigError, match="seq_len=12 but Transform kept 20"):
        ranker_config(cfg, _FakeTransformOutput(20), item_dim=16, num_interests=9, num_items=30)
    with pytest.raises(ConfigError, match="ranker.pinnerformer_dim=8 but model.output_dim=32"):
        ranker_config(apply_overrides(cfg, ["ranker.pinnerformer_dim=8"]),
                      _FakeTransformOutput(12), item_dim=16, num_interests=9, num_items=30)


def test_featurizer_provides_every_context_feature_the_config_allows():
    """A context feature the config accepts (RANKER_CONTEXT_CATEGORICAL) must reach the Ranker:
    the Featurizer maps Transform's outputs to exactly those names, values unchanged."""
    import numpy as np

    from pinrank.models.realtime.serving_model import Featurizer
    from pinrank.pipeline import features as F
    from pinrank.pipeline.config import RANKER_CANDIDATE_CATEGORICAL, RANKER_CONTEXT_CATEGORICAL
    fz = Featurizer(np.array([10, 20]), np.ones((2, 4), np.float32), np.array([[0], [1]]))
    ts = np.array([0, 86400 * 3 + 7200], np.int64)  # Thu 00:00, Sun 02:00 (1970-01-01 = Thu)
    xf = {F.xf(F.SURFACE): np.array([1, 2]), "hour_xf": (ts % 86400) // 3600,
          "dow_xf": (ts // 86400 + 4) % 7, F.xf(F.PF_EMBEDDING): np.ones((2, 3), np.float32),
          F.xf(F.PF_PRESENT): np.array([1, 0]), F.xf(F.HIST_ACTION): np.zeros((2, 2), np.int64),
          F.xf(F.HIST_ITEM): np.array([[10, 0], [20, 99]]), F.xf(F.HIST_TS): np.zeros((2, 2)),
          F.xf(F.REQUEST_TS): ts, F.xf(F.CAND_ITEM): np.array([20, 10])}
    out = fz(xf)
    assert set(RANKER_CONTEXT_CATEGORICAL) | set(RANKER_CANDIDATE_CATEGORICAL) <= set(out)
    assert np.asarray(out["hour_of_day"]).tolist() == [0, 2]
    assert np.asarray(out["day_of_week"]).tolist() == [4, 0]  # Thursday = 4, Sunday = 0
    assert np.asarray(out["candidate_interest"]).tolist() == [2, 1]
    assert np.asarray(out["candidate_id"]).tolist() == [2, 1]  # catalog rows, 0 = unknown


def test_featurizer_pinnerformer_item_table_rows_follow_the_item_ids():
    """use_pf_dot: the candidate's pin-tower row is the one given for its id; unknown ids get 0."""
    import numpy as np
    import pytest

    from pinrank.models.realtime import PF_CANDIDATE_EMB
    from pinrank.models.realtime.serving_model import Featurizer
    pf = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    fz = Featurizer(np.array([10, 20]), np.ones((2, 4), np.float32), np.array([[0], [1]]), pf)
    got = fz.candidates(np.array([20, 10, 7]))[PF_CANDIDATE_EMB].numpy()
    np.testing.assert_array_equal(got, [[3.0, 4.0], [1.0, 2.0], [0.0, 0.0]])
    assert PF_CANDIDATE_EMB not in Featurizer(np.array([10]), np.ones((1, 4), np.float32),
                                              np.array([[0]])).candidates(np.array([10]))
    with pytest.raises(ValueError, match=r"pf_item_embeddings must be \[2, Dp\]"):
        Featurizer(np.array([10, 20]), np.ones((2, 4), np.float32), np.array([[0], [1]]), pf[:1])
