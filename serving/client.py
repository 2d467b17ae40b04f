"""gRPC client for TF Serving's PredictionService / ModelService (and the local stand-in).

Every call carries a deadline; only UNAVAILABLE is retried (server starting, replica going
away, batching queue full: nothing ran, so a retry is safe and likely to succeed). Every other
failure (bad request, missing model, deadline exceeded, model error) is surfaced at once as a
ServingError carrying the gRPC status code and details, because retrying cannot fix it and a
DEADLINE_EXCEEDED retry would only multiply load on a slow server.
"""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pinrank.components.data import ranking_features as rf
from pinrank.pipeline import features as F
from pinrank.serving import constants as C


class ServingError(Exception):
    """A failed serving RPC: `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = "", attempts: int = 1):
        self.code = code
        self.details = details or ""
        self.method = method
        self.attempts = attempts
        super().__init__(f"{method} failed with {code.name} after {attempts} attempt(s): "
                         f"{self.details}")


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One entry of GetModelStatus: version, state name (AVAILABLE, LOADING, ...), error."""
    version: int
    state: str
    error_code: int = 0
    error_message: str = ""


RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


def to_tensor_proto(value: Any):
    """numpy/array-like -> TensorProto, keeping the array's dtype (no silent casts: a dtype the
    signature does not expect must fail on the server, not be coerced). str -> utf-8 bytes."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U" or (arr.dtype.kind == "O" and arr.size and
                                 any(isinstance(x, str) for x in arr.flat)):
        arr = np.vectorize(lambda s: s.encode("utf-8") if isinstance(s, str) else s,
                           otypes=[object])(arr)
    elif arr.dtype.kind == "S":
        arr = arr.astype(object)
    return tf.make_tensor_proto(arr)


def from_tensor_proto(proto) -> np.ndarray:
    return tf.make_ndarray(proto)


class ServingClient:
    """Blocking client. `timeout_s` is the deadline of each attempt; `retries` extra attempts
    are made on UNAVAILABLE only, with exponential backoff and jitter."""

    def __init__(self, target: str = C.DEFAULT_TARGET, timeout_s: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.05, max_backoff_s: float = 2.0,
                 max_message_bytes: int = 64 << 20, channel: Optional[grpc.Channel] = None,
                 sleep: Callable[[float], None] = time.sleep):
        if timeout_s <= 0 or retries < 0:
            raise ValueError("timeout_s must be > 0 and retries >= 0")
        self.target = target
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._sleep = sleep
        self._own_channel = channel is None
        if channel is None:
            options: List[Tuple[str, Any]] = [("grpc.max_receive_message_length", max_message_bytes),
                       ("grpc.max_send_message_length", max_message_bytes),
                       # Reconnect quickly after a refused connection, so retries on a server
                       # that is (re)starting succeed instead of failing fast in backoff.
                       ("grpc.initial_reconnect_backoff_ms", 100),
                       ("grpc.min_reconnect_backoff_ms", 100),
                       ("grpc.max_reconnect_backoff_ms", 1000)]
            if target.startswith("dns:"):  # headless Service: spread calls over all replicas
                options.append(("grpc.lb_policy_name", "round_robin"))
            channel = grpc.insecure_channel(target, options=options)
        self._channel = channel
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(channel)

    # -- plumbing

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> "ServingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, rpc, request):
        # Not gRPC's retryPolicy (service config + grpc.enable_retries): its deadline covers all
        # attempts (timeout_s here is per attempt), maxAttempts is capped at 5, its backoff is
        # U(0, b) (here b * U(0.5, 1)), a request over grpc.per_rpc_retry_buffer_size (256 KiB;
        # Predict batches often are) is never retried, a passed-in channel would lack it, and
        # ServingError could not report the attempts.
        attempt = 0
        while True:
            attempt += 1
            try:
                return rpc(request, timeout=self.timeout_s)
            except grpc.RpcError as e:
                code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
                details = e.details() if callable(getattr(e, "details", None)) else str(e)
                if code not in RETRYABLE or attempt > self.retries:
                    raise ServingError(code, details, method, attempt) from None
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                self._sleep(delay * random.uniform(0.5, 1.0))

    @staticmethod
    def _spec(spec, model: str, version: Optional[int], version_label: Optional[str] = None,
              signature: Optional[str] = None) -> None:
        spec.name = model
        if version is not None and version_label is not None:
            raise ValueError("pass version or version_label, not both")
        if version is not None:
            spec.version.value = int(version)
        if version_label is not None:
            spec.version_label = version_label
        if signature is not None:
            spec.signature_name = signature

    # -- PredictionService

    def predict_versioned(self, model: str, signature: str, inputs: Mapping[str, Any],
                          version: Optional[int] = None, version_label: Optional[str] = None,
                          output_filter: Sequence[str] = ()) -> Tuple[Dict[str, np.ndarray], int]:
        """Predict and also return the version that served the request."""
        req = predict_pb2.PredictRequest()
        self._spec(req.model_spec, model, version, version_label, signature)
        for name, value in inputs.items():
            req.inputs[name].CopyFrom(to_tensor_proto(value))
        req.output_filter.extend(output_filter)
        resp = self._call("Predict", self._predict.Predict, req)
        outputs = {k: from_tensor_proto(v) for k, v in resp.outputs.items()}
        return outputs, resp.model_spec.version.value

    def predict(self, model: str, signature: str, inputs: Mapping[str, Any],
                version: Optional[int] = None, version_label: Optional[str] = None,
                output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        """Runs `signature` of `model` (latest version unless pinned) on raw tensors."""
        return self.predict_versioned(model, signature, inputs, version, version_label,
                                      output_filter)[0]

    def predict_examples(self, model: str, serialized_examples: Sequence[Any],
                         signature: str = C.SERVING_DEFAULT, version: Optional[int] = None,
                         input_name: str = C.EXAMPLES) -> Dict[str, np.ndarray]:
        """Runs a tf.Example signature (DT_STRING [-1]); accepts bytes or tf.train.Example."""
        batch = np.array([e.SerializeToString() if hasattr(e, "SerializeToString") else bytes(e)
                          for e in serialized_examples], dtype=object)
        return self.predict(model, signature, {input_name: batch}, version)

    def retrieve_versioned(self, k: int, *, history: Optional[Mapping[str, Any]] = None,
                           embedding: Optional[Any] = None,
                           exclude: Optional[Sequence[Any]] = None, model: str = C.PINNERFORMER,
                           version: Optional[int] = None,
                           exclude_width: Optional[int] = C.RETRIEVE_EXCLUDE_WIDTH
                           ) -> Tuple[Dict[str, np.ndarray], int]:
        """Top-k catalogue items per user from the index inside the served PinnerFormer: one
        Predict on `retrieve` (history: embed_raw inputs [B, L], e.g. embed_request_from_events)
        or `retrieve_embedding` (embedding [B, D]); pass exactly one.

        exclude: None or one id list per row; those ids are never returned (pads and ids
        outside the catalogue are ignored). exclude_items is sent padded to `exclude_width`,
        so that concurrent requests can share a batch on a batching server; a row with more
        distinct ids sends that many and asks for k + the rest, which are then dropped here,
        so the result stays exact. exclude_width=None: the width of the longest list.
        Returns ({item_ids int64 [B, k], scores float32 [B, k], and embedding [B, D] with
        history}, served version); where fewer than k items are eligible the tail is
        C.PAD_ITEM with score -inf."""
        if (history is None) == (embedding is None):
            raise ValueError("retrieve: pass exactly one of history or embedding")
        if k < 1:
            raise ValueError(f"retrieve: k must be >= 1, got {k}")
        if history is not None:
            missing = [n for n in C.EMBED_RAW_INPUTS if n not in history]
            if missing:
                raise ValueError(f"retrieve: history is missing embed_raw inputs {missing}")
            signature, inputs = C.RETRIEVE, {n: history[n] for n in C.EMBED_RAW_INPUTS}
            batch = len(np.asarray(history[C.HIST_LEN]).reshape(-1))
        else:
            emb = np.asarray(embedding, np.float32)
            emb = emb[None, :] if emb.ndim == 1 else emb
            signature, inputs, batch = C.RETRIEVE_EMBEDDING, {C.EMBEDDING: emb}, emb.shape[0]
        if exclude is not None and len(exclude) != batch:
            raise ValueError(f"retrieve: exclude has {len(exclude)} id lists for {batch} users")
        rows = [np.zeros(0, np.int64) if exclude is None or exclude[r] is None else
                np.unique(np.asarray(exclude[r], np.int64).reshape(-1)) for r in range(batch)]
        rows = [x[x != C.PAD_ITEM] for x in rows]
        width = max([len(x) for x in rows] + [0]) if exclude_width is None else int(exclude_width)
        sent = np.full((batch, width), C.PAD_ITEM, np.int64)
        for r, x in enumerate(rows):
            sent[r, :min(len(x), width)] = x[:width]
        rest = [x[width:] for x in rows]
        inputs[C.EXCLUDE_ITEMS] = sent
        inputs[C.K] = np.array([k + len(x) for x in rest], np.int32)
        out, served = self.predict_versioned(model, signature, inputs, version)
        ids = np.full((batch, k), C.PAD_ITEM, np.int64)
        scores = np.full((batch, k), -np.inf, np.float32)
        # The server's width is max(k) of the rows it ran together (other requests' included).
        for r in range(batch):
            keep = ~np.isin(out[C.ITEM_IDS][r], rest[r])
            got_ids, got_scores = out[C.ITEM_IDS][r][keep][:k], out[C.SCORES][r][keep][:k]
            ids[r, :len(got_ids)], scores[r, :len(got_ids)] = got_ids, got_scores
        result: Dict[str, np.ndarray] = {C.ITEM_IDS: ids, C.SCORES: scores}
        if C.EMBEDDING in out:
            result[C.EMBEDDING] = out[C.EMBEDDING]
        return result, served

    def retrieve(self, k: int, *, history: Optional[Mapping[str, Any]] = None,
                 embedding: Optional[Any] = None, exclude: Optional[Sequence[Any]] = None,
                 model: str = C.PINNERFORMER, version: Optional[int] = None,
                 exclude_width: Optional[int] = C.RETRIEVE_EXCLUDE_WIDTH
                 ) -> Tuple[np.ndarray, np.ndarray, int]:
        """retrieve_versioned -> (item_ids int64 [B, k], scores float32 [B, k], version)."""
        out, served = self.retrieve_versioned(k, history=history, embedding=embedding,
                                              exclude=exclude, model=model, version=version,
                                              exclude_width=exclude_width)
        return out[C.ITEM_IDS], out[C.SCORES], served

    def metadata(self, model: str, version: Optional[int] = None) -> Dict[str, Any]:
        """Signature name -> tensorflow.SignatureDef (as TF Serving lists them, including
        `__saved_model_init_op`)."""
        req = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(req.model_spec, model, version)
        req.metadata_field.append(C.SIGNATURE_DEF_FIELD)
        resp = self._call("GetModelMetadata", self._predict.GetModelMetadata, req)
        any_msg = resp.metadata[C.SIGNATURE_DEF_FIELD]
        sdm = get_model_metadata_pb2.SignatureDefMap()
        if not any_msg.Unpack(sdm):
            raise ServingError(grpc.StatusCode.INTERNAL,
                               f"unexpected metadata type {any_msg.type_url!r}",
                               "GetModelMetadata")
        return dict(sdm.signature_def)

    # -- ModelService

    def status(self, model: str, version: Optional[int] = None) -> List[VersionStatus]:
        """GetModelStatus: every version the server tracks for `model` (newest first)."""
        req = get_model_status_pb2.GetModelStatusRequest()
        self._spec(req.model_spec, model, version)
        resp = self._call("GetModelStatus", self._models.GetModelStatus, req)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        out = [VersionStatus(s.version, state_name(s.state), int(s.status.error_code),
                             s.status.error_message) for s in resp.model_version_status]
        return sorted(out, key=lambda s: -s.version)

    def wait_until_available(self, model: str, version: Optional[int] = None,
                             timeout_s: float = 60.0, poll_s: float = 0.1) -> int:
        """Blocks until `model` (or `version` of it) is AVAILABLE; returns that version.
        NOT_FOUND and UNAVAILABLE mean "not yet" here (server or version still coming up)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            try:
                avail = [s.version for s in self.status(model, version) if s.state == "AVAILABLE"]
                if avail:
                    return max(avail)
                last = "no AVAILABLE version"
            except ServingError as e:
                if e.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
                last = f"{e.code.name}: {e.details}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{model}{'' if version is None else f' v{version}'} not "
                                   f"available after {timeout_s:.0f} s ({last})")
            time.sleep(poll_s)


def rank_request_inputs(history: Mapping[str, np.ndarray], candidates: Sequence[int], *,
                        request_ts: int, surface: str = "homefeed",
                        pf_embedding: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Inputs of the ranker's `rank` signature for ONE request (models/realtime/serving_model.py):
    the user's history (row 0 of an `embed_request_from_events` dict), request time and surface,
    the PinnerFormer embedding (None -> pf_present 0) and the candidate ids. The user side is
    sent once, not tiled per candidate: the model broadcasts it."""
    pf = (np.zeros((1, 1), np.float32) if pf_embedding is None
          else np.asarray(pf_embedding, np.float32).reshape(1, -1))
    return {
        F.HIST_ITEM: np.asarray(history[F.HIST_ITEM][:1], np.int64),
        F.HIST_ACTION: np.asarray(history[F.HIST_ACTION][:1], object),
        F.HIST_TS: np.asarray(history[F.HIST_TS][:1], np.int64),
        C.HIST_LEN: np.asarray(history[C.HIST_LEN][:1], np.int64),
        F.REQUEST_TS: np.array([request_ts], np.int64),
        F.SURFACE: np.array([surface], object),
        F.PF_EMBEDDING: pf,
        F.PF_PRESENT: np.array([0 if pf_embedding is None else 1], np.int64),
        F.CAND_ITEM: np.asarray(candidates, np.int64),
    }


def embed_request_from_events(events_df, user_id: Union[str, Sequence[str]], max_len: int,
                              now_ts: int) -> Dict[str, np.ndarray]:
    """`embed_raw` inputs from the canonical event log (user_id, item_id, action, timestamp,
    duration, surface): per user, the most recent `max_len` actions strictly before `now_ts`,
    oldest first (ties by item id, as EventExampleGen orders them), padded after `hist_len` to
    a fixed [B, max_len] so requests batch on the server. One row per user id given."""
    missing = [c for c in F.EVENT_COLUMNS if c not in events_df.columns]
    if missing:
        raise ValueError(f"events are missing columns {missing}")
    if max_len < 1:
        raise ValueError("max_len must be >= 1")
    users = [user_id] if isinstance(user_id, (str, bytes)) else list(user_id)
    ts_all = events_df["timestamp"].to_numpy(np.int64)
    items_all = events_df["item_id"].to_numpy(np.int64)
    uid_col = events_df["user_id"].to_numpy()
    actions, surfaces = events_df["action"].to_numpy(), events_df["surface"].to_numpy()
    durations = events_df["duration"].to_numpy(np.float32)
    before = ts_all < int(now_ts)
    hists = []
    for uid in users:
        sel = np.flatnonzero(before & (uid_col == uid))
        # Chronological, ties by item id; keep the newest max_len.
        idx = sel[np.lexsort((items_all[sel], ts_all[sel]))][-max_len:]
        hists.append({F.HIST_ITEM: items_all[idx], F.HIST_TS: ts_all[idx],
                      F.HIST_ACTION: actions[idx], F.HIST_SURFACE: surfaces[idx],
                      F.HIST_DURATION: durations[idx]})
    return rf.pad_histories(hists, max_len)
