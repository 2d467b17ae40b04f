"""ItemIndex: exact top-k against a numpy full-sort reference, exclusions, padding, persistence,
building from a SavedModel and from a (fake) serving client."""
import numpy as np
import pytest

from serving import constants as C
from serving import testing as T
from serving.item_index import PAD_ID, ItemIndex


def reference_topk(ids, emb, q, k, exclude):
    out_ids, out_sc = [], []
    for r in range(len(q)):
        s = emb @ q[r]
        ok = ~np.isin(ids, exclude[r]) if exclude is not None else np.ones(len(ids), bool)
        cand = np.flatnonzero(ok)
        order = cand[np.lexsort((ids[cand], -s[cand]))][:k]
        i = np.full(k, PAD_ID, np.int64)
        sc = np.full(k, -np.inf, np.float32)
        i[:len(order)], sc[:len(order)] = ids[order], s[order]
        out_ids.append(i)
        out_sc.append(sc)
    return np.array(out_ids), np.array(out_sc)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(1000, 1200))  # unsorted, non-contiguous
    emb = rng.normal(size=(200, 8)).astype(np.float32)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    return ids, emb, q


@pytest.mark.parametrize("batch_size", [1, 5, 1024])
def test_search_matches_full_sort_reference_with_exclusions(data, batch_size):
    ids, emb, q = data
    rng = np.random.default_rng(1)
    exclude = [rng.choice(ids, size=int(rng.integers(0, 30)), replace=False) for _ in q]
    exclude[3] = np.array([5, 6, 7])  # ids not in the index are ignored
    index = ItemIndex(ids, emb)
    got_ids, got_sc = index.search(q, 10, exclude=exclude, batch_size=batch_size)
    ref_ids, ref_sc = reference_topk(ids, emb, q, 10, exclude)
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_allclose(got_sc, ref_sc, rtol=1e-5, atol=1e-5)
    for r in range(len(q)):
        assert not set(got_ids[r]) & set(exclude[r].tolist())
    no_ex, _ = index.search(q, 10)
    np.testing.assert_array_equal(no_ex, reference_topk(ids, emb, q, 10, None)[0])


def test_fewer_eligible_items_than_k_are_padded():
    ids = np.array([3, 1, 2])
    emb = np.eye(3, dtype=np.float32)
    index = ItemIndex(ids, emb)
    got, sc = index.search(np.array([1.0, 0.5, 0.2], np.float32), 5, exclude=[[1]])
    # id 3 (row 0, score 1.0) is best; id 1 is excluded
    assert got.tolist() == [[3, 2, PAD_ID, PAD_ID, PAD_ID]]
    assert np.isneginf(sc[0, 2:]).all() and sc[0, 0] == pytest.approx(1.0)


def test_ties_break_by_item_id():
    index = ItemIndex([9, 4, 7], np.ones((3, 2), np.float32))
    got, _ = index.search(np.ones((1, 2), np.float32), 2)
    assert got.tolist() == [[4, 7]]


def test_save_load_round_trip(tmp_path, data):
    ids, emb, q = data
    index = ItemIndex(ids, emb, model_version="17")
    path = index.save(str(tmp_path / "sub" / "items"))
    assert path.endswith(".npz")
    back = ItemIndex.load(path)
    assert back.model_version == "17"
    np.testing.assert_array_equal(back.item_ids, ids)
    np.testing.assert_array_equal(back.search(q, 5)[0], index.search(q, 5)[0])
    assert ItemIndex.load(ItemIndex(ids, emb).save(str(tmp_path / "nov.npz"))).model_version is None


def test_rejects_bad_input(data):
    ids, emb, q = data
    with pytest.raises(ValueError):
        ItemIndex(np.concatenate([ids[:2], ids[:1]]), emb[:3])
    with pytest.raises(ValueError):
        ItemIndex(ids, emb[:-1])
    index = ItemIndex(ids, emb)
    with pytest.raises(ValueError):
        index.search(q[:, :4], 3)
    with pytest.raises(ValueError):
        index.search(q, 3, exclude=[[1]])


def test_build_from_saved_model_and_from_client(tmp_path):
    import tensorflow as tf

    path = T.save_toy_pinnerformer(str(tmp_path / "pf"), 1.0)
    base = tmp_path / "serving" / C.PINNERFORMER
    T.push_version(path, str(base), 42)
    item_ids = np.arange(0, 23, dtype=np.int64)
    fn = tf.saved_model.load(path).signatures[C.ITEM_EMBEDDING]
    want = fn(item_id=tf.constant(item_ids))[C.EMBEDDING].numpy()

    idx = ItemIndex.build(str(tmp_path / "serving"), item_ids, batch_size=5)
    assert idx.model_version == "42"
    np.testing.assert_allclose(idx.embeddings, want, atol=1e-6)

    class FakeClient:  # the ServingClient.predict_versioned contract, no network
        def __init__(self):
            self.versions = []

        def predict_versioned(self, model, signature, inputs, version=None):
            assert (model, signature) == (C.PINNERFORMER, C.ITEM_EMBEDDING)
            self.versions.append(version)
            out = fn(item_id=tf.constant(inputs[C.ITEM_ID]))[C.EMBEDDING].numpy()
            return {C.EMBEDDING: out}, 42 if version is None else version

    client = FakeClient()
    idx2 = ItemIndex.build(client, item_ids, batch_size=10)
    assert client.versions == [None, 42, 42]  # pinned after the first answer
    assert idx2.model_version == "42"
    np.testing.assert_allclose(idx2.embeddings, want, atol=1e-6)
