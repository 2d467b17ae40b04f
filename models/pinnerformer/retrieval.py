"""Exact top-k retrieval inside the PinnerFormer SavedModel (the `retrieve` and
`retrieve_embedding` signatures of models/pinnerformer/export.py), so no client builds an index.

The export embeds the whole catalogue with the pin tower once and stores it in the SavedModel as
two non-trainable variables, ids int64 [N] (ascending) and embeddings float32 [N, D]. A query is
brute force: scores = user [B, D] @ items^T [N, D] (the inner product the towers were trained
with), excluded items set to -inf BEFORE top-k, then tf.math.top_k. Semantics (checked against a
numpy full sort in tests/unit/test_pinnerformer_retrieval.py):
  * best first; equal scores by ascending item id (the ids are stored ascending, and top_k puts
    the lower index first on ties: documented, and kept by the GPU kernel too, whose heaps
    prefer lower indices and whose large-k path is a stable radix sort);
  * exclusion ids not in the catalogue are ignored, and so is the pad id;
  * k results whenever >= k items are eligible; otherwise the tail is `pad_id` with score -inf.

Why not tensorflow_recommenders' BruteForce layer: tensorflow-recommenders is not in the locked
environment, and its BruteForce is this same matmul + top_k but with no exclusion mask (it would
need over-fetching k + |exclude| and filtering, which is what exact masking avoids).
Scale: one [B, N] float32 score matrix per request (B = 512, N = 10^6 is 2 GB); past ~10^6
items an ANN index replaces this function, built after each push like the daily user snapshot:
ScaNN (tree + asymmetric hashing + reorder, dot product; it has TF ops, so it can live in this
SavedModel) or HNSW (hnswlib / FAISS IndexHNSWFlat, inner product). ANN libraries filter
poorly: over-fetch k + |exclude| and drop excluded ids afterwards; gate each rebuild on its
recall@k against this exact top-k on a sample of users (e.g. >= 0.95).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

EMBED_CHUNK = 8192  # catalogue rows per pin-tower call at export (bounds peak memory)


class CatalogIndex(tf.Module):
    """The catalogue's pin-tower embeddings as non-trainable variables (saved with the model)."""

    def __init__(self, item_ids, embeddings, name: str = "catalog_index"):
        super().__init__(name=name)
        ids = np.asarray(item_ids, np.int64).reshape(-1)
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[0] != ids.size or ids.size == 0:
            raise ValueError(f"catalog index: embeddings must be [N={ids.size} > 0, D], "
                             f"got {emb.shape}")
        if np.unique(ids).size != ids.size:
            raise ValueError("catalog index: item ids are not unique")
        order = np.argsort(ids, kind="stable")  # ascending ids: top_k's tie order = id order
        self.item_ids = tf.Variable(ids[order], trainable=False, name="catalog_item_ids")
        self.embeddings = tf.Variable(emb[order], trainable=False, name="catalog_item_embeddings")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def top_k(self, user_emb, exclude_items, k, pad_id: int):
        return top_k(user_emb, self.item_ids, self.embeddings, exclude_items, k, pad_id)


def catalog_item_ids(model) -> np.ndarray:
    """The catalogue a PinnerFormer knows: the keys of its item table, in table-row order
    (the ItemEmbeddings artifact's order)."""
    keys, rows = model.item_table.export()
    return keys.numpy()[np.argsort(rows.numpy(), kind="stable")].astype(np.int64)


def catalog_embeddings(model) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N], pin-tower embeddings [N, D]) of every catalogue item (what the `item_embedding`
    signature returns for those ids), computed in chunks."""
    ids = catalog_item_ids(model)
    chunks = [model.item_embedding(tf.constant(ids[s:s + EMBED_CHUNK])).numpy()
              for s in range(0, ids.size, EMBED_CHUNK)]
    return ids, np.concatenate(chunks, 0)


def build_catalog_index(model) -> CatalogIndex:
    return CatalogIndex(*catalog_embeddings(model))


def top_k(user_emb, item_ids, item_emb, exclude_items, k, pad_id: int):
    """Exact masked top-k (module docstring).

    user_emb float32 [B, D]; item_ids int64 [N] ascending; item_emb float32 [N, D];
    exclude_items int64 [B, X] padded with pad_id; k int32 [B] (>= 1).
    Returns (ids int64 [B, K], scores float32 [B, K]) with K = max(k) over the batch (0 for an
    empty batch); row b holds its own k[b] results, then pad_id / -inf."""
    user_emb = tf.convert_to_tensor(user_emb, tf.float32)
    exclude_items = tf.convert_to_tensor(exclude_items, tf.int64)
    k = tf.reshape(tf.convert_to_tensor(k, tf.int32), [-1])
    b = tf.shape(user_emb)[0]
    n = tf.shape(item_ids)[0]
    checks = [
        tf.debugging.assert_equal(tf.shape(k)[0], b, message="retrieve: k must have one entry "
                                  "per row of the user input"),
        tf.debugging.assert_equal(tf.shape(exclude_items)[0], b, message="retrieve: "
                                  "exclude_items must have one row per row of the user input"),
        tf.debugging.assert_greater_equal(k, 1, message="retrieve: k must be >= 1"),
    ]
    with tf.control_dependencies(checks):
        scores = tf.matmul(user_emb, item_emb, transpose_b=True)  # [B, N]
    # Exclusions: catalogue row of each id by binary search over the ascending ids; misses and
    # pads are dropped, hits are set to -inf before top_k so that they cannot take a slot.
    flat = tf.reshape(exclude_items, [-1])
    pos = tf.minimum(tf.searchsorted(item_ids, flat, side="left", out_type=tf.int32), n - 1)
    hit = tf.logical_and(tf.equal(tf.gather(item_ids, pos), flat), tf.not_equal(flat, pad_id))
    query = tf.repeat(tf.range(b), tf.shape(exclude_items)[1])
    where = tf.stack([tf.boolean_mask(query, hit), tf.boolean_mask(pos, hit)], axis=1)
    scores = tf.tensor_scatter_nd_update(
        scores, where, tf.fill([tf.shape(where)[0]], tf.constant(-np.inf, tf.float32)))
    k_max = tf.reduce_max(tf.concat([k, [0]], 0))
    best, rows = tf.math.top_k(scores, tf.minimum(k_max, n), sorted=True)
    col = tf.range(tf.shape(best)[1])[None, :]
    keep = tf.logical_and(tf.not_equal(best, -np.inf), col < k[:, None])  # -inf: excluded
    ids = tf.where(keep, tf.gather(item_ids, rows), tf.constant(pad_id, tf.int64))
    best = tf.where(keep, best, tf.constant(-np.inf, tf.float32))
    short = [[0, 0], [0, k_max - tf.shape(best)[1]]]  # catalogue smaller than k
    return (tf.pad(ids, short, constant_values=tf.constant(pad_id, tf.int64)),
            tf.pad(best, short, constant_values=-np.inf))
