"""Stops the pipeline when ExampleValidator found anomalies.

ExampleValidator only records anomalies (and a `blessed` per-split custom property); nothing
downstream refuses to run. Transform depends on this gate, so bad data never reaches training.
"""

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils


class DataAnomaliesError(RuntimeError):
    pass


def describe_anomalies(anomalies_uri: str, splits) -> list:
    """Human-readable anomaly lines per split ('' list when clean)."""
    lines = []
    for split in splits:
        path = io_utils.get_only_uri_in_dir(os.path.join(anomalies_uri, f"Split-{split}"))
        a = anomalies_pb2.Anomalies()
        a.ParseFromString(io_utils.read_bytes_file(path))
        for feature, info in sorted(a.anomaly_info.items()):
            lines.append(f"[{split}] {feature}: {info.short_description} - {info.description}")
        if a.HasField("dataset_anomaly_info"):
            info = a.dataset_anomaly_info
            lines.append(f"[{split}] dataset: {info.short_description} - {info.description}")
    return lines


@tfx.dsl.components.component
def AnomaliesGate(anomalies: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleAnomalies]
                  ) -> None:
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    lines = describe_anomalies(anomalies.uri, splits)
    if lines:
        raise DataAnomaliesError(
            "ExampleValidator found anomalies against the curated schema "
            f"({anomalies.uri}):\n  " + "\n  ".join(lines))
