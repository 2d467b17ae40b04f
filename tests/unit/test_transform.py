"""preprocessing_fn on hand-made examples vs a numpy reference: truncation to M most recent,
newest first, padding, vocabularies with 0 = padding and the last index = OOV."""
import os
import tempfile

import numpy as np
import pytest


def _example(hist, fut):
    import tensorflow as tf
    ex = tf.train.Example()
    f = ex.features.feature
    f["user_id"].bytes_list.value.append(b"u")
    f["anchor_ts"].int64_list.value.append(10_000)
    f["hist_item"].int64_list.value.extend([h[0] for h in hist])
    f["hist_action"].bytes_list.value.extend([h[1].encode() for h in hist])
    f["hist_surface"].bytes_list.value.extend([h[2].encode() for h in hist])
    f["hist_ts"].int64_list.value.extend([h[3] for h in hist])
    f["hist_duration"].float_list.value.extend([h[4] for h in hist])
    f["hist_pos"].int64_list.value.extend([h[5] for h in hist])
    f["fut_item"].int64_list.value.extend([x[0] for x in fut])
    f["fut_ts"].int64_list.value.extend([x[1] for x in fut])
    return ex.SerializeToString()


HISTS = [
    # (item, action, surface, ts, duration, pos), chronological
    [(7, "click", "homefeed", 1, 3.0, 0), (8, "repin", "search", 2, 0.0, 1),
     (9, "closeup", "homefeed", 3, 12.0, 1), (10, "hide", "related", 4, 0.0, 0),
     (11, "repin", "homefeed", 5, 1.0, 1)],
    [(20, "repin", "homefeed", 100, 0.0, 1)],
    [(30, "click", "profile", 50, 20.0, 1), (31, "click", "homefeed", 60, 2.0, 0)],
]
FUTS = [[(40, 6), (41, 7), (42, 8), (43, 9)], [(50, 101)], [(60, 61)]]


@pytest.fixture(scope="module")
def transformed():
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform.beam as tft_beam
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    from pinrank.pipeline.config import PipelineConfig
    from pinrank.pipeline.pipeline import PINNERFORMER_SCHEMA
    from pinrank.transform.pinnerformer import CONFIG_PATHS, preprocessing_fn

    # M = model.seq_len = 3, F = examples.max_future = 2, as the pipeline passes them.
    cfg = PipelineConfig().replace(model={"seq_len": 3}, examples={"max_future": 2})
    custom_config = {"config_json": cfg.sections_json(*CONFIG_PATHS)}

    schema = text_format.Parse(open(PINNERFORMER_SCHEMA).read(), schema_pb2.Schema())
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "data.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for h, fu in zip(HISTS, FUTS):
            w.write(_example(h, fu))
    src = tfxio.TFExampleRecord(file_pattern=[path], schema=schema)
    out_dir = os.path.join(tmp, "tfn")
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=os.path.join(tmp, "t")):
        raw = p | src.BeamSource()
        _, fn = ((raw, src.TensorAdapterConfig())
                 | tft_beam.AnalyzeAndTransformDataset(
                     lambda x: preprocessing_fn(x, custom_config),
                     output_record_batches=True))
        _ = fn | tft_beam.WriteTransformFn(out_dir)
    import tensorflow_transform as tft
    out = tft.TFTransformOutput(out_dir)
    layer = out.transform_features_layer()
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    with open(path, "rb"):
        serialized = [r.numpy() for r in tf.data.TFRecordDataset([path])]
    res = {k: v.numpy() for k, v in layer(tf.io.parse_example(serialized, spec)).items()}
    return out, res


def _vocab_index(out, name, values):
    vocab = [v.decode() if isinstance(v, bytes) else v for v in out.vocabulary_by_name(name)]
    return [vocab.index(v) + 1 if v in vocab else len(vocab) + 1 for v in values]


def test_truncation_newest_first_and_padding(transformed):
    out, res = transformed
    m, f = 3, 2
    for i, (hist, fut) in enumerate(zip(HISTS, FUTS)):
        recent = hist[-m:][::-1]
        n = len(recent)
        assert res["seq_len_xf"][i] == n
        np.testing.assert_array_equal(res["hist_item_xf"][i], [h[0] for h in recent] + [-1] * (m - n))
        np.testing.assert_array_equal(res["hist_ts_xf"][i], [h[3] for h in recent] + [0] * (m - n))
        np.testing.assert_allclose(res["hist_duration_xf"][i], [h[4] for h in recent] + [0.0] * (m - n))
        np.testing.assert_array_equal(res["hist_pos_xf"][i], [h[5] for h in recent] + [0] * (m - n))
        np.testing.assert_array_equal(
            res["hist_action_xf"][i], _vocab_index(out, "action_vocab", [h[1] for h in recent]) + [0] * (m - n))
        np.testing.assert_array_equal(
            res["hist_surface_xf"][i], _vocab_index(out, "surface_vocab", [h[2] for h in recent]) + [0] * (m - n))
        first = fut[:f]
        assert res["fut_len_xf"][i] == len(first)
        np.testing.assert_array_equal(res["fut_item_xf"][i], [x[0] for x in first] + [-1] * (f - len(first)))
        np.testing.assert_array_equal(res["fut_ts_xf"][i], [x[1] for x in first] + [0] * (f - len(first)))


def test_vocabularies_reserve_padding_and_oov(transformed):
    out, _ = transformed
    actions = {v.decode() for v in out.vocabulary_by_name("action_vocab")}
    assert actions == {"click", "repin", "closeup", "hide"}
    # 0 is padding, 1..V the vocabulary, V+1 OOV: never collide with a real value.
    assert _vocab_index(out, "surface_vocab", ["nowhere"]) == [len(out.vocabulary_by_name("surface_vocab")) + 1]
    assert min(_vocab_index(out, "action_vocab", sorted(actions))) == 1
