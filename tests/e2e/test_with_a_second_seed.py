"""Retraining the tiny pipeline with another seed in the shared session home.

This pushes a second PinnerFormer version into the session's serving directory, so it lives in
its own file that runs after tests/e2e/test_serving_e2e.py (pytest collects files in name
order), whose server must serve the first run's version."""
import pytest

pytestmark = pytest.mark.e2e


def test_retrained_with_another_seed_is_blessed_by_the_paired_gates(tiny_run):
    """Same config, other seeds: neither model is worse beyond its margin with 95 % confidence,
    so both gates bless, and the ranker's compares with the last blessed ranker pairwise."""
    from pinrank.pipeline import local_runner
    from pinrank.pipeline.config import apply_overrides
    cfg, first, _ = tiny_run
    reseeded = apply_overrides(cfg, ["train.seed=1", "ranker.seed=1"])
    summary = local_runner.run(reseeded, first["paths"]["home"])
    ev = summary["evaluation"]
    assert ev["baseline"] is not None  # compared with the last blessed model
    assert ev["candidate"]["recall@10"] != pytest.approx(ev["baseline"]["recall@10"], abs=1e-9)
    assert ev["gate"]["blessed"] is True, ev["gate"]
    assert "diff_interval" in ev["comparison"]["last_blessed"]

    gate = summary["ranker"]["baseline_check"]["gate"]
    last = gate["last_blessed"]
    assert last is not None and "hit@3/repin" in last["metrics"], gate
    row = last["metrics"]["auc/repin"]
    assert row["diff_interval"][0] <= row["diff"] <= row["diff_interval"][1]
    assert gate["blessed"] is True, gate["reasons"]
    assert summary["ranker"]["pushed"] is True
