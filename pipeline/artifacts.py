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
