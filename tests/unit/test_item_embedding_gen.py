"""ItemEmbeddingGen: PPMI / factorisation math, cold items, determinism, and the no-leakage
guarantee (the eval split never influences the output) through the component's executor."""
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from pinrank.components.item_embedding.embedding import (
    build_item_embeddings,
    content_projection,
    cooccurrence,
    factorise,
    interests_matrix,
    ppmi,
)
from pinrank.pipeline.config import ItemEmbeddingConfig, PipelineConfig, preset

DAY = 86400


def _catalog(ids, content_dim=6, seed=0, interests=None):
    rng = np.random.default_rng(seed)
    ids = list(ids)
    return pd.DataFrame({
        "item_id": np.asarray(ids, dtype=np.int64),
        "embedding": [rng.standard_normal(content_dim).astype(np.float32) for _ in ids],
        "interests": interests or [[i % 3] if i % 2 else [i % 3, 5] for i in ids],
    })


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- math ---------------------------------------------------------------------------------------

def test_cooccurrence_counts_users_per_pair():
    sets = [[0, 1, 2], [1, 2], [2, 3, 3], [0]]  # duplicates inside a set count once
    c = cooccurrence(sets, 4).toarray()
    expected = np.array([[0, 1, 1, 0],
                         [1, 0, 2, 0],
                         [1, 2, 0, 1],
                         [0, 0, 1, 0]], dtype=float)
    np.testing.assert_array_equal(c, expected)


@pytest.mark.parametrize("alpha", [0.75, 1.0])
def test_ppmi_matches_dense_numpy(alpha):
    c = np.array([[0, 4, 1, 0],
                  [4, 0, 2, 1],
                  [1, 2, 0, 6],
                  [0, 1, 6, 0]], dtype=float)
    d = c.sum()
    p_ij = c / d
    p_i = c.sum(axis=1) / d
    p_ctx = c.sum(axis=0) ** alpha / (c.sum(axis=0) ** alpha).sum()
    with np.errstate(divide="ignore"):
        pmi = np.log(p_ij / (p_i[:, None] * p_ctx[None, :]))
    expected = np.where(c > 0, np.maximum(pmi, 0.0), 0.0)
    got = ppmi(sp.csr_matrix(c), alpha=alpha).toarray()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert (got > 0).sum() < (c > 0).sum()  # some PMIs are negative and clipped on this toy
    # Hand check of one entry at alpha=1: PMI(0,1) = log(4 * 28 / (5 * 7)).
    if alpha == 1.0:
        assert got[0, 1] == pytest.approx(np.log(4 * 28 / (5 * 7)))


def test_ppmi_of_empty_matrix_is_empty():
    assert ppmi(sp.csr_matrix((3, 3))).nnz == 0


def test_factorise_rank_deficient_pads_with_zeros():
    m = sp.csr_matrix(np.outer([1.0, 2.0, 0.5], [1.0, 1.0, 3.0]))  # rank 1
    vecs, s = factorise(m, k=3)
    assert vecs.shape == (3, 3) and s[0] > 0 and np.all(s[1:] == 0)
    np.testing.assert_allclose(vecs[:, 1:], 0.0)
    # U * sqrt(S) of a rank-1 matrix: vecs[:, 0] is proportional to the row factor, positive sign.
    np.testing.assert_allclose(vecs[:, 0] / vecs[0, 0], [1.0, 2.0, 0.5])
    assert vecs[1, 0] > 0


def test_factorise_sparse_path_matches_dense(monkeypatch):
    m = sp.random(60, 60, density=0.2, random_state=4, format="csr")
    m = m + m.T
    dense, s_dense = factorise(m, k=5, seed=0)
    monkeypatch.setattr("pinrank.components.item_embedding.embedding.DENSE_SVD_MAX", 10)
    arpack, s_arpack = factorise(m, k=5, seed=0)
    again, _ = factorise(m, k=5, seed=0)
    np.testing.assert_allclose(s_arpack, s_dense, rtol=1e-8)
    np.testing.assert_allclose(np.abs(arpack), np.abs(dense), atol=1e-6)
    np.testing.assert_array_equal(arpack, again)


def test_content_projection_project_and_pad():
    x = np.random.default_rng(0).standard_normal((5, 12))
    x[2] = 0.0
    proj = content_projection(x, 4, seed=1)
    assert proj.shape == (5, 4)
    np.testing.assert_allclose(np.linalg.norm(proj, axis=1), [1, 1, 0, 1, 1], atol=1e-12)
    np.testing.assert_array_equal(proj, content_projection(x, 4, seed=1))
    assert not np.allclose(proj, content_projection(x, 4, seed=2))
    padded = content_projection(x[:, :3], 5)
    np.testing.assert_allclose(padded[:, 3:], 0.0)
    np.testing.assert_allclose(padded[0, :3], x[0, :3] / np.linalg.norm(x[0, :3]))
    assert content_projection(x, 0).shape == (5, 0)


def _block_sets(seed=0):
    """Two disjoint item groups: users 0..39 engage only with items 0..9, users 40..79 only 10..19."""
    rng = np.random.default_rng(seed)
    sets = []
    for g in (0, 1):
        for _ in range(40):
            size = rng.integers(3, 7)
            sets.append((10 * g + rng.choice(10, size=size, replace=False)).tolist())
    return sets


def test_block_structure_within_group_cosine_dominates():
    cfg = ItemEmbeddingConfig(dim=12, cf_dim=8, seed=0)
    ids, emb, meta = build_item_embeddings(_block_sets(), _catalog(range(20)), cfg)
    cf = emb[:, :cfg.cf_dim].astype(np.float64)
    within = [_cos(cf[i], cf[j]) for i in range(20) for j in range(i + 1, 20) if i // 10 == j // 10]
    across = [_cos(cf[i], cf[j]) for i in range(10) for j in range(10, 20)]
    assert np.mean(within) > 0.3, np.mean(within)
    assert np.max(np.abs(across)) < 1e-6, np.max(np.abs(across))
    assert meta["n_items_with_cf_signal"] == 20 and meta["n_cold_items"] == 0
    assert meta["n_train_users"] == 80 and meta["svd_rank"] == 8


def test_cold_items_have_zero_cf_and_nonzero_content():
    cfg = ItemEmbeddingConfig(dim=10, cf_dim=6, seed=0)
    # 100..103 engaged together; 104 only ever alone (no co-engagement); 105, 106 never engaged;
    # 999 is not in the catalog (ignored, counted).
    sets = [[100, 101, 102], [101, 103], [100, 103, 999], [104], [102, 103]]
    ids, emb, meta = build_item_embeddings(sets, _catalog([106, 105, 104, 103, 102, 101, 100]), cfg)
    np.testing.assert_array_equal(ids, [100, 101, 102, 103, 104, 105, 106])
    assert emb.shape == (7, 10) and emb.dtype == np.float32
    cf_norm = np.linalg.norm(emb[:, :6], axis=1)
    content_norm = np.linalg.norm(emb[:, 6:], axis=1)
    np.testing.assert_allclose(cf_norm[:4], 1 / np.sqrt(2), rtol=1e-6)
    np.testing.assert_array_equal(emb[4:, :6], 0.0)  # exactly zero, not numerical noise
    np.testing.assert_allclose(content_norm, 1 / np.sqrt(2), rtol=1e-6)
    assert meta["n_cold_items"] == 3 and meta["n_items_with_cf_signal"] == 4
    assert meta["n_unknown_train_items"] == 1
    assert meta["content_mapping"] == "random_projection"  # 6 content dims -> 4


def test_min_count_makes_rare_items_cold():
    sets = [[0, 1, 2], [0, 1], [1, 2], [2, 3]]  # item 3: one user
    cfg = ItemEmbeddingConfig(dim=6, cf_dim=3, min_count=2)
    _, emb, meta = build_item_embeddings(sets, _catalog(range(4)), cfg)
    np.testing.assert_array_equal(emb[3, :3], 0.0)
    assert meta["n_items_below_min_count"] == 1 and meta["n_cold_items"] == 1


def test_deterministic_and_order_invariant():
    cfg = ItemEmbeddingConfig(dim=12, cf_dim=8, seed=7)
    sets = _block_sets(1)
    catalog = _catalog(range(25), content_dim=20)  # 20 -> 4 dims: random projection
    a = build_item_embeddings(sets, catalog, cfg)
    b = build_item_embeddings(list(reversed([list(reversed(s)) for s in sets])),
                              catalog.sample(frac=1.0, random_state=0), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    c = build_item_embeddings(sets, catalog, ItemEmbeddingConfig(dim=12, cf_dim=8, seed=8))
    assert not np.array_equal(a[1][:, 8:], c[1][:, 8:])  # seed drives the projection


def test_zero_pad_content_and_single_part_scaling():
    catalog = _catalog(range(4), content_dim=2)
    _, emb, meta = build_item_embeddings([[0, 1], [1, 2]], catalog, ItemEmbeddingConfig(
        dim=6, cf_dim=2))
    np.testing.assert_array_equal(emb[:, 4:], 0.0)  # 2 content dims zero-padded to 4
    assert meta["content_mapping"] == "zero_pad"
    _, emb_cf, _ = build_item_embeddings([[0, 1], [1, 2]], catalog, ItemEmbeddingConfig(
        dim=3, cf_dim=3))
    np.testing.assert_allclose(np.linalg.norm(emb_cf[:3], axis=1), 1.0, rtol=1e-6)


def test_interests_matrix_pads_with_minus_one():
    df = _catalog([1, 2, 3], interests=[[4], [], [0, 2, 7]])
    np.testing.assert_array_equal(interests_matrix(df), [[4, -1, -1], [-1, -1, -1], [0, 2, 7]])


# --- Beam-side functions, without Beam ------------------------------------------------------

def test_example_positives_union_and_cap(tmp_path):
    import tensorflow as tf

    from pinrank.components.item_embedding_gen import LatestPositives, capped_user_record, example_positives

    _write_split(str(tmp_path), {"u": [(5, 100, 1), (6, 200, 0), (7, 300, 1), (5, 400, 1),
                                       (8, 500, 1), (9, 600, 0)]})
    records = list(tf.data.TFRecordDataset(
        [str(tmp_path / "data_tfrecord-00000-of-00001.gz")], compression_type="GZIP"))
    parsed = [example_positives(r.numpy()) for r in records]
    assert [u for u, _ in parsed] == [b"u", b"u"]
    # Anchor at index 3 (ts 400): hist positives 5@100, 7@300; fut 5@400, 8@500 (9, 6 negative).
    assert sorted(parsed[0][1]) == [(5, 100), (5, 400), (7, 300), (8, 500)]
    fn = LatestPositives()
    accs = [fn.add_input(fn.create_accumulator(), pairs) for _, pairs in parsed]
    latest = fn.extract_output(fn.merge_accumulators(accs))
    assert latest == {5: 400, 7: 300, 8: 500}
    rec = json.loads(capped_user_record((b"u", latest), cap=2))
    assert rec == {"user": b"u".hex(), "items": [5, 8], "dropped": 1}  # the 2 most recent
    assert json.loads(capped_user_record((b"u", latest), cap=5))["dropped"] == 0


# --- the component executor (Beam) and the leakage guarantee ------------------------------------

def _write_split(path, users, gzip_name="data_tfrecord-00000-of-00001.gz"):
    """users: {user_id: [(item, ts, pos)]} -> anchor examples like EventExampleGen writes them."""
    import tensorflow as tf

    os.makedirs(path, exist_ok=True)

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))

    def strs(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(v)))

    with tf.io.TFRecordWriter(os.path.join(path, gzip_name), options="GZIP") as w:
        for user, events in users.items():
            events = sorted(events, key=lambda e: e[1])
            for k in (len(events) // 2, len(events) - 1):  # two overlapping anchors
                anchor = events[k][1]
                hist = [e for e in events if e[1] < anchor]
                fut = [e for e in events if anchor <= e[1] < anchor + 28 * DAY and e[2]]
                ex = tf.train.Example(features=tf.train.Features(feature={
                    "user_id": strs([user.encode()]),
                    "anchor_ts": ints([anchor]),
                    "hist_item": ints(e[0] for e in hist),
                    "hist_action": strs(b"repin" if e[2] else b"hide" for e in hist),
                    "hist_surface": strs(b"homefeed" for _ in hist),
                    "hist_ts": ints(e[1] for e in hist),
                    "hist_duration": tf.train.Feature(
                        float_list=tf.train.FloatList(value=[12.0] * len(hist))),
                    "hist_pos": ints(e[2] for e in hist),
                    "fut_item": ints(e[0] for e in fut),
                    "fut_ts": ints(e[1] for e in fut),
                }))
                w.write(ex.SerializeToString())


def _users(prefix, groups, seed, n_per_group=8):
    rng = np.random.default_rng(seed)
    users = {}
    for g in groups:
        for u in range(n_per_group):
            items = 10 * g + rng.choice(10, size=6, replace=False)
            users[f"{prefix}{g}_{u}"] = [(int(i), 1000 + DAY * t, int(rng.random() < 0.8))
                                         for t, i in enumerate(items)]
    return users


def _run_executor(root, train_users, eval_users, name, corrupt_eval=False):
    from tfx.types import artifact_utils, standard_artifacts

    from pinrank.components.item_embedding_gen import ItemEmbeddingGen
    from pinrank.components.types import ItemCatalog, ItemEmbeddings

    ex_dir = root / f"examples_{name}"
    _write_split(str(ex_dir / "Split-train"), train_users)
    _write_split(str(ex_dir / "Split-eval"), eval_users)
    if corrupt_eval:
        (ex_dir / "Split-eval" / "garbage.gz").write_bytes(b"this is not a tfrecord")
    items_dir = root / "items"
    if not items_dir.exists():
        items_dir.mkdir()
        cat = _catalog(range(32), content_dim=5)
        table = pa.table({
            "item_id": pa.array(cat["item_id"], pa.int64()),
            "embedding": pa.array([v.tolist() for v in cat["embedding"]], pa.list_(pa.float32())),
            "interests": pa.array(cat["interests"], pa.list_(pa.int32())),
        })
        pq.write_table(table, str(items_dir / "items.parquet"))
        (items_dir / "interests.json").write_text(json.dumps([f"i{k}" for k in range(8)]))

    examples = standard_artifacts.Examples()
    examples.uri = str(ex_dir)
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    items = ItemCatalog()
    items.uri = str(items_dir)
    out = ItemEmbeddings()
    out.uri = str(root / f"out_{name}")
    cfg = preset("tiny").replace(items={"dim": 10, "cf_dim": 6, "seed": 3})
    props = {"config_json": cfg.to_json()}
    executor = ItemEmbeddingGen.EXECUTOR_SPEC.executor_class()
    executor.Do({"examples": [examples], "items": [items]}, {"item_embeddings": [out]}, props)
    return out


def _read(out):
    emb_bytes = (open(os.path.join(out.uri, "item_embeddings.npz"), "rb")).read()
    meta = json.loads(open(os.path.join(out.uri, "meta.json")).read())
    with np.load(os.path.join(out.uri, "item_embeddings.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    return emb_bytes, meta, arrays


def test_executor_layout_and_no_eval_leakage(tmp_path):
    train = _users("tr", groups=(0, 1), seed=0)
    eval_a = _users("ev", groups=(0, 1), seed=10)
    # Eval users who would tie the two groups together (and touch items 20..29) if ever read.
    eval_b = {f"evb{u}": [(u % 10, 1000, 1), (10 + u % 10, 2000, 1), (20 + u % 10, 3000, 1)]
              for u in range(30)}

    base = _run_executor(tmp_path, train, eval_a, "base")
    base_bytes, meta, arr = _read(base)
    # Layout.
    assert sorted(os.listdir(base.uri)) == ["item_embeddings.npz", "meta.json"]
    np.testing.assert_array_equal(arr["item_id"], np.arange(32))
    assert arr["item_id"].dtype == np.int64
    assert arr["embedding"].shape == (32, 10) and arr["embedding"].dtype == np.float32
    assert arr["interests"].dtype == np.int32 and arr["interests"].shape == (32, 2)
    np.testing.assert_array_equal(arr["interests"][1], [1, -1])
    assert meta["dim"] == 10 and meta["cf_dim"] == 6 and meta["source_split"] == "train"
    assert meta["n_train_users"] == 16
    # Cold: items 20..31 (never engaged by training users) and items that training users only
    # engaged with negatively (hist_pos == 0), e.g. item 8 with this seed.
    positive = {i for events in train.values() for i, _, p in events if p}
    negative_only = sorted(set(range(20)) - positive)
    assert negative_only == [8]
    assert meta["n_cold_items"] == 32 - len(positive) == 13
    np.testing.assert_array_equal(arr["embedding"][20:, :6], 0.0)
    np.testing.assert_array_equal(arr["embedding"][negative_only, :6], 0.0)
    assert meta["n_users_truncated"] == 0 and meta["n_items_dropped_by_cap"] == 0
    assert base.get_int_custom_property("num_items") == 32
    assert base.get_int_custom_property("dim") == 10
    cf = arr["embedding"][:, :6].astype(np.float64)
    warm_a = [i for i in range(10) if i not in negative_only]
    assert max(abs(_cos(cf[i], cf[j])) for i in warm_a for j in range(10, 20)) < 1e-5

    # Changing ONLY the eval split (other users, other items, even an unreadable file): identical.
    other = _run_executor(tmp_path, train, eval_b, "eval_changed", corrupt_eval=True)
    other_bytes, other_meta, _ = _read(other)
    assert other_bytes == base_bytes
    assert other_meta == meta

    # Changing the train split changes the output.
    train2 = dict(train)
    train2["tr_extra"] = [(3, 1000, 1), (14, 2000, 1), (25, 3000, 1)]
    changed = _run_executor(tmp_path, train2, eval_a, "train_changed")
    changed_bytes, changed_meta, changed_arr = _read(changed)
    assert changed_bytes != base_bytes
    assert changed_meta["n_train_users"] == 17
    assert changed_meta["n_cold_items"] == 12  # item 25 now has co-engagement
    assert not np.allclose(changed_arr["embedding"], arr["embedding"])


def test_component_spec_types():
    from tfx.types import channel, standard_artifacts

    from pinrank.components.item_embedding_gen import ItemEmbeddingGen
    from pinrank.components.types import ItemCatalog, ItemEmbeddings

    comp = ItemEmbeddingGen(examples=channel.Channel(type=standard_artifacts.Examples),
                            items=channel.Channel(type=ItemCatalog),
                            config_json=PipelineConfig().to_json())
    assert comp.outputs["item_embeddings"].type is ItemEmbeddings
    assert set(comp.inputs) == {"examples", "items"}
