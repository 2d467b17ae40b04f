"""SavedModel export for TF Serving, TFMA-style `serving_default` and a raw-tensor signature.

Signatures (serving/constants.py names them for clients):
- serving_default(examples: string [B])   -> embedding [B, D]   serialized raw tf.Examples
- embed_raw(hist_* [B, L], hist_len [B])   -> embedding [B, D]   chronological, padded after len
- item_embedding(item_id: int64 [B])       -> embedding [B, D]   pin tower, for the item index
- retrieve(embed_raw inputs, exclude_items: int64 [B, X], k: int32 [B])
      -> item_ids int64 [B, K], scores float32 [B, K], embedding [B, D]
- retrieve_embedding(embedding: float32 [B, D], exclude_items, k) -> item_ids, scores
      exact top-k over the whole catalogue, embedded with the pin tower at export and saved in
      the model (models/pinnerformer/retrieval.py has the semantics; K = max(k) of the batch)
The user signatures run the same Transform graph as training (no train/serve skew).
The export also carries `batching_params.pbtxt` (serving/deploy/pinnerformer.batching_params.pbtxt):
TF Serving with --enable_per_model_batching_parameters batches this model with those parameters.
"""
from __future__ import annotations

import os
from typing import Dict

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from pinrank.models.pinnerformer import retrieval
from pinrank.pipeline import features as F
from pinrank.serving import constants as C

# Raw inputs needed to embed a user: the history lists, nothing about labels.
SERVING_RAW_FEATURES = (F.HIST_ITEM, F.HIST_ACTION, F.HIST_SURFACE, F.HIST_TS, F.HIST_DURATION)
_RAW_DTYPES = {F.HIST_ITEM: tf.int64, F.HIST_ACTION: tf.string, F.HIST_SURFACE: tf.string,
               F.HIST_TS: tf.int64, F.HIST_DURATION: tf.float32}


def serving_signatures(model: keras.Model, tf_transform_output: tft.TFTransformOutput) -> Dict:
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = {k: v for k, v in tf_transform_output.raw_feature_spec().items()
                if k in SERVING_RAW_FEATURES}

    # The catalogue index is tracked by the model so that model.save writes its variables.
    model.catalog_index = retrieval.build_catalog_index(model)
    index = model.catalog_index

    def embed(raw):
        return {"embedding": model(model.tft_layer(raw), training=False)}

    def top_k(emb, exclude_items, k):
        ids, scores = index.top_k(emb, exclude_items, k, C.PAD_ITEM)
        return {C.ITEM_IDS: ids, C.SCORES: scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        return embed(tf.io.parse_example(examples, raw_spec))

    raw_specs = [*(tf.TensorSpec([None, None], _RAW_DTYPES[n], name=n) for n in SERVING_RAW_FEATURES),
                 tf.TensorSpec([None], tf.int64, name=C.HIST_LEN)]
    retrieval_specs = [tf.TensorSpec([None, None], tf.int64, name=C.EXCLUDE_ITEMS),
                       tf.TensorSpec([None], tf.int32, name=C.K)]

    def embed_dense(hist_item, hist_action, hist_surface, hist_ts, hist_duration, hist_len):
        dense = dict(zip(SERVING_RAW_FEATURES,
                         (hist_item, hist_action, hist_surface, hist_ts, hist_duration)))
        lengths = tf.minimum(hist_len, tf.shape(hist_item, out_type=tf.int64)[1])
        return embed({k: tf.RaggedTensor.from_tensor(v, lengths=lengths) for k, v in dense.items()})

    @tf.function(input_signature=raw_specs)
    def embed_raw(hist_item, hist_action, hist_surface, hist_ts, hist_duration, hist_len):
        return embed_dense(hist_item, hist_action, hist_surface, hist_ts, hist_duration, hist_len)

    @tf.function(input_signature=raw_specs + retrieval_specs)
    def retrieve(hist_item, hist_action, hist_surface, hist_ts, hist_duration, hist_len,
                 exclude_items, k):
        out = embed_dense(hist_item, hist_action, hist_surface, hist_ts, hist_duration, hist_len)
        return {**top_k(out["embedding"], exclude_items, k), **out}

    @tf.function(input_signature=[tf.TensorSpec([None, index.dim], tf.float32, name=C.EMBEDDING),
                                  *retrieval_specs])
    def retrieve_embedding(embedding, exclude_items, k):
        return top_k(embedding, exclude_items, k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="item_id")])
    def item_embedding(item_id):
        return {"embedding": model.item_embedding(item_id)}

    return {"serving_default": serve_examples.get_concrete_function(),
            "embed_raw": embed_raw.get_concrete_function(),
            "item_embedding": item_embedding.get_concrete_function(),
            C.RETRIEVE: retrieve.get_concrete_function(),
            C.RETRIEVE_EMBEDDING: retrieve_embedding.get_concrete_function()}


def export(model: keras.Model, tf_transform_output: tft.TFTransformOutput, out_dir: str) -> None:
    signatures = serving_signatures(model, tf_transform_output)
    model.save(out_dir, save_format="tf", signatures=signatures)
    tf.io.gfile.copy(os.path.join(C.DEPLOY_DIR, C.PINNERFORMER_BATCHING),
                     os.path.join(out_dir, C.PER_MODEL_BATCHING_FILE), overwrite=True)
