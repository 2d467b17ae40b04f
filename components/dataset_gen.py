"""DatasetGen: ingestion inside the DAG, so MLMD links every model to the files it came from.

    Importer(raw files, format, fingerprint) ─► DatasetGen ─► EventLog ─► EventExampleGen ...
    (synthetic data: no importer; DatasetGen generates the world from the `data` config)

The RawData artifact is imported where the files already are (the MovieLens cache, data.path,
or a canonical dataset on GCS for a compiled job); its `fingerprint` custom property is the
sha256 of the files' contents, so new files at the same path are a new artifact and a cache
miss for everything downstream. DatasetGen converts them with the same code as `pinrank data`
(components/data/sources.py `ingest`) into its EventLog output, counting dropped,
suppressed and fallback rows in DATASET.json and in the artifact's custom properties.
"""
import os
import shutil
import tempfile

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component

from pinrank.components.data import sources
from pinrank.components.types import EventLog, RawData
from pinrank.pipeline.artifacts import copy_tree, is_remote
from pinrank.pipeline.config import PipelineConfig

# No `from __future__ import annotations`: the @component parser needs real annotation objects.


def _local_copy(raw: sources.RawInput, tmp: str) -> sources.RawInput:
    """Converters read local files: fetch remote MovieLens-format inputs first (a canonical
    dataset is copied through gfile anyway)."""
    if raw.format == "canonical" or not is_remote(raw.uri):
        return raw
    local = os.path.join(tmp, "raw")
    copy_tree(raw.uri, local)
    return sources.RawInput(local, raw.format, raw.fingerprint)


@component
def DatasetGen(
    events: OutputArtifact[EventLog],
    config_json: Parameter[str],
    drop_invalid_events: Parameter[int],
    suppression_fingerprint: Parameter[str],
    raw: InputArtifact[RawData] = None,
) -> None:
    """raw (absent for synthetic data) -> the canonical dataset. config_json: the `data` section
    (sources.ingest); drop_invalid_events: examples.drop_invalid_events (drop and count bad rows
    instead of failing); suppression_fingerprint: sources.suppression_fingerprint, checked
    against the list read now, so the cache key is the list's contents."""
    cfg = PipelineConfig.from_json(config_json).data
    if sources.suppression_fingerprint(cfg) != suppression_fingerprint:
        raise ValueError(f"data.suppressed_users={cfg.suppressed_users} changed after the "
                         f"pipeline was built; run it again")
    tmp = tempfile.mkdtemp(prefix="pinrank-dataset-")
    try:
        raw_in = None
        if raw is not None:
            raw_in = _local_copy(sources.RawInput(raw.uri, raw.get_string_custom_property("format"),
                                                  raw.get_string_custom_property("fingerprint")),
                                 tmp)
        out = os.path.join(tmp, "out") if is_remote(events.uri) else events.uri
        manifest = sources.ingest(cfg, out, raw_in, drop_invalid=bool(drop_invalid_events))
        if out != events.uri:
            copy_tree(out, events.uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    events.set_string_custom_property("fingerprint", manifest["fingerprint"])
    events.set_string_custom_property("source", raw_in.format if raw_in else "synthetic")
    counts = manifest.get("counts", {})
    for key in ("users", "items", "events", "impressions", "positives"):
        if isinstance(counts.get(key), int):
            events.set_int_custom_property(key, counts[key])
    for what, section in (("dropped", counts.get("dropped", {})),
                          ("suppressed", counts.get("suppressed", {}))):
        for key, n in section.items():
            if isinstance(n, int):
                events.set_int_custom_property(f"{what}_{key}", n)
