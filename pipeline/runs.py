"""What every runner shares: where a run lives, its input files, and the closing summary."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import resource
import shutil
import time
from typing import Dict, List, Optional

from tfx import v1 as tfx
from tfx.orchestration import metadata

from pinrank.components.data.events import read_dataset_manifest
from pinrank.components.data.sources import raw_input, suppression_fingerprint
from pinrank.pipeline.config import PipelineConfig
from pinrank.pipeline.pipeline import create_pipeline

DEFAULT_HOME = os.environ.get("PINRANK_HOME", os.path.join(os.getcwd(), "runs"))
# In-memory DirectRunner: on 2 cores, multi-process workers spend more time importing TF than
# working. Pass `--beam-arg=--direct_running_mode=multi_processing` for big local data.
DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


@dataclasses.dataclass(frozen=True)
class RunPaths:
    home: str
    pipeline_root: str
    metadata_path: str
    serving_dir: str
    data_dir: str  # a link to the latest ingested dataset (link_dataset), for the serving CLIs

    @classmethod
    def for_config(cls, cfg: PipelineConfig, home: str = DEFAULT_HOME) -> "RunPaths":
        home = os.path.abspath(home)
        # One MLMD store per data set: the "last blessed model" baseline must have been
        # evaluated on the same users and catalog.
        root = os.path.join(home, cfg.name, _data_key(cfg))
        return cls(home=home, pipeline_root=os.path.join(root, "pipeline_root"),
                   metadata_path=os.path.join(root, "metadata.sqlite"),
                   serving_dir=os.path.join(root, "serving"),
                   data_dir=os.path.join(home, "data", _data_key(cfg)))


class RunBusyError(RuntimeError):
    """Another pipeline run holds the same MLMD store."""


@contextlib.contextmanager
def run_lock(paths: RunPaths, grace_s: float = 10.0):
    """Hold `<store dir>/.run.lock` for a whole run. Two runs on one store would race for the
    "last blessed" baseline, and each run's summary (the newest evaluation) could be the other's,
    so a second run is refused with one line instead (an advisory flock, released when the
    process ends, so a killed run leaves no stale lock)."""
    root = os.path.dirname(paths.metadata_path)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".run.lock"), "a+") as fh:
        deadline = time.monotonic() + grace_s  # a killed holder's processes may still be dying
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    raise RunBusyError(f"another pipeline run (pid {holder}) is using {root}; "
                                       f"wait for it to finish or use another --home") from None
                time.sleep(0.2)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield  # closing the file releases the lock, also on errors


def _data_key(cfg: PipelineConfig) -> str:
    d = cfg.data
    if d.source == "synthetic":
        from pinrank.components.data.sources import SYNTHETIC_FIELDS
        # Readable size in the name; every other world knob in a short hash, so two worlds
        # never share a data directory or an MLMD store.
        knobs = hashlib.sha256(json.dumps({f: getattr(d, f) for f in SYNTHETIC_FIELDS},
                                          sort_keys=True).encode()).hexdigest()[:8]
        return f"synthetic-u{d.num_users}-i{d.num_items}-e{d.events_per_user}-s{d.seed}-{knobs}"
    if d.source == "path":
        return "path-" + hashlib.sha256(os.path.abspath(d.path).encode()).hexdigest()[:12]
    return d.source


def build(cfg: PipelineConfig, paths: RunPaths, beam_args: Optional[List[str]] = None,
          enable_cache: bool = True) -> tfx.dsl.Pipeline:
    """The pipeline for any runner; the input files are checked (and MovieLens fetched) first,
    the conversion itself runs inside the DAG (DatasetGen)."""
    return create_pipeline(
        cfg, pipeline_root=paths.pipeline_root,
        raw_data=None if cfg.data.source == "synthetic" else raw_input(cfg.data),
        serving_dir=paths.serving_dir, suppression_fingerprint=suppression_fingerprint(cfg.data),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            paths.metadata_path),
        beam_pipeline_args=list(beam_args if beam_args is not None else DEFAULT_BEAM_ARGS),
        enable_cache=enable_cache)


def _latest(store, type_name: str, producer_dir: str):
    """Newest artifact of a type written by one node (TFX layout: <root>/<node>/<key>/<id>)."""
    arts = [a for a in store.get_artifacts_by_type(type_name)
            if a.uri.startswith(producer_dir + os.sep)]
    return max(arts, key=lambda a: a.id) if arts else None


def _pushed(store, producer_dir: str) -> Dict:
    pushed = _latest(store, "PushedModel", producer_dir)
    if pushed is None:
        return {"pushed": False}
    props = pushed.custom_properties
    out = {"pushed": bool(props["pushed"].int_value) if "pushed" in props else False}
    if "pushed_destination" in props:
        out["pushed_destination"] = props["pushed_destination"].string_value
    return out


def _slice_name(slice_key) -> str:
    """TFMA slice key -> "overall" or "feature=value[,feature=value]"."""
    parts = []
    for c in slice_key.single_slice_keys:
        kind = c.WhichOneof("kind")
        value = c.bytes_value.decode() if kind == "bytes_value" else getattr(c, kind)
        parts.append(f"{c.column}={value}")
    return ",".join(parts) or "overall"


def ranker_metrics(evaluation_uri: str) -> Dict:
    """TFMA output -> {"overall": {head: {metric: value}}, "slices": {"pf_present=0": {head:
    {metric: value}}, ...}, "validation_ok": bool, "failures": ["<slice> <metric>/<head>
    <value> ..."]} (failures: the gated slices' thresholds that failed, or the missing ones)."""
    import tensorflow_model_analysis as tfma
    sliced: Dict = {}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        per_head = sliced.setdefault(_slice_name(metrics_for_slice.slice_key), {})
        for kv in metrics_for_slice.metric_keys_and_values:
            key = kv.key
            if key.is_diff or key.model_name == "baseline" or not key.output_name:
                continue
            name = key.name + (f"@{key.sub_key.top_k.value}" if key.sub_key.HasField("top_k") else "")
            per_head.setdefault(key.output_name, {})[name] = kv.value.double_value.value
    validation = tfma.load_validation_result(evaluation_uri)
    failures = [f"{_slice_name(v.slice_key)} {f.metric_key.name}/{f.metric_key.output_name} "
                f"{f.metric_value.double_value.value:.4f} fails "
                f"{' '.join(str(f.metric_threshold).split())}"
                f"{' (' + f.message.strip() + ')' if f.message.strip() else ''}"
                for v in validation.metric_validations_per_slice for f in v.failures]
    failures += ["missing slice " + (",".join(list(s.feature_keys) + [
        f"{k}={v}" for k, v in sorted(s.feature_values.items())]) or "overall")
        for s in validation.missing_slices]
    return {"overall": sliced.pop("overall", {}), "slices": sliced,
            "validation_ok": bool(validation.validation_ok), "failures": failures}


def dataset_dir(paths: RunPaths) -> Optional[str]:
    """The canonical dataset of the run's latest ingestion (DatasetGen's EventLog), for what
    reads the data outside the DAG (online demo, benchmarks); None before the first run."""
    if not os.path.exists(paths.metadata_path):
        return None
    conn = tfx.orchestration.metadata.sqlite_metadata_connection_config(paths.metadata_path)
    with metadata.Metadata(conn) as m:
        return _dataset_uri(m.store, paths)


def _dataset_uri(store, paths: RunPaths) -> Optional[str]:
    art = _latest(store, "pinrank.EventLog", os.path.join(paths.pipeline_root, "DatasetGen"))
    return art.uri if art is not None else None


def link_dataset(paths: RunPaths) -> Optional[str]:
    """Point `paths.data_dir` (<home>/data/<key>, what `pinrank recommend --data` and friends
    take) at the run's latest ingested dataset; the link is swapped atomically. A directory
    left there by an older version (a prepared copy of the same data) is replaced."""
    target = dataset_dir(paths)
    if target is None:
        return None
    link = paths.data_dir
    if os.path.isdir(link) and not os.path.islink(link):
        if read_dataset_manifest(link) is None:
            raise FileExistsError(f"{link} exists and is not a pinrank dataset; move it away")
        shutil.rmtree(link)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    tmp = f"{link}.tmp-{os.getpid()}"
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return target


def summarize(paths: RunPaths) -> Dict:
    """Latest evaluations, blessings and pushes recorded in MLMD (what the run produced), and
    the data set's fallback counts."""
    conn = tfx.orchestration.metadata.sqlite_metadata_connection_config(paths.metadata_path)
    node = lambda name: os.path.join(paths.pipeline_root, name)  # noqa: E731
    out: Dict = {}
    with metadata.Metadata(conn) as m:
        out["data_dir"] = _dataset_uri(m.store, paths)
        ev = _latest(m.store, "ModelEvaluation", node("RetrievalEvaluator"))
        if ev is not None:
            with open(os.path.join(ev.uri, "metrics.json")) as fh:
                out["evaluation"] = json.load(fh)
            out["evaluation_uri"] = ev.uri
        out.update(_pushed(m.store, node("Pusher")))
        ranker_ev = _latest(m.store, "ModelEvaluation", node("RankerEvaluator"))
        if ranker_ev is not None:
            out["ranker"] = {"evaluation_uri": ranker_ev.uri, **ranker_metrics(ranker_ev.uri),
                             **_pushed(m.store, node("RankerPusher"))}
            check = _latest(m.store, "ModelEvaluation", node("RankerBaselineCheck"))
            if check is not None:
                with open(os.path.join(check.uri, "metrics.json")) as fh:
                    out["ranker"]["baseline_check"] = json.load(fh)
                out["ranker"]["baseline_check_uri"] = check.uri
    usage = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    out["peak_rss_mb"] = round(usage / 1024, 1)
    # Items whose content features fell back to "unknown" (only non-zero counts).
    manifest = (read_dataset_manifest(out["data_dir"]) if out["data_dir"] else None) or {}
    out["fallbacks"] = {k: v for k, v in manifest.get("fallbacks", {}).items() if v.get("count")}
    # Rows dropped at ingestion (only with examples.drop_invalid_events=true), per problem.
    out["dropped"] = manifest.get("counts", {}).get("dropped", {})
    # Rows of data.suppressed_users removed at data preparation (docs/privacy.md).
    out["suppressed"] = manifest.get("counts", {}).get("suppressed", {})
    return out
