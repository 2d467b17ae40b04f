"""Item index: pin-tower embeddings of the whole catalog and exact top-k retrieval.

    index = ItemIndex.build(model_dir_or_client, item_ids)   # `item_embedding` signature
    index.save("items.npz"); index = ItemIndex.load("items.npz")
    ids, scores = index.search(user_emb, k=10, exclude=[history_ids])

Scores are inner products <user, item>; PinnerFormer's towers are L2-normalised, so this is the
cosine similarity the model was trained with. `search` is exact brute force in numpy: one
[B, N] matmul per query batch (bounded memory), exclusions set to -inf, then argpartition.
That is the right tool up to ~10^6 items on a CPU (a few ms per query batch).

ANN at scale (10^8+ pins). The index is a pure function of (model version, catalog), so it is
built offline right after each push, like the daily user snapshot, and served next to the
model. Only `search` changes; `build`/`save`/`load` and the (ids, scores) contract stay:

* ScaNN (`scann` package; what Pinterest-scale retrieval typically uses for MIPS):
      searcher = (scann.scann_ops_pybind.builder(emb, k_max, "dot_product")
                  .tree(num_leaves=int(sqrt(N)), num_leaves_to_search=num_leaves // 20,
                        training_sample_size=250_000)
                  .score_ah(2, anisotropic_quantization_threshold=0.2)
                  .reorder(200).build())
      rows, scores = searcher.search_batched(user_emb, final_num_neighbors=k + len(exclude))
  ScaNN also has TF ops, so the searcher can be exported inside a SavedModel and served by
  TF Serving beside `pinnerformer` (one gRPC hop for embed + retrieve).
* HNSW (`hnswlib`, or FAISS `IndexHNSWFlat` with METRIC_INNER_PRODUCT):
      index = hnswlib.Index(space="ip", dim=D); index.init_index(N, ef_construction=200, M=32)
      index.add_items(emb, np.arange(N)); index.set_ef(max(200, 2 * k))
      rows, dist = index.knn_query(user_emb, k=k + len(exclude))   # dist = 1 - ip
* Exclusions: ANN libraries filter poorly, so over-fetch k + |exclude| (capped) and drop
  excluded ids afterwards, exactly as `_topk` does here after masking.
* Quality: measure the ANN's recall@k against this exact index on a sample of users after every
  rebuild and gate the rollout on it (e.g. >= 0.95), the same way RetrievalEvaluator gates the
  model.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from serving import constants as C

PAD_ID = -1  # id returned where fewer than k items are eligible (score -inf)


class ItemIndex:
    """Exact inner-product index over item embeddings."""

    def __init__(self, item_ids, embeddings, model_version: Optional[str] = None):
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(ids):
            raise ValueError(f"embeddings must be [{len(ids)}, D], got {emb.shape}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("item ids are not unique")
        if not np.isfinite(emb).all():
            raise ValueError("item embeddings contain NaN or inf")
        self.item_ids = ids
        self.embeddings = np.ascontiguousarray(emb)
        self.model_version = None if model_version is None else str(model_version)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    # -- building

    @classmethod
    def build(cls, source: Any, item_ids, *, batch_size: int = 1024,
              model: str = C.PINNERFORMER, version: Optional[int] = None) -> "ItemIndex":
        """Embeds `item_ids` with the pin tower (`item_embedding` signature).

        source: a SavedModel / model base / serving directory (in-process), or a
        serving.client.ServingClient (gRPC; every batch is pinned to one model version, the
        one that answered the first batch unless `version` is given)."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        chunks = []
        if isinstance(source, (str, os.PathLike)):
            import tensorflow as tf

            from serving.batch_embeddings import model_version, resolve_model_dir

            path = resolve_model_dir(os.fspath(source), model)
            fn = tf.saved_model.load(path).signatures[C.ITEM_EMBEDDING]
            for s in range(0, len(ids), batch_size):
                out = fn(**{C.ITEM_ID: tf.constant(ids[s:s + batch_size])})
                chunks.append(out[C.EMBEDDING].numpy())
            served: Any = model_version(path)
        elif hasattr(source, "predict_versioned"):
            served = version
            for s in range(0, len(ids), batch_size):
                out, v = source.predict_versioned(model, C.ITEM_EMBEDDING,
                                                  {C.ITEM_ID: ids[s:s + batch_size]}, served)
                served = v if served is None else served
                if v != served:
                    raise RuntimeError(f"{model} answered version {v} after {served}")
                chunks.append(out[C.EMBEDDING])
            served = None if served is None else str(served)
        else:
            raise TypeError(f"source must be a model directory or a ServingClient, got "
                            f"{type(source).__name__}")
        emb = np.concatenate(chunks, 0) if chunks else np.zeros((0, 0), np.float32)
        return cls(ids, emb, served)

    # -- persistence

    def save(self, path: str) -> str:
        """Writes an .npz atomically (item_ids, embeddings, model_version); returns the path."""
        if not path.endswith(".npz"):
            path += ".npz"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, item_ids=self.item_ids, embeddings=self.embeddings,
                         model_version=np.array("" if self.model_version is None
                                                else self.model_version))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str) -> "ItemIndex":
        with np.load(path, allow_pickle=False) as z:
            version = str(z["model_version"]) if "model_version" in z else ""
            return cls(z["item_ids"], z["embeddings"], version or None)

    # -- retrieval

    def rows_of(self, ids) -> np.ndarray:
        """Row of each id in the index, -1 for ids not in it."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(self._sorted):
            return np.full(len(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        hit = self._sorted[pos] == ids
        return np.where(hit, self._order[pos], -1).astype(np.int64)

    def search(self, user_emb, k: int, exclude: Optional[Sequence[Any]] = None,
               batch_size: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product.

        user_emb [B, D] (or [D]); exclude: None or one array of item ids per query (ids not in
        the index are ignored). Returns (ids int64 [B, k], scores float32 [B, k]), best first,
        equal scores by ascending item id; where fewer than k items are eligible the tail is
        PAD_ID with score -inf."""
        q = np.asarray(user_emb, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"user_emb must be [B, {self.dim}], got {q.shape}")
        if k < 1:
            raise ValueError("k must be >= 1")
        b = q.shape[0]
        if exclude is not None and len(exclude) != b:
            raise ValueError(f"exclude must have one id list per query ({b}), got {len(exclude)}")
        ids_out = np.full((b, k), PAD_ID, np.int64)
        scores_out = np.full((b, k), -np.inf, np.float32)
        for s in range(0, b, max(1, int(batch_size))):
            scores = q[s:s + batch_size] @ self.embeddings.T  # [b', N]
            if exclude is not None:
                for r in range(scores.shape[0]):
                    rows = self.rows_of(exclude[s + r] if exclude[s + r] is not None else [])
                    scores[r, rows[rows >= 0]] = -np.inf
            ids, sc = self._topk(scores, k)
            ids_out[s:s + len(ids), :ids.shape[1]] = ids
            scores_out[s:s + len(ids), :ids.shape[1]] = sc
        return ids_out, scores_out

    def _topk(self, scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        n = scores.shape[1]
        kk = min(k, n)
        if kk == 0:
            return (np.zeros((scores.shape[0], 0), np.int64),
                    np.zeros((scores.shape[0], 0), np.float32))
        if kk < n:
            part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            # Ties at the k-th score: argpartition picks arbitrarily; redo those rows over every
            # tied item so that equal scores go by ascending item id, deterministically.
            kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
            tied = ((scores >= kth[:, None]).sum(axis=1) > kk) & np.isfinite(kth)  # -inf: padding
            for r in np.flatnonzero(tied):
                cand = np.flatnonzero(scores[r] >= kth[r])
                part[r] = cand[np.lexsort((self.item_ids[cand], -scores[r, cand]))][:kk]
        else:
            part = np.broadcast_to(np.arange(n), scores.shape).copy()
        sc = np.take_along_axis(scores, part, axis=1)
        ids = self.item_ids[part]
        order = np.lexsort((ids, -sc), axis=-1)  # score desc, then id asc
        ids = np.take_along_axis(ids, order, axis=1)
        sc = np.take_along_axis(sc, order, axis=1)
        ids = np.where(np.isneginf(sc), PAD_ID, ids)
        return ids, sc.astype(np.float32)
