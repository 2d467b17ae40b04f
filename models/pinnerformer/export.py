"""SavedModel export for TF Serving, TFMA-style `serving_default` and a raw-tensor signature.

Signatures (serving/constants.py names them for clients):
- serving_default(examples: string [B])   -> embedding [B, D]   serialized raw tf.Examples
- embed_raw(hist_* [B, L], hist_len [B])   -> embedding [B, D]   chronological, padded after len
- item_embedding(item_id: int64 [B])       -> embedding [B, D]   pin tower, for the item index
Both user signatures run the same Transform graph as training (no train/serve skew).
The export also carries `batching_params.pbtxt` (serving/deploy/pinnerformer.batching_params.pbtxt):
TF Serving with --enable_per_model_batching_parameters batches this model with those parameters.
"""
from __future__ import annotations

import os
from typing import Dict

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from pipeline import features as F
from serving import constants as C

# Raw inputs needed to embed a user: the history lists, nothing about labels.
SERVING_RAW_FEATURES = (F.HIST_ITEM, F.HIST_ACTION, F.HIST_SURFACE, F.HIST_TS, F.HIST_DURATION)
_RAW_DTYPES = {F.HIST_ITEM: tf.int64, F.HIST_ACTION: tf.string, F.HIST_SURFACE: tf.string,
               F.HIST_TS: tf.int64, F.HIST_DURATION: tf.float32}


def serving_signatures(model: keras.Model, tf_transform_output: tft.TFTransformOutput) -> Dict:
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = {k: v for k, v in tf_transform_output.raw_feature_spec().items()
                if k in SERVING_RAW_FEATURES}

    def embed(raw):
        return {"embedding": model(model.tft_layer(raw), training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        return embed(tf.io.parse_example(examples, raw_spec))

    @tf.function(input_signature=[
        *(tf.TensorSpec([None, None], _RAW_DTYPES[n], name=n) for n in SERVING_RAW_FEATURES),
        tf.TensorSpec([None], tf.int64, name="hist_len")])
    def embed_raw(hist_item, hist_action, hist_surface, hist_ts, hist_duration, hist_len):
        dense = dict(zip(SERVING_RAW_FEATURES,
                         (hist_item, hist_action, hist_surface, hist_ts, hist_duration)))
        lengths = tf.minimum(hist_len, tf.shape(hist_item, out_type=tf.int64)[1])
        return embed({k: tf.RaggedTensor.from_tensor(v, lengths=lengths) for k, v in dense.items()})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="item_id")])
    def item_embedding(item_id):
        return {"embedding": model.item_embedding(item_id)}

    return {"serving_default": serve_examples.get_concrete_function(),
            "embed_raw": embed_raw.get_concrete_function(),
            "item_embedding": item_embedding.get_concrete_function()}


def export(model: keras.Model, tf_transform_output: tft.TFTransformOutput, out_dir: str) -> None:
    signatures = serving_signatures(model, tf_transform_output)
    model.save(out_dir, save_format="tf", signatures=signatures)
    tf.io.gfile.copy(os.path.join(C.DEPLOY_DIR, C.PINNERFORMER_BATCHING),
                     os.path.join(out_dir, C.PER_MODEL_BATCHING_FILE), overwrite=True)
