"""Tiny SavedModels with the pinrank serving contract, and a Pusher-like copy, for tests and
local demos of the serving stack without running the pipeline.

The toy models are deterministic functions of their inputs scaled by a per-version `scale`, so a
test can tell which version answered and compare server results with an in-process call.
`run_load` drives a server with concurrent embed and rank clients (tests and
benchmarks/serving_load.py).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pinrank.components.data import ranking_features as rf
from pinrank.pipeline import features as F
from pinrank.serving import constants as C

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


def _newest(tf, x, hist_len, pad):
    """[B, W] rows padded after hist_len -> their SEQ_LEN newest entries [B, SEQ_LEN]."""
    x = tf.concat([x, tf.fill([tf.shape(x)[0], SEQ_LEN], tf.constant(pad, x.dtype))], axis=1)
    start = tf.maximum(hist_len - SEQ_LEN, 0)
    return tf.gather(x, start[:, None] + tf.range(SEQ_LEN, dtype=tf.int64)[None, :], batch_dims=1)


def save_toy_pinnerformer(path: str, scale: float, catalog=None) -> str:
    """SavedModel with serving_default (examples), embed_raw and item_embedding; with
    `catalog` (item ids) also retrieve / retrieve_embedding over those items (the export's
    contract, models/pinnerformer/retrieval.py), taking histories of any width."""
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
            dense = {k: v.to_tensor(rf.HIST_PADS[k], shape=[None, SEQ_LEN])
                     for k, v in recent.items()}
            return {C.EMBEDDING: _embed(tf, self.scale, proj, dense[F.HIST_ITEM],
                                        dense[F.HIST_ACTION], dense[F.HIST_SURFACE],
                                        dense[F.HIST_TS], dense[F.HIST_DURATION], lens)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, C.ITEM_ID)])
        def item_embedding(self, item_id):
            k = tf.range(1, DIM + 1, dtype=tf.float32)[None, :]
            return {C.EMBEDDING: tf.tanh(tf.cast(item_id, tf.float32)[:, None] * k
                                         * self.scale / 1000.0)}

    m = ToyPinnerFormer()
    signatures = {C.SERVING_DEFAULT: m.serving_default, C.EMBED_RAW: m.embed_raw,
                  C.ITEM_EMBEDDING: m.item_embedding}
    if catalog is not None:
        from pinrank.models.pinnerformer.retrieval import CatalogIndex

        ids = np.asarray(catalog, np.int64)
        m.index = CatalogIndex(ids, m.item_embedding(tf.constant(ids))[C.EMBEDDING].numpy())
        query = [tf.TensorSpec([None, None], tf.int64, C.EXCLUDE_ITEMS),
                 tf.TensorSpec([None], tf.int32, C.K)]

        @tf.function(input_signature=[
            tf.TensorSpec([None, None], s.dtype, s.name) for s in _raw_specs(tf)[:-1]]
            + [_raw_specs(tf)[-1]] + query)
        def retrieve(hist_item, hist_action, hist_surface, hist_ts, hist_duration, hist_len,
                     exclude_items, k):
            rows = [_newest(tf, x, hist_len, rf.HIST_PADS[n]) for x, n in zip(
                (hist_item, hist_action, hist_surface, hist_ts, hist_duration), rf.HIST_FEATURES)]
            emb = _embed(tf, m.scale, proj, *rows, tf.minimum(hist_len, SEQ_LEN))
            ids, scores = m.index.top_k(emb, exclude_items, k, C.PAD_ITEM)
            return {C.ITEM_IDS: ids, C.SCORES: scores, C.EMBEDDING: emb}

        @tf.function(input_signature=[tf.TensorSpec([None, DIM], tf.float32, C.EMBEDDING)]
                     + query)
        def retrieve_embedding(embedding, exclude_items, k):
            ids, scores = m.index.top_k(embedding, exclude_items, k, C.PAD_ITEM)
            return {C.ITEM_IDS: ids, C.SCORES: scores}

        signatures.update({C.RETRIEVE: retrieve, C.RETRIEVE_EMBEDDING: retrieve_embedding})
    tf.saved_model.save(m, path, signatures=signatures)
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


# ----------------------------------------------------------------------------- load


@dataclasses.dataclass
class LoadResult:
    """What `run_load` saw: one record per request, `(kind, start_s, end_s, version or None,
    error or None)` with times relative to the start, plus when each event finished."""
    records: List[Tuple[str, float, float, Optional[int], Optional[str]]]
    event_done_s: List[float]
    wall_s: float
    held_s: float = 0.0  # client time spent waiting for the events (run_load's `tail`)

    @property
    def failures(self) -> List[str]:
        return [f"{k}: {e}" for k, _, _, _, e in self.records if e is not None]

    def latencies_ms(self, kind: Optional[str] = None) -> np.ndarray:
        return np.array([(t1 - t0) * 1e3 for k, t0, t1, _, e in self.records
                         if e is None and kind in (None, k)])

    def versions_started_after(self, t: float, kind: str) -> List[Optional[int]]:
        return [v for k, t0, _, v, _ in self.records if k == kind and t0 >= t]

    def summary(self) -> str:
        lines = []
        for kind in sorted({r[0] for r in self.records}) + [None]:
            lat = self.latencies_ms(kind)
            n = sum(1 for r in self.records if kind in (None, r[0]))
            failed = sum(1 for r in self.records if kind in (None, r[0]) and r[4] is not None)
            p50, p99 = (np.percentile(lat, 50), np.percentile(lat, 99)) if len(lat) else (
                float("nan"), float("nan"))
            lines.append(f"{kind or 'all':>6}: {n} requests, {failed} failed, p50 {p50:.1f} ms, "
                         f"p99 {p99:.1f} ms")
        lines.append(f"  wall: {self.wall_s:.1f} s, {len(self.records) / self.wall_s:.0f} req/s"
                     + (f", clients held {self.held_s:.1f} s for the events"
                        if self.held_s else ""))
        return "\n".join(lines)


def rank_inputs(candidates: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Valid `rank` inputs for the toy ranker: one request's context + `candidates` items."""
    h = toy_history(1, seed)
    rng = np.random.default_rng(seed)
    return {F.HIST_ITEM: h[F.HIST_ITEM], F.HIST_ACTION: h[F.HIST_ACTION],
            F.HIST_TS: h[F.HIST_TS], C.HIST_LEN: h[C.HIST_LEN],
            F.REQUEST_TS: np.array([1_700_000_000], np.int64),
            F.SURFACE: np.array([b"homefeed"], object),
            F.PF_EMBEDDING: rng.normal(size=(1, DIM)).astype(np.float32),
            F.PF_PRESENT: np.array([1], np.int64),
            F.CAND_ITEM: rng.integers(0, 1000, candidates).astype(np.int64)}


def run_load(target: str, clients: int, requests: int,
             events: Sequence[Tuple[float, Callable[[], None]]] = (),
             embed_batch: int = 8, rank_candidates: int = 50,
             timeout_s: float = 30.0, tail: float = 0.2) -> LoadResult:
    """`clients` threads, each with its own channel, send `requests` Predict calls each,
    alternating `embed` (pinnerformer embed_raw, `embed_batch` users) and `rank` (ranker rank,
    `rank_candidates` candidates), with no retries, so every non-OK status counts as a failure.
    `events`: (fraction of all requests done, action) run in order on the calling thread while
    the clients keep going, e.g. pushing a new version and removing the old one. The last
    `tail` of each client's requests waits until every event is done, so that however slowly
    an event runs (a model load on a busy machine), requests follow it (`held_s` says how long
    the clients waited)."""
    from pinrank.serving.client import ServingClient, ServingError  # TF import only when used

    embed_in, rank_in = toy_history(embed_batch, seed=1), rank_inputs(rank_candidates, seed=2)
    total = clients * requests
    records: List[Tuple[str, float, float, Optional[int], Optional[str]]] = []
    lock = threading.Lock()
    events_done = threading.Event()
    hold_at = int(requests * (1 - tail)) if events else requests
    held: List[float] = []
    t_start = time.monotonic()

    def worker(i: int) -> None:
        with ServingClient(target, timeout_s=timeout_s, retries=0) as client:
            for j in range(requests):
                if j == hold_at and not events_done.is_set():
                    t_hold = time.monotonic()
                    events_done.wait()
                    with lock:
                        held.append(time.monotonic() - t_hold)
                kind = ("embed", "rank")[(i + j) % 2]
                t0 = time.monotonic()
                version, err = None, None
                try:
                    if kind == "embed":
                        out, version = client.predict_versioned(C.PINNERFORMER, C.EMBED_RAW,
                                                                embed_in)
                        ok = out[C.EMBEDDING].shape == (embed_batch, DIM)
                    else:
                        out, version = client.predict_versioned(C.RANKER, C.RANK, rank_in)
                        ok = all(out[h].shape == (rank_candidates,) for h in C.RANK_HEADS)
                    if not ok:
                        err = f"wrong output shapes {({k: v.shape for k, v in out.items()})}"
                except ServingError as e:
                    err = f"{e.code.name}: {e.details}"
                t1 = time.monotonic()
                with lock:
                    records.append((kind, t0 - t_start, t1 - t_start, version, err))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    event_done = []
    try:
        for fraction, action in events:
            # never wait for more requests than the clients send before the hold
            while len(records) < min(fraction * total, clients * hold_at) and any(
                    t.is_alive() for t in threads):
                time.sleep(0.002)
            action()
            event_done.append(time.monotonic() - t_start)
    finally:
        events_done.set()
    for t in threads:
        t.join()
    return LoadResult(records, event_done, time.monotonic() - t_start, sum(held))


def wait_for_versions(target: str, model: str, available: Sequence[int],
                      gone: Sequence[int] = (), timeout_s: float = 60.0) -> None:
    """Blocks until every version in `available` is AVAILABLE and every one in `gone` has left
    the server (END or no longer listed)."""
    from pinrank.serving.client import ServingClient

    deadline = time.monotonic() + timeout_s
    with ServingClient(target) as client:
        while True:
            states = {s.version: s.state for s in client.status(model)}
            if (all(states.get(v) == "AVAILABLE" for v in available)
                    and all(states.get(v, "END") == "END" for v in gone)):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{model}: want {list(available)} AVAILABLE and "
                                   f"{list(gone)} gone, have {states}")
            time.sleep(0.02)
