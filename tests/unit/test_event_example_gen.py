"""EventExampleGen: anchors, windows, truncation counters, user split, and the Beam graph on a
small canonical data set (including a bad shard that must fail with its file name)."""
import glob
import os

import numpy as np
import pandas as pd
import pytest

from pinrank.components import event_example_gen as eg
from pinrank.components.data import events as ev
from pinrank.pipeline import features as F
from pinrank.pipeline.config import DAY_S, ExampleGenConfig


def _rows(events):
    df = pd.DataFrame(events, columns=["item_id", "action", "timestamp", "duration", "surface"])
    return {c: df[c].to_numpy() for c in df.columns}


def _reference_anchors(ts, pos, window, min_hist, data_end, full):
    out = []
    for t in sorted(set(ts)):
        hist = sum(1 for x in ts if x < t)
        npos = sum(1 for x, p in zip(ts, pos) if t <= x < t + window and p)
        if hist >= min_hist and npos > 0 and (not full or t + window <= data_end + 1):
            out.append(t)
    return out


@pytest.mark.parametrize("full", [True, False])
def test_candidate_anchors_match_brute_force(full):
    rng = np.random.default_rng(0)
    for _ in range(20):
        ts = np.sort(rng.integers(0, 50, size=15))
        pos = rng.integers(0, 2, size=15)
        got = eg.candidate_anchors(ts, pos, window_s=7, min_history=2, data_end=45, full_window=full)
        assert got.tolist() == _reference_anchors(ts.tolist(), pos.tolist(), 7, 2, 45, full)


def test_user_examples_history_strictly_before_anchor_and_window():
    cfg = ExampleGenConfig(eval_user_percent=0, anchors_per_user=10, train_window_days=1,
                           max_history=3, max_future=2)
    d = DAY_S
    events = [(1, "repin", 0, 0.0, "homefeed"), (2, "click", 10, 3.0, "search"),
              (3, "closeup", 20, 30.0, "homefeed"), (4, "hide", 30, 0.0, "related"),
              (5, "repin", 40, 0.0, "homefeed"), (6, "click", 40 + d, 20.0, "homefeed"),
              (7, "repin", 50 + 5 * d, 0.0, "homefeed")]
    out = list(eg.user_examples("user-a", _rows(events), cfg, data_end=60 + 5 * d))
    assert all(split == "train" for split, _, _ in out)
    anchors = []
    for _, ex, counters in out:
        f = ex.features.feature
        t = f[F.ANCHOR_TS].int64_list.value[0]
        anchors.append(t)
        hist_ts = list(f[F.HIST_TS].int64_list.value)
        fut_ts = list(f[F.FUT_TS].int64_list.value)
        all_before = [e[2] for e in events if e[2] < t]
        assert hist_ts == all_before[-3:]                    # max_history keeps the most recent
        assert counters["history_actions_dropped_by_max_history"] == len(all_before) - len(hist_ts)
        want_fut = [e[2] for e in events if t <= e[2] < t + d
                    and ev.is_positive(e[1], e[3])][:2]
        assert fut_ts == want_fut and len(fut_ts) >= 1
        assert list(f[F.HIST_POS].int64_list.value) == [
            int(ev.is_positive(e[1], e[3])) for e in events if e[2] < t][-3:]
    assert anchors == sorted(anchors)


def test_eval_user_gets_one_anchor_and_split_is_stable():
    cfg = ExampleGenConfig(eval_user_percent=100, valid_user_percent=0, anchors_per_user=5)
    events = [(i, "repin", i * 100, 0.0, "homefeed") for i in range(1, 10)]
    a = list(eg.user_examples("u1", _rows(events), cfg, data_end=10_000_000))
    b = list(eg.user_examples("u1", _rows(events), cfg, data_end=10_000_000))
    assert len(a) == 1 and a[0][0] == "eval"
    assert a[0][1] == b[0][1]  # same anchor and content (proto equality; map order varies)
    buckets = [eg.stable_bucket(f"user{i}") for i in range(2000)]
    assert 0.15 < np.mean(np.array(buckets) < 20) < 0.25   # ~20 % eval users


def test_user_without_anchor_is_counted_not_silently_dropped():
    cfg = ExampleGenConfig()
    events = [(1, "hide", 0, 0.0, "homefeed"), (2, "click", 10, 1.0, "homefeed")]
    out = list(eg.user_examples("lonely", _rows(events), cfg, data_end=100))
    assert len(out) == 1 and out[0][1] is None
    assert sum(out[0][2].values()) == 1


def _write_dataset(tmp_path, shards):
    d = str(tmp_path / "ds")
    ev.write_items(d, np.arange(1, 11), np.eye(10, 4, dtype=np.float32), [[0]] * 10, ["a"])
    os.makedirs(os.path.join(d, "events"), exist_ok=True)
    for i, rows in enumerate(shards):
        pd.DataFrame(rows, columns=list(F.EVENT_COLUMNS)).astype(
            {"item_id": "int64", "timestamp": "int64", "duration": "float64"}).to_parquet(
            os.path.join(d, "events", f"part-{i:05d}.parquet"), index=False)
    return d


def _user_events(user, n, start):
    return [(user, 1 + (i % 10), "repin" if i % 2 else "click", start + i * 5 * DAY_S, 15.0, "homefeed")
            for i in range(n)]


def test_beam_graph_splits_users_disjointly_and_counts(tmp_path):
    import apache_beam as beam
    import tensorflow as tf
    users = [f"user{i}" for i in range(30)]
    rows = [e for u in users for e in _user_events(u, 12, 1_000_000)]
    d = _write_dataset(tmp_path, [rows[: len(rows) // 2], rows[len(rows) // 2:]])  # users span shards
    out = str(tmp_path / "out")
    cfg = ExampleGenConfig(eval_user_percent=30, anchors_per_user=2)
    with beam.Pipeline() as p:
        eg.build_examples(p, d, cfg, out)
    stats = eg.read_stats(out)
    assert stats["events_read"] == stats["events_kept"] == len(rows)
    seen = {}
    for split in eg.SPLITS:
        files = glob.glob(os.path.join(out, f"Split-{split}", "*"))
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            ex = tf.train.Example.FromString(r.numpy())
            seen.setdefault(split, []).append(ex.features.feature[F.USER_ID].bytes_list.value[0])
    assert set(seen["train"]).isdisjoint(seen["eval"])
    assert len(seen["eval"]) == len(set(seen["eval"])) == stats["examples_eval"]
    assert stats["examples_train"] == len(seen["train"])
    want_eval = {u.encode() for u in users if eg.split_of(u, cfg) == "eval"}
    assert set(seen["eval"]) == want_eval


def test_bad_rows_fail_with_file_name_or_are_dropped_and_counted(tmp_path):
    import apache_beam as beam
    good = _user_events("u1", 6, 1_000_000)
    bad = [("u2", 3, "like", 1_000_000, 1.0, "homefeed"), ("u2", 99, "repin", 1_000_100, 1.0, "homefeed")]
    d = _write_dataset(tmp_path, [good, bad])
    with pytest.raises(Exception) as err:
        with beam.Pipeline() as p:
            eg.build_examples(p, d, ExampleGenConfig(), str(tmp_path / "o1"))
    msg = str(err.value)
    assert "part-00001.parquet" in msg and "1 row with unknown action" in msg
    assert "item id not in the item table (row 1: 99)" in msg
    with beam.Pipeline() as p:
        eg.build_examples(p, d, ExampleGenConfig(drop_invalid_events=True), str(tmp_path / "o2"))
    stats = eg.read_stats(str(tmp_path / "o2"))
    assert stats["events_read"] == 8 and stats["events_kept"] == 6
    assert stats["events_dropped_unknown_action"] == 1 and stats["events_dropped_unknown_item"] == 1


def test_validation_users_are_training_users_and_test_users_are_left_out():
    cfg = ExampleGenConfig(eval_users="validation", eval_user_percent=20,
                           validation_user_percent=20)
    test_cfg = ExampleGenConfig(eval_user_percent=20)
    users = [f"user{i}" for i in range(1000)]
    splits = {u: eg.split_of(u, cfg) for u in users}
    for u in users:
        if eg.split_of(u, test_cfg) == "eval":
            assert splits[u] is None  # a test user is never seen, not even for validation
        else:
            assert splits[u] in ("train", "valid", "eval")
    assert 0.15 < np.mean([s == "eval" for s in splits.values()]) < 0.25
    out = list(eg.user_examples(next(u for u in users if splits[u] is None),
                                _rows([(1, "repin", 0, 0.0, "homefeed")]), cfg, data_end=10))
    assert out == [(None, None, {"users_left_out_test": 1})]


def test_out_of_time_cut_and_several_eval_anchors():
    d = DAY_S
    events = [(1 + i % 5, "repin", i * d, 0.0, "homefeed") for i in range(100)]
    cut = 50 * d
    cfg = ExampleGenConfig(eval_user_percent=100, valid_user_percent=0, eval_anchors_per_user=3)
    out = list(eg.user_examples("u", _rows(events), cfg, data_end=99 * d, cut=cut))
    anchors = [ex.features.feature[F.ANCHOR_TS].int64_list.value[0] for _, ex, _ in out]
    assert len(anchors) == 3 and all(t >= cut for t in anchors)
    train_cfg = ExampleGenConfig(eval_user_percent=0, anchors_per_user=50)
    out = list(eg.user_examples("u", _rows(events), train_cfg, data_end=99 * d, cut=cut))
    assert out[0][2]["train_events_after_eval_cut"] == 50
    for _, ex, _ in out:  # a training example never sees an event at or after the cut
        f = ex.features.feature
        assert max(list(f[F.HIST_TS].int64_list.value) + list(f[F.FUT_TS].int64_list.value)) < cut
    valid_cfg = ExampleGenConfig(eval_user_percent=0, valid_user_percent=100, anchors_per_user=50)
    out = list(eg.user_examples("u", _rows(events), valid_cfg, data_end=99 * d, cut=cut))
    assert out[0][0] == "valid" and out[0][2]["train_events_after_eval_cut"] == 50
    for _, ex, _ in out:  # nor does a validation example (early stopping reads them)
        f = ex.features.feature
        assert max(list(f[F.HIST_TS].int64_list.value) + list(f[F.FUT_TS].int64_list.value)) < cut
    assert eg.eval_cut(ExampleGenConfig(eval_after_time_quantile=0.25), 100, 500) == 200
    assert eg.eval_cut(ExampleGenConfig(), 100, 500) is None


def test_train_positives_side_output(tmp_path):
    import apache_beam as beam
    users = [f"user{i}" for i in range(30)]
    rows = [e for u in users for e in _user_events(u, 12, 1_000_000)]
    d = _write_dataset(tmp_path, [rows])
    out = str(tmp_path / "out")
    cfg = ExampleGenConfig(eval_user_percent=30, anchors_per_user=2)
    with beam.Pipeline() as p:
        eg.build_examples(p, d, cfg, out)
    u, items, ts = eg.read_train_positives(out)
    train_users = [x for x in users if eg.split_of(x, cfg) == "train"]
    want = [(e[1], e[3]) for e in rows if e[0] in train_users and ev.is_positive(e[2], e[4])]
    assert sorted(zip(items.tolist(), ts.tolist())) == sorted(want)
    assert len(np.unique(u)) == len(train_users)
    with pytest.raises(FileNotFoundError, match="older EventExampleGen"):
        eg.read_train_positives(str(tmp_path))


def test_min_train_examples_gives_few_training_users_more_anchors(tmp_path):
    """ceil(min_train_examples / training users) anchors each, within [anchors_per_user,
    max_anchors_per_user]; the number used is in the stats."""
    import apache_beam as beam
    cfg = ExampleGenConfig(anchors_per_user=2, min_train_examples=100, max_anchors_per_user=8)
    assert [eg.train_anchors(cfg, n) for n in (0, 5, 13, 40, 1000)] == [2, 8, 8, 3, 2]
    assert eg.train_anchors(ExampleGenConfig(anchors_per_user=2), 5) == 2  # off by default
    users = [f"user{i}" for i in range(30)]
    rows = [e for u in users for e in _user_events(u, 12, 1_000_000)]
    d = _write_dataset(tmp_path, [rows])
    n_train = sum(eg.split_of(u, cfg) == "train" for u in users)
    k = eg.train_anchors(cfg, n_train)
    assert k > cfg.anchors_per_user
    out = str(tmp_path / "out")
    with beam.Pipeline() as p:
        eg.build_examples(p, d, cfg, out)
    stats = eg.read_stats(out)
    assert stats["train_anchors_per_user"] == k
    # every training user has more than k candidate anchors here, so each gets exactly k
    assert stats["examples_train"] == k * n_train
    with pytest.raises(ValueError, match="max_anchors_per_user"):
        ExampleGenConfig(anchors_per_user=4, min_train_examples=10, max_anchors_per_user=2)
