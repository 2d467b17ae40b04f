"""Tiny SavedModels with the pinrank serving contract, and a Pusher-like copy, for tests and
local demos of the serving stack without running the pipeline.

The toy models are deterministic functions of their inputs scaled by a per-version `scale`, so a
test can tell which version answered and compare server results with an in-process call.
"""
from __future__ import annotations

import os
import shutil
from typing import Dict

import numpy as np

from pipeline import features as F
from serving import constants as C

DIM = 4  # D
SEQ_LEN = 5  # L


def _tf():
    import tensorflow as tf

    return tf


def _embed(tf, scale, proj, hist_item, hist_action, hist_surface, hist_ts, hist_duration,
           hist_len):
    """Masked order-aware pooling of the history: any change to a real action (or its position)
    changes the embedding; padding after hist_len does not."""
    mask = tf.sequence_mask(hist_len, SEQ_LEN, tf.float32)
    pos = tf.range(1, SEQ_LEN + 1, dtype=tf.float32)[None, :]

    def pool(x):
        return tf.reduce_sum(x * mask * pos, axis=1)

    feats = tf.stack([
        pool(tf.cast(hist_item % 1000, tf.float32) / 1000.0),
        pool(tf.cast(tf.equal(hist_action, b"repin"), tf.float32)),
        pool(tf.cast(tf.strings.to_hash_bucket_fast(hist_surface, 7), tf.float32) / 7.0),
        pool(tf.cast(hist_ts % 1000, tf.float32) / 1000.0),
        pool(hist_duration / 60.0),
        tf.cast(hist_len, tf.float32),
    ], axis=1) / float(SEQ_LEN * (SEQ_LEN + 1) // 2)
    return tf.tanh(tf.matmul(feats, proj) * scale)


def _raw_specs(tf):
    return [tf.TensorSpec([None, SEQ_LEN], tf.int64, F.HIST_ITEM),
            tf.TensorSpec([None, SEQ_LEN], tf.string, F.HIST_ACTION),
            tf.TensorSpec([None, SEQ_LEN], tf.string, F.HIST_SURFACE),
            tf.TensorSpec([None, SEQ_LEN], tf.int64, F.HIST_TS),
            tf.TensorSpec([None, SEQ_LEN], tf.float32, F.HIST_DURATION),
            tf.TensorSpec([None], tf.int64, C.HIST_LEN)]


def save_toy_pinnerformer(path: str, scale: float) -> str:
    """SavedModel with serving_default (examples), embed_raw and item_embedding."""
    tf = _tf()
    proj = tf.constant(np.arange(6 * DIM, dtype=np.float32).reshape(6, DIM) / 10.0 - 1.0)

    class ToyPinnerFormer(tf.Module):  # type: ignore[name-defined]  # tf is imported lazily
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(float(scale), trainable=False)

        @tf.function(input_signature=_raw_specs(tf))
        def embed_raw(self, hist_item, hist_action, hist_surface, hist_ts, hist_duration,
                      hist_len):
            return {C.EMBEDDING: _embed(tf, self.scale, proj, hist_item, hist_action,
                                        hist_surface, hist_ts, hist_duration, hist_len)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, C.EXAMPLES)])
        def serving_default(self, examples):
            spec = {F.HIST_ITEM: tf.io.RaggedFeature(tf.int64),
                    F.HIST_ACTION: tf.io.RaggedFeature(tf.string),
                    F.HIST_SURFACE: tf.io.RaggedFeature(tf.string),
                    F.HIST_TS: tf.io.RaggedFeature(tf.int64),
                    F.HIST_DURATION: tf.io.RaggedFeature(tf.float32)}
            parsed = tf.io.parse_example(examples, spec)
            recent = {k: v[:, -SEQ_LEN:] for k, v in parsed.items()}  # newest L, oldest first
            lens = recent[F.HIST_ITEM].row_lengths()
            pads = {F.HIST_ITEM: C.PAD_ITEM, F.HIST_ACTION: C.PAD_STRING,
                    F.HIST_SURFACE: C.PAD_STRING, F.HIST_TS: C.PAD_INT,
                    F.HIST_DURATION: C.PAD_FLOAT}
            dense = {k: v.to_tensor(pads[k], shape=[None, SEQ_LEN]) for k, v in recent.items()}
            return {C.EMBEDDING: _embed(tf, self.scale, proj, dense[F.HIST_ITEM],
                                        dense[F.HIST_ACTION], dense[F.HIST_SURFACE],
                                        dense[F.HIST_TS], dense[F.HIST_DURATION], lens)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, C.ITEM_ID)])
        def item_embedding(self, item_id):
            k = tf.range(1, DIM + 1, dtype=tf.float32)[None, :]
            return {C.EMBEDDING: tf.tanh(tf.cast(item_id, tf.float32)[:, None] * k
                                         * self.scale / 1000.0)}

    m = ToyPinnerFormer()
    tf.saved_model.save(m, path, signatures={C.SERVING_DEFAULT: m.serving_default,
                                             C.EMBED_RAW: m.embed_raw,
                                             C.ITEM_EMBEDDING: m.item_embedding})
    return path


def save_toy_ranker(path: str, scale: float) -> str:
    """SavedModel with the ranker's `rank` contract (models/realtime/serving_model.py): one
    request's context (history [1, L], request_ts, surface, pf_embedding [1, D], pf_present)
    + cand_item [N] -> one score per head ([N] each)."""
    tf = _tf()

    class ToyRanker(tf.Module):  # type: ignore[name-defined]
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(float(scale), trainable=False)

        @tf.function(input_signature=[
            tf.TensorSpec([1, None], tf.int64, F.HIST_ITEM),
            tf.TensorSpec([1, None], tf.string, F.HIST_ACTION),
            tf.TensorSpec([1, None], tf.int64, F.HIST_TS),
            tf.TensorSpec([1], tf.int64, C.HIST_LEN),
            tf.TensorSpec([1], tf.int64, F.REQUEST_TS),
            tf.TensorSpec([1], tf.string, F.SURFACE),
            tf.TensorSpec([1, None], tf.float32, F.PF_EMBEDDING),
            tf.TensorSpec([1], tf.int64, F.PF_PRESENT),
            tf.TensorSpec([None], tf.int64, F.CAND_ITEM)])
        def rank(self, hist_item, hist_action, hist_ts, hist_len, request_ts, surface,
                 pf_embedding, pf_present, cand_item):
            mask = tf.sequence_mask(hist_len, tf.shape(hist_item)[1], tf.float32)
            recent = tf.reduce_sum(tf.cast(hist_item, tf.float32) * mask) / 100.0
            pf = tf.reduce_sum(pf_embedding) * tf.cast(pf_present[0], tf.float32)
            age = tf.cast(request_ts[0] - tf.reduce_max(hist_ts), tf.float32) / 1e4
            user = self.scale * (recent + pf - age)
            logits = tf.tanh(tf.cast(cand_item, tf.float32) / 50.0) * user
            return {head: tf.sigmoid(logits * (i + 1)) for i, head in enumerate(C.RANK_HEADS)}

    m = ToyRanker()
    tf.saved_model.save(m, path, signatures={C.RANK: m.rank})
    return path


def push_version(src: str, model_base: str, version: int) -> str:
    """Copies a SavedModel dir to <model_base>/<version>/ like the TFX Pusher: every other file
    first, saved_model.pb last (non-atomically), so a polling server must cope with a version
    dir that is not complete yet."""
    dst = os.path.join(model_base, str(version))
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for f in files:
            if not (rel == "." and f == "saved_model.pb"):
                shutil.copyfile(os.path.join(root, f), os.path.join(dst, rel, f))
    shutil.copyfile(os.path.join(src, "saved_model.pb"), os.path.join(dst, "saved_model.pb"))
    return dst


def toy_history(batch: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random but valid embed_raw inputs ([batch, SEQ_LEN], padded after hist_len)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, SEQ_LEN + 1, size=batch).astype(np.int64)
    mask = np.arange(SEQ_LEN)[None, :] < lens[:, None]
    actions = np.array([a.encode() for a in F.ACTIONS], dtype=object)
    surfaces = np.array([s.encode() for s in F.SURFACES], dtype=object)
    return {
        F.HIST_ITEM: np.where(mask, rng.integers(0, 1000, (batch, SEQ_LEN)), C.PAD_ITEM
                              ).astype(np.int64),
        F.HIST_ACTION: np.where(mask, actions[rng.integers(0, len(actions), (batch, SEQ_LEN))],
                                C.PAD_STRING).astype(object),
        F.HIST_SURFACE: np.where(mask, surfaces[rng.integers(0, len(surfaces),
                                                             (batch, SEQ_LEN))],
                                 C.PAD_STRING).astype(object),
        F.HIST_TS: np.where(mask, rng.integers(1_600_000_000, 1_700_000_000, (batch, SEQ_LEN)),
                            C.PAD_INT).astype(np.int64),
        F.HIST_DURATION: np.where(mask, rng.uniform(0, 60, (batch, SEQ_LEN)), C.PAD_FLOAT
                                  ).astype(np.float32),
        C.HIST_LEN: lens,
    }
