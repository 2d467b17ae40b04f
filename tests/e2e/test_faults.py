"""kill -9 and rerun (issue 11, item 3): the tiny pipeline as `pinrank run` subprocesses in one
fresh home, SIGKILLed (the whole process group) while EventExampleGen, then Transform, then the
PinnerFormer Trainer, then the ranker's TFMA Evaluator runs, each kill in the next rerun; a fifth
run completes. Checked:

* each kill hit its component mid-run (its MLMD execution is still RUNNING afterwards);
* every rerun reuses from cache (MLMD state CACHED) what had completed before the kill, except
  the RetrievalEvaluator and what follows it once a PinnerFormer is blessed: it then has a
  baseline as a new input and runs again (tests/e2e/test_local_pipeline.py,
  test_second_run_hits_the_cache);
* the killed component runs again and the last run completes;
* the serving dir, watched every 0.1 s during all five runs and at each kill, only ever holds
  complete version dirs (saved_model.pb and variables/variables.index), and at the end exactly
  the versions the Pushers recorded in MLMD, which the local server loads and serves.

About 8 min on 2 cores (one full run, four restarts, the ranker branch once more)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_ARGS = ["--preset", "tiny", "--source", "synthetic",
            "--set", "ranker_train.train_steps=300",  # as test_reproducible: cheaper ranker
            "--set", "eval.require_beating_popularity=false",  # the ranker branch must run
            # and push: 300 steps miss the TFMA values and the baselines; gates are not tested
            "--set", "ranker_eval.min_auc=0", "--set", "ranker_eval.min_auc_other=0",
            "--set", "ranker_eval.require_beating_baselines=false"]
# (node id, seconds after its executor started): long enough to be inside its work
KILLS = [("EventExampleGen", 1.0), ("Transform", 5.0), ("ItemAwareTrainer", 10.0),
         ("RankerEvaluator", 10.0)]
# Nodes that run again once a PinnerFormer is blessed (new baseline -> new blessing -> ...).
BASELINE_DEPENDENT = ("RetrievalEvaluator", "Pusher", "Ranker", "Ranking")


def _started(node_dir):
    """Executions of a node whose executor has started (TFX creates this dir first)."""
    d = os.path.join(node_dir, ".system", "executor_execution")
    return set(os.listdir(d)) if os.path.isdir(d) else set()


def _incomplete_versions(serving_dir):
    """Numeric (loadable) version dirs that lack a file of a complete SavedModel."""
    bad = []
    for model in (os.listdir(serving_dir) if os.path.isdir(serving_dir) else []):
        base = os.path.join(serving_dir, model)
        for v in os.listdir(base):
            path = os.path.join(base, v)
            if v.isdigit() and not (
                    os.path.isfile(os.path.join(path, "saved_model.pb"))
                    and os.path.isfile(os.path.join(path, "variables", "variables.index"))):
                bad.append(path)
    return bad


def _executions(metadata_path, pipeline_name):
    """[(execution id, node id, state name)] from MLMD (read only when no run is writing)."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration import metadata
    from tfx.v1.orchestration.metadata import sqlite_metadata_connection_config
    out = []
    with metadata.Metadata(sqlite_metadata_connection_config(metadata_path)) as m:
        for ctx in m.store.get_contexts_by_type("node"):
            node = ctx.name.split(".", 1)[1]
            for e in m.store.get_executions_by_context(ctx.id):
                out.append((e.id, node, metadata_store_pb2.Execution.State.Name(
                    e.last_known_state)))
    return sorted(out)


def _pushed_versions(metadata_path, node):
    """Versions a Pusher node recorded as pushed (PushedModel pushed=1), all runs."""
    from tfx.orchestration import metadata
    from tfx.v1.orchestration.metadata import sqlite_metadata_connection_config
    out = set()
    with metadata.Metadata(sqlite_metadata_connection_config(metadata_path)) as m:
        for ctx in m.store.get_contexts_by_type("node"):
            if ctx.name.split(".", 1)[1] != node:
                continue
            for a in m.store.get_artifacts_by_context(ctx.id):
                p = a.custom_properties
                if "pushed" in p and p["pushed"].int_value == 1:
                    out.add(p["pushed_version"].string_value)
    return out


def test_kill_9_during_each_long_component_then_rerun(tmp_path):
    from pinrank.pipeline.config import preset
    from pinrank.pipeline.runs import RunPaths
    from pinrank.serving import constants as C
    from pinrank.serving import local_server as LS
    from pinrank.serving.client import ServingClient

    home = str(tmp_path / "home")
    cfg = preset("tiny")
    paths = RunPaths.for_config(cfg, home)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    summary_path = str(tmp_path / "summary.json")
    cmd = [sys.executable, "-m", "pinrank.pipeline.cli", "run", *RUN_ARGS, "--home", home,
           "--json-out", summary_path]
    seen_incomplete = []
    last_id = 0
    runs = []  # (killed node or None, first execution id of the next run)
    for i, (node, delay) in enumerate(KILLS + [(None, 0.0)]):
        log = open(tmp_path / f"run{i}.log", "w")
        node_dir = os.path.join(paths.pipeline_root, node) if node else None
        before = _started(node_dir) if node_dir else set()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: kill Beam's too
        started_at = None
        deadline = time.monotonic() + 1800
        while proc.poll() is None:
            seen_incomplete += _incomplete_versions(paths.serving_dir)
            if node_dir and started_at is None and _started(node_dir) - before:
                started_at = time.monotonic()
            if started_at is not None and time.monotonic() - started_at >= delay:
                assert _incomplete_versions(paths.serving_dir) == []  # at kill time
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            assert time.monotonic() < deadline, f"run {i} took over 30 min"
            time.sleep(0.1)
        log.close()
        output = open(tmp_path / f"run{i}.log").read()[-3000:]
        if node is None:
            assert proc.returncode == 0, f"the last run failed:\n{output}"
        else:
            assert proc.returncode == -signal.SIGKILL, (
                f"run {i} ended ({proc.returncode}) before {node} started:\n{output}")
        execs = _executions(paths.metadata_path, cfg.name)
        this_run = [e for e in execs if e[0] > last_id]
        if node is not None:
            # the kill hit the component mid-run: its execution never finished
            assert [s for _, n, s in this_run if n == node] == ["RUNNING"], this_run
        runs.append((node, this_run))
        last_id = max(e[0] for e in execs)

    # every rerun: what had completed is reused, what was killed runs again
    done = {}
    for i, (killed, this_run) in enumerate(runs):
        states = {n: s for _, n, s in this_run}
        if i > 0:
            prev_killed = runs[i - 1][0]
            assert states.get(prev_killed) == "COMPLETE", (prev_killed, states)
            blessed_before = "Pusher" in done
            for n in done:
                if "resolver" in n or (blessed_before and any(b in n for b in BASELINE_DEPENDENT)):
                    continue
                assert states.get(n) == "CACHED", (i, n, states)
        for n, s in states.items():
            if s in ("COMPLETE", "CACHED"):
                done[n] = s
    final = {n: s for _, n, s in runs[-1][1]}
    assert final["RetrievalEvaluator"] == "COMPLETE"  # again, with the blessed baseline
    assert all(s in ("COMPLETE", "CACHED") for s in final.values()), final

    # the serving dir: only complete versions, exactly those the Pushers recorded
    assert seen_incomplete == [] and _incomplete_versions(paths.serving_dir) == []
    with open(summary_path) as fh:
        summary = json.load(fh)
    expected = {}
    for model, node in ((C.PINNERFORMER, "Pusher"), (C.RANKER, "RankerPusher")):
        base = os.path.join(paths.serving_dir, model)
        on_disk = set(os.listdir(base)) if os.path.isdir(base) else set()
        pushed = _pushed_versions(paths.metadata_path, node)
        assert on_disk == pushed, (model, on_disk, pushed)  # no leftover temp dirs either
        if pushed:
            expected[model] = int(max(pushed))
    assert summary["pushed"] is True and C.PINNERFORMER in expected
    assert os.path.basename(summary["pushed_destination"]) == str(expected[C.PINNERFORMER])
    assert summary["ranker"]["pushed"] is True and C.RANKER in expected
    assert os.path.basename(summary["ranker"]["pushed_destination"]) == str(expected[C.RANKER])
    h = LS.serve(model_base_path=paths.serving_dir, port=0, file_system_poll_wait_seconds=0)
    try:
        with ServingClient(h.target, retries=0) as client:
            for model, version in expected.items():
                states = {s.version: s.state for s in client.status(model)}
                assert states[version] == "AVAILABLE", (model, states)
                assert all(s == "AVAILABLE" for s in states.values()), (model, states)
    finally:
        h.stop(grace=None)
