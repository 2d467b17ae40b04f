"""Run the embedding pipeline (pipeline/embedding_pipeline.py) with LocalDagRunner on a
`pinrank run` home: the training run's MLMD store, data set and the online snapshot root.

    pinrank embed-pipeline --preset tiny --home runs --as-of TS

Where things are (RunPaths of the same config): MLMD `metadata_path` (shared with the training
pipeline: the resolver reads its models and blessings there), pipeline root
`<run>/embedding_pipeline_root`, snapshots `<run>/online/snapshots/<as_of>/` (where
`pinrank online-demo` writes and the online path reads them).
"""
from __future__ import annotations

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import os
import time
from typing import Any, Dict, List, Optional

from pinrank.pipeline.config import PipelineConfig
from pinrank.pipeline.runs import RunPaths, run_lock

EMBEDDING_PIPELINE_ROOT = "embedding_pipeline_root"


class NoBlessedModelError(FileNotFoundError):
    """The store has no blessed PinnerFormer, so the pipeline made no snapshot."""


def pipeline_root_for(paths: RunPaths) -> str:
    return os.path.join(os.path.dirname(paths.pipeline_root), EMBEDDING_PIPELINE_ROOT)


def snapshot_root_for(paths: RunPaths) -> str:
    """`<run>/online/snapshots`, the root `pinrank online-demo` uses."""
    return os.path.join(os.path.dirname(paths.serving_dir), "online", "snapshots")


def _dataset(paths: RunPaths) -> tuple:
    """(dir, fingerprint) of the training run's latest ingested dataset (DatasetGen's EventLog)."""
    from pinrank.components.data.events import read_dataset_manifest
    from pinrank.pipeline.runs import dataset_dir
    data = dataset_dir(paths)
    manifest = read_dataset_manifest(data) if data else None
    if not manifest or not manifest.get("fingerprint"):
        raise FileNotFoundError(f"{paths.metadata_path}: no ingested data set (run `pinrank run` "
                                f"with the same preset/--source/--set/--home first)")
    return data, manifest["fingerprint"]


def build(cfg: PipelineConfig, paths: RunPaths, as_of: int, *,
          snapshot_root: Optional[str] = None, beam_args: Optional[List[str]] = None,
          enable_cache: bool = True, overwrite: bool = False):
    from tfx import v1 as tfx

    from pinrank.pipeline.embedding_pipeline import create_embedding_pipeline
    from pinrank.pipeline.runs import DEFAULT_BEAM_ARGS
    data, fingerprint = _dataset(paths)
    if not os.path.isfile(paths.metadata_path):
        raise FileNotFoundError(f"{paths.metadata_path}: no MLMD store (run `pinrank run` with "
                                f"the same preset/--source/--set/--home first)")
    return create_embedding_pipeline(
        cfg, pipeline_root=pipeline_root_for(paths), dataset_dir=data,
        dataset_fingerprint=fingerprint, snapshot_root=snapshot_root or snapshot_root_for(paths),
        as_of=int(as_of),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            paths.metadata_path),
        beam_pipeline_args=list(beam_args if beam_args is not None else DEFAULT_BEAM_ARGS),
        enable_cache=enable_cache, overwrite=overwrite)


def _node_executions(store, pipeline_name: str, node_id: str) -> List[Any]:
    ctx = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    return sorted(store.get_executions_by_context(ctx.id), key=lambda e: e.id) if ctx else []


def lineage(store, execution_id: int) -> Dict[str, Any]:
    """{"inputs": {key: [artifact]}, "outputs": {key: [artifact]}} of one execution (MLMD
    events; the key is the event's path step, as TFX records it)."""
    from ml_metadata.proto import metadata_store_pb2 as pb
    out: Dict[str, Dict[str, List[Any]]] = {"inputs": {}, "outputs": {}}
    events = store.get_events_by_execution_ids([execution_id])
    arts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    for e in events:
        side = "inputs" if e.type in (pb.Event.INPUT, pb.Event.DECLARED_INPUT) else "outputs"
        key = e.path.steps[0].key if e.path.steps else ""
        out[side].setdefault(key, []).append(arts[e.artifact_id])
    return out


def summarize(cfg: PipelineConfig, paths: RunPaths, after_execution: int = 0) -> Dict[str, Any]:
    """The UserEmbeddingGen execution of this run (id > after_execution) and what it read and
    wrote, from MLMD. Raises NoBlessedModelError when it did not run (nothing to resolve)."""
    from ml_metadata.proto import metadata_store_pb2 as pb
    from tfx.orchestration import metadata

    from pinrank.pipeline.embedding_pipeline import COMPONENT_ID, embedding_pipeline_name
    conn = metadata.sqlite_metadata_connection_config(paths.metadata_path)
    with metadata.Metadata(conn) as m:
        runs = [e for e in _node_executions(m.store, embedding_pipeline_name(cfg), COMPONENT_ID)
                if e.id > after_execution]
        execution = runs[-1] if runs else None
        io = lineage(m.store, execution.id) if execution else {"inputs": {}, "outputs": {}}
    state = pb.Execution.State.Name(execution.last_known_state) if execution else "NEW"
    if not io["inputs"].get("model"):
        # LocalDagRunner records the node as FAILED (InsufficientInputError) and goes on.
        raise NoBlessedModelError(
            f"{paths.metadata_path}: no blessed PinnerFormer of pipeline {cfg.name!r} "
            f"(ItemAwareTrainer blessed by RetrievalEvaluator), so no snapshot was made")
    if state not in ("COMPLETE", "CACHED") or not io["outputs"].get("snapshot"):
        from pinrank.components.user_embedding_gen import UserEmbeddingError
        raise UserEmbeddingError(f"{COMPONENT_ID} execution {execution.id} ended {state} "
                                 f"without a snapshot (see its log above)")
    snap = io["outputs"]["snapshot"][0]
    model = io["inputs"]["model"][0]
    props = {k: (v.int_value if v.HasField("int_value") else v.string_value)
             for k, v in snap.custom_properties.items()
             if v.HasField("int_value") or v.HasField("string_value")}
    return {"execution_id": execution.id, "execution_state": state,
            "snapshot_artifact_id": snap.id, "snapshot_artifact_uri": snap.uri,
            "snapshot": props.get("snapshot_uri"), "as_of": props.get("as_of"),
            "counts": {k: props.get(k) for k in ("embedded", "carried", "total")},
            "full_refresh": bool(props.get("full_refresh")),
            "model_fingerprint": props.get("model_fingerprint"),
            "model_artifact_id": model.id, "model_uri": model.uri,
            "model_blessing_artifact_id": next(
                (a.id for a in io["inputs"].get("model_blessing", [])), None),
            "events_artifact_id": next((a.id for a in io["inputs"].get("events", [])), None),
            "dataset_fingerprint": props.get("dataset_fingerprint")}


def _max_execution_id(paths: RunPaths) -> int:
    from tfx.orchestration import metadata
    conn = metadata.sqlite_metadata_connection_config(paths.metadata_path)
    with metadata.Metadata(conn) as m:
        return max((e.id for e in m.store.get_executions()), default=0)


def run(cfg: PipelineConfig, home: str, as_of: int, *, snapshot_root: Optional[str] = None,
        beam_args: Optional[List[str]] = None, enable_cache: bool = True,
        overwrite: bool = False) -> Dict[str, Any]:
    from tfx import v1 as tfx
    paths = RunPaths.for_config(cfg, home)
    start = time.time()
    pipeline = build(cfg, paths, as_of, snapshot_root=snapshot_root, beam_args=beam_args,
                     enable_cache=enable_cache, overwrite=overwrite)
    with run_lock(paths):
        before = _max_execution_id(paths)
        tfx.orchestration.LocalDagRunner().run(pipeline)
        summary = summarize(cfg, paths, after_execution=before)
    summary["wall_s"] = round(time.time() - start, 1)
    summary["paths"] = {**paths.__dict__, "embedding_pipeline_root": pipeline_root_for(paths),
                        "snapshot_root": snapshot_root or snapshot_root_for(paths)}
    return summary
