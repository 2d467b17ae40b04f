"""ExampleValidator's anomalies against the curated schema stop the run (AnomaliesGate)."""
import os

import pytest


def _stats_and_anomalies(tmp_path, action: bytes, duration: float):
    import tensorflow as tf
    import tensorflow_data_validation as tfdv
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from pinrank.pipeline.pipeline import PINNERFORMER_SCHEMA

    os.makedirs(tmp_path, exist_ok=True)
    path = str(tmp_path / "ex.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for i in range(5):
            ex = tf.train.Example()
            f = ex.features.feature
            f["user_id"].bytes_list.value.append(b"u%d" % i)
            f["anchor_ts"].int64_list.value.append(100)
            f["hist_item"].int64_list.value.extend([1, 2])
            f["hist_action"].bytes_list.value.extend([b"repin", action])
            f["hist_surface"].bytes_list.value.extend([b"homefeed", b"search"])
            f["hist_ts"].int64_list.value.extend([1, 2])
            f["hist_duration"].float_list.value.extend([0.0, duration])
            f["hist_pos"].int64_list.value.extend([1, 0])
            f["fut_item"].int64_list.value.append(3)
            f["fut_ts"].int64_list.value.append(150)
            w.write(ex.SerializeToString())
    schema = text_format.Parse(open(PINNERFORMER_SCHEMA).read(), schema_pb2.Schema())
    stats = tfdv.generate_statistics_from_tfrecord(path, stats_options=tfdv.StatsOptions(schema=schema))
    anomalies = tfdv.validate_statistics(stats, schema)
    out = tmp_path / "anomalies" / "Split-eval"
    os.makedirs(out)
    (out / "SchemaDiff.pb").write_bytes(anomalies.SerializeToString())
    return str(tmp_path / "anomalies")


def test_clean_data_passes_and_bad_data_is_described(tmp_path):
    from pinrank.components.anomalies_gate import describe_anomalies
    clean = _stats_and_anomalies(tmp_path / "a", b"click", 3.0)
    assert describe_anomalies(clean, ["eval"]) == []
    bad = _stats_and_anomalies(tmp_path / "b", b"like", -1.0)
    lines = describe_anomalies(bad, ["eval"])
    text = "\n".join(lines)
    assert "hist_action" in text and "hist_duration" in text, text
    assert all(line.startswith("[eval]") for line in lines)


def test_gate_executor_raises_on_anomalies(tmp_path):
    from tfx.types import artifact_utils, standard_artifacts

    from pinrank.components.anomalies_gate import AnomaliesGate, DataAnomaliesError
    bad = _stats_and_anomalies(tmp_path, b"like", 0.0)
    art = standard_artifacts.ExampleAnomalies()
    art.uri = bad
    art.split_names = artifact_utils.encode_split_names(["eval"])
    executor = AnomaliesGate.EXECUTOR_SPEC.executor_class()
    with pytest.raises(DataAnomaliesError, match="hist_action"):
        executor.Do({"anomalies": [art]}, {}, {})
