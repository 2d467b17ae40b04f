"""Retrieval inside the PinnerFormer SavedModel (`retrieve`, `retrieve_embedding`) against an
independent numpy brute force: scores = E_items @ u, exclusions masked before top-k, ties by
ascending item id, short catalogues padded. Then the real export (tiny Transform + tiny model),
its SignatureDefs, and the same numbers through the local gRPC server and client.retrieve."""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from pinrank.models.pinnerformer import retrieval
from pinrank.pipeline import features as F
from pinrank.serving import constants as C


def numpy_top_k(ids, emb, users, exclude, ks):
    """Full sort per row: score desc, id asc, excluded ids dropped; pad to max(ks)."""
    width = max(ks) if len(ks) else 0
    out_ids = np.full((len(users), width), C.PAD_ITEM, np.int64)
    out_sc = np.full((len(users), width), -np.inf, np.float32)
    for r, u in enumerate(users):
        s = emb.astype(np.float64) @ u.astype(np.float64)
        cand = np.flatnonzero(~np.isin(ids, exclude[r]))
        best = cand[np.lexsort((ids[cand], -s[cand]))][:ks[r]]
        out_ids[r, :len(best)], out_sc[r, :len(best)] = ids[best], s[best]
    return out_ids, out_sc


def padded(lists, width=None):
    width = max([len(x) for x in lists] + [0]) if width is None else width
    out = np.full((len(lists), width), C.PAD_ITEM, np.int64)
    for r, x in enumerate(lists):
        out[r, :len(x)] = x
    return out


def test_top_k_matches_numpy():
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(500, 560))  # unsorted on purpose: CatalogIndex sorts
    emb = rng.normal(size=(60, 5)).astype(np.float32)
    emb[ids == 530] = emb[ids == 512]  # exact ties: two items with the same vector ...
    emb[ids == 501] = emb[ids == 512]  # ... and a third
    users = rng.normal(size=(7, 5)).astype(np.float32)
    users[3] = emb[ids == 512][0] * 3  # the tied items are this user's best
    exclude = [rng.choice(ids, size=int(rng.integers(0, 20)), replace=False) for _ in users]
    exclude[2] = np.array([1, 2, 999])  # not in the catalogue: ignored
    exclude[4] = np.concatenate([exclude[4], exclude[4]])  # duplicates
    exclude[5] = ids[:57]  # only 3 eligible items left, k = 10: tail padded
    exclude[3] = np.array([], np.int64)
    ks = np.array([10, 1, 4, 10, 10, 10, 60], np.int32)
    index = retrieval.CatalogIndex(ids, emb)
    got_ids, got_sc = (t.numpy() for t in index.top_k(users, padded(exclude), ks, C.PAD_ITEM))
    ref_ids, ref_sc = numpy_top_k(ids, emb, users, exclude, ks)
    assert got_ids.shape == got_sc.shape == (7, 60) and got_ids.dtype == np.int64
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_allclose(got_sc, ref_sc, rtol=1e-5, atol=1e-5)
    assert got_ids[3, :3].tolist() == [501, 512, 530]  # the tie, by ascending id
    assert got_ids[5, 3:].tolist() == [C.PAD_ITEM] * 57 and np.isneginf(got_sc[5, 3:]).all()


def test_top_k_catalogue_smaller_than_k_and_empty_batch():
    index = retrieval.CatalogIndex([9, 4, 7], np.eye(3, dtype=np.float32))
    ids, sc = index.top_k(np.array([[0.5, 0.5, 0.5]], np.float32), padded([[4]]), [5], -1)
    assert ids.numpy().tolist() == [[7, 9, -1, -1, -1]]  # 4 excluded, 7 before 9 on the tie
    assert sc.numpy()[0, :2].tolist() == [0.5, 0.5] and np.isneginf(sc.numpy()[0, 2:]).all()
    ids, sc = index.top_k(np.zeros((0, 3), np.float32), np.zeros((0, 0), np.int64),
                          np.zeros(0, np.int32), -1)
    assert ids.shape == (0, 0) and sc.shape == (0, 0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be >= 1"):
        index.top_k(np.ones((1, 3), np.float32), padded([[]], 1), [0], -1)
    with pytest.raises(ValueError, match="not unique"):
        retrieval.CatalogIndex([1, 1], np.ones((2, 2), np.float32))


# ------------------------------------------------------------------------ the real export

M = 4
N_ITEMS = 30
CATALOG = np.arange(100, 100 + N_ITEMS, dtype=np.int64)
ACTIONS = ["click", "repin", "closeup", "hide"]
SURFACES = ["homefeed", "search", "related"]


def _example(rng):
    ex = tf.train.Example()
    f = ex.features.feature
    n = int(rng.integers(1, 7))
    f["user_id"].bytes_list.value.append(b"u")
    f["anchor_ts"].int64_list.value.append(10_000)
    f["hist_item"].int64_list.value.extend(rng.choice(CATALOG, n).tolist())
    f["hist_action"].bytes_list.value.extend([ACTIONS[i].encode() for i in rng.integers(0, 4, n)])
    f["hist_surface"].bytes_list.value.extend([SURFACES[i].encode() for i in rng.integers(0, 3, n)])
    f["hist_ts"].int64_list.value.extend(np.sort(rng.integers(1, 9_000, n)).tolist())
    f["hist_duration"].float_list.value.extend(rng.uniform(0, 30, n).tolist())
    f["hist_pos"].int64_list.value.extend(rng.integers(0, 2, n).tolist())
    f["fut_item"].int64_list.value.extend(rng.choice(CATALOG, 2).tolist())
    f["fut_ts"].int64_list.value.extend([10_001, 10_002])
    return ex.SerializeToString()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A Transform graph from 12 hand-made examples, a tiny untrained PinnerFormer over a
    30-item catalogue (items 105, 117 and 122 share one frozen vector: exact score ties),
    exported by models/pinnerformer/export.py."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
    from tfx_bsl.public import tfxio

    from pinrank.models.pinnerformer import PinnerFormer, export
    from pinrank.pipeline.config import PipelineConfig
    from pinrank.pipeline.pipeline import PINNERFORMER_SCHEMA
    from pinrank.transform.pinnerformer import CONFIG_PATHS, preprocessing_fn

    tmp = str(tmp_path_factory.mktemp("retrieval_export"))
    cfg = PipelineConfig().replace(model={"seq_len": M}, examples={"max_future": 2})
    custom_config = {"config_json": cfg.sections_json(*CONFIG_PATHS)}
    schema = text_format.Parse(open(PINNERFORMER_SCHEMA).read(), schema_pb2.Schema())
    path = os.path.join(tmp, "data.tfrecord")
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(path) as w:
        for _ in range(12):
            w.write(_example(rng))
    src = tfxio.TFExampleRecord(file_pattern=[path], schema=schema)
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=os.path.join(tmp, "t")):
        _, fn = ((p | src.BeamSource(), src.TensorAdapterConfig())
                 | tft_beam.AnalyzeAndTransformDataset(
                     lambda x: preprocessing_fn(x, custom_config), output_record_batches=True))
        _ = fn | tft_beam.WriteTransformFn(os.path.join(tmp, "tfn"))
    # The raw schema next to it, as the TFX Transform component writes it (raw_feature_spec).
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                               os.path.join(tmp, "tfn", tft.TFTransformOutput.RAW_METADATA_DIR))
    tft_out = tft.TFTransformOutput(os.path.join(tmp, "tfn"))

    model_cfg = dataclasses.replace(cfg.model, hidden=16, num_layers=1, num_heads=2, output_dim=8,
                                    action_emb_dim=4, surface_emb_dim=4, dropout=0.0,
                                    item_id_embedding_dim=0)
    frozen = np.random.default_rng(1).normal(size=(N_ITEMS, 6)).astype(np.float32)
    frozen[[17, 22]] = frozen[5]
    model = PinnerFormer(model_cfg, CATALOG, frozen,
                         num_actions=tft_out.vocabulary_size_by_name(F.ACTION_VOCAB) + 2,
                         num_surfaces=tft_out.vocabulary_size_by_name(F.SURFACE_VOCAB) + 2, seed=0)
    out = os.path.join(tmp, "export")
    export.export(model, tft_out, out)
    return out


def _history(batch, seed, width=M + 2):
    """embed_raw inputs [batch, width] from the training vocabularies, padded after hist_len."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, width + 1, batch).astype(np.int64)
    mask = np.arange(width)[None] < lens[:, None]
    act = np.array([a.encode() for a in ACTIONS], object)
    srf = np.array([s.encode() for s in SURFACES], object)
    return {
        F.HIST_ITEM: np.where(mask, rng.choice(CATALOG, (batch, width)), C.PAD_ITEM).astype(np.int64),
        F.HIST_ACTION: np.where(mask, act[rng.integers(0, 4, (batch, width))], C.PAD_STRING).astype(object),
        F.HIST_SURFACE: np.where(mask, srf[rng.integers(0, 3, (batch, width))], C.PAD_STRING).astype(object),
        F.HIST_TS: np.where(mask, np.sort(rng.integers(1, 9_000, (batch, width)), 1), 0).astype(np.int64),
        F.HIST_DURATION: np.where(mask, rng.uniform(0, 30, (batch, width)), 0.0).astype(np.float32),
        C.HIST_LEN: lens,
    }


def _tensors(d):
    return {k: tf.constant(v) for k, v in d.items()}


def test_signature_defs_have_the_documented_dtypes_and_shapes(exported):
    from pinrank.serving.local_server import signature_defs

    sigs = signature_defs(exported)
    assert {C.SERVING_DEFAULT, C.EMBED_RAW, C.ITEM_EMBEDDING, C.RETRIEVE,
            C.RETRIEVE_EMBEDDING} <= set(sigs)

    def spec(tensors):
        return {k: (tf.dtypes.as_dtype(v.dtype).name, [d.size for d in v.tensor_shape.dim])
                for k, v in tensors.items()}

    raw = spec(sigs[C.EMBED_RAW].inputs)
    retrieval_inputs = {C.EXCLUDE_ITEMS: ("int64", [-1, -1]), C.K: ("int32", [-1])}
    top_k_outputs = {C.ITEM_IDS: ("int64", [-1, -1]), C.SCORES: ("float32", [-1, -1])}
    assert set(raw) == set(C.EMBED_RAW_INPUTS)
    assert spec(sigs[C.RETRIEVE].inputs) == {**raw, **retrieval_inputs}
    assert spec(sigs[C.RETRIEVE].outputs) == {**top_k_outputs, C.EMBEDDING: ("float32", [-1, 8])}
    assert spec(sigs[C.RETRIEVE_EMBEDDING].inputs) == {C.EMBEDDING: ("float32", [-1, 8]),
                                                        **retrieval_inputs}
    assert spec(sigs[C.RETRIEVE_EMBEDDING].outputs) == top_k_outputs
    assert spec(sigs[C.ITEM_EMBEDDING].inputs) == {C.ITEM_ID: ("int64", [-1])}  # unchanged


def test_retrieve_matches_numpy_over_item_embedding_and_embed_raw(exported):
    sigs = tf.saved_model.load(exported).signatures
    items = sigs[C.ITEM_EMBEDDING](item_id=tf.constant(CATALOG))[C.EMBEDDING].numpy()
    hist = _history(6, seed=2)
    users = sigs[C.EMBED_RAW](**_tensors(hist))[C.EMBEDDING].numpy()
    users[5] = items[5]  # a user whose best items are the three tied ones (105, 117, 122)
    rng = np.random.default_rng(3)
    exclude = [rng.choice(CATALOG, int(rng.integers(0, 8)), replace=False) for _ in range(6)]
    exclude[0] = CATALOG[:28]  # 2 eligible, k = 5: padded tail
    exclude[5] = np.array([117, -5])
    ks = np.array([5, 1, 3, 7, 30, 4], np.int32)
    ref_ids, ref_sc = numpy_top_k(CATALOG, items, users, exclude, ks)

    got = sigs[C.RETRIEVE_EMBEDDING](embedding=tf.constant(users), exclude_items=tf.constant(
        padded(exclude)), k=tf.constant(ks))
    np.testing.assert_array_equal(got[C.ITEM_IDS].numpy(), ref_ids)
    np.testing.assert_allclose(got[C.SCORES].numpy(), ref_sc, rtol=1e-5, atol=1e-5)
    assert got[C.ITEM_IDS].numpy()[5, :2].tolist() == [105, 122]  # tied; 117 excluded

    users[5] = sigs[C.EMBED_RAW](**_tensors(hist))[C.EMBEDDING].numpy()[5]
    ref_ids, ref_sc = numpy_top_k(CATALOG, items, users, exclude, ks)
    got = sigs[C.RETRIEVE](**_tensors(hist), exclude_items=tf.constant(padded(exclude, 40)),
                           k=tf.constant(ks))
    np.testing.assert_array_equal(got[C.ITEM_IDS].numpy(), ref_ids)
    np.testing.assert_allclose(got[C.SCORES].numpy(), ref_sc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[C.EMBEDDING].numpy(), users, atol=1e-6)


@pytest.mark.timeout(300)
def test_client_retrieve_through_the_local_server(exported, tmp_path):
    from pinrank.serving import local_server as LS
    from pinrank.serving import testing as T
    from pinrank.serving.client import ServingClient

    T.push_version(exported, str(tmp_path / C.PINNERFORMER), 3)
    sigs = tf.saved_model.load(exported).signatures
    hist = _history(4, seed=5)
    users = sigs[C.EMBED_RAW](**_tensors(hist))[C.EMBEDDING].numpy()
    items = sigs[C.ITEM_EMBEDDING](item_id=tf.constant(CATALOG))[C.EMBEDDING].numpy()
    rng = np.random.default_rng(6)
    exclude = [rng.choice(CATALOG, n, replace=False) for n in (0, 3, 12, 26)]
    ref_ids, ref_sc = numpy_top_k(CATALOG, items, users, exclude, [6] * 4)
    # As deployed: per-model batching with the parameters the export ships.
    h = LS.serve(model_base_path=str(tmp_path), port=0, enable_batching=True,
                 per_model_batching=True)
    try:
        with ServingClient(h.target, timeout_s=30) as c:
            for width in (C.RETRIEVE_EXCLUDE_WIDTH, 5):  # 5: over-fetch + client-side filter
                ids, sc, version = c.retrieve(6, history=hist, exclude=exclude,
                                              exclude_width=width)
                assert version == 3 and ids.shape == sc.shape == (4, 6)
                np.testing.assert_array_equal(ids, ref_ids)
                np.testing.assert_allclose(sc, ref_sc, rtol=1e-5, atol=1e-5)
            ids, sc, version = c.retrieve(6, embedding=users, exclude=exclude, version=3)
            np.testing.assert_array_equal(ids, ref_ids)
            out, _ = c.retrieve_versioned(2, history=hist)
            np.testing.assert_allclose(out[C.EMBEDDING], users, atol=1e-6)
            np.testing.assert_array_equal(out[C.ITEM_IDS], numpy_top_k(CATALOG, items, users,
                                                                       [[]] * 4, [2] * 4)[0])
            with pytest.raises(ValueError, match="exactly one of history or embedding"):
                c.retrieve(3)
    finally:
        h.stop(grace=None)
