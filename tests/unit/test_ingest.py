"""`pinrank ingest`: file and Redis Stream replays into the action store (a real redis-server
from tests/unit/conftest.py), invalid events counted and logged, and a replay up to T equal to the
batch history before T."""
import dataclasses
import json
import logging
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinrank.components.data import events as E
from pinrank.pipeline import cli
from pinrank.pipeline import features as F
from pinrank.serving import action_store as S
from pinrank.serving import ingest as I

ITEMS = np.arange(1, 41, dtype=np.int64)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'actions.db'}"
    return request.getfixturevalue("redis_url")


def dataset_with_items(d):
    E.write_items(str(d), ITEMS, np.ones((len(ITEMS), 2), np.float32),
                  [[0]] * len(ITEMS), ["only"])
    return str(d)


def valid_events(n=40, seed=0):
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    while len(rows) < n:
        u, ts, item = f"u{rng.integers(3)}", int(1_000_000 + rng.integers(5000)), int(
            rng.choice(ITEMS))
        if (u, ts, item) not in seen:
            seen.add((u, ts, item))
            rows.append({"user_id": u, "item_id": item, "action": F.ACTIONS[rng.integers(4)],
                         "timestamp": ts, "duration": float(rng.integers(0, 40)) / 2,
                         "surface": F.SURFACES[rng.integers(5)]})
    return rows


# One per problem, plus one with two problems (counted once as an event, under both).
INVALID = [
    {"user_id": "u0", "item_id": 1, "action": "like", "timestamp": 1_000_001, "duration": 1.0,
     "surface": "homefeed"},
    {"user_id": "u0", "item_id": 1, "action": "click", "timestamp": -5, "duration": 1.0,
     "surface": "homefeed"},
    {"user_id": "u1", "item_id": 999, "action": "click", "timestamp": 1_000_002, "duration": 1.0,
     "surface": "homefeed"},
    {"user_id": "", "item_id": 2, "action": "click", "timestamp": 1_000_003, "duration": -1.0,
     "surface": "homefeed"},
    {"user_id": "u2", "item_id": 2, "action": "click", "timestamp": 1_000_004,
     "surface": "homefeed"},  # no duration field
]
INVALID_COUNTS = {"unknown_action": 1, "negative_timestamp": 1, "unknown_item": 1,
                  "missing_user_id": 1, "negative_duration": 1, "missing_duration": 1}


def reference(rows, user, before_ts, limit):
    df = pd.DataFrame(rows, columns=list(F.EVENT_COLUMNS))
    df = df[(df["user_id"] == user) & (df["timestamp"] < before_ts)]
    return df.sort_values(["timestamp", "item_id"]).tail(limit)


def check_store(store, rows, users=("u0", "u1", "u2"), before=2_000_000, limit=1000):
    for u in users:
        want = reference(rows, u, before, limit)
        got = store.recent_actions(u, before, limit)
        assert got["item_id"].tolist() == want["item_id"].tolist()
        assert got["timestamp"].tolist() == want["timestamp"].tolist()
        assert got["action"].tolist() == want["action"].tolist()
        assert got["surface"].tolist() == want["surface"].tolist()
        assert got["duration"].tolist() == want["duration"].tolist()


def test_jsonl_replay_counts_invalid_events_and_logs_each(store_url, tmp_path, capsys, caplog):
    d = dataset_with_items(tmp_path / "ds")
    rows = valid_events()
    lines = [json.dumps(r) for r in rows[:20]] + ["{not json", "[1, 2]", ""]
    lines += [json.dumps(r) for r in INVALID] + [json.dumps(r) for r in rows[20:]]
    lines += [json.dumps(rows[0])]  # re-sent
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="pinrank.serving.ingest"):
        code = cli.main(["ingest", "--store", store_url, "--file", str(path), "--items", d,
                         "--json"])
    out = capsys.readouterr().out
    assert code == 0
    stats = json.loads(out)
    assert stats["read"] == 40 + 2 + len(INVALID) + 1
    assert stats["added"] == 40 and stats["duplicate"] == 1 and stats["invalid"] == 7
    assert stats["invalid_by_problem"] == {**INVALID_COUNTS, "malformed": 2}
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 7  # one line per invalid event, naming the file and the row
    assert any("row 20: malformed event (not JSON" in m for m in msgs)
    assert any(f"{path}: 1 row with unknown action (row 22: 'like')" == m for m in msgs)
    assert any("item id not in the item table (row 24: 999)" in m for m in msgs)
    with S.open_store(store_url) as store:
        check_store(store, rows)


def test_csv_parquet_and_stdin_give_the_same_store(tmp_path, capsys, monkeypatch):
    import io

    rows = valid_events(seed=3)
    df = pd.DataFrame(rows, columns=list(F.EVENT_COLUMNS))
    df.to_csv(tmp_path / "e.csv", index=False)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "e.parquet")
    for name in ("e.csv", "e.parquet", "-"):
        url = f"sqlite:///{tmp_path}/{name}.db"
        if name == "-":
            monkeypatch.setattr("sys.stdin", io.StringIO(
                "".join(json.dumps(r) + "\n" for r in rows)))
        code = cli.main(["ingest", "--store", url,
                         "--file", name if name == "-" else str(tmp_path / name)])
        out = capsys.readouterr().out.strip()
        assert code == 0
        assert out == ("ingest: read 40, added 40, duplicate 0, stale 0, trimmed 0, "
                       "skipped (at/after --until) 0, invalid 0"), out
        with S.open_store(url) as store:
            check_store(store, rows)
    # --until: events at or after it are skipped and counted.
    url = f"sqlite:///{tmp_path}/until.db"
    stats = I.ingest_file(str(tmp_path / "e.csv"), S.open_store(url), until=1_002_500)
    assert stats.skipped_until == int((df["timestamp"] >= 1_002_500).sum()) > 0
    with S.open_store(url) as store:
        check_store(store, rows, before=1_002_500)
        assert store.recent_actions("u0", 10 ** 9)["timestamp"].max() < 1_002_500


def test_invalid_log_lines_are_rate_limited(tmp_path, caplog):
    clock = [0.0]
    limiter = I._RateLimitedLog(burst=3, interval_s=10.0, clock=lambda: clock[0])
    with S.open_store(f"sqlite:///{tmp_path}/a.db") as store:
        ing = I.Ingestor(store, limiter=limiter)
        bad = pd.DataFrame([dict(INVALID[0], timestamp=1_000_000 + i) for i in range(10)])
        with caplog.at_level(logging.WARNING, logger="pinrank.serving.ingest"):
            ing.batch(bad, "f.jsonl")
            clock[0] = 11.0
            ing.batch(bad.iloc[:1], "f.jsonl")
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 4 and "(7 invalid-event lines suppressed before this)" in msgs[-1]
    assert ing.stats.invalid_events == 11
    assert {k: v for k, v in ing.stats.invalid.items() if v} == {"unknown_action": 11}


def xadd_all(client, stream, rows):
    for r in rows:
        client.xadd(stream, {k: str(v) for k, v in r.items()})


def test_redis_stream_consumer_group_survives_a_restart(redis_url, tmp_path, capsys):
    import redis

    client = redis.Redis.from_url(redis_url)
    d = dataset_with_items(tmp_path / "ds")
    rows = valid_events(30, seed=5)
    entries = rows[:12] + INVALID[:3] + rows[12:]
    xadd_all(client, "ev", entries)
    client.xadd("ev", {"event": json.dumps(rows[0])})  # JSON form, re-sent: a duplicate
    client.xadd("ev", {"event": "{oops"})
    store_url = f"sqlite:///{tmp_path}/s.db"
    argv = ["ingest", "--store", store_url, "--redis-stream", redis_url, "--stream", "ev",
            "--items", d, "--json"]
    # 1) stops after 10 entries, all acknowledged
    assert cli.main(argv + ["--max-events", "10"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["read"] == 10 and first["added"] == 10
    # 2) a consumer that crashed after writing 5 entries to the store, before XACK
    got = client.xreadgroup(I.DEFAULT_GROUP, I.DEFAULT_CONSUMER, {"ev": ">"}, count=5)
    delivered = got[0][1]
    assert len(delivered) == 5  # rows 10, 11 and three invalid ones
    with S.open_store(store_url) as store:
        store.append(pd.DataFrame([{k.decode(): v.decode() for k, v in f.items()}
                                   for _, f in delivered[:2]]))
    # 3) restart: its pending entries first (duplicates now), then the rest, until idle
    assert cli.main(argv + ["--block-ms", "200"]) == 0
    second = json.loads(capsys.readouterr().out)
    total = len(entries) + 2
    assert second["read"] == total - 10
    assert second["duplicate"] == 2 + 1  # the 2 valid of the 5 re-delivered, the re-sent one
    assert second["invalid"] == 4 and second["invalid_by_problem"]["malformed"] == 1
    assert first["added"] + second["added"] + 2 == 30
    assert client.xpending("ev", I.DEFAULT_GROUP)["pending"] == 0
    with S.open_store(store_url) as store:
        check_store(store, rows)
    # 4) nothing new: a third run reads nothing
    assert cli.main(argv + ["--block-ms", "100"]) == 0
    assert json.loads(capsys.readouterr().out)["read"] == 0
    client.close()


def test_redis_stream_into_a_redis_store_with_a_second_consumer(redis_url, capsys):
    import redis

    client = redis.Redis.from_url(redis_url)
    rows = valid_events(25, seed=7)
    xadd_all(client, "ev2", rows)
    with S.open_store(redis_url) as store:
        a = I.ingest_redis_stream(redis_url, "ev2", store, group="g", consumer="a",
                                  max_events=11)
        b = I.ingest_redis_stream(redis_url, "ev2", store, group="g", consumer="b",
                                  block_ms=100)
        assert (a.read, b.read, a.added + b.added) == (11, 14, 25)
        check_store(store, rows)
    client.close()


# ------------------------------------------------------------------- bad input (exit codes)

# More rows than docs/bad-input.md's table (tests/unit/test_bad_input.py runs those).
@pytest.mark.parametrize("argv,fragment,code", [
    (["ingest", "--file", "x.jsonl"], "required: --store", 2),
    (["ingest", "--store", "sqlite:///{t}/a.db", "--file", "x.jsonl", "--max-events", "3"],
     "--max-events only apply to --redis-stream", 2),
    (["ingest", "--store", "sqlite:///{t}/a.db", "--redis-stream", "redis://h:1/0", "--stream",
      "s", "--block-ms", "0"], "--block-ms must be >= 1, got 0", 2),
    (["ingest", "--store", "sqlite:///{t}/a.db", "--file", "{t}/e.txt"],
     "unknown event file type", 2),
    (["ingest", "--store", "sqlite:///{t}/e.txt/a.db", "--file", "{t}/e.jsonl"],
     "e.txt/a.db unavailable", 1),  # the store's directory would be inside a file
    (["ingest", "--store", "sqlite:///{t}/a.db", "--redis-stream", "redis://127.0.0.1:{p}/0",
      "--stream", "s"], "event stream redis://127.0.0.1:{p}/0 stream s unavailable", 1),
    (["ingest", "--store", "sqlite:///{t}/a.db", "--file", "{t}/e.jsonl", "--items",
      "{t}/nowhere"], "items.parquet: not found", 1),
])
def test_bad_cli_input_is_one_line(argv, fragment, code, tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    (tmp_path / "e.jsonl").write_text("")
    (tmp_path / "e.txt").write_text("")
    argv = [a.format(t=tmp_path, p=port) for a in argv]
    fragment = fragment.format(p=port)
    try:
        got = cli.main(argv)
    except SystemExit as e:
        got = e.code
    err = capsys.readouterr().err
    assert got == code, err
    assert fragment in err and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1, err


# ---------------------------------------------------- replay up to T == batch history before T

def _batch_histories(events: pd.DataFrame, T: int, m: int, client_every: int = 1):
    """Per user, the batch path's history before T: RankingExampleGen's _sorted_events +
    _history, and (for every `client_every`-th user) client.embed_request_from_events."""
    from pinrank.components.ranking_example_gen import _history, _sorted_events
    from pinrank.serving.client import embed_request_from_events

    groups = {u: g for u, g in events.groupby("user_id", sort=True)}
    sampled = sorted(groups)[::client_every]
    req = embed_request_from_events(events, sampled, m, T)
    out = {}
    for u, g in groups.items():
        r = _sorted_events({k: g[k].to_numpy() for k in F.EVENT_COLUMNS})
        end = int(np.searchsorted(r["timestamp"], T, side="left"))
        # The event log's own float64 durations (the batch path casts them to float32).
        durations = g.loc[g["timestamp"] < T].sort_values(["timestamp", "item_id"]).tail(m)
        out[u] = (_history(r, end, m), durations["duration"].tolist(), None)
    for row, u in enumerate(sampled):
        out[u] = out[u][:2] + ({k: v[row] for k, v in req.items()},)
    return out


def _replay_and_compare(dataset_dir: str, urls, T: int, m: int, capacity: int,
                        client_every: int = 1) -> int:
    events = pd.concat([E.read_event_shard(p) for p in E.event_shards(dataset_dir)],
                       ignore_index=True)
    assert not events.duplicated(["user_id", "timestamp", "item_id"]).any()
    batch = _batch_histories(events, T, m, client_every)
    known = I.known_item_ids(dataset_dir)
    compared = 0
    for url in urls:
        with S.open_store(url, capacity=capacity) as store:
            for shard in E.event_shards(dataset_dir):
                stats = I.ingest_file(shard, store, known_items=known, until=T)
                assert stats.invalid_events == 0  # stale ones are older than a full window
            for u, (hist, durations, req) in batch.items():
                got = store.recent_actions(u, T, m)
                assert got["item_id"].tolist() == hist[F.HIST_ITEM].tolist()
                assert got["timestamp"].tolist() == hist[F.HIST_TS].tolist()
                assert got["action"].tolist() == hist[F.HIST_ACTION].tolist()
                assert got["surface"].tolist() == hist[F.HIST_SURFACE].tolist()
                np.testing.assert_array_equal(got["duration"].astype(np.float32),
                                              hist[F.HIST_DURATION])
                assert got["duration"].tolist() == durations
                if req is not None:
                    n = int(req["hist_len"])
                    assert got["item_id"].tolist() == req[F.HIST_ITEM][:n].tolist()
                    assert got["timestamp"].tolist() == req[F.HIST_TS][:n].tolist()
                    assert [a.encode() for a in got["action"]] == req[F.HIST_ACTION][:n].tolist()
                    assert [a.encode() for a in got["surface"]] == \
                        req[F.HIST_SURFACE][:n].tolist()
                compared += len(got["item_id"])
            assert store.recent_actions("not-a-user", T, m)["item_id"].size == 0
    assert compared > 0
    return compared


def test_synthetic_replay_until_t_equals_the_batch_history(tmp_path, redis_url):
    from pinrank.components.data import synthetic
    from pinrank.pipeline.config import preset

    cfg = preset("tiny")
    d = str(tmp_path / "syn")
    synthetic.generate(d, dataclasses.replace(cfg.data, num_users=60), with_impressions=False)
    ts = pd.concat([E.read_event_shard(p) for p in E.event_shards(d)])["timestamp"]
    T = int(np.quantile(ts, 0.6))
    _replay_and_compare(d, [f"sqlite:///{tmp_path}/s.db", redis_url], T, cfg.model.seq_len,
                        S.default_capacity(cfg))


def test_movielens_replay_until_t_equals_the_batch_history(tmp_path, redis_url):
    from pinrank.components.data import movielens as M

    src = os.path.join(M.cache_root(""), M.ML100K_DIR)
    if not M._cache_valid(src):
        pytest.skip(f"ML-100K not cached at {src} (this test never downloads it)")
    d = str(tmp_path / "ml")
    M.convert_movielens_100k(src, d)
    T = 885_000_000  # mid-way through ML-100K's seven months
    # The client path is O(users x events): checked on every 10th user.
    assert _replay_and_compare(d, [f"sqlite:///{tmp_path}/ml.db", redis_url], T, 64, 100,
                               client_every=10) > 2 * 10_000
