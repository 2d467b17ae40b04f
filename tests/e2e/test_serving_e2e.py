"""Pipeline push -> local TF-Serving stand-in -> gRPC, on the tiny pipeline's pushed model:
Predict (embed_raw and serving_default) equals the in-process SavedModel, the daily embedding job
reproduces the in-process embeddings, and the online path (`pinrank online-demo`) returns k
unseen items."""
import os

import numpy as np
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

N_USERS = 6


@pytest.fixture(scope="module")
def pushed(tiny_run):
    """(cfg, pushed SavedModel dir, its version, serving dir, dataset dir, events) of the newest
    push of the tiny run."""
    import pandas as pd

    from pinrank.components.data import events as ev

    cfg, first, second = tiny_run
    dest = second.get("pushed_destination") or first["pushed_destination"]
    assert os.path.isfile(os.path.join(dest, "saved_model.pb")), dest
    paths = first["paths"]
    events = pd.concat([df for _, df, _ in ev.iter_events(paths["data_dir"])],
                       ignore_index=True)
    return dict(cfg=cfg, model=dest, version=int(os.path.basename(dest)),
                serving_dir=paths["serving_dir"], data_dir=paths["data_dir"], events=events)


@pytest.fixture(scope="module")
def server(pushed):
    from pinrank.serving import constants as C
    from pinrank.serving import local_server as LS
    from pinrank.serving.configs import load_batching_parameters

    # As deployed: batching on, per model (the pushed pinnerformer carries its parameters).
    h = LS.serve(model_base_path=pushed["serving_dir"], port=0, file_system_poll_wait_seconds=0,
                 enable_batching=True, per_model_batching=True,
                 batching_parameters=load_batching_parameters(
                     os.path.join(C.DEPLOY_DIR, C.BATCHING_CONFIG)))
    yield h
    h.stop(grace=None)


@pytest.fixture(scope="module")
def in_process(pushed):
    import tensorflow as tf

    return tf.saved_model.load(pushed["model"]).signatures


@pytest.fixture(scope="module")
def cohort(pushed):
    """A few users and a cut-off in the middle of the data (so some history is in the future
    and some users have more than M actions before it)."""
    ev = pushed["events"]
    as_of = int(np.quantile(ev["timestamp"], 0.7))
    before = ev[ev["timestamp"] < as_of]
    counts = before.groupby("user_id").size().sort_values(ascending=False)
    users = sorted(counts.index[:N_USERS // 2].tolist() + counts.index[-(N_USERS // 2):].tolist())
    return users, as_of


def _call(sig, inputs):
    import tensorflow as tf

    return {k: v.numpy() for k, v in sig(**{n: tf.constant(x) for n, x in inputs.items()}).items()}


def _exact_top_k(ids, items, user, k, exclude):
    """Reference retrieval: inner products, excluded ids dropped, best first, ties by id."""
    s = items @ np.asarray(user, np.float32).reshape(-1)
    cand = np.flatnonzero(~np.isin(ids, exclude))
    best = cand[np.lexsort((ids[cand], -s[cand]))][:k]
    return ids[best], s[best]


def _examples(req):
    import tensorflow as tf

    from pinrank.pipeline import features as F
    from pinrank.serving import constants as C

    out = []
    for i, n in enumerate(req[C.HIST_LEN].tolist()):
        f = {}
        for name in (F.HIST_ITEM, F.HIST_TS):
            f[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=req[name][i, :n]))
        for name in (F.HIST_ACTION, F.HIST_SURFACE):
            f[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=req[name][i, :n]))
        f[F.HIST_DURATION] = tf.train.Feature(
            float_list=tf.train.FloatList(value=req[F.HIST_DURATION][i, :n]))
        out.append(tf.train.Example(features=tf.train.Features(feature=f)))
    return out


def test_grpc_predict_matches_in_process_saved_model(pushed, server, in_process, cohort):
    from pinrank.serving import constants as C
    from pinrank.serving.client import ServingClient, embed_request_from_events

    users, as_of = cohort
    m = pushed["cfg"].model.seq_len
    req = embed_request_from_events(pushed["events"], users, m, as_of)
    assert req[C.HIST_LEN].max() == m and req[C.HIST_LEN].min() >= 1
    want = _call(in_process[C.EMBED_RAW], req)[C.EMBEDDING]
    assert want.shape == (len(users), pushed["cfg"].model.output_dim)
    with ServingClient(server.target, timeout_s=30) as c:
        assert c.wait_until_available(C.PINNERFORMER, pushed["version"], timeout_s=60)
        got, v = c.predict_versioned(C.PINNERFORMER, C.EMBED_RAW, req, pushed["version"])
        assert v == pushed["version"]
        np.testing.assert_allclose(got[C.EMBEDDING], want, atol=1e-5, rtol=1e-5)
        examples = _examples(req)
        via_examples = c.predict_examples(C.PINNERFORMER, examples, version=pushed["version"])
    ser = np.array([e.SerializeToString() for e in examples], dtype=object)
    want_ex = _call(in_process[C.SERVING_DEFAULT], {C.EXAMPLES: ser})[C.EMBEDDING]
    np.testing.assert_allclose(via_examples[C.EMBEDDING], want_ex, atol=1e-5, rtol=1e-5)
    # Both user signatures agree (same Transform graph).
    np.testing.assert_allclose(want_ex, want, atol=1e-5)


def test_daily_job_matches_in_process_embeddings(pushed, in_process, cohort, tmp_path):
    from pinrank.serving import batch_embeddings as B
    from pinrank.serving import constants as C
    from pinrank.serving.client import embed_request_from_events

    users, as_of = cohort
    root = str(tmp_path / "snapshots")
    path = B.run_daily_embeddings(pushed["model"], pushed["data_dir"], root, as_of)
    snap = B.load_snapshot(path)
    m = snap.manifest
    assert m["max_len"] == pushed["cfg"].model.seq_len  # M read from the model
    assert m["model_version"] == str(pushed["version"])
    ev = pushed["events"]
    active = sorted(ev[ev["timestamp"] < as_of]["user_id"].unique())
    assert snap.user_ids.tolist() == active
    assert m["counts"] == {"embedded": len(active), "carried": 0, "total": len(active)}
    want = _call(in_process[C.EMBED_RAW],
                 embed_request_from_events(ev, users, m["max_len"], as_of))[C.EMBEDDING]
    for u, w in zip(users, want):
        np.testing.assert_allclose(snap.get(u), w, atol=1e-5, rtol=1e-5)
    # Next day: only users acting in [as_of, as_of2) change.
    as_of2 = as_of + 86400
    snap2 = B.load_snapshot(B.run_daily_embeddings(pushed["model"], pushed["data_dir"], root,
                                                   as_of2))
    day = ev[(ev["timestamp"] >= as_of) & (ev["timestamp"] < as_of2)]["user_id"].unique()
    assert snap2.manifest["counts"]["embedded"] == len(day)
    for u in set(active) - set(day):
        np.testing.assert_array_equal(snap2.get(u), snap.get(u))


def test_online_path_on_the_pushed_models(pushed, in_process, tmp_path, capsys):
    """`pinrank online-demo` on the tiny run: ingest -> daily snapshot -> retrieve (the
    SavedModel's own index) -> rank, over gRPC; the answer is k unseen items, the retrieval
    agrees with an exact in-process search and the ranker answered."""
    import tensorflow as tf

    from pinrank.components.data import events as evm
    from pinrank.pipeline import cli as pinrank_cli
    from pinrank.pipeline import online_demo
    from pinrank.serving import constants as C
    from pinrank.serving.client import embed_request_from_events

    cfg = pushed["cfg"].replace(online={"store": f"sqlite:///{tmp_path}/actions.db", "k": 10,
                                        "num_candidates": 50})
    home = os.path.dirname(os.path.dirname(os.path.dirname(pushed["serving_dir"])))
    out = online_demo.run(cfg, home, log=lambda *_: None)
    rec, t = out["recommendations"], out["request_ts"]
    assert rec["mode"] == "ranked" and rec["degraded"] == []  # the tiny run pushes a ranker
    assert rec["models"][C.PINNERFORMER] == pushed["version"] and rec["snapshot_as_of"] is not None
    ev = pushed["events"]
    user = rec["user_id"]
    hist = set(ev[(ev["user_id"] == user) & (ev["timestamp"] < t)]["item_id"].tolist())
    ids = [i["item_id"] for i in rec["items"]]
    assert len(ids) == 10 == len(set(ids)) and not set(ids) & hist
    assert out["ingest"]["read"] == len(ev) and out["ingest"]["invalid"] == 0  # all before t
    # The 50 candidates were the exact top 50 by inner product: the ranked 10 are among them.
    catalog = evm.item_arrays(pushed["data_dir"])[0]
    items = in_process[C.ITEM_EMBEDDING](item_id=tf.constant(catalog))[C.EMBEDDING].numpy()
    emb = _call(in_process[C.EMBED_RAW], embed_request_from_events(
        ev, [user], max(cfg.model.seq_len, cfg.ranking.max_history), t))[C.EMBEDDING]
    ref_ids, ref_scores = _exact_top_k(catalog, items, emb[0], 50, sorted(hist))
    assert set(ids) <= set(ref_ids.tolist())
    got = {i["item_id"]: i["retrieval_score"] for i in rec["items"]}
    ref = dict(zip(ref_ids.tolist(), ref_scores.tolist()))
    np.testing.assert_allclose([got[i] for i in ids], [ref[i] for i in ids], atol=1e-4)
    assert all(set(i["scores"]) == {"repin", "click", "closeup", "hide"} for i in rec["items"])
    assert [i["utility"] for i in rec["items"]] == sorted((i["utility"] for i in rec["items"]),
                                                          reverse=True)
    assert pinrank_cli.main(["online-demo", "--preset", "tiny", "--home", home, "--set",
                             f"online.store=sqlite:///{tmp_path}/actions.db"]) == 0
    assert "ranked" in capsys.readouterr().out
