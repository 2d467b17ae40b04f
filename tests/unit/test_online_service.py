"""The recommendation service (serving/service.py, recs_http.py, recs_cli.py) against the local
TF-Serving stand-in with the serving test models, and a real action store: the full path, each
degradation, cold start, HTTP and the `recommend` command. Numbers are checked against numpy
references computed from the models' own signatures, in process."""
import json
import os
import threading
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest

from pinrank.components.data import events as ev
from pinrank.components.data import ranking_features as rf
from pinrank.pipeline import features as F
from pinrank.pipeline.config import DAY_S, preset
from pinrank.serving import constants as C
from pinrank.serving import testing as T

pytestmark = pytest.mark.timeout(300)

T0 = 1_700_000_000
CATALOG = np.arange(1, 41)
NOW = T0 + 3 * DAY_S + 500  # request time: user "a" has actions on three earlier days


def _events():
    rng = np.random.default_rng(5)
    rows = []
    for u, n in (("a", 12), ("b", 6)):
        for i in range(n):
            rows.append(dict(user_id=u, item_id=int(rng.integers(1, 41)), action=F.ACTIONS[i % 4],
                             timestamp=T0 + (i // 4) * DAY_S + 60 * i, duration=float(i),
                             surface="homefeed"))
    rows.append(dict(user_id="a", item_id=7, action="repin", timestamp=NOW + 10, duration=3.0,
                     surface="homefeed"))  # after the request: never seen by it
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Dataset (titles, items, events), the toy models pushed, the local server."""
    from pinrank.serving import local_server as LS

    root = tmp_path_factory.mktemp("online")
    data = str(root / "data")
    events = _events()
    ev.write_items(data, CATALOG, np.eye(40, 3, dtype=np.float32), [[] for _ in CATALOG], ["x"])
    ev.write_titles(data, CATALOG, [f"Movie {i}" for i in CATALOG])
    with ev.EventShardWriter(data) as w:
        w.write(events)
    ev.write_dataset_manifest(data, {"fingerprint": "t"})
    pf = T.save_toy_pinnerformer(str(root / "pf"), 1.0, catalog=CATALOG)
    rk = T.save_toy_ranker(str(root / "rk"), 1.0)
    serving = root / "serving"
    T.push_version(pf, str(serving / C.PINNERFORMER), 7)
    h = LS.serve(model_base_path=str(serving), port=0, file_system_poll_wait_seconds=0.1)
    yield dict(root=root, data=data, events=events, pf=pf, rk=rk, serving=serving, server=h)
    h.stop(grace=None)


def _sigs(path):
    import tensorflow as tf

    return tf.saved_model.load(path).signatures


def _fill_store(store, events, pf_sigs):
    """Replay the events before NOW and write the snapshot of NOW's day (user "a" only)."""
    import tensorflow as tf

    store.append(events[events.timestamp < NOW])
    day = rf.day_start(NOW)
    hist = _embed_inputs(events, "a", day)
    emb = pf_sigs[C.EMBED_RAW](**{k: tf.constant(v) for k, v in hist.items()})[C.EMBEDDING]
    store.put_snapshot(day, ["a"], emb.numpy(), {"dim": 4})
    return emb.numpy()[0]


def _embed_inputs(events, user, before):
    from pinrank.serving.client import embed_request_from_events

    return embed_request_from_events(events, [user], T.SEQ_LEN, before)


def _recommender(world, store, cfg=None, target=None, snapshot_store=None):
    from pinrank.serving.client import ServingClient
    from pinrank.serving.service import ColdStart, Recommender

    cfg = cfg or preset("cpu", "movielens").replace(online={"num_candidates": 8, "k": 5})
    # A generous deadline: the first call to a freshly loaded model traces it, which takes
    # seconds on a busy 2-core machine.
    client = ServingClient(target or world["server"].target, timeout_s=30, retries=1)
    return Recommender(client, store, cfg, titles=ev.read_titles(world["data"]),
                       cold_start=ColdStart.from_dataset(world["data"], 28),
                       snapshot_store=snapshot_store)


def _reference_retrieval(world, user, k):
    """Top-k of the catalogue by <user, item> from the toy model in process, history excluded."""
    import tensorflow as tf

    sigs = _sigs(world["pf"])
    e = world["events"]
    u = sigs[C.EMBED_RAW](**{k_: tf.constant(v) for k_, v in
                             _embed_inputs(e, user, NOW).items()})[C.EMBEDDING].numpy()[0]
    items = sigs[C.ITEM_EMBEDDING](item_id=tf.constant(CATALOG))[C.EMBEDDING].numpy()
    scores = items @ u
    seen = set(e[(e.user_id == user) & (e.timestamp < NOW)].item_id)
    order = [i for i in np.lexsort((CATALOG, -scores)) if CATALOG[i] not in seen][:k]
    return CATALOG[order], scores[order]


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    from pinrank.serving.action_store import open_store

    url = (f"sqlite:///{tmp_path}/actions.db" if request.param == "sqlite"
           else request.getfixturevalue("redis_url"))
    with open_store(url) as s:
        yield s


def test_retrieval_only_then_ranked_then_ranker_gone(world, store):
    from pinrank.serving import service as S

    snap = _fill_store(store, world["events"], _sigs(world["pf"]))
    rec = _recommender(world, store)
    want_ids, want_scores = _reference_retrieval(world, "a", 8)

    out = rec.recommend("a", request_ts=NOW)  # no ranker served yet
    assert out.mode == S.RETRIEVAL_ONLY and out.degraded[0].startswith("ranker unavailable")
    assert [i["item_id"] for i in out.items] == want_ids[:5].tolist()
    np.testing.assert_allclose([i["retrieval_score"] for i in out.items], want_scores[:5],
                               rtol=1e-5)
    assert [i["title"] for i in out.items] == [f"Movie {i}" for i in want_ids[:5]]
    assert out.models == {C.PINNERFORMER: 7, C.RANKER: None}
    assert out.snapshot_as_of == rf.day_start(NOW) and out.history_len == 12
    assert out.num_candidates == 8 and set(out.timings_ms) >= {"store", "snapshot", "retrieve",
                                                               "rank", "total"}

    T.push_version(world["rk"], str(world["serving"] / C.RANKER), 1)
    rec.client.wait_until_available(C.RANKER, timeout_s=30)
    out = rec.recommend("a", request_ts=NOW)
    assert out.mode == S.RANKED and out.degraded == [] and out.models[C.RANKER] == 1
    # numpy reference: the toy ranker in process on the request's features, utility by weights
    import tensorflow as tf

    feats = rec.request_features("a", NOW, "homefeed", rec.history("a", NOW), (snap, 0), 4)
    np.testing.assert_array_equal(feats[F.PF_EMBEDDING], snap)
    inputs = S.rank_inputs(feats, want_ids)
    sig = _sigs(world["rk"])[C.RANK]
    heads = {h: v.numpy() for h, v in sig(**{k: tf.constant(inputs[k]) for k in
                                              sig.structured_input_signature[1]}).items()}
    w = dict(zip(F.HEADS, rec.cfg.online.rank_weights))
    utility = sum(w[h] * heads[h] for h in F.HEADS)
    order = np.lexsort((want_ids, -utility))[:5]
    assert [i["item_id"] for i in out.items] == want_ids[order].tolist()
    np.testing.assert_allclose([i["utility"] for i in out.items], utility[order], rtol=1e-5)
    assert set(out.items[0]["scores"]) == set(F.HEADS)

    # The ranker disappears (its model base removed): retrieval order again, marked.
    import shutil
    shutil.rmtree(world["serving"] / C.RANKER)
    import time
    deadline = time.monotonic() + 30
    while S.available_version(rec.client, C.RANKER) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    out = rec.recommend("a", request_ts=NOW)
    assert out.mode == S.RETRIEVAL_ONLY and "ranker unavailable" in out.degraded[0]


def test_unknown_user_gets_the_cold_start_list(world, store):
    from pinrank.serving import service as S

    _fill_store(store, world["events"], _sigs(world["pf"]))
    out = _recommender(world, store).recommend("nobody", request_ts=NOW, k=4)
    assert out.mode == S.COLD_START and out.models[C.PINNERFORMER] is None
    e = world["events"]
    pos = e[(e.timestamp < rf.day_start(NOW)) & (e.timestamp >= rf.day_start(NOW) - 28 * DAY_S)
            & np.asarray(ev.is_positive(e.action, e.duration), bool)]
    counts = pos.item_id.value_counts()
    want = sorted(counts.index, key=lambda i: (-counts[i], i))[:4]  # window = all time here
    assert [i["item_id"] for i in out.items] == want
    assert all(i["retrieval_score"] is None for i in out.items)


def test_store_down_is_an_error_or_batch_only(world, tmp_path):
    from pinrank.serving import service as S
    from pinrank.serving.action_store import open_store

    actions = open_store(f"sqlite:///{tmp_path}/a.db")
    snapshots = open_store(f"sqlite:///{tmp_path}/s.db")
    snap = _fill_store(snapshots, world["events"], _sigs(world["pf"]))
    actions.close()  # every call now raises StoreUnavailableError
    with pytest.raises(S.ServiceError) as e:
        _recommender(world, actions).recommend("a", request_ts=NOW)
    assert e.value.status == 503 and e.value.code == "store_unavailable"
    cfg = preset("cpu", "movielens").replace(online={"num_candidates": 8, "k": 5,
                                                     "on_store_down": "batch_only"})
    out = _recommender(world, actions, cfg, snapshot_store=snapshots).recommend("a",
                                                                                request_ts=NOW)
    assert out.history_len == 0 and out.degraded[0].startswith("action store unavailable")
    # retrieval from the snapshot's embedding, no history to exclude
    import tensorflow as tf
    items = _sigs(world["pf"])[C.ITEM_EMBEDDING](item_id=tf.constant(CATALOG))[C.EMBEDDING].numpy()
    scores = items @ snap
    assert [i["item_id"] for i in out.items] == CATALOG[np.lexsort((CATALOG, -scores))][:5].tolist()
    snapshots.close()


def test_retrieval_down_answers_the_popular_list(world, store):
    from pinrank.serving import service as S

    _fill_store(store, world["events"], _sigs(world["pf"]))
    rec = _recommender(world, store, target="127.0.0.1:1")  # nothing listens there
    out = rec.recommend("a", request_ts=NOW, k=3)
    assert out.mode == S.POPULAR and out.degraded[0].startswith("retrieval unavailable")
    assert len(out.items) == 3


def test_http_api_and_recommend_command(world, tmp_path, capsys):
    from pinrank.pipeline import cli as pinrank_cli
    from pinrank.serving import recs_http
    from pinrank.serving.action_store import open_store

    url = f"sqlite:///{tmp_path}/actions.db"
    with open_store(url) as store:
        _fill_store(store, world["events"], _sigs(world["pf"]))
        httpd = recs_http.serve(_recommender(world, store), "127.0.0.1", 0)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        try:
            doc = _get(f"{base}/v1/recommendations/a?now={NOW}&k=3")
            schema = recs_http.OPENAPI["components"]["schemas"]
            assert set(schema["Recommendations"]["required"]) <= set(doc)
            assert len(doc["items"]) == 3 and doc["items"][0]["title"].startswith("Movie ")
            assert _get(f"{base}/openapi.json")["openapi"].startswith("3.")
            health = _get(f"{base}/healthz")
            assert health["status"] == "ok" and health["models"][C.PINNERFORMER] == 7
            assert _status(f"{base}/v1/recommendations/a?k=zero") == (400, "bad_request")
            assert _status(f"{base}/v1/recommendations/a?k=9999") == (400, "bad_request")
            assert _status(f"{base}/v1/recommendations/a?surface=moon") == (400, "bad_request")
            assert _status(f"{base}/nowhere") == (404, "not_found")
        finally:
            httpd.shutdown()
            httpd.server_close()
    args = ["recommend", "--user", "a", "--data", world["data"], "--target",
            world["server"].target, "--now-ts", str(NOW), "--set", f"online.store={url}",
            "--k", "3"]
    assert pinrank_cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("Movie ") == 3 and "pinnerformer v7" in out
    assert pinrank_cli.main(args + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["user_id"] == "a"


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _status(url):
    try:
        urllib.request.urlopen(url, timeout=30)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]["code"]
    return 200, None


def test_openapi_file_is_the_served_description():
    """serving/deploy/openapi.json (for gateways and client generators) is OPENAPI."""
    from pinrank.serving import recs_http

    with open(os.path.join(C.DEPLOY_DIR, "openapi.json")) as f:
        assert json.load(f) == recs_http.OPENAPI


def test_explain_repeats_the_request_without_each_part(world, store, capsys):
    """Each explained variant equals the served signatures called by hand on the same request
    with that part removed: utility from the toy ranker in process, retrieval rank from the toy
    PinnerFormer's embedding of the shortened history."""
    import tensorflow as tf

    from pinrank.pipeline import cli as pinrank_cli
    from pinrank.serving import service as S
    from pinrank.serving.explain import explain, format_explanation

    snap = _fill_store(store, world["events"], _sigs(world["pf"]))
    T.push_version(world["rk"], str(world["serving"] / C.RANKER), 2)
    rec = _recommender(world, store)
    rec.client.wait_until_available(C.RANKER, timeout_s=30)
    x = explain(rec, "a", request_ts=NOW, max_actions=3)
    top = rec.recommend("a", request_ts=NOW).items[0]
    assert x.item_id == top["item_id"] and x.position == 1 and x.mode == S.RANKED
    assert x.utility == pytest.approx(top["utility"], rel=1e-6)

    sig = _sigs(world["rk"])[C.RANK]
    w = dict(zip(F.HEADS, rec.cfg.online.rank_weights))

    def utility_by_hand(events_df, snapshot):
        hist = rf.sort_events({k: events_df[k].to_numpy() for k in ("item_id", "action",
                                                                    "timestamp", "duration",
                                                                    "surface")})
        feats = rec.request_features("a", NOW, "homefeed", hist, snapshot, 4)
        inputs = S.rank_inputs(feats, np.array([x.item_id]))
        out = sig(**{k: tf.constant(inputs[k]) for k in sig.structured_input_signature[1]})
        return float(sum(w[h] * out[h].numpy()[0] for h in F.HEADS))

    e = world["events"]
    mine = e[(e.user_id == "a") & (e.timestamp < NOW)].sort_values("timestamp", kind="stable")
    assert x.utility == pytest.approx(utility_by_hand(mine, (snap, 0)), rel=1e-5)
    by_name = {g["without"]: g for g in x.groups}
    assert by_name["PinnerFormer embedding"]["utility"] == pytest.approx(
        utility_by_hand(mine, None), rel=1e-5)
    assert by_name["both (request context only)"]["utility"] == pytest.approx(
        utility_by_hand(mine.iloc[:0], None), rel=1e-5)

    sigs = _sigs(world["pf"])
    items = sigs[C.ITEM_EMBEDDING](item_id=tf.constant(CATALOG))[C.EMBEDDING].numpy()
    seen = set(mine.item_id)
    assert [a["timestamp"] for a in x.actions] == mine.timestamp.tolist()[::-1][:3]
    for j, a in enumerate(x.actions):
        rest = mine.drop(mine.index[len(mine) - 1 - j])
        u = sigs[C.EMBED_RAW](**{k: tf.constant(v) for k, v in _embed_inputs(
            pd.concat([rest, e[e.user_id != "a"]]), "a", NOW).items()})[C.EMBEDDING].numpy()[0]
        scores = items @ u
        order = [CATALOG[i] for i in np.lexsort((CATALOG, -scores)) if CATALOG[i] not in seen][:8]
        want = order.index(x.item_id) + 1 if x.item_id in order else None
        assert a["retrieval_rank"] == want
        assert a["utility"] == pytest.approx(utility_by_hand(rest, (snap, 0)), rel=1e-5)
        assert a["change"] == pytest.approx(a["utility"] - x.utility, abs=1e-9)
    assert "retrieval rank" in format_explanation(x)

    with pytest.raises(S.ServiceError, match="not among"):
        explain(rec, "a", request_ts=NOW, item_id=next(iter(seen)))  # acted on: never retrieved
    args = ["explain", "--user", "a", "--data", world["data"], "--target",
            world["server"].target, "--now-ts", str(NOW), "--set", f"online.store={store.url}",
            "--set", "online.k=5", "--set", "online.num_candidates=8", "--actions", "2"]
    assert pinrank_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "answer #1" in out and "the newest 2 actions" in out
    assert pinrank_cli.main(args + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["item_id"] == x.item_id
