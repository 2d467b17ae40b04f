"""Canonical event log: positives, validation messages/counts, shard and item I/O."""
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinrank.components.data import events as E
from pinrank.pipeline import features as F

KNOWN_ITEMS = np.arange(1, 11)


def valid_events(n=10):
    return pd.DataFrame({
        "user_id": [f"u{i % 3}" for i in range(n)],
        "item_id": np.arange(n) % 10 + 1,
        "action": [F.ACTIONS[i % 4] for i in range(n)],
        "timestamp": np.arange(n, dtype=np.int64) * 60 + 1_000,
        "duration": np.linspace(0.0, 30.0, n),
        "surface": [F.SURFACES[i % 5] for i in range(n)],
    })


# --- is_positive -----------------------------------------------------------------------------

@pytest.mark.parametrize("action,duration,expected", [
    ("repin", 0.0, True), ("repin", np.nan, True),
    ("closeup", 10.0, True), ("closeup", 9.99, False), ("closeup", 120.0, True),
    ("click", 10.0, True), ("click", 5.0, False), ("click", np.nan, False),
    ("hide", 100.0, False), ("hide", 0.0, False),
])
def test_is_positive_truth_table(action, duration, expected):
    assert E.is_positive(action, duration) is expected


def test_is_positive_vectorised_matches_scalar():
    actions = np.array(["repin", "click", "closeup", "hide", "click", "closeup"], dtype=object)
    durations = np.array([0.0, 12.0, 3.0, 50.0, 10.0, np.nan])
    got = E.is_positive(actions, durations)
    assert got.dtype == bool
    assert got.tolist() == [E.is_positive(a, d) for a, d in zip(actions, durations)]
    assert got.tolist() == [True, True, False, False, True, False]
    assert E.is_positive(pd.Series(actions), pd.Series(durations)).tolist() == got.tolist()


# --- validate_events -------------------------------------------------------------------------

def test_valid_events_pass_with_canonical_dtypes():
    df = valid_events()
    clean, counts = E.validate_events(df, KNOWN_ITEMS, where="x.parquet", drop_invalid=False)
    assert set(counts) == set(E.PROBLEMS) and not any(counts.values())
    pd.testing.assert_frame_equal(clean, df)
    assert list(clean.columns) == list(F.EVENT_COLUMNS)


def test_message_format_matches_contract():
    df = valid_events(100)
    df.loc[[17, 90], "action"] = "like"
    df.loc[4, "timestamp"] = -5
    with pytest.raises(E.EventValidationError) as exc:
        E.validate_events(df, KNOWN_ITEMS, where="events/part-00003.parquet", drop_invalid=False)
    assert str(exc.value).startswith(
        "events/part-00003.parquet: 2 rows with unknown action (first: row 17 'like', "
        "row 90 'like'); 1 row with negative timestamp (row 4: -5)")
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize("problem,rows,column,value,fragment", [
    ("missing_user_id", [1, 5], "user_id", None,
     "2 rows with missing user id (first: row 1, row 5)"),
    ("missing_user_id", [2], "user_id", "", "1 row with missing user id (row 2)"),
    ("unknown_action", [3], "action", "save", "1 row with unknown action (row 3: 'save')"),
    ("unknown_surface", [0, 7], "surface", "email",
     "2 rows with unknown surface (first: row 0 'email', row 7 'email')"),
    ("missing_timestamp", [6], "timestamp", np.nan,
     "1 row with missing or non-numeric timestamp (row 6)"),
    ("negative_timestamp", [2, 3, 4, 8], "timestamp", -1,
     "4 rows with negative timestamp (first: row 2 -1.0, row 3 -1.0, row 4 -1.0)"),
    ("missing_duration", [9], "duration", np.nan, "1 row with missing or NaN duration (row 9)"),
    ("negative_duration", [1], "duration", -2.5, "1 row with negative duration (row 1: -2.5)"),
    ("infinite_duration", [4], "duration", np.inf, "1 row with infinite duration (row 4: inf)"),
    ("missing_item_id", [5], "item_id", np.nan,
     "1 row with missing or non-numeric item id (row 5)"),
    ("unknown_item", [0, 2], "item_id", 99,
     "2 rows with item id not in the item table (first: row 0 99, row 2 99)"),
])
def test_each_problem_is_reported_and_dropped(problem, rows, column, value, fragment):
    df = valid_events()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        df[column] = df[column].astype(object if column == "user_id" else float)
    df.loc[rows, column] = value
    if problem == "negative_timestamp":
        df["timestamp"] = df["timestamp"].astype(float)  # exercise float timestamps too
    with pytest.raises(E.EventValidationError) as exc:
        E.validate_events(df, KNOWN_ITEMS, where="shard.parquet", drop_invalid=False)
    msg = str(exc.value)
    assert msg.startswith("shard.parquet: ")
    assert fragment in msg, msg
    clean, counts = E.validate_events(df, KNOWN_ITEMS, where="shard.parquet", drop_invalid=True)
    assert counts[problem] == len(rows)
    assert sum(counts.values()) == len(rows)
    assert len(clean) == len(df) - len(rows)
    assert clean.index.equals(pd.RangeIndex(len(clean)))
    assert clean["timestamp"].dtype == np.int64 and clean["item_id"].dtype == np.int64
    assert clean["duration"].dtype == np.float64


def test_drop_counts_row_with_two_problems_under_each():
    df = valid_events()
    df.loc[3, "action"] = "like"
    df.loc[3, "item_id"] = 500
    df.loc[6, "surface"] = "tv"
    clean, counts = E.validate_events(df, KNOWN_ITEMS, where="f", drop_invalid=True)
    assert counts["unknown_action"] == 1 and counts["unknown_item"] == 1
    assert counts["unknown_surface"] == 1
    assert len(clean) == 8
    assert 500 not in clean["item_id"].tolist()


def test_unknown_item_check_skipped_without_item_table():
    df = valid_events()
    df.loc[0, "item_id"] = 12345
    clean, _ = E.validate_events(df, None, where="f", drop_invalid=False)
    assert clean["item_id"].iloc[0] == 12345


def test_missing_column_is_a_format_error():
    with pytest.raises(E.DatasetFormatError, match=r"f.parquet: missing column\(s\) \['surface'\]"):
        E.validate_events(valid_events().drop(columns="surface"), KNOWN_ITEMS, where="f.parquet",
                          drop_invalid=True)


def test_counts_and_examples_accumulate_across_chunks():
    df = valid_events(10)
    df.loc[[1, 8], "action"] = "like"
    report = E.ProblemReport("big.csv")
    ok = np.concatenate([E.check_events(df.iloc[:5], KNOWN_ITEMS, report),
                         E.check_events(df.iloc[5:], KNOWN_ITEMS, report)])
    assert ok.sum() == 8
    assert report.counts["unknown_action"] == 2
    assert "2 rows with unknown action (first: row 1 'like', row 8 'like')" in report.message()


# --- shards ----------------------------------------------------------------------------------

def test_shard_writer_splits_and_roundtrips(tmp_path):
    df = valid_events(10)
    with E.EventShardWriter(str(tmp_path), shard_rows=4) as w:
        for start in range(0, 10, 3):
            w.write(df.iloc[start:start + 3])
    shards = E.event_shards(str(tmp_path))
    assert [os.path.basename(p) for p in shards] == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in shards] == [4, 4, 2]
    assert w.rows_written == 10
    back = pd.concat([E.read_event_shard(p) for p in shards], ignore_index=True)
    pd.testing.assert_frame_equal(back, df)
    with pytest.raises(FileExistsError):
        E.EventShardWriter(str(tmp_path))


def test_shard_writer_drops_remainder_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with E.EventShardWriter(str(tmp_path), shard_rows=4) as w:
            w.write(valid_events(6))
            raise RuntimeError("producer crashed")
    assert [pq.read_metadata(p).num_rows for p in E.event_shards(str(tmp_path))] == [4]


def test_shard_writer_rejects_wrong_types(tmp_path):
    df = valid_events(3)
    df["timestamp"] = ["a", "b", "c"]
    with E.EventShardWriter(str(tmp_path)) as w:
        with pytest.raises(TypeError, match="timestamp"):
            w.write(df)


def test_event_shards_requires_shards(tmp_path):
    with pytest.raises(E.DatasetFormatError, match="no part-"):
        E.event_shards(str(tmp_path))


def _write_raw(path, **cols):
    pq.write_table(pa.table(cols), path)


def test_read_event_shard_type_errors_name_the_file(tmp_path):
    df = valid_events(4)
    bad = str(tmp_path / "bad.parquet")
    _write_raw(bad, **{**{c: df[c].tolist() for c in F.EVENT_COLUMNS},
                       "timestamp": ["1", "2", "3", "4"]})
    with pytest.raises(E.DatasetFormatError, match=r"bad.parquet: wrong column type.*timestamp"):
        E.read_event_shard(bad)
    missing = str(tmp_path / "missing.parquet")
    _write_raw(missing, **{c: df[c].tolist() for c in F.EVENT_COLUMNS if c != "duration"})
    with pytest.raises(E.DatasetFormatError, match=r"missing.parquet: missing column.*duration"):
        E.read_event_shard(missing)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(E.DatasetFormatError, match="junk.parquet: not a readable parquet"):
        E.read_event_shard(str(junk))


def test_read_event_shard_accepts_narrow_ints_and_dictionary_strings(tmp_path):
    df = valid_events(5)
    path = str(tmp_path / "p.parquet")
    table = pa.table({
        "user_id": pa.array(df["user_id"]).dictionary_encode(),
        "item_id": pa.array(df["item_id"], pa.int32()),
        "action": pa.array(df["action"]),
        "timestamp": pa.array(df["timestamp"], pa.int64()),
        "duration": pa.array(df["duration"], pa.float32()),
        "surface": pa.array(df["surface"]),
        "extra": pa.array(range(5)),
    })
    pq.write_table(table, path)
    got = E.read_event_shard(path)
    assert list(got.columns) == list(F.EVENT_COLUMNS)
    assert got["item_id"].dtype == np.int64 and got["user_id"].tolist() == df["user_id"].tolist()


def test_null_timestamps_survive_reading_and_are_reported(tmp_path):
    df = valid_events(4)
    path = str(tmp_path / "nulls.parquet")
    cols = {c: pa.array(df[c]) for c in F.EVENT_COLUMNS}
    cols["timestamp"] = pa.array([1, None, 3, 4], pa.int64())
    pq.write_table(pa.table(cols), path)
    got = E.read_event_shard(path)
    assert str(got["timestamp"].dtype) == "Int64"
    with pytest.raises(E.EventValidationError,
                       match=r"1 row with missing or non-numeric timestamp \(row 1\)"):
        E.validate_events(got, KNOWN_ITEMS, where=path, drop_invalid=False)
    clean, counts = E.validate_events(got, KNOWN_ITEMS, where=path, drop_invalid=True)
    assert counts["missing_timestamp"] == 1 and clean["timestamp"].dtype == np.int64


# --- items and manifest ----------------------------------------------------------------------

def test_items_roundtrip_sorted_by_id(tmp_path):
    d = str(tmp_path)
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    E.write_items(d, [30, 10, 20], emb, [[0, 2], [], [1]], ["a", "b", "c"])
    items = E.read_items(d)
    assert items["item_id"].tolist() == [10, 20, 30]
    assert [x.tolist() for x in items["interests"]] == [[], [1], [0, 2]]
    np.testing.assert_array_equal(np.stack(items["embedding"]), emb[[1, 2, 0]])
    ids, dense, interests = E.item_arrays(d)
    np.testing.assert_array_equal(ids, [10, 20, 30])
    np.testing.assert_array_equal(dense, emb[[1, 2, 0]])
    np.testing.assert_array_equal(interests, [[-1, -1], [1, -1], [0, 2]])
    assert E.read_interest_names(d) == ["a", "b", "c"]
    # The padded [N, K] form gives the same table.
    E.write_items(d, [30, 10, 20], emb, np.array([[0, 2], [-1, -1], [1, -1]]), ["a", "b", "c"])
    np.testing.assert_array_equal(E.item_arrays(d)[2], interests)


@pytest.mark.parametrize("kwargs,match", [
    (dict(item_ids=[1, 1]), "duplicate item ids"),
    (dict(interests=[[0], [5]]), r"interest ids must be in \[0, 2\)"),
    (dict(embeddings=np.zeros((3, 2))), "embeddings must be"),
    (dict(embeddings=np.array([[np.nan, 0], [0, 0]])), "NaN"),
])
def test_write_items_rejects_bad_tables(tmp_path, kwargs, match):
    args = dict(item_ids=[1, 2], embeddings=np.zeros((2, 2)), interests=[[0], [1]],
                interest_names=["a", "b"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        E.write_items(str(tmp_path), **args)


def test_iter_events_validates_against_item_table(tmp_path):
    d = str(tmp_path)
    E.write_items(d, np.arange(1, 6), np.eye(5), [[0]] * 5, ["x"])
    df = valid_events(10)  # item ids 1..10, half unknown
    with E.EventShardWriter(d, shard_rows=5) as w:
        w.write(df)
    with pytest.raises(E.EventValidationError,
                       match=r"part-00001.parquet: 5 rows with item id not"):
        list(E.iter_events(d))
    out = list(E.iter_events(d, drop_invalid=True))
    assert [len(x[1]) for x in out] == [5, 0]
    assert out[1][2]["unknown_item"] == 5


def test_manifest_roundtrip_and_clear(tmp_path):
    d = str(tmp_path)
    assert E.read_dataset_manifest(d) is None
    E.write_dataset_manifest(d, {"source": "t", "counts": {"events": np.int64(3)}})
    m = E.read_dataset_manifest(d)
    assert m["counts"]["events"] == 3 and m["format_version"] == E.FORMAT_VERSION
    json.loads((tmp_path / "DATASET.json").read_text())
    (tmp_path / "keep.txt").write_text("mine")
    E.clear_dataset(d)
    assert sorted(os.listdir(d)) == ["keep.txt"]


def test_users_roundtrip_missing_table_and_clear(tmp_path):
    d = str(tmp_path)
    assert E.read_users(d) is None  # synthetic data: no user attributes, no error
    E.write_users(d, [3, "1"], {"gender": ["female", "male"], "age_group": ["<25", "45+"]})
    users = E.read_users(d)
    assert users.to_dict("list") == {"user_id": ["3", "1"], "gender": ["female", "male"],
                                     "age_group": ["<25", "45+"]}
    assert E.read_users("file://" + d).equals(users)  # URIs (gs:// on Vertex) read the same
    E.clear_dataset(d)
    assert E.read_users(d) is None and E.read_users("file://" + d) is None


def test_users_table_errors_name_the_file(tmp_path):
    d = str(tmp_path)
    with pytest.raises(E.DatasetFormatError, match=r"users.parquet: user_id values are not unique"):
        E.write_users(d, ["1", "1"], {"gender": ["male", "male"]})
    with pytest.raises(ValueError, match="user attribute 'gender': need a name other than "
                                         "user_id and 2 values, got 1"):
        E.write_users(d, ["1", "2"], {"gender": ["male"]})
    pq.write_table(pa.table({"user_id": ["1"], "age": [30]}), os.path.join(d, E.USERS_FILE))
    with pytest.raises(E.DatasetFormatError, match=r"users.parquet: need a user_id column and "
                                                   r"string attribute columns"):
        E.read_users(d)
    pq.write_table(pa.table({"user_id": ["1", "1"], "gender": ["male", None]}),
                   os.path.join(d, E.USERS_FILE))
    with pytest.raises(E.DatasetFormatError, match="user_id values must be present and unique"):
        E.read_users(d)
    pq.write_table(pa.table({"user_id": ["1", "2"], "gender": ["male", None]}),
                   os.path.join(d, E.USERS_FILE))
    assert E.read_users(d)["gender"].tolist() == ["male", E.UNKNOWN_ATTRIBUTE]
