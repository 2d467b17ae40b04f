"""AtomicPusher's canary and TF Serving warmup (components/atomic_pusher.py, serving/canary.py,
serving/warmup.py): a good
version is pushed with a warmup file TF Serving can read, built from the eval examples; a version
that does not load or answers NaN is refused with one line and never appears in the serving dir;
the local server replays a version's warmup file before serving it and refuses the version if a
request fails. The toy SavedModels are serving/testing.py's."""
import json
import os
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from pinrank.components.atomic_pusher import PushError, canary, publish
from pinrank.components.event_example_gen import user_examples
from pinrank.components.ranking_example_gen import request_examples
from pinrank.pipeline import cli
from pinrank.pipeline import features as F
from pinrank.pipeline.config import ExampleGenConfig
from pinrank.serving import constants as C
from pinrank.serving import local_server as LS
from pinrank.serving import testing as T
from pinrank.serving import warmup as W
from pinrank.serving.client import ServingClient

V1, V2 = 1_700_000_000, 1_700_000_100
DAY = 86_400
T0 = 1_600_000_000
CATALOG = np.arange(1, 60, dtype=np.int64)
PF_SIGNATURES = {C.SERVING_DEFAULT, C.EMBED_RAW, C.ITEM_EMBEDDING, C.RETRIEVE,
                 C.RETRIEVE_EMBEDDING}
N = C.WARMUP_REQUESTS_PER_SIGNATURE
pytestmark = pytest.mark.timeout(300)


def _write(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, "GZIP") as w:
        for r in records:
            w.write(r)
    return path


def _user_examples(tmp):
    """EventExampleGen's eval examples (its own writer) for 6 users."""
    cfg = ExampleGenConfig(eval_user_percent=100, valid_user_percent=0)
    rng = np.random.default_rng(0)
    out = []
    for u in range(6):
        n = 6 + u
        rows = {"item_id": rng.integers(1, 60, n).astype(np.int64),
                "action": np.array(["repin", "click"] * n, object)[:n],
                "surface": np.array(["homefeed", "search"] * n, object)[:n],
                "timestamp": np.sort(rng.integers(T0, T0 + 10 * DAY, n)).astype(np.int64),
                "duration": rng.uniform(0, 60, n).astype(np.float32)}
        for split, ex, _ in user_examples(f"user{u}", rows, cfg, data_end=T0 + 40 * DAY):
            assert split == "eval"
            if ex is not None:
                out.append(ex.SerializeToString())
    assert len(out) >= N
    return [_write(str(tmp / "pf" / "Split-eval" / "data_tfrecord-00000-of-00001.gz"), out)], out


def _ranking_examples(tmp):
    """RankingExampleGen's examples (request_examples) for 6 requests, written interleaved
    across two files the way Beam may shard them; returns the files and the requests."""
    rng = np.random.default_rng(1)
    reqs, shards = [], [[], []]
    for r in range(6):
        k = 3 + r
        hist = {F.HIST_ITEM: rng.integers(1, 60, 4).astype(np.int64),
                F.HIST_ACTION: np.array(["repin", "click", "hide", "closeup"], object),
                F.HIST_SURFACE: np.array(["homefeed"] * 4, object),
                F.HIST_TS: np.arange(T0, T0 + 4, dtype=np.int64),
                F.HIST_DURATION: np.ones(4, np.float32)}
        req = {"request_id": f"req{r}", "request_ts": T0 + DAY, "surface": "search",
               "hist": hist, "cand_item": rng.integers(1, 60, k).astype(np.int64),
               "labels": rng.integers(0, 2, (k, len(F.HEADS))).astype(np.int64)}
        emb, present = rng.normal(size=T.DIM).astype(np.float32), r % 2
        reqs.append((req, emb, present))
        for i, ex in enumerate(request_examples(f"user{r}", req, emb, present)):
            shards[i % 2].append(ex.SerializeToString())
    files = [_write(str(tmp / "rk" / "Split-eval" / f"data_tfrecord-0000{i}-of-00002.gz"), s)
             for i, s in enumerate(shards)]
    return files, reqs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("canary")
    pf_files, pf_examples = _user_examples(root)
    rk_files, rk_requests = _ranking_examples(root)
    return {"pf": T.save_toy_pinnerformer(str(root / "pf_model"), 1.0, catalog=CATALOG),
            "pf_nan": T.save_toy_pinnerformer(str(root / "pf_nan"), float("nan"),
                                              catalog=CATALOG),
            "rk": T.save_toy_ranker(str(root / "rk_model"), 1.0),
            "pf_files": pf_files, "pf_examples": pf_examples,
            "rk_files": rk_files, "rk_requests": rk_requests}


def _warmup_records(version_dir):
    """The warmup file read with TF Serving's own PredictionLog proto."""
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(os.path.join(version_dir, "assets.extra",
                                                          "tf_serving_warmup_requests"))]
    assert all(lg.WhichOneof("log_type") == "predict_log" for lg in logs)
    return [lg.predict_log.request for lg in logs]


def _by_signature(requests):
    out = {}
    for r in requests:
        out.setdefault(r.model_spec.signature_name, []).append(
            {k: tf.make_ndarray(v) for k, v in r.inputs.items()})
    return out


def test_good_pinnerformer_is_pushed_with_a_warmup_file_of_every_signature(tmp_path, store):
    base = str(tmp_path / "serving" / C.PINNERFORMER)
    final = publish(store["pf"], base, str(V1),
                    check=lambda d: canary(d, store["pf_files"]))
    assert sorted(os.listdir(base)) == [str(V1)]
    reqs = _warmup_records(final)
    assert {r.model_spec.name for r in reqs} == {C.PINNERFORMER}
    sigs = _by_signature(reqs)
    assert set(sigs) == PF_SIGNATURES and all(len(v) == N for v in sigs.values())
    # Built from the first N eval users, as the serving clients shape them.
    users = [tf.train.Example.FromString(s) for s in store["pf_examples"][:N]]
    model = tf.saved_model.load(store["pf"])
    for i, ex in enumerate(users):
        hist = np.asarray(ex.features.feature[F.HIST_ITEM].int64_list.value, np.int64)
        assert sigs[C.SERVING_DEFAULT][i][C.EXAMPLES].tolist() == [store["pf_examples"][i]]
        raw = sigs[C.EMBED_RAW][i]
        n = min(len(hist), T.SEQ_LEN)
        assert raw[C.HIST_LEN].tolist() == [n]
        assert raw[F.HIST_ITEM][0, :n].tolist() == hist[len(hist) - n:].tolist()  # newest L
        assert (raw[F.HIST_ITEM][0, n:] == C.PAD_ITEM).all()
        assert sorted(sigs[C.ITEM_EMBEDDING][i][C.ITEM_ID].tolist()) == sorted(set(hist.tolist()))
        ret = sigs[C.RETRIEVE][i]
        assert ret[C.EXCLUDE_ITEMS].shape == (1, C.RETRIEVE_EXCLUDE_WIDTH)
        assert set(ret[C.EXCLUDE_ITEMS][0].tolist()) - {C.PAD_ITEM} == set(hist.tolist())
        assert ret[C.K].tolist() == [C.WARMUP_RETRIEVE_K]
        # retrieve_embedding gets what embed_raw answers for the same user
        want = model.signatures[C.EMBED_RAW](**{k: tf.constant(v) for k, v in raw.items()})
        np.testing.assert_allclose(sigs[C.RETRIEVE_EMBEDDING][i][C.EMBEDDING],
                                   want[C.EMBEDDING].numpy(), rtol=1e-6)
    # The pushed version is the copy plus the warmup file, nothing else changed.
    for root, _, files in os.walk(store["pf"]):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), store["pf"])
            with open(os.path.join(root, f), "rb") as a, open(os.path.join(final, rel), "rb") as b:
                assert a.read() == b.read(), rel


def test_ranker_pushed_by_the_pipeline_component_with_rank_requests_from_eval(tmp_path, store):
    """The AtomicPusher component (LocalDagRunner) with an Examples channel: its eval split's
    requests, grouped by request_id across shards, become the rank warmup requests."""
    from tfx import v1 as tfx

    from pinrank.components.atomic_pusher import AtomicPusher

    model_uri = tmp_path / "model"
    shutil.copytree(store["rk"], model_uri / "Format-Serving")
    examples_uri = os.path.dirname(os.path.dirname(store["rk_files"][0]))
    model = tfx.dsl.Importer(source_uri=str(model_uri),
                             artifact_type=tfx.types.standard_artifacts.Model,
                             reimport=True).with_id("import_model")
    examples = tfx.dsl.Importer(source_uri=examples_uri,
                                artifact_type=tfx.types.standard_artifacts.Examples,
                                properties={"split_names": json.dumps(["eval"])},
                                reimport=True).with_id("import_examples")
    base = tmp_path / "serving" / C.RANKER
    pusher = AtomicPusher(model=model.outputs["result"], examples=examples.outputs["result"],
                          push_destination=tfx.proto.PushDestination(
                              filesystem=tfx.proto.PushDestination.Filesystem(
                                  base_directory=str(base)))).with_id("RankerPusher")
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="canary", pipeline_root=str(tmp_path / "root"),
        components=[model, examples, pusher], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(tmp_path / "metadata.sqlite"))))
    (version,) = os.listdir(base)
    sigs = _by_signature(_warmup_records(str(base / version)))
    # the toy ranker has only `rank` (the real one also serving_default, canaried as above)
    assert set(sigs) == {C.RANK} and len(sigs[C.RANK]) == N
    # the first N requests in file order, each with all its candidates (from both shards)
    for got, (req, emb, present) in zip(sigs[C.RANK], store["rk_requests"]):
        assert sorted(got[F.CAND_ITEM].tolist()) == sorted(req["cand_item"].tolist())
        assert got[F.HIST_ITEM].tolist() == [req["hist"][F.HIST_ITEM].tolist()]
        assert got[C.HIST_LEN].tolist() == [4]
        assert got[F.REQUEST_TS].tolist() == [req["request_ts"]]
        assert got[F.SURFACE].tolist() == [b"search"]
        assert got[F.PF_PRESENT].tolist() == [present]
        if present:
            np.testing.assert_array_equal(got[F.PF_EMBEDDING], emb[None, :])


def _no_variables(src, dst):
    shutil.copytree(src, dst)
    shutil.rmtree(os.path.join(dst, "variables"))
    return dst


@pytest.mark.parametrize("bad", ["no-variables", "nan"])
def test_broken_candidate_is_refused_and_the_previous_version_stays(tmp_path, store, bad):
    base = tmp_path / "serving" / C.PINNERFORMER
    T.push_version(store["pf"], str(base), V1)
    src = (_no_variables(store["pf"], str(tmp_path / "broken")) if bad == "no-variables"
           else store["pf_nan"])
    with pytest.raises(PushError) as e:
        publish(src, str(base), str(V2), check=lambda d: canary(d, store["pf_files"]))
    msg = cli._one_line(e.value)
    assert msg == str(e.value) and cli._user_error_code(e.value) == 1  # `pinrank run`: exit 1
    assert msg.startswith(f"canary refused {base}/.tmp-{V2}-")
    if bad == "nan":  # the first request of the first signature, sorted
        assert msg.endswith(": warmup request 0 (embed_raw): output 'embedding' is not finite")
    else:
        assert "the SavedModel does not load" in msg
    assert os.listdir(base) == [str(V1)]  # nothing moved in, no temporary dir left
    assert LS._versions_on_disk(str(base)) == [V1]


def test_non_finite_allows_only_retrieve_padding():
    ok = {C.ITEM_IDS: np.array([[3, C.PAD_ITEM]]), C.SCORES: np.array([[0.5, -np.inf]])}
    assert W.non_finite(ok) is None
    assert W.non_finite({**ok, C.SCORES: np.array([[0.5, np.nan]])}) == C.SCORES
    assert W.non_finite({**ok, C.SCORES: np.array([[-np.inf, -np.inf]])}) == C.SCORES
    assert W.non_finite({C.EMBEDDING: np.array([[1.0, np.inf]], np.float32)}) == C.EMBEDDING
    assert W.non_finite({"repin": np.array([0.1, 0.2], np.float32),
                         C.ITEM_IDS: np.array([[1]])}) is None


# ----------------------------------------------------------------------------- local server


def _request(signature, inputs):
    from pinrank.serving.client import to_tensor_proto

    req = predict_pb2.PredictRequest()
    req.model_spec.name, req.model_spec.signature_name = C.PINNERFORMER, signature
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(to_tensor_proto(v))
    return req


def _status(client):
    return {s.version: s for s in client.status(C.PINNERFORMER)}


@pytest.mark.parametrize("enable_warmup", [True, False])
def test_local_server_replays_warmup_and_refuses_a_version_whose_warmup_fails(
        tmp_path, store, monkeypatch, enable_warmup):
    replayed = []
    real_replay = W.replay

    def counting_replay(servable, requests, require_finite=False):
        replayed.append((servable.version, len(requests)))
        return real_replay(servable, requests, require_finite)

    monkeypatch.setattr(W, "replay", counting_replay)
    base = tmp_path / "serving" / C.PINNERFORMER
    good = T.push_version(store["pf"], str(base), V1)
    W.write(good, [_request(C.EMBED_RAW, T.toy_history(3, seed=s)) for s in range(2)])
    h = LS.serve(model_base_path=str(tmp_path / "serving"), port=0,
                 file_system_poll_wait_seconds=0.05, max_load_retries=1,
                 enable_model_warmup=enable_warmup)
    try:
        client = ServingClient(h.target, retries=0)
        assert client.wait_until_available(C.PINNERFORMER, V1, timeout_s=30) == V1
        assert replayed == ([(V1, 2)] if enable_warmup else [])
        bad_inputs = {**T.toy_history(1), C.HIST_LEN: np.array([1], np.int32)}  # wrong dtype
        bad = T.push_version(store["pf"], str(base), V2)
        W.write(bad, [_request(C.EMBED_RAW, T.toy_history(1)),
                      _request(C.EMBED_RAW, bad_inputs)])
        if not enable_warmup:  # without warmup the same version loads: the warmup refused it
            assert client.wait_until_available(C.PINNERFORMER, V2, timeout_s=30) == V2
            return
        deadline = time.monotonic() + 60
        while (states := _status(client)).get(V2) is None or states[V2].state != "END":
            assert time.monotonic() < deadline, {v: s.state for v, s in states.items()}
            time.sleep(0.05)
        assert states[V2].state == "END" and states[V2].error_code != 0
        assert ("warmup request 1 (embed_raw): INVALID_ARGUMENT: input 'hist_len': expects "
                "dtype DT_INT64 but got DT_INT32") in states[V2].error_message
        assert states[V1].state == "AVAILABLE"
        _, served = client.predict_versioned(C.PINNERFORMER, C.EMBED_RAW, T.toy_history(2))
        assert served == V1
    finally:
        h.stop(grace=None)


def test_unreadable_warmup_file_fails_the_load(tmp_path, store):
    version = T.push_version(store["pf"], str(tmp_path / C.PINNERFORMER), V1)
    os.makedirs(os.path.join(version, "assets.extra"))
    with open(W.path(version), "wb") as f:
        f.write(b"not a tfrecord")
    with pytest.raises(W.WarmupError, match="tf_serving_warmup_requests: not a TFRecord file"):
        LS.Servable(C.PINNERFORMER, V1, version, warmup=True)
    LS.Servable(C.PINNERFORMER, V1, version, warmup=False)  # the model itself is fine
