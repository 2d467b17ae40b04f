"""Pipeline glue for the ranker: transformed features -> Ranker inputs, and the SavedModel.

The Ranker takes already-looked-up frozen item embeddings; `Featurizer` owns the id -> row table
(the same frozen PinSage-analogue table PinnerFormer uses) and maps Transform outputs to Ranker
inputs, both in tf.data during training and inside the serving signatures. With
`ranker.use_pf_dot` it also holds the catalog's PinnerFormer pin-tower embeddings
(`pinnerformer_item_table`, from the PinnerFormer that built the examples), so the served ranker
needs no input beyond the request's.

Signatures:
- serving_default(examples: string [B]) -> {repin, click, closeup, hide: [B]}  (TFMA, InfraValidator)
- rank(user context of ONE request, cand_item [N]) -> {head: [N]}: the user-side work (Transform,
  context and PinnerFormer inputs, sequence lookups, mask) runs once and is broadcast over the
  candidates (Ranker.rank_request).
"""
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from pinrank.models.realtime import ranker as R
from pinrank.pipeline import features as F

# Raw request-level inputs of the `rank` signature (one request; batch dim 1).
RANK_USER_INPUTS = {
    F.HIST_ITEM: tf.TensorSpec([1, None], tf.int64, name=F.HIST_ITEM),
    F.HIST_ACTION: tf.TensorSpec([1, None], tf.string, name=F.HIST_ACTION),
    F.HIST_TS: tf.TensorSpec([1, None], tf.int64, name=F.HIST_TS),
    "hist_len": tf.TensorSpec([1], tf.int64, name="hist_len"),
    F.REQUEST_TS: tf.TensorSpec([1], tf.int64, name=F.REQUEST_TS),
    F.SURFACE: tf.TensorSpec([1], tf.string, name=F.SURFACE),
    F.PF_EMBEDDING: tf.TensorSpec([1, None], tf.float32, name=F.PF_EMBEDDING),
    F.PF_PRESENT: tf.TensorSpec([1], tf.int64, name=F.PF_PRESENT),
}
RAW_SERVING_FEATURES = (F.HIST_ITEM, F.HIST_ACTION, F.HIST_TS, F.REQUEST_TS, F.SURFACE,
                        F.CAND_ITEM, F.PF_EMBEDDING, F.PF_PRESENT)


class Featurizer(tf.Module):
    """Transform outputs -> (Ranker user features, candidate features)."""

    def __init__(self, item_ids: np.ndarray, item_embeddings: np.ndarray, item_interests: np.ndarray,
                 pf_item_embeddings: Optional[np.ndarray] = None):
        """pf_item_embeddings: [N, Dp] pin-tower rows aligned with item_ids (use_pf_dot), or None."""
        super().__init__(name="featurizer")
        n = len(item_ids)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(item_ids, tf.int64),
                                                tf.range(1, n + 1, dtype=tf.int64)), default_value=0)
        dim = item_embeddings.shape[1]
        # Row 0: unknown item / padding (zeros); rows 1..N: the catalog. Frozen.
        self.embeddings = tf.Variable(np.vstack([np.zeros((1, dim), np.float32), item_embeddings]),
                                      trainable=False, name="frozen_item_embeddings")
        first = np.where(item_interests[:, :1] >= 0, item_interests[:, :1] + 1, 0).reshape(-1)
        self.interest = tf.Variable(np.concatenate([[0], first]).astype(np.int64), trainable=False,
                                    name="candidate_interest")  # 0 = none/unknown
        self.num_interests = int(first.max()) + 1
        self.num_items = n
        self.pf_items = None
        if pf_item_embeddings is not None:
            pf_item_embeddings = np.asarray(pf_item_embeddings, np.float32)
            if pf_item_embeddings.ndim != 2 or len(pf_item_embeddings) != n:
                raise ValueError(f"pf_item_embeddings must be [{n}, Dp] (one row per item id), "
                                 f"got {pf_item_embeddings.shape}")
            pad = np.zeros((1, pf_item_embeddings.shape[1]), np.float32)
            self.pf_items = tf.Variable(np.vstack([pad, pf_item_embeddings]), trainable=False,
                                        name="pinnerformer_item_embeddings")  # row 0: unknown

    def rows(self, ids):
        return self.table.lookup(tf.cast(ids, tf.int64))

    def user(self, xf) -> Dict[str, tf.Tensor]:
        pf = xf[F.xf(F.PF_EMBEDDING)] * tf.cast(xf[F.xf(F.PF_PRESENT)], tf.float32)[:, None]
        return {
            "surface": xf[F.xf(F.SURFACE)],
            "hour_of_day": xf["hour_xf"],
            "day_of_week": xf["dow_xf"],
            R.PINNERFORMER_EMB: pf,
            R.RT_ACTION_TYPE: xf[F.xf(F.HIST_ACTION)],
            R.RT_ITEM_EMB: tf.gather(self.embeddings, self.rows(xf[F.xf(F.HIST_ITEM)])),
            R.RT_ACTION_TS: xf[F.xf(F.HIST_TS)],
            R.REQUEST_TS: xf[F.xf(F.REQUEST_TS)],
        }

    def candidates(self, cand_item) -> Dict[str, tf.Tensor]:
        rows = self.rows(tf.reshape(cand_item, [-1]))
        out = {R.CANDIDATE_EMB: tf.gather(self.embeddings, rows),
               "candidate_interest": tf.gather(self.interest, rows),
               "candidate_id": rows}  # catalog row, 0 = unknown
        if self.pf_items is not None:
            out[R.PF_CANDIDATE_EMB] = tf.gather(self.pf_items, rows)
        return out

    def __call__(self, xf) -> Dict[str, tf.Tensor]:
        return {**self.user(xf), **self.candidates(xf[F.xf(F.CAND_ITEM)])}


def pinnerformer_item_table(pinnerformer_dir: str, item_ids: np.ndarray,
                            batch: int = 4096) -> np.ndarray:
    """[N, Dp] pin-tower embeddings of `item_ids` from a PinnerFormer SavedModel's
    `item_embedding` signature (models/pinnerformer/export.py), the vectors it retrieves with."""
    fn = tf.saved_model.load(pinnerformer_dir).signatures["item_embedding"]
    ids = np.asarray(item_ids, np.int64)
    return np.concatenate([fn(item_id=tf.constant(ids[i:i + batch]))["embedding"].numpy()
                           for i in range(0, len(ids), batch)]).astype(np.float32)


def labels(xf) -> Dict[str, tf.Tensor]:
    return {h: tf.cast(xf[F.label_key(h)], tf.float32) for h in F.HEADS}


def signatures(ranker: keras.Model, featurizer: Featurizer,
               tf_transform_output: tft.TFTransformOutput) -> Dict:
    tft_layer = tf_transform_output.transform_features_layer()
    ranker.tft_layer, ranker.featurizer = tft_layer, featurizer  # tracked by the SavedModel
    raw_spec = {k: v for k, v in tf_transform_output.raw_feature_spec().items()
                if k in RAW_SERVING_FEATURES}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        xf = tft_layer(tf.io.parse_example(examples, raw_spec))
        return ranker(featurizer(xf), training=False)

    @tf.function(input_signature=[RANK_USER_INPUTS,
                                  tf.TensorSpec([None], tf.int64, name=F.CAND_ITEM)])
    def rank(user, cand_item):
        lengths = tf.minimum(user["hist_len"], tf.shape(user[F.HIST_ITEM], out_type=tf.int64)[1])
        raw = {k: tf.RaggedTensor.from_tensor(user[k], lengths=lengths)
               for k in (F.HIST_ITEM, F.HIST_ACTION, F.HIST_TS)}
        raw[F.PF_EMBEDDING] = tf.RaggedTensor.from_tensor(user[F.PF_EMBEDDING])
        for k in (F.REQUEST_TS, F.SURFACE, F.PF_PRESENT):
            raw[k] = tf.reshape(user[k], [1, 1])
        xf = tft_layer(raw)
        return ranker.rank_request(featurizer.user(xf), featurizer.candidates(cand_item))

    return {"serving_default": serve_examples.get_concrete_function(),
            "rank": rank.get_concrete_function()}


def featurized_dataset(ds: tf.data.Dataset, featurizer: Featurizer,
                       shuffle_labels: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Transformed batches -> (Ranker inputs, {head: label}). `shuffle_labels` permutes the label
    rows within each batch: a randomisation test that a correct gate must refuse to bless."""
    def fn(xf):
        y = labels(xf)
        if shuffle_labels:
            perm = tf.random.shuffle(tf.range(tf.shape(y[F.HEADS[0]])[0]), seed=seed)
            y = {h: tf.gather(v, perm) for h, v in y.items()}
        return featurizer(xf), y
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)

