"""Serving contract shared by the pipeline's Pusher, the deploy configs, the client and the
local server: model/signature/tensor names, ports, paths. Import-light on purpose (no TF), so
`pinrank --help` does not pay for a TensorFlow import.

The SavedModel layout pushed by the TFX Pusher is `<serving_dir>/<model>/<version>/`, version =
unix seconds, `saved_model.pb` copied last (so its presence marks a complete version).
"""
from __future__ import annotations

import os

from pinrank.pipeline import features as F

# Models (one TF Serving base path each: <model_root>/<name>).
PINNERFORMER = "pinnerformer"
RANKER = "ranker"
MODEL_NAMES = (PINNERFORMER, RANKER)

# Signatures. TF Serving uses "serving_default" when a request leaves signature_name empty.
SERVING_DEFAULT = "serving_default"
EMBED_RAW = "embed_raw"
ITEM_EMBEDDING = "item_embedding"
RETRIEVE = "retrieve"  # embed_raw inputs + exclusions + k -> top-k catalogue items
RETRIEVE_EMBEDDING = "retrieve_embedding"  # user embedding + exclusions + k -> top-k items
RANK = "rank"

# Tensor names of the pinnerformer signatures.
EXAMPLES = "examples"  # DT_STRING [-1] serialized tf.Example
EMBEDDING = "embedding"  # DT_FLOAT [-1, D]
ITEM_ID = "item_id"  # DT_INT64 [-1]
HIST_LEN = "hist_len"  # DT_INT64 [-1]: real actions per row; rows are padded after it
# embed_raw inputs, chronological (oldest first), [-1, L].
EMBED_RAW_SEQUENCE_INPUTS = (F.HIST_ITEM, F.HIST_ACTION, F.HIST_SURFACE, F.HIST_TS,
                             F.HIST_DURATION)
EMBED_RAW_INPUTS = EMBED_RAW_SEQUENCE_INPUTS + (HIST_LEN,)
# retrieve / retrieve_embedding (models/pinnerformer/retrieval.py): exact inner-product top-k over
# the catalogue embedded at export. Inputs: EMBED_RAW_INPUTS (retrieve) or EMBEDDING [-1, D]
# (retrieve_embedding), plus EXCLUDE_ITEMS and K; outputs ITEM_IDS and SCORES [-1, K'] with K' =
# max(k) of the rows run together (row b: its k[b] best, then PAD_ITEM / -inf), plus EMBEDDING
# from retrieve. Every input has dim 0 = B because TF Serving's batching session (the
# pinnerformer is batched) refuses scalars; clients slice to their own k.
EXCLUDE_ITEMS = "exclude_items"  # DT_INT64 [-1, X]: ids never returned, padded with PAD_ITEM
K = "k"  # DT_INT32 [-1]: results wanted per row, >= 1
ITEM_IDS = "item_ids"  # DT_INT64 [-1, K']: best first, ties by ascending id
SCORES = "scores"  # DT_FLOAT [-1, K']: inner product <user, item>, descending
# Width clients pad exclude_items to: batched requests must agree on every inner dimension
# (pad_variable_length_inputs is off), so one fixed width lets any two requests share a batch.
# serving.client.ServingClient.retrieve keeps longer lists exact by over-fetching.
RETRIEVE_EXCLUDE_WIDTH = 1024
# Ranker per-head outputs (one score per candidate, [-1]).
RANK_HEADS = F.ACTIONS

# Padding values of embed_raw rows after hist_len (the model masks by hist_len, these only
# have to be valid for the dtype; the item pad matches the Transform's PAD_ITEM).
PAD_ITEM = F.PAD_ITEM
PAD_STRING = b""
PAD_INT = 0
PAD_FLOAT = 0.0

# Ports and endpoints of tensorflow_model_server (and of the local stand-in).
GRPC_PORT = 8500
REST_PORT = 8501
DEFAULT_TARGET = f"127.0.0.1:{GRPC_PORT}"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

# Version policy: keep the newest two versions loaded, so a push loads the new version next to
# the current one (no gap) and requests pinned to the previous version still succeed.
NUM_VERSIONS = 2

# Where models and configs live inside the serving container (docker-compose and k8s).
CONTAINER_MODEL_ROOT = "/models"
CONTAINER_CONFIG_DIR = "/config"
MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching_parameters.config"
MONITORING_CONFIG = "monitoring.config"
PINNERFORMER_BATCHING = "pinnerformer.batching_params.pbtxt"
CONFIG_FILES = (MODELS_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG)  # mounted at /config
DEPLOY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deploy")

# Per-model batching (--enable_per_model_batching_parameters): TF Serving batches a version only
# if its SavedModel dir holds this file, with the parameters in it. The pinnerformer export
# copies deploy/PINNERFORMER_BATCHING there; the ranker has none (its `rank` request is one user
# context + N candidates, which a batching session cannot take, and is already a batch).
PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"

# The official image production runs.
SERVING_IMAGE = "tensorflow/serving:2.16.1-gpu"

# GetModelMetadata packs a SignatureDefMap into an Any with this type url.
SIGNATURE_DEF_MAP_TYPE_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
SIGNATURE_DEF_FIELD = "signature_def"
SAVED_MODEL_INIT_OP = "__saved_model_init_op"  # listed by TF Serving, not callable

# Model warmup (https://www.tensorflow.org/tfx/serving/saved_model_warmup): with
# --enable_model_warmup TF Serving replays this TFRecord of tensorflow.serving.PredictionLog
# (relative to the version dir) before it marks the version AVAILABLE, and fails the load if a
# request fails. AtomicPusher's canary writes it (serving/canary.py).
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_MAX_RECORDS = 1000  # TF Serving reads at most this many (saved_model_warmup_util.cc)
# Canary requests per signature, each built from one eval user (PinnerFormer) or one eval
# request with all its candidates (ranker); retrieve asks for WARMUP_RETRIEVE_K items.
WARMUP_REQUESTS_PER_SIGNATURE = 4
WARMUP_RETRIEVE_K = 10
