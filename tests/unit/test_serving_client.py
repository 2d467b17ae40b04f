"""ServingClient retry/deadline/error behaviour against scripted gRPC servers on 127.0.0.1, and
the embed_raw request builder."""
import concurrent.futures
import threading
import time

import grpc
import numpy as np
import pandas as pd
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pinrank.pipeline import features as F
from pinrank.serving import constants as C
from pinrank.serving.client import ServingClient, ServingError, embed_request_from_events

pytestmark = pytest.mark.timeout(60)


class _Scripted(prediction_service_pb2_grpc.PredictionServiceServicer,
                model_service_pb2_grpc.ModelServiceServicer):
    """Answers each call with the next scripted status code (None = success)."""

    def __init__(self, codes, delay_s=0.0):
        self.codes = list(codes)
        self.delay_s = delay_s
        self.calls = 0
        self.lock = threading.Lock()

    def _next(self, context):
        with self.lock:
            self.calls += 1
            code = self.codes.pop(0) if self.codes else None
        if self.delay_s:
            time.sleep(self.delay_s)
        if code is not None:
            context.abort(code, f"scripted {code.name}")

    def Predict(self, request, context):
        self._next(context)
        resp = predict_pb2.PredictResponse()
        resp.model_spec.name = request.model_spec.name
        resp.model_spec.version.value = 7
        for k, v in request.inputs.items():  # echo
            resp.outputs[k].CopyFrom(v)
        return resp

    def GetModelStatus(self, request, context):
        self._next(context)
        resp = get_model_status_pb2.GetModelStatusResponse()
        s = resp.model_version_status.add()
        s.version = 7
        s.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return resp


@pytest.fixture
def scripted():
    servers = []

    def start(codes, delay_s=0.0):
        servicer = _Scripted(codes, delay_s)
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(None)


def _client(target, **kw):
    sleeps = []
    kw.setdefault("timeout_s", 2.0)
    return ServingClient(target, sleep=sleeps.append, **kw), sleeps


def test_retries_unavailable_then_succeeds_with_backoff(scripted):
    servicer, target = scripted([grpc.StatusCode.UNAVAILABLE] * 2)
    client, sleeps = _client(target, retries=3, backoff_s=0.1)
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    out, version = client.predict_versioned("m", "sig", {"x": x})
    np.testing.assert_array_equal(out["x"], x)
    assert version == 7 and servicer.calls == 3
    assert len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2


def test_gives_up_after_retries_on_unavailable(scripted):
    servicer, target = scripted([grpc.StatusCode.UNAVAILABLE] * 10)
    client, sleeps = _client(target, retries=2)
    with pytest.raises(ServingError) as e:
        client.status("m")
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and e.value.attempts == 3
    assert "scripted UNAVAILABLE" in e.value.details
    assert servicer.calls == 3 and len(sleeps) == 2


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.FAILED_PRECONDITION,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL])
def test_other_errors_are_not_retried(scripted, code):
    servicer, target = scripted([code] * 3)
    client, sleeps = _client(target, retries=3)
    with pytest.raises(ServingError) as e:
        client.predict("m", "sig", {"x": np.zeros(1, np.float32)})
    assert e.value.code == code and e.value.attempts == 1 and e.value.method == "Predict"
    assert servicer.calls == 1 and sleeps == []


def test_deadline_applies_to_every_call_and_is_not_retried(scripted):
    servicer, target = scripted([], delay_s=1.0)
    client, sleeps = _client(target, retries=3, timeout_s=0.2)
    t0 = time.monotonic()
    with pytest.raises(ServingError) as e:
        client.status("m")
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 0.9 and servicer.calls == 1 and sleeps == []


def test_connection_refused_is_unavailable_and_retried():
    client, sleeps = _client("127.0.0.1:1", retries=2, timeout_s=1.0)
    with pytest.raises(ServingError) as e:
        client.status("m")
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and e.value.attempts == 3
    assert len(sleeps) == 2


def test_string_inputs_are_sent_as_dt_string(scripted):
    _, target = scripted([])
    client, _ = _client(target)
    out = client.predict("m", "sig", {"s": np.array([["a", "bé"]]), "b": [b"x", b"y"]})
    assert out["s"].tolist() == [[b"a", "bé".encode()]] and out["b"].tolist() == [b"x", b"y"]


# ------------------------------------------------------------------ embed_request_from_events


def _events():
    rows = [  # user, item, action, ts, duration, surface
        ("u1", 10, "click", 100, 12.0, "homefeed"),
        ("u1", 11, "repin", 300, 0.0, "search"),
        ("u1", 12, "closeup", 200, 3.5, "related"),
        ("u1", 9, "hide", 200, 0.0, "profile"),  # same ts as item 12: ordered by item id
        ("u1", 13, "click", 500, 1.0, "other"),  # at now_ts: excluded (strictly before)
        ("u1", 14, "repin", 900, 1.0, "other"),  # future: excluded
        ("u2", 20, "repin", 50, 0.0, "homefeed"),
    ]
    return pd.DataFrame(rows, columns=list(F.EVENT_COLUMNS)).sample(frac=1, random_state=0)


def test_embed_request_is_recent_chronological_and_padded():
    req = embed_request_from_events(_events(), "u1", max_len=3, now_ts=500)
    assert set(req) == set(C.EMBED_RAW_INPUTS)
    assert req[C.HIST_LEN].tolist() == [3]
    # the 4 actions before 500 in order (100, 200/9, 200/12, 300); the newest 3 are kept.
    assert req[F.HIST_ITEM].tolist() == [[9, 12, 11]]
    assert req[F.HIST_TS].tolist() == [[200, 200, 300]]
    assert req[F.HIST_ACTION].tolist() == [[b"hide", b"closeup", b"repin"]]
    assert req[F.HIST_SURFACE].tolist() == [[b"profile", b"related", b"search"]]
    np.testing.assert_allclose(req[F.HIST_DURATION], [[0.0, 3.5, 0.0]])
    dtypes = {k: v.dtype for k, v in req.items()}
    assert dtypes == {F.HIST_ITEM: np.int64, F.HIST_ACTION: object, F.HIST_SURFACE: object,
                      F.HIST_TS: np.int64, F.HIST_DURATION: np.float32, C.HIST_LEN: np.int64}


def test_embed_request_batches_users_and_pads_after_len():
    req = embed_request_from_events(_events(), ["u2", "u1", "nobody"], max_len=5, now_ts=1000)
    assert req[C.HIST_LEN].tolist() == [1, 5, 0]  # u1 has 6 actions before 1000: newest 5
    assert req[F.HIST_ITEM].shape == (3, 5)
    assert req[F.HIST_ITEM][0].tolist() == [20, C.PAD_ITEM, C.PAD_ITEM, C.PAD_ITEM, C.PAD_ITEM]
    assert req[F.HIST_ITEM][1].tolist() == [9, 12, 11, 13, 14]
    assert req[F.HIST_ACTION][0].tolist() == [b"repin", b"", b"", b"", b""]
    assert req[F.HIST_ITEM][2].tolist() == [C.PAD_ITEM] * 5
    assert req[F.HIST_TS][2].tolist() == [0] * 5


def test_every_embed_raw_builder_gives_the_same_inputs():
    """The daily job's compact histories (action/surface codes) and the online service's rows
    go through the same padding as embed_request_from_events: equal arrays, equal dtypes."""
    from pinrank.components.data import ranking_features as rf
    from pinrank.serving.batch_embeddings import embed_inputs

    req = embed_request_from_events(_events(), ["u2", "u1", "nobody"], max_len=4, now_ts=1000)
    ev = _events().sort_values(["timestamp", "item_id"])
    compact, rows = [], []
    for u in ("u2", "u1", "nobody"):
        e = ev[ev.user_id == u]
        compact.append((e.timestamp.to_numpy(np.int64), e.item_id.to_numpy(np.int64),
                        np.array([F.ACTIONS.index(a) for a in e.action], np.int8),
                        np.array([F.SURFACES.index(s) for s in e.surface], np.int8),
                        e.duration.to_numpy(np.float32), True))
        rows.append({F.HIST_ITEM: e.item_id.to_numpy(), F.HIST_TS: e.timestamp.to_numpy(),
                     F.HIST_ACTION: e.action.to_numpy(object),
                     F.HIST_SURFACE: e.surface.to_numpy(object),
                     F.HIST_DURATION: e.duration.to_numpy()})
    for other in (embed_inputs(compact, 4), rf.pad_histories(rows, 4)):
        assert set(other) == set(req)
        for k in req:
            assert other[k].dtype == req[k].dtype, k
            np.testing.assert_array_equal(other[k], req[k], err_msg=k)
            assert [type(v) for v in other[k].flat] == [type(v) for v in req[k].flat], k


def test_embed_request_rejects_bad_input():
    with pytest.raises(ValueError, match="surface"):
        embed_request_from_events(_events().drop(columns=["surface"]), "u1", 3, 500)
    with pytest.raises(ValueError):
        embed_request_from_events(_events(), "u1", 0, 500)
