"""Realtime / ranker config: presets, defaults, validation, JSON round trip."""
import dataclasses
import json

import pytest

from models.realtime import RankerConfig, RealtimeConfig, default_label_weights, preset
from models.realtime.config import PRESETS


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


def test_warmup_cosine_schedule():
    from models.realtime import WarmupCosine
    s = WarmupCosine(peak=0.01, warmup=10, decay=20, floor=0.1)
    lr = lambda step: float(s(step))
    assert lr(0) == pytest.approx(0.001) and lr(9) == pytest.approx(0.01)
    assert lr(10) == pytest.approx(0.01) and lr(20) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))
    assert lr(30) == pytest.approx(0.001) and lr(1000) == pytest.approx(0.001)
    assert float(WarmupCosine(0.02, 0, 0)(5)) == pytest.approx(0.02)
