"""Gate decision cases and the report files."""
import json
import math

from components.retrieval_evaluator.report import gate_decision, write_report

GATE = dict(k=10, min_recall=0.1, min_coverage=0.01, max_recall_drop=0.02)


def m(recall, coverage, entropy=1.5):
    return {"recall@10": recall, "recall@10_global": recall, "p90_coverage@10": coverage,
            "interest_entropy@50": entropy, "recall_at_k_curve": {1: recall / 3, 10: recall},
            "num_users": 7, "num_pairs": 12}


def test_blessed_when_all_checks_pass():
    g = gate_decision(m(0.2, 0.05), m(0.21, 0.02), **GATE)
    assert g["blessed"] and g["reasons"] == []
    assert gate_decision(m(0.2, 0.05), None, **GATE)["blessed"]
    assert g["thresholds"] == GATE


def test_each_failed_check_is_named_with_numbers():
    g = gate_decision(m(0.05, 0.001), m(0.3, 0.02), **GATE)
    assert not g["blessed"]
    assert g["reasons"] == [
        "recall@10 0.0500 < min_recall 0.1000",
        "p90_coverage@10 0.0010 < min_coverage 0.0100",
        "recall@10 0.0500 < baseline recall@10 0.3000 - max_recall_drop 0.0200",
    ]


def test_baseline_drop_boundary():
    assert gate_decision(m(0.28, 0.05), m(0.30, 0.02), **GATE)["blessed"]  # drop 0.02 allowed
    g = gate_decision(m(0.27, 0.05), m(0.30, 0.02), **GATE)
    assert not g["blessed"] and len(g["reasons"]) == 1 and "baseline" in g["reasons"][0]


def test_nan_or_missing_fails():
    assert not gate_decision(m(float("nan"), 0.05), None, **GATE)["blessed"]
    assert not gate_decision({"recall@10": 0.5}, None, **GATE)["blessed"]


def test_report_files_and_json_round_trip(tmp_path):
    cand, base = m(0.2, 0.05), m(0.1, 0.002, entropy=float("nan"))
    gate = gate_decision(cand, base, **GATE)
    paths = write_report(str(tmp_path / "out"), cand, base, gate)
    with open(paths["summary_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    page = open(paths["summary_html"]).read()
    assert "data:image/png;base64," in page and "BLESSED" in page and "min_coverage" in page
    record = json.load(open(paths["metrics_json"]))
    assert record["gate"] == gate
    assert record["candidate"] == {**cand, "recall_at_k_curve": {"1": 0.2 / 3, "10": 0.2}}
    assert record["baseline"]["interest_entropy@50"] is None  # NaN -> null (strict JSON)
    assert record["baseline"]["recall@10"] == 0.1


def test_report_without_baseline(tmp_path):
    cand = m(0.05, 0.05)
    del cand["recall_at_k_curve"]
    gate = gate_decision(cand, None, **GATE)
    paths = write_report(str(tmp_path), cand, None, gate)
    record = json.load(open(paths["metrics_json"]))
    assert record["baseline"] is None and record["gate"]["blessed"] is False
    assert "NOT BLESSED" in open(paths["summary_html"]).read()
    assert not math.isnan(record["candidate"]["recall@10"])
