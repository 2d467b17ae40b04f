"""RetrievalEvaluator's slices: assignment, per-slice figures against pure-python references,
skipped small slices, the slice gate's boundary and the report."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from pinrank.components.retrieval_evaluator import slices as SL
from pinrank.components.retrieval_evaluator import stats as S
from pinrank.components.retrieval_evaluator.metrics import PER_USER
from pinrank.components.retrieval_evaluator.report import gate_decision, write_report

GATE = dict(k=10, min_recall=0.0, min_coverage=0.0, max_recall_drop=0.0,
            min_lift_over_popularity=None)


def _bucket_ref(n, edges):
    for i, e in enumerate(edges):
        if n <= e:
            return ("<=%d" % e) if i == 0 else f"{edges[i - 1] + 1}-{e}"
    return f">{edges[-1]}"


@pytest.mark.parametrize("edges", [(20, 100), (0,), (5, 6, 50)])
def test_history_labels_match_a_reference(edges):
    lengths = list(range(0, 130)) + [512, 7, 21]
    assert SL.history_labels(lengths, edges).tolist() == [_bucket_ref(n, edges) for n in lengths]


@pytest.mark.parametrize("edges", [(), (100, 20), (5, 5), (-1, 3)])
def test_history_edges_must_increase(edges):
    with pytest.raises(ValueError, match="strictly increasing"):
        SL.history_labels([1, 2], edges)


def test_attribute_labels_unknown_users_and_no_table():
    table = pd.DataFrame({"user_id": ["1", "2"], "gender": ["female", "male"],
                          "age_group": ["<25", "45+"]})
    got = SL.attribute_labels([b"2", b"9", "1"], table)
    assert {k: v.tolist() for k, v in got.items()} == {
        "gender": ["male", SL.UNKNOWN, "female"], "age_group": ["45+", SL.UNKNOWN, "<25"]}
    assert SL.attribute_labels([b"1"], None) == {}


def _methods(cand, pop, index=None):
    index = np.arange(len(cand)) if index is None else np.asarray(index)
    return {"candidate": {PER_USER: {"user_index": index, "recall": np.asarray(cand, float)}},
            "popularity_all": {PER_USER: {"user_index": index, "recall": np.asarray(pop, float)}}}


def _ref_slice_reps(values, users, mask, n_boot, seed):
    """Loop reference of the paired cluster bootstrap restricted to a slice."""
    keys = sorted(set(users))
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(keys), [1.0 / len(keys)] * len(keys), size=n_boot)
    out = []
    for row in w:
        weight = {key: row[i] for i, key in enumerate(keys)}
        num = sum(weight[u] * v for u, v, m in zip(users, values, mask) if m)
        den = sum(weight[u] for u, m in zip(users, mask) if m)
        out.append(num / den if den else float("nan"))
    return np.array(out)


def test_slice_figures_match_pure_python_references():
    rng = np.random.default_rng(3)
    n = 60
    users = [f"u{i}".encode() for i in range(n)]
    cand, pop = rng.random(n), rng.random(n) * 0.8
    hist = rng.integers(0, 200, n)
    labels = SL.history_labels(hist, (20, 100))
    rep = SL.slice_report(_methods(cand, pop), users, {"history_length": labels},
                          candidate="candidate", popularity="popularity_all", min_users=1,
                          n_boot=200, seed=5)
    fam = rep["families"]["history_length"]
    assert [r["value"] for r in fam["slices"]] == ["<=20", "21-100", ">100"]
    for r in fam["slices"]:
        mask = [_bucket_ref(h, (20, 100)) == r["value"] for h in hist]
        c = [v for v, m in zip(cand, mask) if m]
        p = [v for v, m in zip(pop, mask) if m]
        assert r["num_users"] == r["num_examples"] == sum(mask)
        assert r["candidate"]["mean"] == pytest.approx(sum(c) / len(c))
        assert r["popularity"]["mean"] == pytest.approx(sum(p) / len(p))
        assert r["lift"] == pytest.approx(sum(c) / sum(p) - 1.0)
        rc = _ref_slice_reps(cand, users, mask, 200, 5)
        rp = _ref_slice_reps(pop, users, mask, 200, 5)
        assert r["candidate"]["interval"] == pytest.approx(S.interval(rc))
        assert r["lift_interval"] == pytest.approx(S.interval(rc / rp - 1.0))
        assert r["p_worse"] == pytest.approx(np.mean(rc - rp < 0))
    # The gap: best minus worst slice by the candidate's mean, paired replicates.
    means = {r["value"]: r["candidate"]["mean"] for r in fam["slices"]}
    best, worst = max(means, key=means.get), min(means, key=means.get)
    gap = fam["gap"]
    assert (gap["best"], gap["worst"]) == (best, worst)
    assert gap["diff"] == pytest.approx(means[best] - means[worst])
    ref = (_ref_slice_reps(cand, users, [_bucket_ref(h, (20, 100)) == best for h in hist], 200, 5)
           - _ref_slice_reps(cand, users, [_bucket_ref(h, (20, 100)) == worst for h in hist],
                             200, 5))
    assert gap["diff_interval"] == pytest.approx(S.interval(ref))


def test_several_anchors_per_user_count_users_not_examples():
    users = [b"a", b"a", b"b", b"c", b"c", b"c"]
    labels = np.array(["x"] * 6, dtype=object)
    rep = SL.slice_report(_methods([1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 0, 0]), users, {"f": labels},
                          candidate="candidate", popularity="popularity_all", min_users=3,
                          n_boot=50)
    (row,) = rep["families"]["f"]["slices"]
    assert (row["num_users"], row["num_examples"]) == (3, 6)


def test_small_slices_are_skipped_and_counted():
    users = [str(i).encode() for i in range(10)]
    labels = np.array(["big"] * 7 + ["small"] * 2 + [SL.UNKNOWN], dtype=object)
    gender = np.array(["f"] * 5 + ["m"] * 5, dtype=object)
    rep = SL.slice_report(_methods(np.linspace(0, 1, 10), np.full(10, 0.2)), users,
                          {"group": labels, "gender": gender}, candidate="candidate",
                          popularity="popularity_all", min_users=3, n_boot=50)
    g = rep["families"]["group"]
    assert [r["value"] for r in g["slices"]] == ["big"]
    assert g["skipped"] == [{"value": "small", "num_users": 2},
                            {"value": SL.UNKNOWN, "num_users": 1}]
    assert g["gap"] is None  # one group left: no gap
    assert rep["num_skipped"] == 2 and rep["families"]["gender"]["skipped"] == []


def test_only_the_scored_users_are_sliced():
    # Users without positives are not in PER_USER: the slice counts follow user_index.
    users = [b"a", b"b", b"c", b"d"]
    labels = np.array(["x", "x", "y", "y"], dtype=object)
    rep = SL.slice_report(_methods([0.5, 1.0, 0.0], [0.5, 0.5, 0.5], index=[0, 2, 3]), users,
                          {"f": labels}, candidate="candidate", popularity="popularity_all",
                          min_users=1, n_boot=20)
    rows = {r["value"]: r for r in rep["families"]["f"]["slices"]}
    assert rows["x"]["num_users"] == 1 and rows["x"]["candidate"]["mean"] == 0.5
    assert rows["y"]["num_users"] == 2 and rows["y"]["candidate"]["mean"] == 0.5
    with pytest.raises(ValueError, match="slice f: 3 labels for 4 examples"):
        SL.slice_report(_methods([0.5, 1.0, 0.0], [0.5, 0.5, 0.5], index=[0, 2, 3]), users,
                        {"f": labels[:3]}, candidate="candidate", popularity="popularity_all",
                        min_users=1)


def _slices(lift, value="<=20", family="history_length", users=40):
    return {"popularity": "popularity_all", "min_users": 20, "num_skipped": 0, "families": {
        family: {"slices": [{"value": value, "num_users": users, "num_examples": users,
                             "candidate": {"mean": 0.1 * (1 + lift), "interval": [0.0, 1.0]},
                             "popularity": {"mean": 0.1, "interval": [0.0, 1.0]},
                             "lift": lift, "lift_interval": [-1.0, 1.0], "p_worse": 0.5}],
                 "skipped": [], "gap": None}}}


def _methods_for_gate():
    m = {"recall@10": 0.2, "p90_coverage@10": 0.05}
    return {"candidate": dict(m), "popularity_all": {"recall@10": 0.1}}


def test_slice_gate_boundary_is_strict():
    methods = _methods_for_gate()
    g = gate_decision(methods, None, slices=_slices(0.1), gate_slices=("history_length",),
                      min_slice_lift_over_popularity=0.1, **GATE)
    assert not g["blessed"]
    assert g["reasons"] == ["slice history_length=<=20 (40 users): recall@10 0.1100 does not "
                            "beat popularity_all (0.1000): lift +10.0% <= "
                            "min_slice_lift_over_popularity +10.0%"]
    assert gate_decision(methods, None, slices=_slices(0.1), gate_slices=("history_length",),
                         min_slice_lift_over_popularity=0.0999, **GATE)["blessed"]
    assert g["thresholds"]["gate_slices"] == ["history_length"]
    assert g["thresholds"]["min_slice_lift_over_popularity"] == 0.1


def test_slice_gate_scope():
    methods = _methods_for_gate()
    losing = _slices(-0.5, value="female", family="gender")
    # Demographic families are reported, not gated, unless listed.
    assert gate_decision(methods, None, slices=losing, gate_slices=("history_length",),
                         min_slice_lift_over_popularity=0.0, **GATE)["blessed"]
    g = gate_decision(methods, None, slices=losing, gate_slices=("history_length", "gender"),
                      min_slice_lift_over_popularity=0.0, **GATE)
    assert not g["blessed"] and g["reasons"][0].startswith("slice gender=female (40 users)")
    # None: reported, not gated; unknown users are no group; NaN lift fails.
    assert gate_decision(methods, None, slices=losing, gate_slices=("gender",),
                         min_slice_lift_over_popularity=None, **GATE)["blessed"]
    assert gate_decision(methods, None, slices=_slices(-0.5, value=SL.UNKNOWN, family="gender"),
                         gate_slices=("gender",), min_slice_lift_over_popularity=0.0,
                         **GATE)["blessed"]
    nan = _slices(0.5)
    nan["families"]["history_length"]["slices"][0]["lift"] = float("nan")
    assert not gate_decision(methods, None, slices=nan, gate_slices=("history_length",),
                             min_slice_lift_over_popularity=0.0, **GATE)["blessed"]
    # No slices computed (no family in this run): nothing to check.
    assert gate_decision(methods, None, slices=None, gate_slices=("gender",),
                         min_slice_lift_over_popularity=0.0, **GATE)["blessed"]


def test_report_writes_slices(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    users = [str(i).encode() for i in range(n)]
    methods = _methods(rng.random(n), rng.random(n) * 0.5)
    for name, m in methods.items():
        m["recall@10"] = float(np.mean(m[PER_USER]["recall"]))
        m["p90_coverage@10"] = 0.1
    gender = np.array(["female"] * 20 + ["male"] * 28 + ["x"] * 2, dtype=object)
    rep = SL.slice_report(methods, users, {"history_length": SL.history_labels(
        rng.integers(0, 60, n), (20,)), "gender": gender}, candidate="candidate",
        popularity="popularity_all", min_users=10, n_boot=100)
    gate = gate_decision(methods, None, slices=rep, gate_slices=("history_length",),
                         min_slice_lift_over_popularity=0.0, **GATE)
    paths = write_report(str(tmp_path), methods, None, gate, rep)
    record = json.load(open(paths["metrics_json"]))
    assert record["slices"]["min_users"] == 10 and record["slices"]["num_skipped"] == 1
    genders = record["slices"]["families"]["gender"]
    assert [r["value"] for r in genders["slices"]] == ["female", "male"]
    assert genders["skipped"] == [{"value": "x", "num_users": 2}]
    female = genders["slices"][0]
    assert female["num_users"] == 20 and math.isclose(
        female["candidate"]["mean"], float(np.mean(methods["candidate"][PER_USER]["recall"][:20])))
    assert set(genders["gap"]) == {"best", "worst", "diff", "diff_interval"}
    with open(paths["slices_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    page = open(paths["summary_html"]).read()
    assert "gender = female" in page and "gender = x: 2 users, skipped" in page
    assert f"{female['candidate']['mean']:.4f}" in page and "slices chart" in page


def test_report_without_slices_has_no_slice_section(tmp_path):
    methods = {"candidate": {"recall@10": 0.2, "p90_coverage@10": 0.05}}
    gate = gate_decision(methods, None, **GATE)
    paths = write_report(str(tmp_path), methods, None, gate)
    assert "slices_png" not in paths
    assert json.load(open(paths["metrics_json"]))["slices"] is None
    assert "Slices" not in open(paths["summary_html"]).read()


def test_slice_config_fields_defaults_overrides_and_errors():
    from pinrank.pipeline.config import ConfigError, PipelineConfig, apply_overrides, preset
    e = PipelineConfig().eval
    assert (e.history_length_edges, e.min_slice_users, e.gate_slices,
            e.min_slice_lift_over_popularity) == ((20, 100), 20, ("history_length",), 0.0)
    cfg = apply_overrides(preset("cpu"), [
        "eval.history_length_edges=[10,50,200]", "eval.min_slice_users=5",
        'eval.gate_slices=["history_length","gender"]', "eval.min_slice_lift_over_popularity=null"])
    assert cfg.eval.history_length_edges == (10, 50, 200) and cfg.eval.min_slice_users == 5
    assert cfg.eval.gate_slices == ("history_length", "gender")
    assert cfg.eval.min_slice_lift_over_popularity is None
    assert PipelineConfig.from_json(cfg.sections_json("eval")).eval == cfg.eval
    with pytest.raises(ConfigError, match="eval.history_length_edges must be non-negative and "
                                          r"strictly increasing, got \[50, 10\]"):
        apply_overrides(preset("cpu"), ["eval.history_length_edges=[50,10]"])
    with pytest.raises(ConfigError, match="eval.min_slice_users must be >= 1, got 0"):
        apply_overrides(preset("cpu"), ["eval.min_slice_users=0"])
