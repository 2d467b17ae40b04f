"""The action store's contract, run on both back ends (a SQLite file; a real redis-server from
tests/unit/conftest.py), with the numbers checked against a pandas reference."""
import threading

import numpy as np
import pandas as pd
import pytest

from pinrank.pipeline import features as F
from pinrank.serving import action_store as S

BACKENDS = ["sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'actions.db'}"
    return request.getfixturevalue("redis_url")


def random_events(rng, users=5, n=300, t0=1_700_000_000, span=10 * 86400):
    """Events with unique (user, timestamp, item), so (timestamp, item) orders them fully."""
    rows = []
    seen = set()
    while len(rows) < n:
        u = f"u{rng.integers(users)}"
        ts = int(t0 + rng.integers(span))
        item = int(rng.integers(-5, 50))  # negative ids are valid int64 item ids
        if (u, ts, item) in seen:
            continue
        seen.add((u, ts, item))
        rows.append({"user_id": u, "item_id": item, "action": F.ACTIONS[rng.integers(4)],
                     "timestamp": ts, "duration": float(np.round(rng.exponential(10), 3)),
                     "surface": F.SURFACES[rng.integers(5)]})
    return pd.DataFrame(rows, columns=list(F.EVENT_COLUMNS))


def reference(events, user, before_ts, limit, capacity):
    """The newest `capacity` distinct events of the user, then those before before_ts."""
    df = events.drop_duplicates().loc[events["user_id"] == user]
    df = df.sort_values(["timestamp", "item_id"], kind="stable").tail(capacity)
    df = df.loc[df["timestamp"] < before_ts].tail(limit)
    return {"item_id": df["item_id"].to_numpy(np.int64), "action": df["action"].to_numpy(object),
            "surface": df["surface"].to_numpy(object),
            "duration": df["duration"].to_numpy(np.float64),
            "timestamp": df["timestamp"].to_numpy(np.int64)}


def assert_actions_equal(got, want):
    assert set(got) == set(S.ACTION_KEYS)
    for k in S.ACTION_KEYS:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_shuffled_arrival_in_chunks_matches_the_reference(store_url):
    rng = np.random.default_rng(0)
    events = random_events(rng)
    cap = 40
    with S.open_store(store_url, capacity=cap) as store:
        shuffled = events.sample(frac=1.0, random_state=1).reset_index(drop=True)
        added = trimmed = stale = 0
        for lo in range(0, len(shuffled), 37):
            c = store.append(shuffled.iloc[lo:lo + 37])
            added, trimmed, stale = added + c["added"], trimmed + c["trimmed"], stale + c["stale"]
            assert c["duplicate"] == 0
        per_user = events.groupby("user_id").size()
        # Every event was either stored (and maybe trimmed later) or stale on arrival.
        assert added + stale == len(events)
        assert added - trimmed == int(np.minimum(per_user, cap).sum())
        for user in sorted(per_user.index) + ["nobody"]:
            for before in (1_700_000_000, 1_700_000_000 + 5 * 86400, 1_800_000_000):
                for limit in (1, 7, cap, None):
                    want = reference(events, user, before, limit or cap, cap)
                    assert_actions_equal(store.recent_actions(user, before, limit), want)


def test_duplicates_by_content_and_by_explicit_event_id(store_url):
    rng = np.random.default_rng(1)
    events = random_events(rng, users=2, n=30)
    with S.open_store(store_url, capacity=100) as store:
        assert store.append(events) == {"added": 30, "duplicate": 0, "stale": 0, "trimmed": 0}
        again = events.iloc[::-1].to_dict("records")  # a list of dicts, reversed
        assert store.append(again) == {"added": 0, "duplicate": 30, "stale": 0, "trimmed": 0}
        assert_actions_equal(store.recent_actions("u0", 2_000_000_000),
                             reference(events, "u0", 2_000_000_000, 100, 100))
        # An explicit event id decides identity, whatever the content.
        a = {"user_id": "x", "item_id": 1, "action": "click", "timestamp": 10, "duration": 1.0,
             "surface": "search", "event_id": "e-1"}
        b = dict(a, item_id=2, timestamp=11)
        c = dict(a, event_id="e-2")  # same content as a, another id: another event
        assert store.append([a, b, c]) == {"added": 2, "duplicate": 1, "stale": 0, "trimmed": 0}
        got = store.recent_actions("x", 100)
        assert got["item_id"].tolist() == [1, 1] and got["timestamp"].tolist() == [10, 10]


def test_capacity_trims_the_oldest_and_late_old_events_are_stale(store_url):
    ev = [{"user_id": "u", "item_id": i, "action": "repin", "timestamp": 100 + i,
           "duration": 0.0, "surface": "homefeed"} for i in range(12)]
    with S.open_store(store_url, capacity=5) as store:
        assert store.append(ev[::-1]) == {"added": 12, "duplicate": 0, "stale": 0, "trimmed": 7}
        assert store.recent_actions("u", 1000)["item_id"].tolist() == [7, 8, 9, 10, 11]
        # Re-sent trimmed events and new ones older than the window never come back.
        old = ev[:3] + [dict(ev[0], item_id=99, timestamp=50)]
        assert store.append(old) == {"added": 0, "duplicate": 0, "stale": 4, "trimmed": 0}
        # Between the watermark (item 6 at 106) and the window: stored, the oldest trimmed.
        mid = dict(ev[0], item_id=50, timestamp=108)
        assert store.append([mid]) == {"added": 1, "duplicate": 0, "stale": 0, "trimmed": 1}
        assert store.recent_actions("u", 1000)["item_id"].tolist() == [8, 50, 9, 10, 11]
        assert store.recent_actions("u", 1000, 2)["item_id"].tolist() == [10, 11]
        # Tie with the watermark's timestamp, ordered by item: below it -> stale, above -> kept.
        assert store.append([dict(ev[0], item_id=5, timestamp=107)])["stale"] == 1
        assert store.append([dict(ev[0], item_id=7, timestamp=108)]) == {
            "added": 1, "duplicate": 0, "stale": 0, "trimmed": 1}


def test_seen_items_outlive_the_window_and_keep_the_first_time(store_url):
    """Every item acted on before a time, trimmed ones included, against a pandas reference."""
    rng = np.random.default_rng(11)
    events = random_events(rng, users=3, n=200)
    with S.open_store(store_url, capacity=7) as store:
        for chunk in np.array_split(events.sample(frac=1.0, random_state=3), 5):
            store.append(chunk)
        store.append(events.iloc[:20])  # duplicates change nothing
        for user in ("u0", "u1", "u2"):
            for t in (1_700_000_000, 1_700_300_000, 1_700_600_000, 1_800_000_000):
                mine = events[(events.user_id == user) & (events.timestamp < t)]
                want = np.unique(mine.item_id.to_numpy(np.int64))
                got = store.seen_items(user, t)
                assert got.dtype == np.int64
                np.testing.assert_array_equal(got, want)
        assert len(store.recent_actions("u0", 1_800_000_000)["item_id"]) == 7
        assert store.seen_items("stranger", 1_800_000_000).tolist() == []


def test_before_ts_is_strict_and_unknown_users_are_empty(store_url):
    ev = [{"user_id": "u", "item_id": i, "action": "click", "timestamp": t, "duration": 12.5,
           "surface": "related"} for i, t in ((3, 200), (1, 200), (2, 300))]
    with S.open_store(store_url) as store:
        store.append(ev)
        assert store.recent_actions("u", 200)["item_id"].tolist() == []
        r = store.recent_actions("u", 201)
        assert r["item_id"].tolist() == [1, 3] and r["timestamp"].tolist() == [200, 200]
        assert store.recent_actions("u", 301)["item_id"].tolist() == [1, 3, 2]
        assert store.recent_actions("u", 301, 0)["item_id"].tolist() == []
        assert_actions_equal(store.recent_actions("stranger", 10 ** 10), S.empty_actions())


def test_ties_resolve_identically_on_both_back_ends(tmp_path, redis_url):
    # Same (user, timestamp, item), different action/duration: the record breaks the tie.
    base = {"user_id": "u", "item_id": 4, "timestamp": 500, "surface": "homefeed"}
    ev = [dict(base, action=a, duration=d) for a, d in
          (("repin", 0.0), ("closeup", 9.5), ("closeup", 10.0), ("click", 3.0))]
    ev.append(dict(base, item_id=3, action="hide", duration=0.0))
    results = []
    for url, order in ((f"sqlite:///{tmp_path}/a.db", [0, 1, 2, 3, 4]),
                       (redis_url, [4, 3, 2, 1, 0])):
        with S.open_store(url, capacity=3) as store:
            store.append([ev[i] for i in order])
            results.append(store.recent_actions("u", 1000))
    assert_actions_equal(results[0], results[1])
    assert results[0]["item_id"].tolist() == [4, 4, 4]


def test_snapshot_versions_fallback_and_keep(store_url):
    dim = 4
    users = np.array(["a", "b", "c"], dtype=object)
    with S.open_store(store_url, keep_snapshots=3) as store:
        assert store.snapshot_versions() == [] and store.snapshot_embedding("a", 10 ** 9) is None
        for k, as_of in enumerate((86400, 2 * 86400, 3 * 86400, 4 * 86400)):
            emb = np.full((3, dim), float(k), np.float32) + np.arange(3, dtype=np.float32)[:, None]
            assert store.put_snapshot(as_of, users[: 2 + (k % 2)], emb[: 2 + (k % 2)],
                                      {"model_version": str(k)}) == 2 + (k % 2)
        assert store.snapshot_versions() == [2 * 86400, 3 * 86400, 4 * 86400]
        assert store.snapshot_meta(86400) is None
        assert store.snapshot_meta(3 * 86400) == {"as_of": 3 * 86400, "dim": dim, "users": 2,
                                                  "model_version": "2"}
        vec, v = store.snapshot_embedding("b", 3 * 86400 + 5)
        assert v == 3 * 86400 and vec.dtype == np.float32
        np.testing.assert_array_equal(vec, np.full(dim, 3.0, np.float32))
        # The newest version <= as_of; the user's absence there is absence (no older fallback).
        assert store.snapshot_embedding("c", 4 * 86400) is not None
        assert store.snapshot_embedding("c", 4 * 86400 - 1) is None
        assert store.snapshot_embedding("a", 2 * 86400 - 1) is None  # before every kept version
        assert store.snapshot_embedding("nobody", 4 * 86400) is None
        # The request path: the snapshot as of the start of the request's day.
        vec, v = store.snapshot_for_request("a", 3 * 86400 + 86399)
        assert v == 3 * 86400 and vec[0] == 2.0
        # Reloading a version replaces it whole; an empty snapshot is a version too.
        store.put_snapshot(4 * 86400, ["z"], np.ones((1, dim), np.float32))
        assert store.snapshot_embedding("a", 4 * 86400) is None
        assert store.snapshot_embedding("z", 4 * 86400)[1] == 4 * 86400
        store.put_snapshot(5 * 86400, [], np.zeros((0, dim), np.float32))
        assert store.snapshot_versions() == [3 * 86400, 4 * 86400, 5 * 86400]
        assert store.snapshot_embedding("z", 5 * 86400) is None
        with pytest.raises(ValueError, match="duplicate user ids"):
            store.put_snapshot(6 * 86400, ["a", "a"], np.ones((2, dim), np.float32))
        with pytest.raises(ValueError, match="NaN or inf"):
            store.put_snapshot(6 * 86400, ["a"], np.full((1, dim), np.nan, np.float32))
        assert store.snapshot_versions() == [3 * 86400, 4 * 86400, 5 * 86400]


def test_snapshot_flip_is_atomic_for_a_concurrent_reader(store_url):
    n, dim = 20_000, 8
    users = [f"u{i:06d}" for i in range(n)]
    with S.open_store(store_url) as writer, S.open_store(store_url) as reader:
        writer.put_snapshot(1000, users[: n // 2], np.full((n // 2, dim), 1.0, np.float32))
        seen, errors, stop = set(), [], threading.Event()

        def read():
            while not stop.is_set():
                last = reader.snapshot_embedding(users[-1], 10 ** 6)  # only in the new one
                first = reader.snapshot_embedding(users[0], 10 ** 6)
                if last is not None and (last[1] != 2000 or last[0][0] != 2.0):
                    errors.append(("last", last))
                if first is None or first[0][0] != first[1] / 1000:
                    errors.append(("first", first))
                if last is not None and first[1] != 2000:  # new visible -> stays visible
                    errors.append(("order", first))
                seen.add(None if last is None else last[1])

        t = threading.Thread(target=read)
        t.start()
        try:
            writer.put_snapshot(2000, users, np.full((n, dim), 2.0, np.float32))
        finally:
            stop.set()
            t.join()
        assert not errors, errors[:3]
        assert reader.snapshot_embedding(users[-1], 10 ** 6)[1] == 2000
        assert writer.snapshot_versions() == [1000, 2000]


def test_unavailable_redis_is_one_line_naming_the_url(own_redis_server):
    url = own_redis_server.url
    store = S.open_store(url)
    store.append([{"user_id": "u", "item_id": 1, "action": "click", "timestamp": 1,
                   "duration": 1.0, "surface": "other"}])
    own_redis_server.stop()
    calls = [store.ping, lambda: store.recent_actions("u", 10),
             lambda: store.append([{"user_id": "u", "item_id": 2, "action": "click",
                                    "timestamp": 2, "duration": 1.0, "surface": "other"}]),
             lambda: store.put_snapshot(1, ["u"], np.ones((1, 2), np.float32)),
             lambda: store.snapshot_embedding("u", 5), store.snapshot_versions]
    for call in calls:
        with pytest.raises(S.StoreUnavailableError) as e:
            call()
        msg = str(e.value)
        assert url in msg and "\n" not in msg, msg
    store.close()
    with pytest.raises(S.StoreUnavailableError, match=f"{url} unavailable"):
        S.open_store(url)  # nothing listens there any more


def test_unavailable_or_bad_urls(tmp_path):
    (tmp_path / "file").write_text("")  # a new store's directory is created, but not in a file
    with pytest.raises(S.StoreUnavailableError, match="file/x.db unavailable"):
        S.open_store(f"sqlite:///{tmp_path}/file/x.db")
    S.open_store(f"sqlite:///{tmp_path}/new/dir/x.db").close()
    with pytest.raises(S.StoreError, match="expected sqlite:///PATH or redis://"):
        S.open_store("postgres://localhost/x")
    with pytest.raises(S.StoreError, match="bad Redis URL"):
        S.open_store("redis://localhost:notaport/0")
    store = S.open_store(f"sqlite:///{tmp_path}/a.db")
    store.close()
    with pytest.raises(S.StoreUnavailableError, match="store is closed"):
        store.recent_actions("u", 1)
    masked = S.RedisActionStore("redis://:secret@127.0.0.1:1/0")
    with pytest.raises(S.StoreUnavailableError) as e:
        masked.ping()
    assert "secret" not in str(e.value) and "***" in str(e.value)


def test_invalid_events_are_refused_naming_the_rows(tmp_path):
    from pinrank.components.data.events import EventValidationError

    with S.open_store(f"sqlite:///{tmp_path}/a.db") as store:
        with pytest.raises(EventValidationError, match="unknown action"):
            store.append([{"user_id": "u", "item_id": 1, "action": "like", "timestamp": 1,
                           "duration": 1.0, "surface": "other"}])
        assert store.recent_actions("u", 10)["item_id"].tolist() == []


def test_default_capacity_covers_m_p_and_the_ranking_history():
    from pinrank.pipeline.config import preset

    for name in ("tiny", "cpu", "paper"):
        cfg = preset(name)
        assert S.default_capacity(cfg) == max(cfg.model.seq_len, cfg.ranker.realtime.seq_len,
                                              cfg.ranking.max_history)
    assert S.open_store.__doc__ and S.day_start(86400 * 3 + 5) == 86400 * 3


# ------------------------------------------------------------------ privacy: forget, retention

def _seen_reference(events, user, cap, cutoff=None):
    """{item: first time} the store holds: every event's item at its first time; after
    purge_before(cutoff), items first seen at or after the cutoff plus those of held actions,
    first seen at their oldest held action."""
    mine = events.drop_duplicates().loc[events["user_id"] == user]
    first = mine.groupby("item_id")["timestamp"].min().to_dict()
    if cutoff is None:
        return first
    held = pd.DataFrame(reference(events, user, 1 << 62, cap, cap))
    held = held[held["timestamp"] >= cutoff]
    out = {i: t for i, t in first.items() if t >= cutoff}
    for i, t in held.groupby("item_id")["timestamp"].min().items():
        out[i] = min(out.get(i, t), t)
    return out


def _assert_seen(store, user, want):
    """seen_items at every boundary reproduces the reference's (item, first time) pairs."""
    for t in sorted({*want.values(), 1 << 62}):
        np.testing.assert_array_equal(
            store.seen_items(user, t + 1),
            np.array(sorted(i for i, f in want.items() if f <= t), np.int64), err_msg=(user, t))


def test_forget_user_removes_everything_of_one_user_only(store_url):
    rng = np.random.default_rng(5)
    events = random_events(rng, users=3, n=150)
    cap, dim = 20, 3
    users = ["u0", "u1", "u2"]
    with S.open_store(store_url, capacity=cap) as store:
        store.append(events)
        for k, as_of in enumerate((86400, 2 * 86400)):
            store.put_snapshot(as_of, users, np.full((3, dim), k, np.float32))
        store.put_snapshot(3 * 86400, ["u0", "u2"], np.ones((2, dim), np.float32))
        held = len(reference(events, "u1", 1 << 62, cap, cap)["item_id"])
        n_seen = len(_seen_reference(events, "u1", cap))
        assert store.forget_user("u1") == {"actions": held, "seen": n_seen, "snapshot_rows": 2}
        assert store.forget_user("u1") == {"actions": 0, "seen": 0, "snapshot_rows": 0}
        assert len(store.recent_actions("u1", 1 << 62)["item_id"]) == 0
        assert store.seen_items("u1", 1 << 62).tolist() == []
        assert all(store.snapshot_embedding("u1", v) is None for v in (86400, 2 * 86400))
        for other in ("u0", "u2"):  # untouched
            assert_actions_equal(store.recent_actions(other, 1 << 62),
                                 reference(events, other, 1 << 62, cap, cap))
            _assert_seen(store, other, _seen_reference(events, other, cap))
            assert store.snapshot_embedding(other, 2 * 86400)[1] == 2 * 86400
        # The watermark went too: the user's events, sent again, are stored as new.
        again = store.append(events[events.user_id == "u1"])
        assert again["added"] == int((events.user_id == "u1").sum())
        assert_actions_equal(store.recent_actions("u1", 1 << 62),
                             reference(events, "u1", 1 << 62, cap, cap))
        assert store.forget_user("never-seen") == {"actions": 0, "seen": 0, "snapshot_rows": 0}


def test_forget_user_reaches_a_snapshot_being_loaded(redis_url):
    """A forget between a snapshot's staging and its flip still removes the user's row."""
    with S.open_store(redis_url) as store:
        flip = store._snap_flip

        def forget_then_flip(*args, **kwargs):
            assert store.forget_user("b")["snapshot_rows"] == 1
            return flip(*args, **kwargs)

        store._snap_flip = forget_then_flip
        store.put_snapshot(86400, ["a", "b"], np.ones((2, 2), np.float32))
        assert store.snapshot_embedding("b", 86400) is None
        assert store.snapshot_embedding("a", 86400) is not None
        assert store._r.smembers(f"{store.prefix}:snap:loading") == set()


@pytest.mark.parametrize("cap", [8, 1000])
def test_purge_before_against_the_reference(store_url, cap):
    rng = np.random.default_rng(17)
    events = random_events(rng, users=6, n=400, span=20 * 86400)
    # One user whose every action is older than the cutoff: removed whole.
    events.loc[events.user_id == "u5", "timestamp"] -= 30 * 86400
    cutoff = 1_700_000_000 + 8 * 86400
    users = sorted(events.user_id.unique())
    with S.open_store(store_url, capacity=cap) as store:
        store.append(events.sample(frac=1.0, random_state=1))
        want_actions = want_seen = 0
        gone = 0
        for u in users:
            held = pd.DataFrame(reference(events, u, 1 << 62, cap, cap))
            kept = int((held.timestamp >= cutoff).sum())
            want_actions += len(held) - kept
            want_seen += (len(_seen_reference(events, u, cap))
                          - len(_seen_reference(events, u, cap, cutoff)))
            gone += kept == 0
        assert gone >= 1
        assert store.purge_before(cutoff) == {"actions": want_actions, "seen": want_seen,
                                              "users": gone}
        assert store.purge_before(cutoff) == {"actions": 0, "seen": 0, "users": 0}
        for u in users:
            want = reference(events, u, 1 << 62, cap, cap)
            keep = want["timestamp"] >= cutoff
            assert_actions_equal(store.recent_actions(u, 1 << 62),
                                 {k: v[keep] for k, v in want.items()})
            _assert_seen(store, u, _seen_reference(events, u, cap, cutoff))
        # Expired events sent again stay out for users still held; nothing already held moves.
        alive = [u for u in users if len(store.recent_actions(u, 1 << 62)["item_id"])]
        old = events[events.user_id.isin(alive) & (events.timestamp < cutoff)]
        counts = store.append(old)
        assert counts["added"] == 0 and counts["stale"] + counts["duplicate"] == len(old)
        for u in alive:
            want = reference(events, u, 1 << 62, cap, cap)
            keep = want["timestamp"] >= cutoff
            assert_actions_equal(store.recent_actions(u, 1 << 62),
                                 {k: v[keep] for k, v in want.items()})
