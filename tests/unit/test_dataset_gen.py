"""Ingestion inside the DAG (components/dataset_gen.py): MovieLens-format files are imported as
a RawData artifact and converted by DatasetGen, so MLMD links the examples to the exact files;
new contents at the same path are a new artifact and a cache miss, unchanged files a hit."""
import dataclasses
import os

import numpy as np
import pytest

from pinrank.pipeline.config import PipelineConfig


def _write_raw(d, seed=0):
    """20 users x 12 ratings over 30 films, ratings 1..5 (MovieLens CSV layout)."""
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "movies.csv"), "w") as f:
        f.write("movieId,title,genres\n")
        for m in range(1, 31):
            f.write(f"{m},Film {m} ({1990 + m % 20}),Drama|Comedy\n")
    with open(os.path.join(d, "ratings.csv"), "w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for u in range(1, 21):
            for i, m in enumerate(rng.choice(np.arange(1, 31), 12, replace=False)):
                f.write(f"{u},{m},{rng.integers(1, 6)},{964980000 + u * 100000 + i * 3600}\n")
    return d


def _run(cfg, raw, root):
    from tfx import v1 as tfx

    from pinrank.components.event_example_gen import EventExampleGen
    from pinrank.pipeline.pipeline import _ingestion

    nodes = _ingestion(cfg, raw, "")
    gen = EventExampleGen(events=nodes[-1].outputs["events"],
                          config_json=cfg.sections_json("examples"))
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="ingest", pipeline_root=os.path.join(root, "pipeline_root"),
        components=[*nodes, gen], enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")),
        beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"]))


def _states(store, node):
    from ml_metadata.proto import metadata_store_pb2
    (ctx,) = [c for c in store.get_contexts_by_type("node") if c.name == f"ingest.{node}"]
    return [metadata_store_pb2.Execution.State.Name(e.last_known_state)
            for e in sorted(store.get_executions_by_context(ctx.id), key=lambda e: e.id)]


def _inputs_of_producers(store, artifact_id):
    """{sorted input artifact ids} of every execution that output the artifact."""
    from ml_metadata.proto import metadata_store_pb2
    Ev = metadata_store_pb2.Event
    producers = [e.execution_id for e in store.get_events_by_artifact_ids([artifact_id])
                 if e.type == Ev.OUTPUT]
    return {tuple(sorted(e.artifact_id for e in store.get_events_by_execution_ids([x])
                         if e.type == Ev.INPUT)) for x in producers}


def test_raw_files_are_upstream_of_the_examples_and_their_contents_key_the_cache(tmp_path):
    from tfx.orchestration import metadata
    from tfx.v1.orchestration.metadata import sqlite_metadata_connection_config

    from pinrank.components.data import events as E
    from pinrank.components.data import sources

    raw_dir = _write_raw(str(tmp_path / "raw"))
    cfg = PipelineConfig().replace(data=dataclasses.replace(PipelineConfig().data, source="path",
                                                             path=raw_dir))
    root = str(tmp_path / "run")
    raw = sources.raw_input(cfg.data)
    assert (raw.uri, raw.format) == (raw_dir, "movielens-csv")
    _run(cfg, raw, root)
    _run(cfg, sources.raw_input(cfg.data), root)          # same files: everything cached
    _write_raw(raw_dir, seed=1)                           # new contents, same path
    raw2 = sources.raw_input(cfg.data)
    assert raw2.fingerprint != raw.fingerprint
    _run(cfg, raw2, root)

    with metadata.Metadata(sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite"))) as m:
        s = m.store
        assert _states(s, "DatasetGen") == ["COMPLETE", "CACHED", "COMPLETE"]
        assert _states(s, "EventExampleGen") == ["COMPLETE", "CACHED", "COMPLETE"]
        raws = sorted(s.get_artifacts_by_type("pinrank.RawData"), key=lambda a: a.id)
        assert [a.custom_properties["fingerprint"].string_value for a in raws] == [
            raw.fingerprint, raw2.fingerprint]
        assert {a.uri for a in raws} == {raw_dir}
        logs = sorted(s.get_artifacts_by_type("pinrank.EventLog"), key=lambda a: a.id)
        examples = sorted(s.get_artifacts_by_type("Examples"), key=lambda a: a.id)
        assert len(logs) == len(examples) == 2
        for raw_art, log, ex in zip(raws, logs, examples):
            # RawData -[INPUT]-> DatasetGen -[OUTPUT]-> EventLog -[INPUT]-> EventExampleGen -> Examples
            # (the cached run's execution records the reused outputs too: same inputs)
            assert _inputs_of_producers(s, log.id) == {(raw_art.id,)}
            assert _inputs_of_producers(s, ex.id) == {(log.id,)}
            manifest = E.read_dataset_manifest(log.uri)
            assert log.custom_properties["fingerprint"].string_value == manifest["fingerprint"]
            assert log.custom_properties["source"].string_value == "movielens-csv"
            assert log.custom_properties["events"].int_value == 240
        assert logs[0].custom_properties["fingerprint"].string_value != \
            logs[1].custom_properties["fingerprint"].string_value


def test_canonical_input_is_copied_with_its_fingerprint(tmp_path):
    """A compiled job's RawData is a dataset `pinrank data` wrote (uploaded): DatasetGen copies
    it unchanged and keeps its fingerprint."""
    from pinrank.components.data import events as E
    from pinrank.components.data import sources
    from pinrank.pipeline.config import preset

    cfg = preset("tiny").data
    src = sources.prepare_dataset(cfg, str(tmp_path / "canonical"))
    fp = E.read_dataset_manifest(src)["fingerprint"]
    manifest = sources.ingest(cfg, str(tmp_path / "out"), sources.RawInput(src, "canonical", fp))
    assert manifest["fingerprint"] == fp
    for rel in ("items.parquet", "interests.json"):
        assert open(os.path.join(src, rel), "rb").read() == \
            open(os.path.join(tmp_path, "out", rel), "rb").read()
    assert len(E.event_shards(str(tmp_path / "out"))) == len(E.event_shards(src))
    with pytest.raises(FileNotFoundError, match="no DATASET.json"):
        sources.ingest(cfg, str(tmp_path / "o2"),
                       sources.RawInput(str(tmp_path), "canonical", fp))
