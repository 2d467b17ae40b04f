"""Retraining the tiny pipeline with another seed in the shared session home.

This pushes a second PinnerFormer version into the session's serving directory, so it lives in
its own file that runs after tests/e2e/test_serving_e2e.py (pytest collects files in name
order), whose server must serve the first run's version."""
import pytest

pytestmark = pytest.mark.e2e


def test_retrained_with_another_seed_is_blessed_by_the_paired_gate(tiny_run):
    """Same config, another seed: not worse beyond the margin with 95 % confidence."""
    from pipeline import local_runner
    from pipeline.config import apply_overrides
    cfg, first, _ = tiny_run
    reseeded = apply_overrides(cfg, ["train.seed=1", "ranker_train.enabled=false"])
    summary = local_runner.run(reseeded, first["paths"]["home"])
    ev = summary["evaluation"]
    assert ev["baseline"] is not None  # compared with the last blessed model
    assert ev["candidate"]["recall@10"] != pytest.approx(ev["baseline"]["recall@10"], abs=1e-9)
    assert ev["gate"]["blessed"] is True, ev["gate"]
    assert "diff_interval" in ev["comparison"]["last_blessed"]
