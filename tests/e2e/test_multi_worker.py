"""Multi-worker training (models/distribute.py): two worker processes over loopback under
MultiWorkerMirroredStrategy train as one process does on the same global batch, and the
in-batch negatives are gathered across the replicas (the paper's cross-replica negatives)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi_worker_job.py")
STEPS = 3
# Deterministic pairs (one next action per row) and no dropout, so that one process with the
# global batch and two with half each must agree; every negative is kept (no subsampling).
SETTINGS = ["model.objective=next_action", "model.dropout=0.0", "train.batch_size=16",
            "model.num_random_negatives=32", "model.history_mean_skip=true"]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _train(tmp_path, workers, extra=()):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    cluster = [f"localhost:{p}" for p in _free_ports(workers)]
    procs, outs = [], []
    for index in range(workers):
        out = tmp_path / f"w{workers}-{index}-{len(extra)}.json"
        task_env = dict(env)
        if workers > 1:
            task_env["TF_CONFIG"] = json.dumps({"cluster": {"worker": cluster},
                                                "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([sys.executable, JOB, str(out), str(STEPS), *SETTINGS, *extra],
                                      env=task_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
        outs.append(out)
    for p in procs:
        log, _ = p.communicate(timeout=600)
        assert p.returncode == 0, log[-3000:]
    return [json.loads(o.read_text()) for o in outs]


def test_two_workers_train_like_one_with_the_same_global_batch(tmp_path):
    (one,) = _train(tmp_path, 1)
    two = _train(tmp_path, 2)
    assert one["replicas"] == 1 and [w["replicas"] for w in two] == [2, 2]
    np.testing.assert_array_equal(two[0]["initial"], one["initial"])  # same start
    for worker in two:
        np.testing.assert_allclose(worker["losses"], one["losses"], rtol=1e-4)
    assert one["losses"][-1] < one["losses"][0]  # it trains
    # All-reduced gradients: the replicas hold the same weights, and the single process's.
    np.testing.assert_allclose(two[0]["weights"], two[1]["weights"], atol=1e-6)
    np.testing.assert_allclose(two[0]["weights"], one["weights"], atol=2e-5)
    assert np.abs(np.subtract(one["weights"], one["initial"])).max() > 1e-3  # and they moved


def test_without_the_gather_each_replica_scores_against_its_own_batch_only(tmp_path):
    """The switch is live: per-replica negatives are a smaller pool, so at the shared initial
    weights every replica's first loss is lower than with the gathered pool."""
    (one,) = _train(tmp_path, 1)
    local = _train(tmp_path, 2, ["model.cross_replica_negatives=false"])
    assert local[0]["losses"][0] < one["losses"][0] - 1e-3, (local[0]["losses"], one["losses"])
