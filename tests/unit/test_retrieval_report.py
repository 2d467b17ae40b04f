"""Gate decision cases and the report files."""
import json
import math

from pinrank.components.retrieval_evaluator.report import gate_decision, write_report

GATE = dict(k=10, min_recall=0.1, min_coverage=0.01, max_recall_drop=0.02)


def m(recall, coverage, entropy=1.5):
    return {"recall@10": recall, "recall@10_global": recall, "p90_coverage@10": coverage,
            "interest_entropy@50": entropy, "recall_at_k_curve": {1: recall / 3, 10: recall},
            "num_users": 7, "num_pairs": 12}


def cmp(**rows):
    """comparison rows: name -> (lift, diff_upper)."""
    return {name: {"mean": 0.0, "interval": [0.0, 0.0], "lift": lift, "diff": 0.0,
                   "diff_interval": [0.0, 0.0], "p_worse": 0.5, "diff_upper": upper}
            for name, (lift, upper) in rows.items()}


def test_blessed_when_all_checks_pass():
    methods = {"candidate": m(0.2, 0.05), "last_blessed": m(0.21, 0.02),
               "popularity_all": m(0.1, 0.01), "popularity_30d": m(0.15, 0.01)}
    g = gate_decision(methods, cmp(last_blessed=(-0.05, 0.01), popularity_all=(1.0, 0.1),
                                   popularity_30d=(0.33, 0.05)),
                      min_lift_over_popularity=0.0, **GATE)
    assert g["blessed"] and g["reasons"] == [] and g["popularity"] == "popularity_30d"
    assert gate_decision({"candidate": m(0.2, 0.05)}, None, **GATE)["blessed"]
    assert {k: g["thresholds"][k] for k in GATE} == GATE


def test_each_failed_check_is_named_with_numbers():
    methods = {"candidate": m(0.05, 0.001), "last_blessed": m(0.3, 0.02),
               "popularity_all": m(0.06, 0.01)}
    g = gate_decision(methods, cmp(last_blessed=(-0.8, -0.2), popularity_all=(-0.1667, 0.0)),
                      min_lift_over_popularity=0.0, **GATE)
    assert not g["blessed"]
    assert g["reasons"][:2] == ["recall@10 0.0500 < min_recall 0.1000",
                                "p90_coverage@10 0.0010 < min_coverage 0.0100"]
    assert "does not beat popularity_all (recall@10 0.0600): lift -16.7%" in g["reasons"][2]
    assert "worse than the last blessed model's 0.3000" in g["reasons"][3]
    assert "upper bound -0.2000" in g["reasons"][3]


def test_last_blessed_is_refused_only_when_confidently_worse():
    methods = {"candidate": m(0.28, 0.05), "last_blessed": m(0.30, 0.02)}
    # point estimate lower, but the paired upper bound is within the margin: blessed
    assert gate_decision(methods, cmp(last_blessed=(-0.07, -0.019)), **GATE)["blessed"]
    g = gate_decision(methods, cmp(last_blessed=(-0.07, -0.021)), **GATE)
    assert not g["blessed"] and len(g["reasons"]) == 1 and "last blessed" in g["reasons"][0]


def test_popularity_lift_boundary_is_strict():
    methods = {"candidate": m(0.2, 0.05), "popularity_all": m(0.2, 0.05)}
    g = gate_decision(methods, cmp(popularity_all=(0.0, 0.0)), min_lift_over_popularity=0.0,
                      **GATE)
    assert not g["blessed"] and "does not beat popularity_all" in g["reasons"][0]
    assert gate_decision(methods, cmp(popularity_all=(0.0, 0.0)), min_lift_over_popularity=-1.0,
                         **GATE)["blessed"]


def test_nan_or_missing_fails():
    assert not gate_decision({"candidate": m(float("nan"), 0.05)}, None, **GATE)["blessed"]
    assert not gate_decision({"candidate": {"recall@10": 0.5}}, None, **GATE)["blessed"]
    # lift required but no popularity baseline computed
    assert not gate_decision({"candidate": m(0.2, 0.05)}, None, min_lift_over_popularity=0.0,
                             **GATE)["blessed"]


def test_report_files_and_json_round_trip(tmp_path):
    cand, base, pop = m(0.2, 0.05), m(0.1, 0.002, entropy=float("nan")), m(0.12, 0.01)
    methods = {"candidate": cand, "last_blessed": base, "popularity_all": pop}
    comparison = cmp(last_blessed=(1.0, 0.2), popularity_all=(0.667, 0.1))
    comparison["candidate"] = {"mean": 0.2, "interval": [0.15, 0.25]}
    gate = gate_decision(methods, comparison, min_lift_over_popularity=0.0, **GATE)
    paths = write_report(str(tmp_path / "out"), methods, comparison, gate)
    with open(paths["summary_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    page = open(paths["summary_html"]).read()
    assert "data:image/png;base64," in page and "BLESSED" in page and "min_coverage" in page
    assert "popularity_all" in page and "+66.7%" in page
    record = json.load(open(paths["metrics_json"]))
    assert record["gate"] == json.loads(json.dumps(gate))
    assert record["candidate"] == {**cand, "recall_at_k_curve": {"1": 0.2 / 3, "10": 0.2}}
    assert record["baseline"]["interest_entropy@50"] is None  # NaN -> null (strict JSON)
    assert record["baseline"]["recall@10"] == 0.1
    assert set(record["methods"]) == set(methods)
    assert record["comparison"]["popularity_all"]["lift"] == 0.667


def test_report_without_baseline(tmp_path):
    cand = m(0.05, 0.05)
    del cand["recall_at_k_curve"]
    gate = gate_decision({"candidate": cand}, None, **GATE)
    paths = write_report(str(tmp_path), {"candidate": cand}, None, gate)
    record = json.load(open(paths["metrics_json"]))
    assert record["baseline"] is None and record["gate"]["blessed"] is False
    assert "NOT BLESSED" in open(paths["summary_html"]).read()
    assert not math.isnan(record["candidate"]["recall@10"])
