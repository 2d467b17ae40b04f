"""The ranker's preprocessing_fn (transform/ranker.py) on hand-made ranking examples vs a numpy
and datetime reference: the P newest actions newest first with padding, hour of day and day of
week of the request (UTC), surface vocabulary with 0 = padding and V+1 = OOV, the dense
PinnerFormer embedding, and the labels passed through."""
import datetime
import os

import numpy as np
import pytest

P, D = 3, 4

# (request_ts, surface, cand_item, history [(item, action, ts)], pf_embedding, pf_present, labels)
REQUESTS = [
    (1_700_000_000, "homefeed", 7, [(1, "click", 10), (2, "repin", 20), (3, "hide", 30),
                                    (4, "closeup", 40), (5, "repin", 50)],
     [0.5, -1.0, 2.0, 0.25], 1, (1, 0, 1, 0)),
    (0, "search", 8, [(9, "repin", 0)], [0.0] * D, 0, (0, 1, 0, 0)),
    (1_234_567_890, "nowhere", 9, [], [1.0, 2.0, 3.0, 4.0], 1, (0, 0, 0, 1)),  # OOV surface
]


def _example(ts, surface, cand, hist, pf, present, labels):
    import tensorflow as tf

    from pinrank.pipeline import features as F
    ex = tf.train.Example()
    f = ex.features.feature
    f[F.REQUEST_ID].bytes_list.value.append(b"r")
    f[F.USER_ID].bytes_list.value.append(b"u")
    f[F.REQUEST_TS].int64_list.value.append(ts)
    f[F.SURFACE].bytes_list.value.append(surface.encode())
    f[F.CAND_ITEM].int64_list.value.append(cand)
    for head, y in zip(F.HEADS, labels):
        f[F.label_key(head)].int64_list.value.append(y)
    f[F.HIST_ITEM].int64_list.value.extend([h[0] for h in hist])
    f[F.HIST_ACTION].bytes_list.value.extend([h[1].encode() for h in hist])
    f[F.HIST_SURFACE].bytes_list.value.extend([b"homefeed"] * len(hist))
    f[F.HIST_TS].int64_list.value.extend([h[2] for h in hist])
    f[F.HIST_DURATION].float_list.value.extend([1.0] * len(hist))
    f[F.PF_EMBEDDING].float_list.value.extend(pf)
    f[F.PF_PRESENT].int64_list.value.append(present)
    return ex.SerializeToString()


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    from pinrank.pipeline.config import PipelineConfig
    from pinrank.pipeline.pipeline import RANKER_SCHEMA
    from pinrank.transform.ranker import CONFIG_PATHS, preprocessing_fn

    cfg = PipelineConfig().replace(ranker={"realtime": {"seq_len": P, "latest_k": P}},
                                   model={"output_dim": D})
    custom_config = {"config_json": cfg.sections_json(*CONFIG_PATHS)}
    schema = text_format.Parse(open(RANKER_SCHEMA).read(), schema_pb2.Schema())
    tmp = str(tmp_path_factory.mktemp("ranker_tft"))
    path = os.path.join(tmp, "data.tfrecord")
    serialized = [_example(*r) for r in REQUESTS]
    with tf.io.TFRecordWriter(path) as w:
        for s in serialized:
            w.write(s)
    src = tfxio.TFExampleRecord(file_pattern=[path], schema=schema)
    out_dir = os.path.join(tmp, "tfn")
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=os.path.join(tmp, "t")):
        _, fn = ((p | src.BeamSource(), src.TensorAdapterConfig())
                 | tft_beam.AnalyzeAndTransformDataset(
                     lambda x: preprocessing_fn(x, custom_config), output_record_batches=True))
        _ = fn | tft_beam.WriteTransformFn(out_dir)
    out = tft.TFTransformOutput(out_dir)
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    layer = out.transform_features_layer()
    res = {k: v.numpy() for k, v in layer(tf.io.parse_example(serialized, spec)).items()}
    return out, res


def _index(out, vocab_name, values):
    vocab = [v.decode() for v in out.vocabulary_by_name(vocab_name)]
    return [vocab.index(v) + 1 if v in vocab else len(vocab) + 1 for v in values]


def test_realtime_sequence_is_the_p_newest_newest_first(transformed):
    out, res = transformed
    from pinrank.pipeline import features as F
    for i, (_, _, _, hist, *_) in enumerate(REQUESTS):
        recent = hist[-P:][::-1]
        n = len(recent)
        assert res[F.SEQ_LEN_XF][i] == n
        np.testing.assert_array_equal(res[F.xf(F.HIST_ITEM)][i],
                                      [h[0] for h in recent] + [F.PAD_ITEM] * (P - n))
        np.testing.assert_array_equal(res[F.xf(F.HIST_TS)][i],
                                      [h[2] for h in recent] + [0] * (P - n))
        np.testing.assert_array_equal(
            res[F.xf(F.HIST_ACTION)][i],
            _index(out, F.ACTION_VOCAB, [h[1] for h in recent]) + [F.PAD_INDEX] * (P - n))


def test_request_context_hour_day_of_week_and_surface(transformed):
    out, res = transformed
    from pinrank.pipeline import features as F
    for i, (ts, surface, cand, *_) in enumerate(REQUESTS):
        t = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
        assert res[F.xf(F.REQUEST_TS)][i] == ts
        assert res["hour_xf"][i] == t.hour
        assert res["dow_xf"][i] == t.isoweekday() % 7  # Sunday = 0
        assert res[F.xf(F.SURFACE)][i] == _index(out, F.SURFACE_VOCAB, [surface])[0]
        assert res[F.xf(F.CAND_ITEM)][i] == cand
    vocab = [v.decode() for v in out.vocabulary_by_name(F.SURFACE_VOCAB)]
    assert sorted(vocab) == ["homefeed", "nowhere", "search"]  # from the data, not the domain
    assert min(res[F.xf(F.SURFACE)]) >= 1  # 0 stays padding


def test_embedding_presence_and_labels_pass_through(transformed):
    _, res = transformed
    from pinrank.pipeline import features as F
    np.testing.assert_allclose(res[F.xf(F.PF_EMBEDDING)], [r[4] for r in REQUESTS])
    assert res[F.xf(F.PF_EMBEDDING)].shape == (len(REQUESTS), D)
    np.testing.assert_array_equal(res[F.xf(F.PF_PRESENT)], [r[5] for r in REQUESTS])
    for j, head in enumerate(F.HEADS):
        np.testing.assert_array_equal(res[F.label_key(head)], [r[6][j] for r in REQUESTS])
