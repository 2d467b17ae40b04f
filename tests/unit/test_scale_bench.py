"""benchmarks/scale.py's pure parts: the world size per target, the table and its ratio column,
and the per-component times and event counts read from a small MLMD store built here (no
pipeline run)."""
import json
import time

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from benchmarks import scale


@pytest.mark.parametrize("events,per_user,want", [
    (1_000_000, 120, 8333), (10_000_000, 120, 83333), (20_000, 60, 333), (10, 120, 1)])
def test_world_overrides_give_users_for_the_target(events, per_user, want):
    assert scale.world_overrides(events, per_user) == [f"data.num_users={want}"]


def test_world_overrides_keep_the_presets_other_knobs():
    data = scale.resolved_data("tiny", ["data.events_per_user=50"])
    assert data.source == "synthetic" and data.events_per_user == 50
    assert scale.world_overrides(20_000, data.events_per_user) == ["data.num_users=400"]
    # cpu's source is movielens: the benchmark always runs the synthetic world
    assert scale.resolved_data("cpu", []).source == "synthetic"
    with pytest.raises(ValueError):
        scale.world_overrides(0, 120)


def _run(target, wall, rss, components, returncode=0, **extra):
    return {"target_events": target, "preset": "cpu", "workers": 2, "returncode": returncode,
            "wall_s": wall, "peak_tree_rss_mb": rss, "peak_process_rss_mb": rss / 2,
            "max_processes": 4, "counts": {"events": target, "impressions": 2 * target,
                                           "users": target // 100, "items": 5000},
            "components": {n: {"s": s, "start_ms": i} for i, (n, s) in enumerate(components)},
            **extra}


def test_table_has_one_column_per_size_and_the_ratio_to_the_smallest():
    results = [_run(1_000_000, 100.0, 1000.0, [("DatasetGen", 10.0), ("Trainer", 50.0)]),
               _run(10_000_000, 800.0, 3000.0, [("DatasetGen", 95.0), ("Trainer", 400.0),
                                                 ("Pusher", 1.0)])]
    text = scale.render_table(results)
    lines = text.splitlines()
    assert lines[0].split() == ["target", "events", "1M", "10M", "x", "1M"]
    row = {ln.split("  ")[0].strip(): ln.split() for ln in lines[2:] if ln.strip()}
    assert row["wall s"][-3:] == ["100.0", "800.0", "8.00x"]
    assert row["peak tree RSS MB"][-3:] == ["1,000.0", "3,000.0", "3.00x"]
    assert row["events"][-3:] == ["1,000,000", "10,000,000", "10.00x"]
    assert row["DatasetGen s"][-1] == "9.50x"
    assert row["components, sum s"][-3:] == ["60.0", "496.0", "8.27x"]
    assert row["Pusher s"][-3:] == ["-", "1.0", "-"]  # absent from the first run
    labels = [row[0] for row in scale.table_rows(results)]
    assert labels.index("DatasetGen s") < labels.index("Trainer s") < labels.index("Pusher s")


def test_table_names_a_failed_run_and_report_merges_files(tmp_path):
    ok = _run(20_000, 60.0, 900.0, [("DatasetGen", 2.0)])
    bad = _run(40_000, 5.0, 300.0, [], returncode=1,
               stderr_tail=["Traceback ...", "ValueError: boom"])
    bad["counts"] = {}
    bad["components"] = {"DatasetGen": {"s": 0.0, "state": "RUNNING", "start_ms": 0}}
    (tmp_path / "a.json").write_text(json.dumps([bad]))
    (tmp_path / "b.json").write_text(json.dumps(ok))
    merged = scale.load([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert [r["target_events"] for r in merged] == [20_000, 40_000]  # sorted by size
    text = scale.render_table(merged)
    assert "40k: FAILED (exit 1): Traceback ... | ValueError: boom" in text
    assert [ln.split()[-3:] for ln in text.splitlines() if ln.startswith("DatasetGen")] == [
        ["2.0", "0.0!", "0.00x"]]
    assert "!: the execution did not end COMPLETE" in text
    assert scale.render_table([ok]).splitlines()[0].split() == ["target", "events", "20k"]  # no ratio


def _fake_pipeline_store(path, with_event_log=True):
    """A sqlite MLMD store as LocalDagRunner lays it out: pipeline, pipeline_run and node
    contexts (`pinrank.<node id>`), one execution per node attributed to its contexts, plus an
    older run's execution that must not count."""
    conn = metadata_store_pb2.ConnectionConfig()
    conn.sqlite.filename_uri = path
    conn.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(conn)

    def ctype(name):
        return store.put_context_type(metadata_store_pb2.ContextType(name=name))

    node_t, run_t = ctype("node"), ctype("pipeline_run")
    ex_t = store.put_execution_type(metadata_store_pb2.ExecutionType(name="tfx.SomeComponent"))
    nodes = {n: store.put_contexts([metadata_store_pb2.Context(type_id=node_t,
                                                               name=f"pinrank.{n}")])[0]
             for n in ("DatasetGen", "Trainer")}
    old_run, new_run = (store.put_contexts([metadata_store_pb2.Context(type_id=run_t, name=n)])[0]
                        for n in ("2026-01-01T00:00:00", "2026-01-02T00:00:00"))

    def execute(node, run, sleep_s):
        ex = metadata_store_pb2.Execution(type_id=ex_t, last_known_state=2)  # RUNNING
        [ex_id] = store.put_executions([ex])
        ex.id = ex_id
        for ctx in (nodes[node], run):
            store.put_attributions_and_associations(
                [], [metadata_store_pb2.Association(execution_id=ex_id, context_id=ctx)])
        time.sleep(sleep_s)
        ex.last_known_state = 3  # COMPLETE
        store.put_executions([ex])
        return ex_id

    execute("Trainer", old_run, 0.0)
    execute("DatasetGen", new_run, 0.05)
    execute("Trainer", new_run, 0.6)
    if with_event_log:
        at = store.put_artifact_type(metadata_store_pb2.ArtifactType(name=scale.EVENT_LOG_TYPE))
        for n in (10, 20_123):  # the newest artifact wins
            art = metadata_store_pb2.Artifact(type_id=at, uri=f"/x/{n}")
            for k, v in {"events": n, "impressions": 3 * n, "users": 7, "items": 9}.items():
                art.custom_properties[k].int_value = v
            art.custom_properties["source"].string_value = "synthetic"
            store.put_artifacts([art])
    return store


def test_component_times_and_counts_from_mlmd(tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    _fake_pipeline_store(path)
    components, counts = scale.read_mlmd(path)  # opened read-only, as the benchmark does
    assert list(components) == ["DatasetGen", "Trainer"]  # in the order they ran
    assert all(c["executions"] == 1 and c["state"] == "COMPLETE" for c in components.values())
    # seconds, not ms (the sqlite writes add a little on a busy disk); the old run's
    # execution of Trainer is left out
    assert 0.05 <= components["DatasetGen"]["s"] < 30
    assert 0.6 <= components["Trainer"]["s"] < 30
    assert counts == {"events": 20_123, "impressions": 60_369, "users": 7, "items": 9}


def test_mlmd_without_event_log_or_store(tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    _fake_pipeline_store(path, with_event_log=False)
    assert scale.read_mlmd(path)[1] == {}
    assert scale.read_mlmd(str(tmp_path / "missing.sqlite")) == ({}, {})
    home = tmp_path / "home"
    (home / "pinrank" / "synthetic-u1").mkdir(parents=True)
    (home / "pinrank" / "synthetic-u1" / "metadata.sqlite").write_text("")
    assert scale.find_metadata(str(home), None).endswith("synthetic-u1/metadata.sqlite")


def test_component_peaks_take_the_samples_inside_each_execution():
    mb = 2**20
    components = {
        "A": {"start_ms": 1000, "end_ms": 2000, "state": "COMPLETE"},
        "B": {"start_ms": 2500, "end_ms": 2600, "state": "COMPLETE"},  # no sample inside
        "C": {"start_ms": 3000, "end_ms": 3000, "state": "RUNNING"},  # killed: to the last sample
    }
    series = [(900.0, 50 * mb), (1000.0, 10 * mb), (1500.0, 30 * mb), (2000.0, 20 * mb),
              (3500.0, 40 * mb), (4000.0, 5 * mb)]
    scale.component_peaks(components, series)
    assert [components[n]["peak_tree_rss_mb"] for n in "ABC"] == [30.0, None, 40.0]
    rows = {label: values for label, values, _ in scale.table_rows([{
        "returncode": 0, "wall_s": 1.0, "peak_tree_rss_mb": 50.0, "peak_process_rss_mb": 50.0,
        "components": {n: {**c, "s": 1.0} for n, c in components.items()}}])}
    assert rows["A peak tree RSS MB"] == [30.0] and rows["C peak tree RSS MB"] == [40.0]
    assert "B peak tree RSS MB" not in rows
