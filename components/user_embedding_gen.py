"""UserEmbeddingGen: the daily user-embedding job (serving/batch_embeddings.py) as a TFX component,
the one step of the embedding pipeline (pipeline/embedding_pipeline.py).

  inputs   model (Model: the PinnerFormer the resolver picked; its Format-Serving SavedModel),
           model_blessing (ModelBlessing, optional: an unblessed model is refused),
           events (EventLog: the canonical dataset the users' actions are read from; as an
           artifact, MLMD links the snapshot to the data and, through DatasetGen, to the raw
           files, and a new data set is a new artifact, so a cache miss)
  exec     as_of (unix s: the cut-off, which names the snapshot), snapshot_root (where the
           online path reads snapshots), overwrite (0/1: rebuild a snapshot that exists for
           as_of)
  output   snapshot (UserEmbeddingSnapshot): `snapshot.json` in its URI (the snapshot's path and
           manifest) and custom properties snapshot_uri, as_of, embedded, carried, total,
           full_refresh, model_fingerprint, model_version, dataset_fingerprint

The job itself is `run_daily_embeddings`, unchanged: pre-flight checks, Beam, and an atomic
`<snapshot_root>/<as_of>/` (nothing is written before the inputs check out; a failure leaves the
existing snapshots as they are). It runs as `python -m pinrank.serving.daily_job` in a fresh
process (a serving-runtime module, run, not imported, from this layer; see AtomicPusher's
canary), with the pipeline's Beam args. Its failure fails the component with UserEmbeddingError,
one line. MLMD then records model (+ blessing) and events -> this execution -> snapshot artifact.

The job reads and writes through the local file system (it commits by renaming a directory).
Remote URIs (gs://bucket/x, as on Vertex) are read through the Cloud Storage FUSE mount at
/gcs/bucket/x when the task has one; otherwise the component fails before starting the job.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Union

from tfx import types
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import path_utils

from pinrank.components.types import EventLog, UserEmbeddingSnapshot

log = logging.getLogger(__name__)

JOB_MODULE = "pinrank.serving.daily_job"
POINTER_FILE = "snapshot.json"
GCS_FUSE_ROOT = "/gcs"  # Vertex AI mounts gs://<bucket>/ at /gcs/<bucket>/ (Cloud Storage FUSE)
MODEL_KEY, BLESSING_KEY, EVENTS_KEY, SNAPSHOT_KEY = "model", "model_blessing", "events", "snapshot"


class UserEmbeddingError(RuntimeError):
    """The daily job refused its inputs or failed; no snapshot was written or replaced."""


def local_path(uri: str, fuse_root: str = GCS_FUSE_ROOT) -> str:
    """A path the job can open: local paths as they are, gs://b/x as <fuse_root>/b/x when the
    bucket is mounted there."""
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    if uri.startswith("gs://"):
        mounted = os.path.join(fuse_root, uri[len("gs://"):])
        if os.path.isdir(os.path.join(fuse_root, uri[len("gs://"):].split("/", 1)[0])):
            return mounted
    raise UserEmbeddingError(f"{uri}: the daily job needs a local file system path (or gs:// "
                             f"with the bucket mounted under {fuse_root}/)")


def run_job(model_dir: str, dataset_dir: str, snapshot_root: str, as_of: int, *,
            overwrite: bool = False, beam_args: Optional[List[str]] = None) -> Dict[str, Any]:
    """Runs the daily job in a fresh process; returns {"snapshot": path, "manifest": {...}}."""
    with tempfile.TemporaryDirectory(prefix="pinrank-embed-") as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", JOB_MODULE, "--model", model_dir, "--data", dataset_dir,
               "--out", snapshot_root, "--as-of", str(int(as_of)), "--result", result,
               *(["--overwrite"] if overwrite else []),
               *[f"--beam-arg={a}" for a in (beam_args or [])]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.stderr:
            log.info("daily job stderr:\n%s", proc.stderr[-4000:])
        if os.path.exists(result):
            with open(result) as f:
                outcome = json.load(f)
            if proc.returncode == 0 and "snapshot" in outcome:
                return outcome
            if outcome.get("error"):
                raise UserEmbeddingError(f"daily user-embedding job as of {as_of} failed "
                                         f"({outcome.get('kind')}): {outcome['error']}")
        tail = " ".join((proc.stderr or "").strip().splitlines()[-1:])
        raise UserEmbeddingError(f"daily user-embedding job as of {as_of} exited with code "
                                 f"{proc.returncode}" + (f": {tail}" if tail else ""))


def record(artifact: types.Artifact, snapshot_uri: str, manifest: Dict[str, Any]) -> None:
    """Writes the pointer file into the artifact's URI and sets its custom properties."""
    os.makedirs(artifact.uri, exist_ok=True)
    with open(os.path.join(artifact.uri, POINTER_FILE), "w") as f:
        json.dump({"snapshot_uri": snapshot_uri, "manifest": manifest}, f, indent=1,
                  sort_keys=True)
        f.write("\n")
    counts = manifest.get("counts", {})
    props: Dict[str, Union[int, str]] = {
        "snapshot_uri": snapshot_uri, "as_of": int(manifest["as_of"]),
        "embedded": int(counts.get("embedded", 0)), "carried": int(counts.get("carried", 0)),
        "total": int(counts.get("total", 0)), "full_refresh": int(bool(manifest.get("full_refresh"))),
        "model_fingerprint": str(manifest.get("model_fingerprint") or ""),
        "model_version": str(manifest.get("model_version") or ""),
        "dataset_fingerprint": str(manifest.get("dataset_fingerprint") or "")}
    for key, value in props.items():
        if isinstance(value, int):
            artifact.set_int_custom_property(key, value)
        else:
            artifact.set_string_custom_property(key, value)


class Executor(base_beam_executor.BaseBeamExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        blessings = input_dict.get(BLESSING_KEY) or []
        if blessings and not model_utils.is_model_blessed(blessings[0]):
            raise UserEmbeddingError(f"model {model.uri} is not blessed (blessing "
                                     f"{blessings[0].uri}): no snapshot is made with it")
        model_dir = local_path(path_utils.serving_model_path(model.uri))
        snapshot_root = exec_properties["snapshot_root"]
        events = artifact_utils.get_single_instance(input_dict[EVENTS_KEY])
        outcome = run_job(model_dir, local_path(events.uri),
                          local_path(snapshot_root), int(exec_properties["as_of"]),
                          overwrite=bool(exec_properties.get("overwrite") or 0),
                          beam_args=list(self._beam_pipeline_args or []))
        # The snapshot's own URI as configured (gs://... on Vertex, not the mount's path).
        uri = snapshot_root.rstrip("/") + "/" + os.path.basename(outcome["snapshot"])
        record(artifact_utils.get_single_instance(output_dict[SNAPSHOT_KEY]), uri,
               outcome["manifest"])
        log.info("snapshot %s: %s", uri, outcome["manifest"].get("counts"))


class UserEmbeddingGenSpec(ComponentSpec):
    PARAMETERS = {
        "as_of": ExecutionParameter(type=int),
        "snapshot_root": ExecutionParameter(type=str),
        "overwrite": ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
        EVENTS_KEY: ChannelParameter(type=EventLog),
    }
    OUTPUTS = {SNAPSHOT_KEY: ChannelParameter(type=UserEmbeddingSnapshot)}


class UserEmbeddingGen(base_beam_component.BaseBeamComponent):
    """The daily user-embedding snapshot of `model` as of `as_of` (see the module doc)."""

    SPEC_CLASS = UserEmbeddingGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, *, model: types.BaseChannel, events: types.BaseChannel, as_of,
                 snapshot_root: str, model_blessing: Optional[types.BaseChannel] = None,
                 overwrite: bool = False):
        """as_of: unix seconds, or a RuntimeParameter (a compiled Vertex job's daily argument)."""
        super().__init__(spec=UserEmbeddingGenSpec(
            model=model, model_blessing=model_blessing, events=events, as_of=as_of,
            snapshot_root=snapshot_root,
            overwrite=int(overwrite),
            snapshot=types.Channel(type=UserEmbeddingSnapshot)))
