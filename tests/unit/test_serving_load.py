"""The local TF-Serving stand-in under concurrent load and bad requests, on 127.0.0.1 with the
toy SavedModels of serving/testing.py: embed and rank clients keep going while a new version of
both models is pushed and the old one removed (0 failed requests, answers switch version), a
bad push is rolled back by deleting it, and every kind of malformed request gets TF Serving's
status code while the server keeps answering. The 8 x 500 run is benchmarks/serving_load.py."""
import os
import shutil

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pinrank.pipeline import features as F
from pinrank.serving import constants as C
from pinrank.serving import local_server as LS
from pinrank.serving import testing as T
from pinrank.serving.client import ServingClient, ServingError

V1, V2, V3 = 1_700_000_000, 1_700_000_100, 1_700_000_200
MAX_MESSAGE = 1 << 20  # small, so the oversized request stays cheap
pytestmark = pytest.mark.timeout(180)  # threads and sockets: a deadlock must fail, not hang


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return {"pf1": T.save_toy_pinnerformer(str(root / "pf1"), 1.0),
            "pf2": T.save_toy_pinnerformer(str(root / "pf2"), 2.0),
            "rk1": T.save_toy_ranker(str(root / "rk1"), 1.0),
            "rk2": T.save_toy_ranker(str(root / "rk2"), 2.0)}


def _serving_dir(root, store):
    T.push_version(store["pf1"], str(root / C.PINNERFORMER), V1)
    T.push_version(store["rk1"], str(root / C.RANKER), V1)
    return root


def _served(result, kind, after):
    return set(result.versions_started_after(after, kind))


# ----------------------------------------------------------------------------- load


def test_load_across_a_version_swap_fails_nothing(tmp_path, store):
    root = _serving_dir(tmp_path / "serving", store)
    h = LS.serve(model_base_path=str(root), port=0, file_system_poll_wait_seconds=0.05)
    try:
        def push_v2():
            T.push_version(store["pf2"], str(root / C.PINNERFORMER), V2)
            T.push_version(store["rk2"], str(root / C.RANKER), V2)
            for m in C.MODEL_NAMES:
                T.wait_for_versions(h.target, m, [V2])

        def remove_v1():
            for m in C.MODEL_NAMES:
                shutil.rmtree(root / m / str(V1))
            for m in C.MODEL_NAMES:
                T.wait_for_versions(h.target, m, [V2], gone=[V1])

        result = T.run_load(h.target, clients=4, requests=60,
                            events=[(0.3, push_v2), (0.6, remove_v1)])
    finally:
        h.stop(grace=None)
    print("\n" + result.summary())
    assert result.failures == []
    assert len(result.records) == 240
    swapped, removed = result.event_done_s
    for kind in ("embed", "rank"):
        assert _served(result, kind, 0.0) == {V1, V2}
        assert _served(result, kind, swapped) == {V2}, kind  # new requests: the new version
        assert len(result.versions_started_after(removed, kind)) > 0


def test_rollback_by_deleting_the_bad_version_under_load(tmp_path, store):
    """Rollback as documented in serving/deploy/README.md: delete the bad version's directory;
    latest-2 kept the previous one loaded, so it serves again at the next poll."""
    root = _serving_dir(tmp_path / "serving", store)
    T.push_version(store["pf2"], str(root / C.PINNERFORMER), V2)
    T.push_version(store["rk2"], str(root / C.RANKER), V2)
    h = LS.serve(model_base_path=str(root), port=0, file_system_poll_wait_seconds=0.05)
    try:
        def roll_back():
            for m in C.MODEL_NAMES:
                shutil.rmtree(root / m / str(V2))
            for m in C.MODEL_NAMES:
                T.wait_for_versions(h.target, m, [V1], gone=[V2])

        result = T.run_load(h.target, clients=2, requests=40, events=[(0.4, roll_back)])
    finally:
        h.stop(grace=None)
    assert result.failures == []
    (rolled,) = result.event_done_s
    for kind in ("embed", "rank"):
        assert _served(result, kind, 0.0) == {V1, V2}
        assert _served(result, kind, rolled) == {V1}


# ----------------------------------------------------------------------------- bad requests


@pytest.fixture(scope="module")
def server(tmp_path_factory, store):
    root = _serving_dir(tmp_path_factory.mktemp("bad") / "serving", store)
    h = LS.serve(model_base_path=str(root), port=0, file_system_poll_wait_seconds=0,
                 max_message_bytes=MAX_MESSAGE)
    yield h
    h.stop(grace=None)


def _embed(**change):
    inputs = T.toy_history(2)
    inputs.update(change)
    return inputs


def _rank(**change):
    inputs = T.rank_inputs(5)
    inputs.update(change)
    return inputs


def _without(inputs, name):
    return {k: v for k, v in inputs.items() if k != name}


INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
PF, RK = C.PINNERFORMER, C.RANKER
# (model, signature, inputs, predict kwargs, expected code); codes as TF Serving 2.16 answers:
# input checks in predict_util (INVALID_ARGUMENT), servable lookup in ServerCore (NOT_FOUND,
# an unknown label INVALID_ARGUMENT), signature lookup FAILED_PRECONDITION, and gRPC's own
# receive limit RESOURCE_EXHAUSTED (TF Serving's is 2 GiB unless --grpc_channel_arguments lowers
# grpc.max_receive_message_length).
BAD = {
    "wrong-dtype-int32": (PF, C.EMBED_RAW, _embed(**{C.HIST_LEN: np.zeros(2, np.int32)}), {},
                          INVALID),
    "wrong-dtype-float64": (PF, C.EMBED_RAW, _embed(**{F.HIST_DURATION: np.zeros(
        (2, T.SEQ_LEN), np.float64)}), {}, INVALID),
    "wrong-dtype-rank": (RK, C.RANK, _rank(**{F.CAND_ITEM: np.ones(5, np.float32)}), {},
                         INVALID),
    "wrong-rank": (PF, C.EMBED_RAW, _embed(**{C.HIST_LEN: np.zeros((2, 1), np.int64)}), {},
                   INVALID),
    "scalar-for-vector": (PF, C.ITEM_EMBEDDING, {C.ITEM_ID: np.int64(3)}, {}, INVALID),
    "wrong-shape": (PF, C.EMBED_RAW, _embed(**{F.HIST_ITEM: np.zeros((2, T.SEQ_LEN + 1),
                                                                     np.int64)}), {}, INVALID),
    "two-contexts-in-rank": (RK, C.RANK, _rank(**{F.REQUEST_TS: np.ones(2, np.int64)}), {},
                             INVALID),
    "missing-input": (PF, C.EMBED_RAW, _without(_embed(), C.HIST_LEN), {}, INVALID),
    "missing-input-rank": (RK, C.RANK, _without(_rank(), F.CAND_ITEM), {}, INVALID),
    "extra-input": (PF, C.EMBED_RAW, _embed(extra=np.zeros(2, np.int64)), {}, INVALID),
    "no-inputs": (PF, C.EMBED_RAW, {}, {}, INVALID),
    "unknown-output": (PF, C.EMBED_RAW, _embed(), {"output_filter": ["nope"]}, INVALID),
    "unknown-model": ("nope", C.EMBED_RAW, _embed(), {}, NOT_FOUND),
    "empty-model-name": ("", C.EMBED_RAW, _embed(), {}, NOT_FOUND),
    "unknown-version": (PF, C.EMBED_RAW, _embed(), {"version": 123}, NOT_FOUND),
    "unknown-version-label": (PF, C.EMBED_RAW, _embed(), {"version_label": "stable"}, INVALID),
    "unknown-signature": (PF, "nope", _embed(), {}, grpc.StatusCode.FAILED_PRECONDITION),
    "signature-of-other-model": (RK, C.EMBED_RAW, _embed(), {},
                                 grpc.StatusCode.FAILED_PRECONDITION),
    "oversized-message": (PF, C.ITEM_EMBEDDING, {C.ITEM_ID: np.zeros(MAX_MESSAGE // 8 + 1,
                                                                     np.int64)}, {},
                          grpc.StatusCode.RESOURCE_EXHAUSTED),
}


def _still_answers(client):
    assert client.predict(PF, C.EMBED_RAW, _embed())[C.EMBEDDING].shape == (2, T.DIM)
    assert client.predict(RK, C.RANK, _rank())[C.RANK_HEADS[0]].shape == (5,)


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_request_gets_tf_serving_status_and_server_stays_up(server, case):
    model, signature, inputs, kwargs, code = BAD[case]
    client = ServingClient(server.target, retries=0)
    with pytest.raises(ServingError) as e:
        client.predict(model, signature, inputs, **kwargs)
    assert e.value.code == code, e.value.details
    _still_answers(client)


def test_request_without_model_spec_is_invalid(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.target))
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(predict_pb2.PredictRequest(), timeout=10)
    assert e.value.code() == INVALID and "Missing ModelSpec" in e.value.details()
    _still_answers(ServingClient(server.target, retries=0))


@pytest.mark.parametrize("model,signature,inputs,output", [
    (PF, C.EMBED_RAW, T.toy_history(0), C.EMBEDDING),
    (PF, C.ITEM_EMBEDDING, {C.ITEM_ID: np.zeros(0, np.int64)}, C.EMBEDDING),
    (RK, C.RANK, T.rank_inputs(0), C.RANK_HEADS[0]),
], ids=["embed-0-users", "items-0", "rank-0-candidates"])
def test_empty_batch_answers_empty_outputs(server, model, signature, inputs, output):
    """TF Serving runs an empty batch like any other (gRPC has no batch-size-0 rule) and the
    model answers with 0 rows."""
    out = ServingClient(server.target, retries=0).predict(model, signature, inputs)
    assert out[output].shape[0] == 0


def test_the_cli_says_it_binds_loopback_only():
    assert LS.is_loopback("127.0.0.1") and LS.is_loopback("::1") and LS.is_loopback("localhost")
    assert not LS.is_loopback("0.0.0.0") and not LS.is_loopback("10.1.2.3")
    assert LS.exposure("127.0.0.1") == "loopback only (--host to change)"
    assert "without TLS or authentication" in LS.exposure("0.0.0.0")
    import argparse
    p = argparse.ArgumentParser()
    LS.add_serve_arguments(p)
    assert p.parse_args(["--model_base_path", os.devnull]).host == "127.0.0.1"
