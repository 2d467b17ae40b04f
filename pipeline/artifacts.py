"""Artifact files shared between stages: their names, their one writer and one reader, and the
file fingerprint. Part of the contract layer (docs/architecture.md): imports no TensorFlow at
module level; the readers and writers import `tf.io.gfile` when called, so that the same code
reads local paths and gs:// URIs.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Tuple

import numpy as np

# ItemEmbeddings artifact (components/item_embedding_gen.py writes it; the Trainers and both
# evaluators read it).
ITEM_EMBEDDINGS_FILE = "item_embeddings.npz"
ITEM_EMBEDDINGS_META_FILE = "meta.json"
# run_fn's custom_config key for that artifact's URI (components/trainer.py sets it).
ITEM_EMBEDDINGS_URI = "item_embeddings_uri"
# ... and for the serving SavedModel of the PinnerFormer that built the ranker's examples
# (the ranker's Trainer, with ranker.use_pf_dot).
PINNERFORMER_DIR = "pinnerformer_dir"


# A final gate's ModelBlessing names the model it gates (RetrievalEvaluator: PinnerFormer,
# RankerBaselineCheck: the ranker). Locally a latest-blessed resolver finds a trainer's
# blessings through MLMD's node contexts; a compiled Vertex resolver has only a filter on the
# artifacts' metadata, which this property makes specific (pipeline/kubeflow_v2_runner.py).
GATED_MODEL = "gated_model"
PINNERFORMER = "pinnerformer"
RANKER = "ranker"


def set_blessing_properties(blessing, model, blessed: bool, gated_model: str, baseline_model=None) -> None:
    """The stock Evaluator's blessing properties (what the Pusher and the latest-blessed resolvers
    read: blessed, current_model[_id], baseline_model[_id]) plus GATED_MODEL."""
    if gated_model not in (PINNERFORMER, RANKER):
        raise ValueError(f"gated_model must be {PINNERFORMER!r} or {RANKER!r}, got {gated_model!r}")
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)
    if baseline_model is not None:
        blessing.set_string_custom_property("baseline_model", baseline_model.uri)
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
    blessing.set_string_custom_property(GATED_MODEL, gated_model)


def write_item_embeddings(uri: str, ids: np.ndarray, emb: np.ndarray, interests: np.ndarray,
                          meta: dict) -> None:
    """item_id [N] int64, embedding [N, D] float32, interests [N, K] int32 (-1 padded), meta."""
    import tensorflow as tf

    buf = io.BytesIO()
    np.savez(buf, item_id=np.asarray(ids).astype(np.int64),
             embedding=np.asarray(emb).astype(np.float32),
             interests=np.asarray(interests).astype(np.int32))
    tf.io.gfile.makedirs(uri)
    with tf.io.gfile.GFile(os.path.join(uri, ITEM_EMBEDDINGS_FILE), "wb") as f:
        f.write(buf.getvalue())
    with tf.io.gfile.GFile(os.path.join(uri, ITEM_EMBEDDINGS_META_FILE), "w") as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True))


def load_item_embeddings(uri: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ItemEmbeddings artifact -> (item_id [N] int64, embedding [N, D] float32, interests)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(uri, ITEM_EMBEDDINGS_FILE), "rb") as fh:
        npz = np.load(io.BytesIO(fh.read()))
        return npz["item_id"].astype(np.int64), npz["embedding"].astype(np.float32), npz["interests"]


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a local file (dataset fingerprints, pinned downloads)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def is_remote(path: str) -> bool:
    """gs://, s3://, ...: a URI read through gfile, not this machine's disk."""
    return "://" in path and not path.startswith("file:")


def copy_tree(src: str, dest: str) -> None:
    """Copy every file under `src` to the same relative path under `dest` (either may be local
    or a gs:// URI)."""
    import tensorflow as tf

    src = src.rstrip("/")
    for root, _, files in tf.io.gfile.walk(src):
        rel = root[len(src):].strip("/")
        to = f"{dest.rstrip('/')}/{rel}" if rel else dest
        tf.io.gfile.makedirs(to)
        for f in files:
            tf.io.gfile.copy(f"{root.rstrip('/')}/{f}", f"{to.rstrip('/')}/{f}", overwrite=True)
