"""The action store's monitoring and privacy commands through the real `pinrank` CLI, on SQLite
and a real redis-server (tests/unit/conftest.py): `query snapshot --max-age-hours` (ML Test
Score Monitor 4), `forget-user` and `purge` (Data 5; docs/privacy.md)."""
import json
import socket

import numpy as np
import pytest

from pinrank.pipeline import cli
from pinrank.pipeline.config import DAY_S
from pinrank.serving import action_store as S
from pinrank.serving import cli as serving_cli

T0 = 1_700_006_400  # a day start (multiple of 86400)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'actions.db'}"
    return request.getfixturevalue("redis_url")


def _run(argv, capsys):
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _events(user, ts_list, item0=0):
    return [{"user_id": user, "item_id": item0 + i, "action": "repin", "timestamp": int(t),
             "duration": 0.0, "surface": "homefeed"} for i, t in enumerate(ts_list)]


def test_snapshot_staleness_error_reads_the_version_as_the_as_of():
    now = T0 + 30 * 3600
    assert serving_cli.snapshot_staleness_error([T0 - DAY_S, T0], 31, now) is None
    assert serving_cli.snapshot_staleness_error([T0, T0 - DAY_S], 29, now) == (
        f"newest user-embedding snapshot, as of {T0}, is 30.0 h old (> --max-age-hours 29)")
    assert serving_cli.snapshot_staleness_error([], 99, now) == (
        "the action store holds no user-embedding snapshot")


def test_query_snapshot_monitor_on_both_back_ends(store_url, capsys):
    argv = ["query", "snapshot", "--store", store_url, "--max-age-hours", "26"]
    rc, out, err = _run(argv + ["--now-ts", str(T0)], capsys)
    assert rc == 1 and err.strip() == (
        "error: the action store holds no user-embedding snapshot")
    assert json.loads(out)["versions"] == []
    with S.open_store(store_url) as store:
        store.put_snapshot(T0 - DAY_S, ["a"], np.ones((1, 2), np.float32))
        store.put_snapshot(T0, ["a", "b"], np.ones((2, 2), np.float32), {"model_version": "7"})
    rc, out, err = _run(argv + ["--now-ts", str(T0 + 25 * 3600)], capsys)
    doc = json.loads(out)
    assert rc == 0 and err == ""
    assert doc["versions"] == [T0 - DAY_S, T0] and doc["age_hours"] == 25.0
    assert doc["newest"] == {"as_of": T0, "dim": 2, "users": 2, "model_version": "7"}
    # The daily job did not land: at 03:00 the next day the newest is 27 h old.
    rc, out, err = _run(argv + ["--now-ts", str(T0 + 27 * 3600)], capsys)
    assert rc == 1 and err.strip() == (
        f"error: newest user-embedding snapshot, as of {T0}, is 27.0 h old "
        "(> --max-age-hours 26)")
    rc, out, err = _run(["query", "snapshot", "--store", store_url], capsys)  # no limit: report
    assert rc == 0 and json.loads(out)["versions"] == [T0 - DAY_S, T0]


def test_forget_user_command(store_url, capsys):
    with S.open_store(store_url) as store:
        store.append(_events("u1", [T0 + 1, T0 + 2, T0 + 3]) + _events("u2", [T0 + 5]))
        store.put_snapshot(T0, ["u1", "u2"], np.ones((2, 2), np.float32))
        store.put_snapshot(T0 + DAY_S, ["u1"], np.ones((1, 2), np.float32))
    rc, out, err = _run(["forget-user", "--store", store_url, "--user", "u1"], capsys)
    assert rc == 0 and err == ""
    assert out.splitlines() == [f"forget-user u1 in {store_url}: removed 3 actions, 3 seen "
                                "items, 2 snapshot rows"]
    rc, out, err = _run(["forget-user", "--store", store_url, "--user", "u1", "--json"], capsys)
    assert rc == 0 and json.loads(out) == {"user": "u1", "actions": 0, "seen": 0,
                                           "snapshot_rows": 0}
    with S.open_store(store_url) as store:
        assert len(store.recent_actions("u2", T0 + DAY_S)["item_id"]) == 1
        assert store.snapshot_embedding("u2", T0) is not None
        assert store.snapshot_embedding("u1", T0 + DAY_S) is None


def test_purge_command_uses_online_retention_days(store_url, capsys):
    now = T0 + 100 * DAY_S
    with S.open_store(store_url) as store:
        # u1: two actions older than 30 days, one newer; u2: only old ones.
        store.append(_events("u1", [now - 40 * DAY_S, now - 31 * DAY_S, now - 29 * DAY_S])
                     + _events("u2", [now - 50 * DAY_S], item0=10))
    argv = ["purge", "--store", store_url, "--now-ts", str(now),
            "--set", "online.retention_days=30"]
    rc, out, err = _run(argv, capsys)
    assert rc == 0 and err == ""
    assert out.splitlines() == [f"purge {store_url}: actions before 2024-01-24T00:00:00Z "
                                "(30 days): removed 3 actions, 3 seen items, 1 users"]
    assert now - 30 * DAY_S == 1_706_054_400  # 2024-01-24T00:00:00Z
    rc, out, err = _run(argv + ["--json"], capsys)
    assert json.loads(out) == {"retention_days": 30, "cutoff_ts": now - 30 * DAY_S,
                               "actions": 0, "seen": 0, "users": 0}
    with S.open_store(store_url) as store:
        assert store.recent_actions("u1", now)["timestamp"].tolist() == [now - 29 * DAY_S]
        assert store.recent_actions("u2", now)["timestamp"].tolist() == []
    # The default retention (365 days) keeps everything left.
    rc, out, err = _run(argv[:5], capsys)
    assert rc == 0 and "removed 0 actions" in out


@pytest.mark.parametrize("argv,fragment,code", [
    (["forget-user", "--store", "redis://127.0.0.1:{p}/0", "--user", "u"],
     "action store redis://127.0.0.1:{p}/0 unavailable", 1),
    (["purge", "--store", "redis://127.0.0.1:{p}/0"], "unavailable", 1),
    (["query", "snapshot", "--store", "redis://127.0.0.1:{p}/0", "--max-age-hours", "1"],
     "unavailable", 1),
    (["forget-user", "--store", "mysql://x", "--user", "u"], "expected sqlite:///PATH", 2),
    (["query", "snapshot", "--store", "nope"], "expected sqlite:///PATH", 2),
    (["forget-user", "--store", "sqlite:///{t}/a.db", "--user", " "], "must not be empty", 2),
    (["purge", "--store", "sqlite:///{t}/a.db", "--set", "online.retention_days=0"],
     "online.retention_days must be >= 1", 2),
])
def test_bad_input_is_one_line(argv, fragment, code, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    argv = [a.format(t=tmp_path, p=port) for a in argv]
    rc, out, err = _run(argv, capsys)
    assert rc == code, err
    assert fragment.format(p=port) in err and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1, err
