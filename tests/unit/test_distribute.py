"""models/distribute.py: which task is the chief, how many tasks TF_CONFIG names, where each saves.
(The two-worker training itself: tests/e2e/test_multi_worker.py.)"""
import json
import os

import pytest

from pinrank.models import distribute as D


def _config(kind, index, workers=2, chief=False):
    cluster = {"worker": [f"w{i}:1" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["c:1"]
    return {"cluster": cluster, "task": {"type": kind, "index": index}}


def test_cluster_size_counts_chief_and_workers():
    assert D.cluster_size({}) == 0
    assert D.cluster_size(_config("worker", 0, workers=3)) == 3
    assert D.cluster_size(_config("chief", 0, workers=2, chief=True)) == 3


@pytest.mark.parametrize("config, chief", [
    ({}, True),                                          # no TF_CONFIG: one process
    (_config("worker", 0), True),                        # worker 0 leads a chief-less cluster
    (_config("worker", 1), False),
    (_config("chief", 0, chief=True), True),
    (_config("worker", 0, chief=True), False),           # a chief exists: worker 0 is not it
])
def test_is_chief(config, chief):
    assert D.is_chief(config) is chief


def test_only_the_chief_saves_to_the_real_path(monkeypatch, tmp_path):
    target = str(tmp_path / "serving_model")
    monkeypatch.setenv("TF_CONFIG", json.dumps(_config("worker", 0)))
    assert D.save_dir(target) == target
    monkeypatch.setenv("TF_CONFIG", json.dumps(_config("worker", 1)))
    other = D.save_dir(target)
    assert other != target and os.path.isdir(other) and "worker-1" in other
    monkeypatch.delenv("TF_CONFIG")
    assert D.save_dir(target) == target
    assert D.strategy().num_replicas_in_sync == 1  # no TF_CONFIG: the default strategy
