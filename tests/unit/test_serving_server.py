"""The local TF-Serving stand-in end to end on 127.0.0.1: Predict parity with in-process calls,
metadata, status, version swaps under load, error codes, batching, config-file mode, CLI."""
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from pinrank.pipeline import features as F
from pinrank.serving import cli
from pinrank.serving import constants as C
from pinrank.serving import local_server as LS
from pinrank.serving import testing as T
from pinrank.serving.client import ServingClient, ServingError, to_tensor_proto
from pinrank.serving.configs import BatchingParameters

V1, V2, V3 = 1_700_000_000, 1_700_000_100, 1_700_000_200
pytestmark = pytest.mark.timeout(120)  # threads and sockets: a deadlock must fail, not hang


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """SavedModels built once: two pinnerformer versions (different scale) and a ranker."""
    root = tmp_path_factory.mktemp("store")
    return {"pf1": T.save_toy_pinnerformer(str(root / "pf1"), 1.0),
            "pf2": T.save_toy_pinnerformer(str(root / "pf2"), 2.0),
            "rk1": T.save_toy_ranker(str(root / "rk1"), 1.0)}


@pytest.fixture(scope="module")
def reference(store):
    """In-process signature functions of each stored version."""
    return {k: tf.saved_model.load(v).signatures for k, v in store.items()}


def _call(sigs, name, inputs):
    return {k: v.numpy() for k, v in sigs[name](**{n: tf.constant(x)
                                                    for n, x in inputs.items()}).items()}


@pytest.fixture
def servers():
    handles = []

    def start(**kw):
        kw.setdefault("port", 0)
        kw.setdefault("file_system_poll_wait_seconds", 0.1)
        h = LS.serve(**kw)
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.stop(grace=None)


@pytest.fixture
def serving_dir(tmp_path, store):
    root = tmp_path / "serving"
    T.push_version(store["pf1"], str(root / C.PINNERFORMER), V1)
    T.push_version(store["rk1"], str(root / C.RANKER), V1)
    return root


def _examples(hist):
    out = []
    for i in range(len(hist[C.HIST_LEN])):
        n = int(hist[C.HIST_LEN][i])
        ex = tf.train.Example()
        f = ex.features.feature
        f[F.HIST_ITEM].int64_list.value.extend(hist[F.HIST_ITEM][i, :n].tolist())
        f[F.HIST_ACTION].bytes_list.value.extend(hist[F.HIST_ACTION][i, :n].tolist())
        f[F.HIST_SURFACE].bytes_list.value.extend(hist[F.HIST_SURFACE][i, :n].tolist())
        f[F.HIST_TS].int64_list.value.extend(hist[F.HIST_TS][i, :n].tolist())
        f[F.HIST_DURATION].float_list.value.extend(hist[F.HIST_DURATION][i, :n].tolist())
        out.append(ex)
    return out


def _code(fn):
    with pytest.raises(ServingError) as e:
        fn()
    return e.value.code


# ----------------------------------------------------------------------------- parity


def test_predict_matches_in_process_signatures(servers, serving_dir, reference):
    h = servers(model_base_path=str(serving_dir))
    client = ServingClient(h.target, timeout_s=10)
    hist = T.toy_history(7, seed=1)

    out, version = client.predict_versioned(C.PINNERFORMER, C.EMBED_RAW, hist)
    assert version == V1
    np.testing.assert_allclose(out[C.EMBEDDING],
                               _call(reference["pf1"], C.EMBED_RAW, hist)[C.EMBEDDING],
                               rtol=0, atol=1e-6)

    serialized = [e.SerializeToString() for e in _examples(hist)]
    out = client.predict_examples(C.PINNERFORMER, serialized)
    ref = _call(reference["pf1"], C.SERVING_DEFAULT,
                {C.EXAMPLES: np.array(serialized, dtype=object)})[C.EMBEDDING]
    np.testing.assert_allclose(out[C.EMBEDDING], ref, rtol=0, atol=1e-6)
    # the toy serving_default parses the same history, so both signatures agree
    np.testing.assert_allclose(out[C.EMBEDDING], _call(reference["pf1"], C.EMBED_RAW,
                                                       hist)[C.EMBEDDING], atol=1e-6)

    items = np.array([3, 1, 4, 1, 5], np.int64)
    out = client.predict(C.PINNERFORMER, C.ITEM_EMBEDDING, {C.ITEM_ID: items})
    np.testing.assert_allclose(out[C.EMBEDDING], _call(reference["pf1"], C.ITEM_EMBEDDING,
                                                       {C.ITEM_ID: items})[C.EMBEDDING],
                               atol=1e-6)

    from pinrank.serving.client import rank_request_inputs
    rank_in = rank_request_inputs(hist, [10, 20, 30], request_ts=5000,
                                  pf_embedding=np.ones(4, np.float32))
    out = client.predict(C.RANKER, C.RANK, rank_in)
    ref = _call(reference["rk1"], C.RANK, rank_in)
    assert set(out) == set(C.RANK_HEADS)
    for head in C.RANK_HEADS:
        assert out[head].shape == (3,)
        np.testing.assert_allclose(out[head], ref[head], atol=1e-6)
    only = client.predict(C.RANKER, C.RANK, rank_in, output_filter=["click"])
    assert set(only) == {"click"}


def test_metadata_lists_signatures_like_tf_serving(servers, serving_dir):
    h = servers(model_base_path=str(serving_dir))
    client = ServingClient(h.target)
    sigs = client.metadata(C.PINNERFORMER)
    assert {C.SERVING_DEFAULT, C.EMBED_RAW, C.ITEM_EMBEDDING} <= set(sigs)
    d = cli.describe_signatures(sigs)
    assert d[C.SERVING_DEFAULT]["inputs"] == {C.EXAMPLES: {"dtype": "DT_STRING", "shape": [-1]}}
    assert d[C.SERVING_DEFAULT]["outputs"][C.EMBEDDING] == {"dtype": "DT_FLOAT",
                                                            "shape": [-1, T.DIM]}
    raw = d[C.EMBED_RAW]["inputs"]
    assert set(raw) == set(C.EMBED_RAW_INPUTS)
    assert raw[F.HIST_ITEM] == {"dtype": "DT_INT64", "shape": [-1, T.SEQ_LEN]}
    assert raw[F.HIST_ACTION]["dtype"] == raw[F.HIST_SURFACE]["dtype"] == "DT_STRING"
    assert raw[F.HIST_DURATION]["dtype"] == "DT_FLOAT"
    assert raw[C.HIST_LEN] == {"dtype": "DT_INT64", "shape": [-1]}
    assert d[C.ITEM_EMBEDDING]["inputs"] == {C.ITEM_ID: {"dtype": "DT_INT64", "shape": [-1]}}
    assert set(cli.describe_signatures(client.metadata(C.RANKER))[C.RANK]["outputs"]) == \
        set(C.RANK_HEADS)

    # wire format: the Any carries a SignatureDefMap with TF Serving's type url
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(h.target))
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = C.PINNERFORMER
    req.metadata_field.append("signature_def")
    resp = stub.GetModelMetadata(req, timeout=10)
    assert resp.model_spec.version.value == V1
    assert resp.metadata["signature_def"].type_url == C.SIGNATURE_DEF_MAP_TYPE_URL
    req.metadata_field[0] = "nope"
    with pytest.raises(grpc.RpcError) as e:
        stub.GetModelMetadata(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ----------------------------------------------------------------------------- errors


def test_bad_requests_get_status_codes_not_crashes(servers, serving_dir):
    """Malformed Predict inputs, unknown models/versions/signatures, empty batches and oversized
    messages: tests/unit/test_serving_load.py. Here: metadata, broken protos, other methods."""
    h = servers(model_base_path=str(serving_dir))
    client = ServingClient(h.target, retries=0)
    hist = T.toy_history(2)
    ok = lambda inputs, **kw: client.predict(C.PINNERFORMER, C.EMBED_RAW, inputs, **kw)  # noqa
    INVALID = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: client.metadata("nope")) == grpc.StatusCode.NOT_FOUND

    # a malformed TensorProto (content does not match its shape)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(h.target))
    req = predict_pb2.PredictRequest()
    req.model_spec.name = C.PINNERFORMER
    req.model_spec.signature_name = C.ITEM_EMBEDDING
    bad = to_tensor_proto(np.arange(3, dtype=np.int64))
    bad.tensor_shape.dim[0].size = 5
    bad.tensor_content = bad.tensor_content[:8]
    req.inputs[C.ITEM_ID].CopyFrom(bad)
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(req, timeout=10)
    assert e.value.code() == INVALID
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2
    for method, request in ((stub.Classify, classification_pb2.ClassificationRequest()),
                            (stub.Regress, regression_pb2.RegressionRequest()),
                            (stub.MultiInference, inference_pb2.MultiInferenceRequest())):
        with pytest.raises(grpc.RpcError) as e:
            method(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # the server is still healthy
    assert ok(hist)[C.EMBEDDING].shape == (2, T.DIM)


# ----------------------------------------------------------------------------- status, versions


def test_status_lifecycle_and_unavailable_until_loaded(servers, tmp_path, store):
    root = tmp_path / "serving"
    os.makedirs(root / C.PINNERFORMER)
    h = servers(model_base_path=str(root))
    client = ServingClient(h.target, retries=0)
    # known model, nothing pushed yet: no status, requests UNAVAILABLE (retryable)
    assert _code(lambda: client.status(C.PINNERFORMER)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.predict(C.PINNERFORMER, C.ITEM_EMBEDDING, {
        C.ITEM_ID: np.array([1], np.int64)})) == grpc.StatusCode.UNAVAILABLE
    assert _code(lambda: client.status("nope")) == grpc.StatusCode.NOT_FOUND

    T.push_version(store["pf1"], str(root / C.PINNERFORMER), V1)
    assert client.wait_until_available(C.PINNERFORMER, timeout_s=20) == V1
    # a corrupt push is reported with its error and does not disturb the serving version
    bad = root / C.PINNERFORMER / str(V2)
    os.makedirs(bad)
    (bad / "saved_model.pb").write_bytes(b"not a SavedModel")
    deadline = time.monotonic() + 20
    while True:
        states = {s.version: s for s in client.status(C.PINNERFORMER)}
        if V2 in states and states[V2].state == "END":
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.05)
    assert states[V2].error_code != 0 and "load failed" in states[V2].error_message
    assert states[V1].state == "AVAILABLE"
    assert client.predict_versioned(C.PINNERFORMER, C.ITEM_EMBEDDING,
                                    {C.ITEM_ID: np.array([1], np.int64)})[1] == V1
    # the Pusher finishes the copy: a changed saved_model.pb is retried and served
    T.push_version(store["pf2"], str(root / C.PINNERFORMER), V2)
    assert client.wait_until_available(C.PINNERFORMER, V2, timeout_s=20) == V2
    # a third version: latest-2 policy unloads the oldest
    T.push_version(store["pf1"], str(root / C.PINNERFORMER), V3)
    client.wait_until_available(C.PINNERFORMER, V3, timeout_s=20)
    deadline = time.monotonic() + 20
    while client.status(C.PINNERFORMER, V1)[0].state != "END":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    states = {s.version: s.state for s in client.status(C.PINNERFORMER)}
    assert states == {V1: "END", V2: "AVAILABLE", V3: "AVAILABLE"}
    assert _code(lambda: client.predict(C.PINNERFORMER, C.ITEM_EMBEDDING, {
        C.ITEM_ID: np.array([1], np.int64)}, version=V1)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.status(C.PINNERFORMER, 42)) == grpc.StatusCode.NOT_FOUND


def test_unloaded_version_is_released_after_in_flight_requests(tmp_path, store):
    base = tmp_path / C.PINNERFORMER
    T.push_version(store["pf1"], str(base), V1)
    manager = LS.ModelManager([LS.ModelSource(C.PINNERFORMER, str(base), latest=1)])
    manager.poll_once()
    with manager.acquire(C.PINNERFORMER) as servable:
        assert servable.version == V1
        T.push_version(store["pf2"], str(base), V2)
        manager.poll_once()  # loads V2, then retires V1 while this request still holds it
        assert dict(manager.status(C.PINNERFORMER))[V1].state == "UNLOADING"
        with manager.acquire(C.PINNERFORMER) as newer:
            assert newer.version == V2
        out = servable.run(C.ITEM_EMBEDDING, {C.ITEM_ID: np.array([1], np.int64)})
        assert out[C.EMBEDDING].shape == (1, T.DIM)
    assert dict(manager.status(C.PINNERFORMER))[V1].state == "END"
    manager.stop()


def test_version_swap_under_concurrent_load_drops_nothing(servers, serving_dir, store,
                                                          reference):
    h = servers(model_base_path=str(serving_dir), file_system_poll_wait_seconds=0.1)
    items = np.arange(8, dtype=np.int64)
    expected = {V1: _call(reference["pf1"], C.ITEM_EMBEDDING, {C.ITEM_ID: items})[C.EMBEDDING],
                V2: _call(reference["pf2"], C.ITEM_EMBEDDING, {C.ITEM_ID: items})[C.EMBEDDING]}
    swapped = threading.Event()
    done = []
    failures, wrong, served = [], [], []
    lock = threading.Lock()

    def worker():
        client = ServingClient(h.target, timeout_s=10, retries=0)
        for i in range(100):
            if i == 50:
                swapped.wait(30)  # the second half runs after the new version is live
            try:
                out, v = client.predict_versioned(C.PINNERFORMER, C.ITEM_EMBEDDING,
                                                  {C.ITEM_ID: items})
            except ServingError as e:
                with lock:
                    failures.append(e)
                continue
            with lock:
                served.append(v)
                if v not in expected or not np.allclose(out[C.EMBEDDING], expected[v],
                                                        atol=1e-6):
                    wrong.append(v)
        with lock:
            done.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(served) < 40 and time.monotonic() < deadline:
        time.sleep(0.005)
    T.push_version(store["pf2"], str(serving_dir / C.PINNERFORMER), V2)  # pb copied last
    ServingClient(h.target).wait_until_available(C.PINNERFORMER, V2, timeout_s=30)
    swapped.set()
    for t in threads:
        t.join(60)
    assert len(done) == 4
    assert failures == [] and wrong == []
    assert len(served) == 400
    assert V1 in served and V2 in served
    assert served[-1] == V2 and set(served[-4 * 50:]) == {V2}  # post-swap half: all new
    # latest-2 keeps the previous version loaded: pinned requests still work
    client = ServingClient(h.target)
    assert client.predict_versioned(C.PINNERFORMER, C.ITEM_EMBEDDING, {C.ITEM_ID: items},
                                    version=V1)[1] == V1


def test_client_retries_until_server_comes_up(serving_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = {}

    def start_later():
        time.sleep(0.5)
        started["h"] = LS.serve(model_base_path=str(serving_dir), port=port,
                                file_system_poll_wait_seconds=0)

    t = threading.Thread(target=start_later)
    t.start()
    try:
        client = ServingClient(f"127.0.0.1:{port}", timeout_s=2, retries=30, backoff_s=0.05,
                               max_backoff_s=0.2)
        st = client.status(C.PINNERFORMER)
        assert st[0].state == "AVAILABLE"
    finally:
        t.join(30)
        if "h" in started:
            started["h"].stop(grace=None)


# ----------------------------------------------------------------------------- batching


def test_batching_matches_unbatched_results(servers, serving_dir, reference, monkeypatch):
    batch_sizes = []
    real_run = LS.Servable.run

    def recording_run(self, signature, feed):
        batch_sizes.append(len(next(iter(feed.values()))))
        return real_run(self, signature, feed)

    monkeypatch.setattr(LS.Servable, "run", recording_run)
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000,
                                num_batch_threads=2, max_enqueued_batches=16,
                                allowed_batch_sizes=(4, 8))
    h = servers(model_base_path=str(serving_dir), enable_batching=True,
                batching_parameters=params, file_system_poll_wait_seconds=0)
    requests = [T.toy_history(n, seed=i) for i, n in enumerate([1, 2, 3, 1, 2, 3, 1, 2])]
    results = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def call(i):
        client = ServingClient(h.target, timeout_s=20, retries=0)
        barrier.wait(10)
        results[i] = client.predict(C.PINNERFORMER, C.EMBED_RAW, requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for req, got in zip(requests, results):
        want = _call(reference["pf1"], C.EMBED_RAW, req)[C.EMBEDDING]
        np.testing.assert_allclose(got[C.EMBEDDING], want, atol=1e-6)
    assert sum(len(r[C.HIST_LEN]) for r in requests) == 15
    assert max(batch_sizes) > 3  # requests were merged
    assert set(batch_sizes) <= {4, 8}  # and padded to the allowed sizes

    client = ServingClient(h.target, retries=0)
    too_big = T.toy_history(9)
    assert _code(lambda: client.predict(C.PINNERFORMER, C.EMBED_RAW, too_big)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    ragged = {**T.toy_history(2), C.HIST_LEN: np.array([1, 2, 3], np.int64)}
    assert _code(lambda: client.predict(C.PINNERFORMER, C.EMBED_RAW, ragged)) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_per_model_batching_as_deployed(servers, tmp_path, store, reference, monkeypatch):
    """The production flags: --enable_batching --enable_per_model_batching_parameters with the
    deploy configs. The pinnerformer version carries the deploy batching_params.pbtxt (as its
    export does) and is batched; the ranker carries none, so its `rank` request (1-row context,
    N candidates) is served, which global batching must refuse."""
    from pinrank.serving.client import rank_request_inputs
    from pinrank.serving.configs import load_batching_parameters

    root = tmp_path / "serving"
    pf = T.push_version(store["pf1"], str(root / C.PINNERFORMER), V1)
    shutil.copyfile(os.path.join(C.DEPLOY_DIR, C.PINNERFORMER_BATCHING),
                    os.path.join(pf, C.PER_MODEL_BATCHING_FILE))
    T.push_version(store["rk1"], str(root / C.RANKER), V1)
    batched = []
    real_run = LS.Servable.run

    def recording_run(self, signature, feed):
        batched.append((self.model, len(feed[C.HIST_LEN])))
        return real_run(self, signature, feed)

    monkeypatch.setattr(LS.Servable, "run", recording_run)
    global_params = load_batching_parameters(os.path.join(C.DEPLOY_DIR, C.BATCHING_CONFIG))
    h = servers(model_config_file=os.path.join(C.DEPLOY_DIR, C.MODELS_CONFIG),
                base_path_prefix=str(root), enable_batching=True,
                batching_parameters=global_params, per_model_batching=True,
                file_system_poll_wait_seconds=0)
    client = ServingClient(h.target, timeout_s=20, retries=0)
    hist = T.toy_history(3)
    for name, own_params in ((C.PINNERFORMER, True), (C.RANKER, False)):
        with h.manager.acquire(name) as servable:
            assert (servable.batching is not None) == own_params

    rank_in = rank_request_inputs(hist, [10, 20, 30, 40], request_ts=5000,
                                  pf_embedding=np.ones(4, np.float32))
    out = client.predict(C.RANKER, C.RANK, rank_in)
    for head in C.RANK_HEADS:
        np.testing.assert_allclose(out[head], _call(reference["rk1"], C.RANK, rank_in)[head],
                                   atol=1e-6)
    got = client.predict(C.PINNERFORMER, C.EMBED_RAW, hist)[C.EMBEDDING]
    np.testing.assert_allclose(got, _call(reference["pf1"], C.EMBED_RAW, hist)[C.EMBEDDING],
                               atol=1e-6)
    # ranker unbatched (its one request row as sent); pinnerformer padded to the first allowed
    # batch size of the deploy file, 32
    assert batched == [(C.RANKER, 1), (C.PINNERFORMER, 32)]

    g = servers(model_base_path=str(root), enable_batching=True, file_system_poll_wait_seconds=0)
    assert _code(lambda: ServingClient(g.target, retries=0).predict(C.RANKER, C.RANK, rank_in)) \
        == grpc.StatusCode.INVALID_ARGUMENT  # global batching: unequal 0th dimensions


# ----------------------------------------------------------------------------- config mode, CLI


def test_model_config_file_with_base_path_prefix(servers, serving_dir):
    h = servers(model_config_file=os.path.join(C.DEPLOY_DIR, C.MODELS_CONFIG),
                base_path_prefix=str(serving_dir))
    client = ServingClient(h.target)
    assert h.manager.model_names() == sorted(C.MODEL_NAMES)
    for name in C.MODEL_NAMES:
        assert client.status(name)[0].state == "AVAILABLE"


def _cli(argv):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(argv)
    return rc, buf.getvalue()


def test_cli_query_commands(servers, serving_dir, tmp_path, reference):
    h = servers(model_base_path=str(serving_dir))
    target = ["--target", h.target]
    rc, out = _cli(["query", "status", *target, "--require-available"])
    assert rc == 0 and json.loads(out)[0]["state"] == "AVAILABLE"
    rc, out = _cli(["query", "metadata", *target])
    assert rc == 0 and C.EMBED_RAW in json.loads(out)

    events = tmp_path / "events.csv"
    rows = [("u1", 10 + i, F.ACTIONS[i % 4], 1000 + i, float(i), F.SURFACES[i % 5])
            for i in range(7)] + [("u2", 99, "repin", 5, 1.0, "search")]
    with open(events, "w") as fh:
        fh.write(",".join(F.EVENT_COLUMNS) + "\n")
        fh.writelines(",".join(map(str, r)) + "\n" for r in rows)
    rc, out = _cli(["query", "embed", *target, "--data", str(events), "--user", "u1",
                    "--user", "u2", "--now-ts", "2000"])
    doc = json.loads(out)
    assert rc == 0 and doc["version"] == V1 and doc["hist_len"] == {"u1": 5, "u2": 1}
    import pandas as pd

    from pinrank.serving.client import embed_request_from_events
    req = embed_request_from_events(pd.read_csv(events), ["u1", "u2"], T.SEQ_LEN, 2000)
    want = _call(reference["pf1"], C.EMBED_RAW, req)[C.EMBEDDING]
    np.testing.assert_allclose([doc["outputs"][C.EMBEDDING]["u1"],
                                doc["outputs"][C.EMBEDDING]["u2"]], want, atol=1e-6)

    rc, out = _cli(["query", "rank", *target, "--data", str(events), "--user", "u1",
                    "--candidates", "5,6,7", "--now-ts", "2000"])
    doc = json.loads(out)
    assert rc == 0 and doc["candidates"] == [5, 6, 7]
    assert {k: len(v) for k, v in doc["scores"].items()} == {h_: 3 for h_ in C.RANK_HEADS}

    rc = _cli(["query", "status", *target, "--model", "nope", "--retries", "0"])[0]
    assert rc == 2


def test_local_server_module_help_says_it_is_a_stand_in():
    r = subprocess.run([sys.executable, "-m", "pinrank.serving.local_server", "--help"],
                       capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(LS.__file__))))
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "stand-in for TensorFlow Serving where docker is absent" in text
    assert "--model_config_file" in text and "--base_path_prefix" in text


def test_local_server_module_runs_prints_port_and_stops_on_sigterm(serving_dir):
    import queue
    import signal

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinrank.serving.local_server", "--model_base_path", str(serving_dir),
         "--port", "0", "--file_system_poll_wait_seconds", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(LS.__file__))))
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=60)
        assert "listening on 127.0.0.1:" in line and "loopback only" in line
        target = line.split("listening on ")[1].split()[0]
        assert ServingClient(target).status(C.RANKER)[0].state == "AVAILABLE"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
