"""Daily user-embedding job on a toy SavedModel and a tiny canonical dataset: merge semantics,
as-of correctness, corrupt inputs, incomplete snapshots, key-value loading, CLI."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from pinrank.components.data import events as ev
from pinrank.pipeline import features as F
from pinrank.serving import batch_embeddings as B
from pinrank.serving import constants as C
from pinrank.serving import testing as T
from pinrank.serving.client import embed_request_from_events

pytestmark = pytest.mark.timeout(300)

T0 = 1_700_000_000
T1 = T0 + 10_000  # first snapshot
T2 = T0 + 20_000  # second snapshot
USERS_OLD = ["u1", "u2", "u3", "u4"]


def _events() -> pd.DataFrame:
    """u1..u4 act before T1; u1 and the new u5 act in [T1, T2); u2 acts only after T2 again
    (future for both snapshots). Timestamps are unique (no ordering ties)."""
    rng = np.random.default_rng(0)
    rows = []
    ts = T0

    def add(user, t, n):
        for i in range(n):
            rows.append(dict(user_id=user, item_id=int(rng.integers(1, 51)),
                             action=F.ACTIONS[int(rng.integers(0, len(F.ACTIONS)))],
                             timestamp=t + i * 7, duration=float(rng.uniform(0, 40)),
                             surface=F.SURFACES[int(rng.integers(0, len(F.SURFACES)))]))

    for j, u in enumerate(USERS_OLD):
        add(u, ts + 100 * j, 3 + 2 * j)  # u4 has 9 actions > SEQ_LEN
    add("u1", T1 + 50, 3)
    add("u5", T1 + 500, 2)
    add("u2", T2 + 10, 4)
    add("u3", T1 - 3, 1)  # just before T1
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)  # any row order


def write_dataset(path, df, shard_rows=9):
    ids = np.arange(1, 51)
    ev.write_items(str(path), ids, np.random.default_rng(0).normal(size=(50, 3)),
                   [[] for _ in ids], ["x"])
    with ev.EventShardWriter(str(path), shard_rows=shard_rows) as w:
        w.write(df)
    ev.write_dataset_manifest(str(path), {"fingerprint": "test"})
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    df = _events()
    import tensorflow as tf

    pf1 = T.save_toy_pinnerformer(str(root / "pf1"), 1.0)
    pf2 = T.save_toy_pinnerformer(str(root / "pf2"), 2.0)
    return {"root": root, "events": df, "data": write_dataset(root / "data", df),
            "pf1": pf1, "pf2": pf2,
            "sig1": tf.saved_model.load(pf1).signatures[C.EMBED_RAW]}


def reference(world, df, users, as_of, sig=None):
    import tensorflow as tf

    req = embed_request_from_events(df, users, T.SEQ_LEN, as_of)
    out = (sig or world["sig1"])(**{k: tf.constant(v) for k, v in req.items()})
    return dict(zip(users, out[C.EMBEDDING].numpy()))


@pytest.fixture(scope="module")
def two_runs(world, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("snapshots"))
    s1 = B.run_daily_embeddings(world["pf1"], world["data"], root, T1)
    s2 = B.run_daily_embeddings(world["pf1"], world["data"], root, T2)
    return root, s1, s2


def test_first_snapshot_embeds_every_user_with_history(world, two_runs):
    root, s1, _ = two_runs
    assert s1 == os.path.join(root, str(T1))
    assert sorted(os.listdir(s1)) == [B.SUCCESS_FILE, B.EMBEDDINGS_FILE, B.MANIFEST_FILE]
    snap = B.load_snapshot(s1)
    assert snap.user_ids.tolist() == USERS_OLD  # u5 has no action before T1
    assert (snap.updated_at == T1).all()
    ref = reference(world, world["events"], USERS_OLD, T1)
    for u in USERS_OLD:
        np.testing.assert_allclose(snap.get(u), ref[u], atol=1e-6)
    m = snap.manifest
    assert m["counts"] == {"embedded": 4, "carried": 0, "total": 4}
    assert m["since"] is None and m["previous_snapshot"] is None and not m["full_refresh"]
    assert m["max_len"] == T.SEQ_LEN and m["embedding_dim"] == T.DIM
    assert m["metrics"]["events_read"] == len(world["events"])


def test_incremental_merge_updates_active_and_carries_the_rest(world, two_runs):
    _, s1, s2 = two_runs
    old, new = B.load_snapshot(s1), B.load_snapshot(s2)
    assert new.user_ids.tolist() == USERS_OLD + ["u5"]
    m = new.manifest
    assert m["since"] == T1 and m["previous_as_of"] == T1 and m["previous_snapshot"] == s1
    assert m["counts"] == {"embedded": 2, "carried": 3, "total": 5}  # u1, u5 | u2, u3, u4
    ref = reference(world, world["events"], ["u1", "u5"], T2)
    for u in ["u1", "u5"]:
        np.testing.assert_allclose(new.get(u), ref[u], atol=1e-6)
        assert new.updated_at[new.index()[u]] == T2
    assert not np.allclose(new.get("u1"), old.get("u1"))
    for u in ["u2", "u3", "u4"]:  # inactive: bit-identical, keep their updated_at
        np.testing.assert_array_equal(new.get(u), old.get(u))
        assert new.updated_at[new.index()[u]] == T1
        assert new.as_of == T2


def test_actions_at_or_after_as_of_never_affect_the_embedding(world, two_runs, tmp_path):
    _, s1, _ = two_runs
    df = world["events"].copy()
    late = df["timestamp"] >= T1
    df.loc[late, "item_id"] = 49
    df.loc[late, "action"] = "hide"
    df.loc[late, "duration"] = 1.0
    extra = pd.DataFrame([dict(user_id=u, item_id=7, action="repin", timestamp=T1,
                               duration=3.0, surface="search") for u in USERS_OLD])
    data = write_dataset(tmp_path / "data", pd.concat([df, extra], ignore_index=True))
    snap = B.load_snapshot(B.run_daily_embeddings(world["pf1"], data, str(tmp_path / "s"), T1))
    base = B.load_snapshot(s1)
    assert snap.user_ids.tolist() == base.user_ids.tolist()
    np.testing.assert_array_equal(snap.embeddings, base.embeddings)
    # The check is sensitive: the same perturbation one second earlier changes u3's vector.
    early = world["events"].copy()
    early.loc[early["timestamp"] == T1 - 3, "item_id"] = 49
    assert not np.allclose(reference(world, early, ["u3"], T1)["u3"], base.get("u3"))


def _tree(root):
    return sorted(os.listdir(root))


@pytest.mark.parametrize("corruption", ["unknown_action", "not_parquet", "no_manifest",
                                        "unknown_item"])
def test_corrupt_inputs_leave_the_good_snapshot_latest(world, two_runs, tmp_path, corruption):
    _, s1, _ = two_runs
    root = str(tmp_path / "snapshots")
    os.makedirs(root)
    shutil.copytree(s1, os.path.join(root, str(T1)))
    before = _tree(root)
    data = shutil.copytree(world["data"], str(tmp_path / "data"))
    shard = ev.event_shards(data)[-1]
    if corruption == "not_parquet":
        with open(shard, "wb") as f:
            f.write(b"PAR1 garbage")
    elif corruption == "no_manifest":
        os.remove(os.path.join(data, ev.MANIFEST_FILE))
    else:
        df = ev.read_event_shard(shard)
        if corruption == "unknown_action":
            df.loc[0, "action"] = "like"
        else:
            df.loc[0, "item_id"] = 999
        os.remove(shard)
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pandas(df, ev.EVENT_SCHEMA, preserve_index=False), shard)
    with pytest.raises(Exception) as err:
        B.run_daily_embeddings(world["pf1"], data, root, T2)
    expected = {"unknown_action": "unknown action", "unknown_item": "item id not in the item",
                "not_parquet": "not a readable parquet", "no_manifest": "DATASET.json"}
    assert expected[corruption] in str(err.value)
    assert _tree(root) == before  # no new snapshot, no temporary directory left
    assert B.latest_snapshot(root) == os.path.join(root, str(T1))


def test_missing_model_or_dataset_fail_before_writing(world, tmp_path):
    root = str(tmp_path / "snapshots")
    with pytest.raises(FileNotFoundError):
        B.run_daily_embeddings(str(tmp_path / "nope"), world["data"], root, T1)
    with pytest.raises(ev.DatasetFormatError):
        B.run_daily_embeddings(world["pf1"], str(tmp_path / "nodata"), root, T1)
    assert not os.path.exists(root) or not os.listdir(root)


def test_snapshot_without_success_is_ignored(world, two_runs, tmp_path):
    _, s1, _ = two_runs
    root = str(tmp_path / "snapshots")
    good = shutil.copytree(s1, os.path.join(root, str(T1)))
    bad = shutil.copytree(s1, os.path.join(root, str(T1 + 5)))
    os.remove(os.path.join(bad, B.SUCCESS_FILE))
    assert B.latest_snapshot(root) == good
    assert [a for a, _ in B.list_snapshots(root)] == [T1]
    with pytest.raises(B.SnapshotError, match="_SUCCESS"):
        B.load_snapshot(bad)
    # The next run merges with the good one, not the incomplete one.
    s2 = B.run_daily_embeddings(world["pf1"], world["data"], root, T2)
    m = B.load_snapshot(s2).manifest
    assert m["previous_as_of"] == T1 and m["counts"]["carried"] == 3
    # An existing complete snapshot is never silently replaced.
    with pytest.raises(FileExistsError):
        B.run_daily_embeddings(world["pf1"], world["data"], root, T2)
    # A leftover incomplete dir at the target as_of is replaced by a complete one.
    s_bad = B.run_daily_embeddings(world["pf1"], world["data"], root, T1 + 5)
    assert B.is_complete(s_bad) and B.latest_snapshot(root) == s2


def test_model_change_forces_a_full_refresh(world, two_runs, tmp_path):
    _, s1, _ = two_runs
    root = str(tmp_path / "snapshots")
    shutil.copytree(s1, os.path.join(root, str(T1)))
    snap = B.load_snapshot(B.run_daily_embeddings(world["pf2"], world["data"], root, T2))
    m = snap.manifest
    assert m["full_refresh"] is True and m["since"] is None
    assert m["counts"] == {"embedded": 5, "carried": 0, "total": 5}
    import tensorflow as tf
    sig2 = tf.saved_model.load(world["pf2"]).signatures[C.EMBED_RAW]
    ref = reference(world, world["events"], snap.user_ids.tolist(), T2, sig2)
    for u in snap.user_ids.tolist():
        np.testing.assert_allclose(snap.get(u), ref[u], atol=1e-6)


def test_load_into_kv_dict_and_sqlite(two_runs, tmp_path):
    _, s1, s2 = two_runs
    snap = B.load_snapshot(s2)
    d = B.DictKV()
    assert B.load_into_kv(snap, d) == len(snap)
    with B.SqliteKV(str(tmp_path / "kv.db")) as kv:
        assert B.load_into_kv(s2, kv, batch_size=2) == len(snap)
        assert len(kv) == len(snap) + 1  # + meta key
        for store in (d, kv):
            for u in snap.user_ids.tolist():
                np.testing.assert_array_equal(B.kv_embedding(store, u), snap.get(u))
            assert B.kv_embedding(store, "nobody") is None
            assert int(store.get(B.kv_meta_key())) == T2
        with pytest.raises(ValueError, match="newer"):
            B.load_into_kv(s1, kv)
        B.load_into_kv(s1, kv, force=True)
    plain = {}
    B.load_into_kv(snap, plain)
    assert B.decode_embedding(plain[B.KV_PREFIX + "u1"]).dtype == np.float32


def test_merge_histories_keeps_the_newest_m_in_any_order():
    def h(ts, active):
        ts = np.asarray(ts, np.int64)
        n = len(ts)
        return (ts, ts % 50, np.zeros(n, np.int8), np.zeros(n, np.int8),
                np.ones(n, np.float32), active)

    a, b = h([1, 5, 9], False), h([2, 7, 11, 3], True)
    for x, y in ((a, b), (b, a)):
        out = B.merge_histories(x, y, 4)
        assert out[0].tolist() == [5, 7, 9, 11] and out[5] is True
    assert B.merge_histories(None, a, 2) is a


def test_cli_embed_users_with_sqlite_kv(world, tmp_path, capsys):
    import argparse

    from pinrank.pipeline import cli as pinrank_cli
    from pinrank.serving import batch_cli

    sub = argparse.ArgumentParser().add_subparsers()
    batch_cli.add_subcommands(sub)
    assert "embed-users" in sub.choices
    root, db = str(tmp_path / "snaps"), str(tmp_path / "kv.db")
    rc = pinrank_cli.main(["embed-users", "--model", world["pf1"], "--data", world["data"],
                           "--out", root, "--as-of", str(T1), "--kv-sqlite", db])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"] == {"embedded": 4, "carried": 0, "total": 4}
    assert out["kv_loaded"] == 4
    with B.SqliteKV(db) as kv:
        assert B.kv_embedding(kv, "u2") is not None


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_load_snapshot_into_the_action_store(two_runs, tmp_path, backend, request):
    from pinrank.serving import action_store as S

    _, s1, s2 = two_runs
    url = (f"sqlite:///{tmp_path}/store.db" if backend == "sqlite"
           else request.getfixturevalue("redis_url"))
    snaps = {T1: B.load_snapshot(s1), T2: B.load_snapshot(s2)}
    with S.open_store(url, keep_snapshots=2) as store:
        assert B.load_snapshot_into_store(s2, store) == len(snaps[T2])
        assert B.load_snapshot_into_store(snaps[T1], store) == len(snaps[T1])  # order is free
        assert store.snapshot_versions() == [T1, T2]
        assert store.snapshot_meta(T2)["model_version"] == snaps[T2].manifest["model_version"]
        for as_of, version in ((T2, T2), (T2 - 1, T1), (T1, T1)):
            for u in snaps[version].user_ids.tolist():
                vec, got = store.snapshot_embedding(u, as_of)
                assert got == version
                np.testing.assert_array_equal(vec, snaps[version].get(u))  # bit for bit
        assert store.snapshot_embedding("u1", T1 - 1) is None
        assert store.snapshot_embedding("nobody", T2) is None


def test_cli_embed_users_loads_the_store_and_checks_it_first(world, tmp_path, capsys):
    from pinrank.pipeline import cli as pinrank_cli
    from pinrank.serving import action_store as S

    root, url = str(tmp_path / "snaps"), f"sqlite:///{tmp_path}/store.db"
    argv = ["embed-users", "--model", world["pf1"], "--data", world["data"], "--out", root,
            "--as-of", str(T1)]
    assert pinrank_cli.main(argv + ["--store", url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["store_loaded"] == 4 and out["store_versions"] == [T1]
    with S.open_store(url) as store:
        # A request on a later day uses the newest version as of its day start.
        vec, version = store.snapshot_for_request("u2", S.day_start(T1) + 86400 + 5)
        assert version == T1
        np.testing.assert_array_equal(vec, B.load_snapshot(out["snapshot"]).get("u2"))
    # An unreachable store fails in a second, before the job writes anything.
    other = str(tmp_path / "other")
    rc = pinrank_cli.main(argv[:6] + [other] + argv[7:] + ["--store",
                                                           "redis://127.0.0.1:1/0"])
    err = capsys.readouterr().err
    assert rc == 1 and "action store redis://127.0.0.1:1/0 unavailable" in err, err
    assert not os.path.exists(other)
