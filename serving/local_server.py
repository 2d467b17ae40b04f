"""Development stand-in for TensorFlow Serving (tensorflow_model_server) where docker is absent.

Serves the SavedModels the TFX Pusher writes (`<base>/<model>/<version>/saved_model.pb`) over the
same gRPC API as TF Serving, so the client, the CLI and tests exercise the production protocol:

* PredictionService.Predict / GetModelMetadata (Classify, Regress, MultiInference: UNIMPLEMENTED)
* ModelService.GetModelStatus (HandleReloadConfigRequest: UNIMPLEMENTED)

Model lifecycle mirrors TF Serving's file-system source with the availability-preserving policy:
versions are discovered by polling, a new version is loaded fully before it is published (an
atomic swap of the version table), old versions leave the table only once a newer aspired one is
serving, and an unloaded version is released after its in-flight requests finish. A version whose
load fails (e.g. `saved_model.pb` caught mid-copy) is retried on later polls, like TF Serving's
load retries. Error codes follow TF Serving (INVALID_ARGUMENT for bad inputs, FAILED_PRECONDITION
for an unknown signature, NOT_FOUND for unknown models/versions) except that a configured model
with no loaded version answers UNAVAILABLE: TF Serving would not have opened its port yet, which
a client also sees as UNAVAILABLE.

Model warmup as TF Serving's --enable_model_warmup (on by default, as there): a version's
`assets.extra/tf_serving_warmup_requests` (serving/warmup.py) is replayed after the load and
before the version is published; a failing request fails the load, so the previous version keeps
serving.

Optional batching mirrors TF Serving's batching session: concurrent Predict calls for the same
model version and signature are concatenated along dim 0, padded to `allowed_batch_sizes`, run
once and split, with the same request constraints (equal dim 0 across inputs, task size <=
max_batch_size, equal inner shapes within a batch, a full queue answers UNAVAILABLE). With
--enable_per_model_batching_parameters only versions carrying their own batching_params.pbtxt are
batched (the pinnerformer export does; the ranker does not), as in the production deployment.

Not a production server: Python, one process, no REST API, no config reload. It binds 127.0.0.1
(loopback) unless --host says otherwise, and has no TLS or authentication.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import grpc
import numpy as np

# No TensorFlow at module level: `pinrank --help` builds its parser from add_serve_arguments.
from pinrank.serving import constants as C
from pinrank.serving.configs import BatchingParameters, load_batching_parameters, load_model_server_config

log = logging.getLogger("pinrank.serving.local_server")

DESCRIPTION = (
    "Development stand-in for TensorFlow Serving where docker is absent: serves the pipeline's "
    "SavedModels over TF Serving's gRPC API (PredictionService Predict/GetModelMetadata, "
    "ModelService GetModelStatus) with version polling, atomic version swaps and optional "
    "batching. Production runs the tensorflow/serving:2.16.1-gpu image with the configs in "
    "serving/deploy.")


class RequestError(Exception):
    """A request the server refuses: becomes a gRPC status (never a crash)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


_GRPC_BY_NUMBER = {sc.value[0]: sc for sc in grpc.StatusCode}


# ------------------------------------------------------------------------------ servables


def signature_defs(path: str) -> Dict[str, Any]:
    """SignatureDefs of the 'serve' MetaGraph, exactly as saved_model.pb lists them (read
    without loading TF functions; also the daily job's and the benchmarks' reader)."""
    from tensorflow.python.saved_model import loader_impl

    saved = loader_impl.parse_saved_model(path)
    for mg in saved.meta_graphs:
        if "serve" in mg.meta_info_def.tags:
            return dict(mg.signature_def)
    raise ValueError(f"{path}: no MetaGraph tagged 'serve'")


class Servable:
    """One loaded model version: its callable signatures and their SignatureDefs."""

    def __init__(self, model: str, version: int, path: str, per_model_batching: bool = False,
                 warmup: bool = False):
        import tensorflow as tf

        from pinrank.serving import warmup as W

        self.model, self.version, self.path = model, version, path
        # --enable_per_model_batching_parameters: the version's own batching_params.pbtxt
        # decides whether (and how) it is batched; a bad file fails the load, as in TF Serving.
        self.batching: Optional[BatchingParameters] = None
        own = os.path.join(path, C.PER_MODEL_BATCHING_FILE)
        if per_model_batching and os.path.exists(own):
            self.batching = load_batching_parameters(own)
        self.signature_defs = signature_defs(path)
        self._loaded = tf.saved_model.load(path, tags=["serve"])
        self.functions = dict(self._loaded.signatures)
        if warmup:  # W.WarmupError fails the load, as in TF Serving
            requests = W.read(path)
            if requests:
                W.replay(self, requests)
                log.info("%s v%d: replayed %d warmup requests", model, version, len(requests))

    def run(self, signature: str, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import tensorflow as tf

        try:
            out = self.functions[signature](**{k: tf.constant(v) for k, v in feed.items()})
        except tf.errors.OpError as e:  # the model rejected the values: TF's own status code
            raise RequestError(_GRPC_BY_NUMBER.get(e.error_code, grpc.StatusCode.INTERNAL),
                               e.message) from None
        return {k: v.numpy() for k, v in out.items()}


class _Version:
    """A published version plus its in-flight request count; released when retired and idle."""

    def __init__(self, servable: Servable):
        self.servable: Optional[Servable] = servable
        self.inflight = 0
        self.retired = False


@dataclasses.dataclass
class _State:
    state: str  # ModelVersionStatus.State name
    error_code: int = 0  # tensorflow.error.Code
    error_message: str = ""


@dataclasses.dataclass
class ModelSource:
    """Where a model's versions live and which of them to serve (TF Serving's version policy:
    latest N, all, or specific versions) plus its version labels."""
    name: str
    base_path: str
    latest: Optional[int] = C.NUM_VERSIONS
    specific: Tuple[int, ...] = ()
    labels: Dict[str, int] = dataclasses.field(default_factory=dict)

    def aspired(self, on_disk: Sequence[int]) -> List[int]:
        if self.specific:
            return sorted(set(on_disk) & set(self.specific))
        if self.latest is None:  # "all"
            return sorted(on_disk)
        return sorted(on_disk)[-self.latest:]


class _Model:
    def __init__(self, source: ModelSource):
        self.source = source
        self.versions: Dict[int, _Version] = {}  # published table, replaced on every swap
        self.states: Dict[int, _State] = {}
        self.load_attempts: Dict[int, Tuple[int, Tuple[int, int]]] = {}
        self.warned_missing = False


def _versions_on_disk(base_path: str) -> List[int]:
    """Numeric version dirs that hold a saved_model.pb(.txt). AtomicPusher renames a complete
    copy into place (components/atomic_pusher.py); with another writer that copies in place, a
    version may be seen early, and then fails to load and is retried (as in TF Serving)."""
    try:
        names = os.listdir(base_path)
    except OSError:
        return []
    out = []
    for n in names:
        if n.isdigit() and any(os.path.isfile(os.path.join(base_path, n, f))
                               for f in ("saved_model.pb", "saved_model.pbtxt")):
            out.append(int(n))
    return sorted(out)


def _fingerprint(path: str) -> Tuple[int, int]:
    for f in ("saved_model.pb", "saved_model.pbtxt"):
        try:
            st = os.stat(os.path.join(path, f))
            return st.st_mtime_ns, st.st_size
        except OSError:
            continue
    return 0, 0


class ModelManager:
    """Tracks, loads, swaps and releases model versions (thread-safe).

    `model_root` (optional): every sub-directory is a model, rescanned on each poll, so models
    pushed for the first time after start-up are picked up too."""

    def __init__(self, sources: Sequence[ModelSource] = (), model_root: Optional[str] = None,
                 num_versions: int = C.NUM_VERSIONS, max_load_retries: int = 5,
                 per_model_batching: bool = False, enable_model_warmup: bool = True):
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._models: Dict[str, _Model] = {s.name: _Model(s) for s in sources}
        self._model_root = model_root
        self._num_versions = num_versions
        self._max_load_retries = max_load_retries
        self._per_model_batching = per_model_batching
        self._warmup = enable_model_warmup
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- polling

    def poll_once(self) -> None:
        """One pass of the file-system source: discover, load, publish, retire."""
        with self._poll_lock:
            if self._model_root is not None:
                self._discover_models()
            for model in list(self._models.values()):
                try:
                    self._sync(model)
                except Exception:  # one broken model must not stop the others
                    log.exception("polling %s failed", model.source.name)

    def _discover_models(self) -> None:
        try:
            names = sorted(os.listdir(self._model_root))
        except OSError as e:
            log.warning("cannot list model root %s: %s", self._model_root, e)
            return
        for n in names:
            path = os.path.join(self._model_root, n)
            if os.path.isdir(path) and not n.startswith(".") and n not in self._models:
                log.info("found model %s at %s", n, path)
                with self._lock:
                    self._models[n] = _Model(ModelSource(n, path, latest=self._num_versions))

    def _sync(self, model: _Model) -> None:
        src = model.source
        on_disk = _versions_on_disk(src.base_path)
        if not on_disk and not model.warned_missing:
            log.warning("no versions of %s found under %s", src.name, src.base_path)
            model.warned_missing = True
        aspired = src.aspired(on_disk)
        for v in sorted(aspired, reverse=True):  # newest first: it serves as soon as it is up
            if v not in model.versions and self._should_try(model, v):
                self._load(model, v)
        with self._lock:
            if aspired and not any(v in aspired for v in model.versions):
                return  # availability preserving: keep what serves until a replacement does
            for v in [v for v in model.versions if v not in aspired]:
                self._retire_locked(model, v)

    def _should_try(self, model: _Model, v: int) -> bool:
        attempts, fp = model.load_attempts.get(v, (0, (0, 0)))
        if attempts == 0:
            return True
        now_fp = _fingerprint(os.path.join(model.source.base_path, str(v)))
        # A changed saved_model.pb (a copy finished) earns a fresh try; otherwise bounded retries.
        return now_fp != fp or attempts < self._max_load_retries

    def _load(self, model: _Model, v: int) -> None:
        name, path = model.source.name, os.path.join(model.source.base_path, str(v))
        with self._lock:
            model.states[v] = _State("LOADING")
        fp = _fingerprint(path)
        t0 = time.monotonic()
        try:
            servable = Servable(name, v, path, self._per_model_batching, self._warmup)
        except Exception as e:
            attempts = model.load_attempts.get(v, (0, fp))[0] + 1
            model.load_attempts[v] = (attempts, fp)
            log.warning("loading %s v%d failed (attempt %d): %s", name, v, attempts, e)
            with self._lock:
                model.states[v] = _State("END", 2, f"load failed: {e}")  # 2 = UNKNOWN
            return
        model.load_attempts.pop(v, None)
        with self._lock:
            table = dict(model.versions)
            table[v] = _Version(servable)
            model.versions = table  # atomic publish: readers see the old or the new table
            model.states[v] = _State("AVAILABLE")
        log.info("loaded %s v%d in %.2f s", name, v, time.monotonic() - t0)

    def _retire_locked(self, model: _Model, v: int) -> None:
        table = dict(model.versions)
        entry = table.pop(v)
        model.versions = table
        entry.retired = True
        model.states[v] = _State("UNLOADING")
        log.info("unloading %s v%d (%d in flight)", model.source.name, v, entry.inflight)
        if entry.inflight == 0:
            self._release_locked(model, v, entry)

    def _release_locked(self, model: _Model, v: int, entry: _Version) -> None:
        entry.servable = None  # drops the last reference: TF frees the version's resources
        model.states[v] = _State("END")

    def start(self, poll_wait_seconds: float) -> None:
        """Polls every `poll_wait_seconds` (0: never again, as in TF Serving)."""
        if poll_wait_seconds <= 0 or self._thread is not None:
            return

        def loop():
            while not self._stop.wait(poll_wait_seconds):
                self.poll_once()

        self._thread = threading.Thread(target=loop, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- request side

    @contextlib.contextmanager
    def acquire(self, name: str, version: Optional[int] = None,
                label: Optional[str] = None) -> Iterator[Servable]:
        """The servable for a request (pinned version, label, or latest), held until the
        request finishes so a concurrent swap cannot release it underneath."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                req = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: {req}")
            if label:
                if label not in model.source.labels:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"Unrecognized servable version label: {label}")
                version = model.source.labels[label]
            if version is not None:
                entry = model.versions.get(version)
                if entry is None:
                    raise RequestError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: Specific({name}, "
                                       f"{version})")
            else:
                if not model.versions:
                    raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                       f"Servable {name} has no loaded version yet")
                version = max(model.versions)
                entry = model.versions[version]
            entry.inflight += 1
            servable = entry.servable
        try:
            yield servable
        finally:
            with self._lock:
                entry.inflight -= 1
                if entry.retired and entry.inflight == 0 and entry.servable is not None:
                    self._release_locked(model, version, entry)

    def status(self, name: str, version: Optional[int] = None) -> List[Tuple[int, _State]]:
        with self._lock:
            model = self._models.get(name)
            if model is None or not model.states:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            if version is not None:
                if version not in model.states:
                    raise RequestError(grpc.StatusCode.NOT_FOUND,
                                       f"Could not find version {version} of model {name}")
                return [(version, dataclasses.replace(model.states[version]))]
            return [(v, dataclasses.replace(s)) for v, s in sorted(model.states.items(),
                                                                   reverse=True)]

    def version_for_label(self, name: str, label: str) -> int:
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            if label not in model.source.labels:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {label}")
            return model.source.labels[label]

    def model_names(self) -> List[str]:
        with self._lock:
            return sorted(self._models)


# ------------------------------------------------------------------------------ batching


class _Task:
    def __init__(self, feed: Dict[str, np.ndarray], size: int):
        self.feed, self.size = feed, size
        self.result: Optional[Dict[str, np.ndarray]] = None
        self.error: Optional[RequestError] = None
        self.done = threading.Event()


class _Batch:
    def __init__(self):
        self.tasks: List[_Task] = []
        self.size = 0
        self.closed = threading.Event()


class _Queue:
    def __init__(self):
        self.lock = threading.Lock()
        self.open: Optional[_Batch] = None
        self.pending = 0  # batches formed (open or waiting for a thread), not yet running


class BatchScheduler:
    """Server-side batching with TF Serving's semantics: one queue per (model, version,
    signature), `num_batch_threads` batches running at once across all queues. The first task
    of a batch leads it: it waits up to the timeout (or until the batch is full), then for a
    batch thread, and runs the batch; later tasks just wait for their slice.

    `per_model`: TF Serving's --enable_per_model_batching_parameters. Only versions with their
    own batching_params.pbtxt are batched, with those parameters; the global ones only size the
    shared thread pool. Others run unbatched (e.g. the ranker, whose `rank` request is already a
    batch of candidates with a 1-row user context)."""

    def __init__(self, params: BatchingParameters, per_model: bool = False):
        self.params, self.per_model = params, per_model
        self._threads = threading.BoundedSemaphore(params.num_batch_threads or os.cpu_count() or 1)
        self._queues: Dict[Tuple[str, int, str], _Queue] = {}
        self._queues_lock = threading.Lock()

    def run(self, servable: Servable, signature: str,
            feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        params = servable.batching if self.per_model else self.params
        if params is None:
            return servable.run(signature, feed)
        # Defaults of TF Serving's BasicBatchScheduler options where the file leaves a knob out.
        max_batch_size = params.max_batch_size or 1000
        sizes = {k: (v.shape[0] if v.ndim else None) for k, v in feed.items()}
        if any(s is None for s in sizes.values()):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "Batching session Run() input tensors must have at least one "
                               "dimension")
        if len(set(sizes.values())) > 1:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "Batching session Run() input tensors must have equal "
                               f"0th-dimension size: {sizes}")
        n = next(iter(sizes.values()), 0)
        if n == 0:
            return servable.run(signature, feed)
        if n > max_batch_size:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Task size {n} is larger than maximum input batch size "
                               f"{max_batch_size}")
        key = (servable.model, servable.version, signature)
        with self._queues_lock:
            q = self._queues.setdefault(key, _Queue())
        task = _Task(feed, n)
        with q.lock:
            batch = q.open
            if batch is not None and batch.size + n > max_batch_size:
                q.open = None  # full for this task: its leader runs it as it is
                batch.closed.set()
                batch = None
            leader = batch is None
            if leader:
                if q.pending >= (params.max_enqueued_batches or 10):
                    raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                       "The batch scheduling queue to which this task was "
                                       "submitted is full")
                batch = _Batch()
                q.open = batch
                q.pending += 1
            batch.tasks.append(task)
            batch.size += n
            if batch.size >= max_batch_size:
                q.open = None
                batch.closed.set()
        if leader:
            batch.closed.wait((params.batch_timeout_micros or 0) / 1e6)
            with self._threads:  # the batch keeps filling while it waits for a thread
                with q.lock:
                    if q.open is batch:
                        q.open = None
                    q.pending -= 1
                self._execute(servable, signature, batch, params.allowed_batch_sizes)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def _execute(self, servable: Servable, signature: str, batch: _Batch,
                 allowed_batch_sizes: Sequence[int]) -> None:
        tasks = batch.tasks
        try:
            merged = {}
            for name in tasks[0].feed:
                parts = [t.feed[name] for t in tasks]
                if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
                    raise RequestError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Tensors with name '{name}' from different tasks have different shapes "
                        "and padding is turned off. Set pad_variable_length_inputs to true, or "
                        "ensure that all tensors with the same name have equal dimensions "
                        "starting with the first dim.")
                merged[name] = np.concatenate(parts, axis=0)
            total = sum(t.size for t in tasks)
            padded = next((s for s in allowed_batch_sizes if s >= total), total)
            if padded > total:  # pad with copies of the first row, as TF Serving does
                merged = {k: np.concatenate([v, np.repeat(v[:1], padded - total, axis=0)])
                          for k, v in merged.items()}
            outputs = servable.run(signature, merged)
            for k, v in outputs.items():
                if v.ndim == 0 or v.shape[0] != padded:
                    raise RequestError(grpc.StatusCode.INTERNAL,
                                       f"Batched output tensor '{k}' has shape {list(v.shape)}; "
                                       f"its 0th dimension must equal the batch size {padded}")
            offset = 0
            for t in tasks:
                t.result = {k: v[offset:offset + t.size] for k, v in outputs.items()}
                offset += t.size
        except RequestError as e:
            for t in tasks:
                t.error = e
        except Exception as e:
            log.exception("batch of %s failed", servable.model)
            for t in tasks:
                t.error = RequestError(grpc.StatusCode.INTERNAL, f"batch failed: {e}")
        finally:
            for t in tasks:
                t.done.set()


# ------------------------------------------------------------------------------ gRPC services


def check_inputs(sig_def, request_inputs) -> Dict[str, np.ndarray]:
    """Request tensors -> numpy, validated against the SignatureDef (names, dtype, shape)."""
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    expected, sent = set(sig_def.inputs), set(request_inputs)
    if expected != sent:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{', '.join(sorted(sent))}}}) != len({{{', '.join(sorted(expected))}}}). "
            f"Sent extra: {{{', '.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{', '.join(sorted(expected - sent))}}}.")
    feed = {}
    for name, proto in request_inputs.items():
        info = sig_def.inputs[name]
        if proto.dtype != info.dtype:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{name}': expects dtype "
                               f"{types_pb2.DataType.Name(info.dtype)} but got "
                               f"{types_pb2.DataType.Name(proto.dtype)}")
        try:
            arr = tf.make_ndarray(proto)
        except Exception as e:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"tensor parsing error: {name}: {e}") from None
        shape = info.tensor_shape
        if not shape.unknown_rank:
            want = [d.size for d in shape.dim]
            if len(want) != arr.ndim or any(w >= 0 and w != g for w, g in zip(want, arr.shape)):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input '{name}': expects shape {want} (-1: any) but got "
                                   f"{list(arr.shape)}")
        feed[name] = arr
    return feed


def _guard(method):
    """RequestError -> its status; anything unexpected -> INTERNAL (logged), never a crash."""

    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except RequestError as e:
            context.abort(e.code, e.message)
        except Exception as e:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    wrapper.__name__ = method.__name__
    return wrapper


def _model_spec_version(request) -> Tuple[Optional[int], Optional[str]]:
    # As TF Serving: only an absent model_spec is INVALID_ARGUMENT; an empty name is looked up
    # like any other and answers NOT_FOUND.
    if not request.HasField("model_spec"):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    return version, (spec.version_label or None)


def _unimplemented(name: str):
    def method(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      f"{name} is not supported by the local development server "
                      "(use TF Serving)")

    method.__name__ = name
    return method


def _make_servicers(manager: ModelManager, scheduler: Optional[BatchScheduler]):
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        Classify = _unimplemented("Classify")
        Regress = _unimplemented("Regress")
        MultiInference = _unimplemented("MultiInference")

        @_guard
        def Predict(self, request, context):
            import tensorflow as tf

            spec = request.model_spec
            version, label = _model_spec_version(request)
            signature = spec.signature_name or C.SERVING_DEFAULT
            with manager.acquire(spec.name, version, label) as servable:
                sig_def = servable.signature_defs.get(signature)
                if sig_def is None or signature not in servable.functions:
                    raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                       f'Serving signature key "{signature}" not found.')
                feed = check_inputs(sig_def, request.inputs)
                wanted = list(request.output_filter) or list(sig_def.outputs)
                unknown = [o for o in wanted if o not in sig_def.outputs]
                if unknown:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"output tensor alias not found in signature: {unknown[0]} "
                                       f"Outputs expected to be in the set "
                                       f"{{{','.join(sorted(sig_def.outputs))}}}.")
                outputs = (scheduler.run(servable, signature, feed) if scheduler is not None
                           else servable.run(signature, feed))
                resp = predict_pb2.PredictResponse()
                resp.model_spec.name = spec.name
                resp.model_spec.version.value = servable.version
                resp.model_spec.signature_name = signature
                for name in wanted:
                    resp.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
                return resp

        @_guard
        def GetModelMetadata(self, request, context):
            spec = request.model_spec
            version, label = _model_spec_version(request)
            if not request.metadata_field:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one "
                                   "metadata_field")
            for field in request.metadata_field:
                if field != C.SIGNATURE_DEF_FIELD:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"Metadata field {field} is not supported")
            with manager.acquire(spec.name, version, label) as servable:
                resp = get_model_metadata_pb2.GetModelMetadataResponse()
                resp.model_spec.name = spec.name
                resp.model_spec.version.value = servable.version
                sdm = get_model_metadata_pb2.SignatureDefMap()
                for k, v in servable.signature_defs.items():
                    sdm.signature_def[k].CopyFrom(v)
                resp.metadata[C.SIGNATURE_DEF_FIELD].Pack(sdm)
                return resp

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        HandleReloadConfigRequest = _unimplemented("HandleReloadConfigRequest")

        @_guard
        def GetModelStatus(self, request, context):
            version, label = _model_spec_version(request)
            if label:
                version = manager.version_for_label(request.model_spec.name, label)
            resp = get_model_status_pb2.GetModelStatusResponse()
            state_value = get_model_status_pb2.ModelVersionStatus.State.Value
            for v, st in manager.status(request.model_spec.name, version):
                entry = resp.model_version_status.add()
                entry.version = v
                entry.state = state_value(st.state)
                entry.status.error_code = st.error_code
                entry.status.error_message = st.error_message
            return resp

    return PredictionService(), ModelService()


# ------------------------------------------------------------------------------ server


def sources_from_model_config(config, base_path_prefix: Optional[str] = None) -> List[ModelSource]:
    """ModelServerConfig (or a models.config path) -> ModelSources. `base_path_prefix` remaps
    the container root (/models) to a local directory."""
    if isinstance(config, (str, os.PathLike)):
        config = load_model_server_config(os.fspath(config))
    out = []
    for m in config.model_config_list.config:
        base = m.base_path
        if base_path_prefix:
            root = C.CONTAINER_MODEL_ROOT
            if base == root or base.startswith(root + "/"):
                base = os.path.join(base_path_prefix, base[len(root):].lstrip("/"))
        policy = m.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        out.append(ModelSource(
            name=m.name, base_path=base,
            latest=(None if kind in ("all", "specific") else
                    policy.latest.num_versions if kind == "latest" else 1),  # TF Serving default
            specific=tuple(policy.specific.versions) if kind == "specific" else (),
            labels=dict(m.version_labels)))
    return out


@dataclasses.dataclass
class ServerHandle:
    """A running local server: `.port`, `.target`, `.stop()`."""
    host: str
    port: int
    manager: ModelManager
    _server: Any

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: Optional[float] = 1.0) -> None:
        """Stops accepting calls, lets in-flight ones finish for `grace` s, stops polling."""
        self._server.stop(grace).wait()
        self.manager.stop()

    def wait(self) -> None:
        self._server.wait_for_termination()


def serve(model_base_path: Optional[str] = None, model_config_file: Optional[str] = None,
          model_config=None, base_path_prefix: Optional[str] = None, host: str = "127.0.0.1",
          port: int = 0, file_system_poll_wait_seconds: float = 1.0,
          num_versions: int = C.NUM_VERSIONS, enable_batching: bool = False,
          batching_parameters: Optional[BatchingParameters] = None,
          per_model_batching: bool = False, max_workers: int = 32,
          max_load_retries: int = 5, max_message_bytes: int = 64 << 20,
          enable_model_warmup: bool = True) -> ServerHandle:
    """Starts the server and returns once it listens. Versions present at start are loaded
    first (as TF Serving does); later ones are picked up by polling.

    Pass exactly one of `model_base_path` (each sub-directory is a model served with
    latest-`num_versions`), `model_config_file` or `model_config` (a ModelServerConfig).
    `per_model_batching` (with `enable_batching`): only versions that carry their own
    batching_params.pbtxt are batched, as with TF Serving's
    --enable_per_model_batching_parameters. `enable_model_warmup`: replay each version's
    warmup file before publishing it (TF Serving's flag, on by default there too)."""
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    if sum(x is not None for x in (model_base_path, model_config_file, model_config)) != 1:
        raise ValueError("pass exactly one of model_base_path, model_config_file, model_config")
    if model_base_path is not None:
        manager = ModelManager(model_root=os.path.abspath(model_base_path),
                               num_versions=num_versions, max_load_retries=max_load_retries,
                               per_model_batching=per_model_batching and enable_batching,
                               enable_model_warmup=enable_model_warmup)
    else:
        manager = ModelManager(sources_from_model_config(model_config_file or model_config,
                                                         base_path_prefix),
                               max_load_retries=max_load_retries,
                               per_model_batching=per_model_batching and enable_batching,
                               enable_model_warmup=enable_model_warmup)
    manager.poll_once()
    scheduler = (BatchScheduler(batching_parameters or BatchingParameters(), per_model_batching)
                 if enable_batching else None)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                              thread_name_prefix="serving-rpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes),
                 ("grpc.so_reuseport", 0)])
    predict_svc, model_svc = _make_servicers(manager, scheduler)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(predict_svc, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_svc, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        manager.stop()
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    manager.start(file_system_poll_wait_seconds)
    log.info("serving %s on %s:%d (batching %s); %s", manager.model_names(), host, bound,
             ("per model" if per_model_batching else "on") if scheduler else "off",
             exposure(host))
    return ServerHandle(host, bound, manager, server)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The server's flags (TF Serving's names; dashed spellings accepted too)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model_base_path", "--model-base-path", metavar="DIR",
                     help="serving dir: every sub-directory is a model (<DIR>/<model>/<version>/)")
    src.add_argument("--model_config_file", "--model-config-file", metavar="FILE",
                     help="TF Serving ModelServerConfig text proto (e.g. serving/deploy/"
                          "models.config)")
    p.add_argument("--base_path_prefix", "--base-path-prefix", metavar="DIR",
                   help=f"with --model_config_file: replace the {C.CONTAINER_MODEL_ROOT} prefix "
                        "of base paths by this local directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1: loopback only). Any other address "
                        "exposes plaintext gRPC without authentication; see serving/deploy/"
                        "README.md, 'What is exposed'")
    p.add_argument("--port", type=int, default=C.GRPC_PORT,
                   help=f"gRPC port (default {C.GRPC_PORT}; 0 picks a free one)")
    p.add_argument("--file_system_poll_wait_seconds", "--file-system-poll-wait-seconds",
                   type=float, default=1.0, metavar="SECONDS",
                   help="poll for new versions this often (default 1; 0: only at start-up)")
    p.add_argument("--num_versions", "--num-versions", type=int, default=C.NUM_VERSIONS,
                   metavar="N",
                   help="with --model_base_path: versions kept loaded per model")
    p.add_argument("--enable_batching", "--enable-batching", action="store_true",
                   help="batch concurrent Predict calls like TF Serving's batching session")
    p.add_argument("--batching_parameters_file", "--batching-parameters-file", metavar="FILE",
                   help="BatchingParameters text proto (e.g. serving/deploy/"
                        "batching_parameters.config); implies --enable_batching")
    p.add_argument("--enable_per_model_batching_parameters",
                   "--enable-per-model-batching-parameters", action="store_true",
                   help=f"batch only model versions that carry their own "
                        f"{C.PER_MODEL_BATCHING_FILE} (with those parameters; the global file "
                        "then only sizes the batch thread pool), as TF Serving does")
    p.add_argument("--enable_model_warmup", "--enable-model-warmup", type=_flag_bool,
                   default=True, metavar="true|false",
                   help=f"replay each version's {C.WARMUP_DIR}/{C.WARMUP_FILE} before serving it; "
                        "a failing request fails the load (default true, as in TF Serving)")
    p.add_argument("--max_batch_size", "--max-batch-size", type=int,
                   help="override max_batch_size")
    p.add_argument("--batch_timeout_micros", "--batch-timeout-micros", type=int,
                   help="override batch_timeout_micros")
    p.add_argument("--grpc_max_threads", "--grpc-max-threads", type=int, default=32,
                   help="RPC worker threads (with batching, >= 2x max_batch_size for full "
                        "batches)")


def _flag_bool(value: str) -> bool:
    """TF Serving's boolean flag values."""
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure(host: str) -> str:
    """One line on who can reach the server: the stand-in has no TLS and no auth."""
    if is_loopback(host):
        return "loopback only (--host to change)"
    return (f"WARNING: bound to {host}, reachable from the network without TLS or "
            "authentication")


def serve_from_args(args: argparse.Namespace) -> int:
    """Runs the server until SIGINT/SIGTERM. Prints the bound port (useful with --port 0)."""
    params = (load_batching_parameters(args.batching_parameters_file)
              if args.batching_parameters_file else BatchingParameters())
    overrides = {k: getattr(args, k) for k in ("max_batch_size", "batch_timeout_micros")
                 if getattr(args, k) is not None}
    if overrides:
        params = dataclasses.replace(params, **overrides)
        if params.allowed_batch_sizes and params.max_batch_size is not None:
            # Keep the buckets valid for the new maximum (the last one must equal it).
            sizes = [s for s in params.allowed_batch_sizes if s < params.max_batch_size]
            params = dataclasses.replace(
                params, allowed_batch_sizes=tuple(sizes) + (params.max_batch_size,))
    enable_batching = args.enable_batching or bool(args.batching_parameters_file)
    if args.enable_per_model_batching_parameters and not enable_batching:
        raise SystemExit("--enable_per_model_batching_parameters needs --enable_batching (or "
                         "--batching_parameters_file), as in TF Serving")
    if args.base_path_prefix and not args.model_config_file:
        raise SystemExit("--base_path_prefix needs --model_config_file")
    handle = serve(model_base_path=args.model_base_path, model_config_file=args.model_config_file,
                   base_path_prefix=args.base_path_prefix, host=args.host, port=args.port,
                   file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
                   num_versions=args.num_versions,
                   enable_batching=enable_batching,
                   batching_parameters=params,
                   per_model_batching=args.enable_per_model_batching_parameters,
                   max_workers=args.grpc_max_threads,
                   enable_model_warmup=args.enable_model_warmup)
    print(f"local TF-Serving stand-in listening on {handle.target} "
          f"(models: {', '.join(handle.manager.model_names()) or 'none yet'}); "
          f"{exposure(args.host)}", flush=True)
    stopped = threading.Event()

    def on_signal(signum, frame):
        stopped.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    stopped.wait()
    handle.stop(grace=5.0)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)
    parser = argparse.ArgumentParser(prog="python -m pinrank.serving.local_server",
                                     description=DESCRIPTION)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    return serve_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
