"""The embedding pipeline with LocalDagRunner on the tiny run's home (no training of its own):
the latest blessed PinnerFormer of the training pipeline, resolved across pipelines in the shared
MLMD store, embeds every user into a complete snapshot, and MLMD records model -> execution ->
snapshot."""
import os

import pytest

pytestmark = pytest.mark.e2e


def _latest_blessed_model_id(store, pipeline_name):
    """What the resolver should pick, found independently: the newest blessed blessing of the
    training pipeline's RetrievalEvaluator names its model (current_model_id)."""
    ctx = store.get_context_by_type_and_name("node", f"{pipeline_name}.RetrievalEvaluator")
    blessings = [a for a in store.get_artifacts_by_context(ctx.id)
                 if a.custom_properties["blessed"].int_value == 1
                 and "current_model_id" in a.custom_properties]
    assert blessings, "the tiny run blessed no PinnerFormer"
    newest = max(blessings, key=lambda a: a.id)
    return newest.custom_properties["current_model_id"].int_value


@pytest.fixture(scope="module")
def embedded(tiny_run, tmp_path_factory):
    from pinrank.components.data.events import read_dataset_manifest
    from pinrank.pipeline import embedding_runner
    cfg, first, _ = tiny_run
    home = first["paths"]["home"]
    manifest = read_dataset_manifest(first["paths"]["data_dir"])
    as_of = int(manifest["time_range"][1]) + 1  # every action is history
    # Its own snapshot root: other tests use the run's online/snapshots.
    root = str(tmp_path_factory.mktemp("snapshots"))
    summary = embedding_runner.run(cfg, home, as_of, snapshot_root=root)
    return cfg, first, as_of, root, summary


def test_snapshot_is_complete(embedded):
    from pinrank.serving import batch_embeddings as B
    _, _, as_of, root, summary = embedded
    path = os.path.join(root, str(as_of))
    assert summary["snapshot"] == path and summary["as_of"] == as_of
    assert B.is_complete(path)
    snap = B.load_snapshot(path)
    manifest = B.read_manifest(path)
    assert len(snap) == manifest["counts"]["total"] == summary["counts"]["total"] > 0
    assert summary["counts"] == manifest["counts"]
    assert manifest["counts"]["embedded"] == len(snap)  # the first snapshot embeds everybody
    assert manifest["model_fingerprint"] == summary["model_fingerprint"]
    assert B.list_snapshots(root) == [(as_of, path)]  # no temporary directory left behind


def test_lineage_model_to_execution_to_snapshot(embedded):
    from ml_metadata.proto import metadata_store_pb2 as pb
    from tfx.orchestration import metadata
    from tfx.v1.orchestration.metadata import sqlite_metadata_connection_config

    cfg, first, as_of, root, summary = embedded
    with metadata.Metadata(sqlite_metadata_connection_config(
            first["paths"]["metadata_path"])) as m:
        store = m.store
        (snap,) = store.get_artifacts_by_id([summary["snapshot_artifact_id"]])
        assert store.get_artifact_types_by_id([snap.type_id])[0].name == \
            "pinrank.UserEmbeddingSnapshot"
        assert snap.custom_properties["snapshot_uri"].string_value == os.path.join(root, str(as_of))
        assert snap.custom_properties["as_of"].int_value == as_of
        assert snap.custom_properties["model_fingerprint"].string_value == \
            summary["model_fingerprint"]
        # snapshot <- execution (OUTPUT) <- model, blessing (INPUT)
        (producer,) = [e for e in store.get_events_by_artifact_ids([snap.id])
                       if e.type == pb.Event.OUTPUT]
        (execution,) = store.get_executions_by_id([producer.execution_id])
        assert execution.last_known_state == pb.Execution.COMPLETE
        node_ctx = store.get_context_by_type_and_name("node",
                                                      f"{cfg.name}-embeddings.UserEmbeddingGen")
        assert execution.id in {e.id for e in store.get_executions_by_context(node_ctx.id)}
        inputs = {e.path.steps[0].key: e.artifact_id
                  for e in store.get_events_by_execution_ids([execution.id])
                  if e.type == pb.Event.INPUT}
        assert inputs["model"] == summary["model_artifact_id"]
        assert inputs["model_blessing"] == summary["model_blessing_artifact_id"]
        # ... and the model is the training pipeline's latest blessed PinnerFormer.
        assert inputs["model"] == _latest_blessed_model_id(store, cfg.name)
        (model,) = store.get_artifacts_by_id([inputs["model"]])
        assert model.uri.startswith(os.path.join(first["paths"]["pipeline_root"],
                                                 "ItemAwareTrainer") + os.sep)
        (blessing,) = store.get_artifacts_by_id([inputs["model_blessing"]])
        assert blessing.custom_properties["blessed"].int_value == 1
        assert blessing.custom_properties["current_model_id"].int_value == model.id
        # the gate's blessing names its model (what a compiled Vertex resolver filters on)
        assert blessing.custom_properties["gated_model"].string_value == "pinnerformer"
        # The data it read is the training run's own EventLog (the importer found it, it did
        # not register a copy), so the snapshot's lineage reaches DatasetGen and the raw files.
        (events,) = store.get_artifacts_by_id([inputs["events"]])
        assert events.uri.startswith(os.path.join(first["paths"]["pipeline_root"],
                                                  "DatasetGen") + os.sep)
        # Outputs of DatasetGen's execution (and of the importer's, which handed it on).
        made = {e.execution_id for e in store.get_events_by_artifact_ids([events.id])
                if e.type == pb.Event.OUTPUT}
        dataset_ctx = store.get_context_by_type_and_name("node", f"{cfg.name}.DatasetGen")
        assert made & {e.id for e in store.get_executions_by_context(dataset_ctx.id)}
        assert inputs["events"] == summary["events_artifact_id"]
        assert events.custom_properties["fingerprint"].string_value == \
            summary["dataset_fingerprint"] == snap.custom_properties[
                "dataset_fingerprint"].string_value


def test_snapshot_model_is_the_pushed_one(embedded):
    """Same fingerprint as the pushed version: `embed-users --model <serving dir>` and this
    pipeline extend each other's snapshots instead of forcing a full refresh."""
    from pinrank.serving import batch_embeddings as B
    _, first, _, _, summary = embedded
    pushed = B.resolve_model_dir(first["paths"]["serving_dir"])
    assert B.model_fingerprint(pushed) == summary["model_fingerprint"]


def test_rerun_for_the_same_day_is_cached(embedded):
    from pinrank.pipeline import embedding_runner
    cfg, first, as_of, root, summary = embedded
    again = embedding_runner.run(cfg, first["paths"]["home"], as_of, snapshot_root=root)
    assert again["execution_state"] == "CACHED"
    assert again["snapshot_artifact_id"] == summary["snapshot_artifact_id"]
    assert again["model_artifact_id"] == summary["model_artifact_id"]
