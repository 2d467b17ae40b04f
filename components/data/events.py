"""The canonical event log and item table: on-disk layout, schemas, validation, readers/writers.

Every source (synthetic world, MovieLens, a user's csv) is converted into one layout so that the
pipeline reads a single format:

    <dir>/events/part-00000.parquet, part-00001.parquet, ...
        user_id string, item_id int64, action string (features.ACTIONS), timestamp int64 (s),
        duration float64 (s), surface string (features.SURFACES). Shards have at most
        `shard_rows` rows; rows may be in any order and one user's events may span shards.
    <dir>/items.parquet
        item_id int64 (unique), embedding list<float32> (content vector, one length for all
        items), interests list<int32> (ids into interests.json; may be empty).
    <dir>/interests.json       JSON list of interest names; the list index is the interest id.
    <dir>/titles.parquet       (optional) item_id int64, title string.
    <dir>/users.parquet        (optional) user_id string (unique) and one string column per user
                               attribute (ML-100K: gender, age_group), read by the retrieval
                               evaluator for per-group slices (docs/protocol.md).
    <dir>/impressions/part-*.parquet   (optional; ranking requests with per-candidate labels)
        request_id string, user_id string, item_id int64, timestamp int64 (request time, s),
        surface string, position int32 (slot in the slate), and int8 labels repin, click,
        closeup, hide (1 if that action was taken on the candidate).
    <dir>/ground_truth/...     (optional; synthetic data only, see synthetic.py)
    <dir>/DATASET.json         source, counts, input checksums. Written last, so a directory
                               without it is an incomplete (crashed) conversion.

Values are not trusted on read: `validate_events` checks the domains and either fails with a
message that names the file and the offending rows, or drops and counts them
(ExampleGenConfig.drop_invalid_events).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pinrank.pipeline import features as F

EVENTS_DIR = "events"
IMPRESSIONS_DIR = "impressions"
ITEMS_FILE = "items.parquet"
INTERESTS_FILE = "interests.json"
TITLES_FILE = "titles.parquet"  # optional: item_id -> display title (MovieLens has them)
USERS_FILE = "users.parquet"  # optional: user_id -> coarse attributes (ML-100K has them)
UNKNOWN_ATTRIBUTE = "unknown"  # a missing attribute value (and a user without a row)
MANIFEST_FILE = "DATASET.json"
SHARD_PATTERN = "part-{:05d}.parquet"
FORMAT_VERSION = 1

EVENT_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_id", pa.int64()),
    ("action", pa.string()),
    ("timestamp", pa.int64()),
    ("duration", pa.float64()),
    ("surface", pa.string()),
])
assert tuple(EVENT_SCHEMA.names) == F.EVENT_COLUMNS

IMPRESSION_SCHEMA = pa.schema(
    [("request_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.int64()),
     ("timestamp", pa.int64()), ("surface", pa.string()), ("position", pa.int32())]
    + [(label, pa.int8()) for label in F.IMPRESSION_LABELS])
assert tuple(IMPRESSION_SCHEMA.names) == F.IMPRESSION_COLUMNS

ITEM_SCHEMA = pa.schema([
    ("item_id", pa.int64()),
    ("embedding", pa.list_(pa.float32())),
    ("interests", pa.list_(pa.int32())),
])
assert tuple(ITEM_SCHEMA.names) == F.ITEM_COLUMNS

# Validation problems, in reporting order: name -> phrase used in messages.
PROBLEMS = {
    "missing_user_id": "missing user id",
    "unknown_action": "unknown action",
    "unknown_surface": "unknown surface",
    "missing_timestamp": "missing or non-numeric timestamp",
    "negative_timestamp": "negative timestamp",
    "timestamp_out_of_range": "timestamp after 9999-12-31 (seconds expected)",
    "missing_duration": "missing or NaN duration",
    "negative_duration": "negative duration",
    "infinite_duration": "infinite duration",
    "missing_item_id": "missing or non-numeric item id",
    "unknown_item": "item id not in the item table",
}
# Unix seconds of 9999-12-31T23:59:59Z: anything later is not a time in seconds (and may not
# even fit int64).
MAX_TIMESTAMP_S = 253402300799
_SHOW_VALUES = {"unknown_action", "unknown_surface", "negative_timestamp", "timestamp_out_of_range",
                "negative_duration", "infinite_duration", "unknown_item"}
MAX_EXAMPLES = 3


class EventValidationError(ValueError):
    """Event rows violate the canonical contract; the message names the file and the rows."""


class DatasetFormatError(ValueError):
    """A dataset file is missing, unreadable, or has the wrong columns/types."""


# --------------------------------------------------------------------------------------------
# Labels

def is_positive(action, duration):
    """PinnerFormer positive engagement: a repin, or a closeup/click lasting >= 10 s.

    Vectorised over numpy/pandas arrays (returns a bool array); scalars give a Python bool.
    NaN durations are never positive.
    """
    a = np.asarray(action, dtype=object)
    d = np.asarray(duration, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        long_enough = d >= F.POSITIVE_MIN_DURATION_S
    out = (a == "repin") | (((a == "closeup") | (a == "click")) & long_enough)
    out = np.asarray(out, dtype=bool)
    return bool(out) if out.ndim == 0 else out


# --------------------------------------------------------------------------------------------
# Validation

class ProblemReport:
    """Accumulates per-problem row counts and the first offending rows across one or more chunks
    of the same file, so a chunked reader can report file-wide counts in one message."""

    def __init__(self, where: str):
        self.where = where
        self.counts: Dict[str, int] = {name: 0 for name in PROBLEMS}
        self.labels: Dict[str, str] = dict(PROBLEMS)
        self.examples: Dict[str, List[Tuple[Any, Any]]] = {name: [] for name in PROBLEMS}
        self.show_values = set(_SHOW_VALUES)

    def add(self, name: str, mask: np.ndarray, index: pd.Index, values=None,
            label: Optional[str] = None, show_values: bool = False) -> None:
        """Record rows where `mask` holds; `index` gives their row numbers for messages."""
        if name not in self.counts:
            self.counts[name] = 0
            self.labels[name] = label or name.replace("_", " ")
            self.examples[name] = []
            if show_values:
                self.show_values.add(name)
        n = int(np.count_nonzero(mask))
        if not n:
            return
        self.counts[name] += n
        room = MAX_EXAMPLES - len(self.examples[name])
        if room > 0:
            pos = np.flatnonzero(mask)[:room]
            if values is None:
                vals = [None] * len(pos)
            elif isinstance(values, pd.Series):
                vals = values.iloc[pos].tolist()
            else:
                vals = np.asarray(values)[pos].tolist()
            self.examples[name].extend(zip(np.asarray(index)[pos].tolist(), vals))

    @property
    def any(self) -> bool:
        return any(self.counts.values())

    def message(self) -> str:
        """E.g. "f.parquet: 2 rows with unknown action (first: row 17 'like', row 90 'like');
        1 row with negative timestamp (row 4: -5)"."""
        parts = []
        for name, n in self.counts.items():
            if not n:
                continue
            show = name in self.show_values
            ex = self.examples[name]
            if n == 1:
                r, v = ex[0]
                detail = f"row {r}: {_fmt(v)}" if show else f"row {r}"
            else:
                shown = [f"row {r} {_fmt(v)}" if show else f"row {r}" for r, v in ex]
                detail = "first: " + ", ".join(shown)
            parts.append(f"{n} row{'s' if n != 1 else ''} with {self.labels[name]} ({detail})")
        return f"{self.where}: " + "; ".join(parts)

    def raise_if_any(self, hint: str = "") -> None:
        if self.any:
            raise EventValidationError(self.message() + hint)


def _fmt(v) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return "missing"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, (np.integer, int)):
        return str(int(v))
    if isinstance(v, (np.floating, float)):
        return repr(float(v))
    return repr(v)


def _require_columns(df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetFormatError(f"{where}: missing column(s) {missing}; "
                                 f"expected {list(columns)}, found {list(df.columns)}")


def check_events(df: pd.DataFrame, known_item_ids, report: ProblemReport) -> np.ndarray:
    """Record every contract violation of `df` in `report`; return the mask of valid rows.

    known_item_ids: the item table's ids (array-like or pandas Index), or None to skip that check.
    """
    _require_columns(df, F.EVENT_COLUMNS, report.where)
    idx = df.index
    bad = np.zeros(len(df), dtype=bool)

    def add(name, mask, values=None):
        nonlocal bad
        mask = np.asarray(mask, dtype=bool)
        report.add(name, mask, idx, values)
        bad |= mask

    user = df["user_id"]
    add("missing_user_id", user.isna().to_numpy() | user.eq("").to_numpy())
    for col, domain, name in (("action", F.ACTIONS, "unknown_action"),
                              ("surface", F.SURFACES, "unknown_surface")):
        vals = df[col]
        add(name, ~vals.isin(domain).to_numpy(), vals)

    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    ts_missing = ts.isna().to_numpy()
    add("missing_timestamp", ts_missing)
    with np.errstate(invalid="ignore"):
        add("negative_timestamp", (ts < 0).to_numpy(dtype=bool, na_value=False), ts)
        add("timestamp_out_of_range", (ts > MAX_TIMESTAMP_S).to_numpy(dtype=bool, na_value=False),
            df["timestamp"])

    dur = pd.to_numeric(df["duration"], errors="coerce").to_numpy(dtype=np.float64,
                                                                  na_value=np.nan)
    add("missing_duration", np.isnan(dur))
    with np.errstate(invalid="ignore"):
        add("negative_duration", dur < 0, dur)
        add("infinite_duration", np.isposinf(dur), dur)

    item = pd.to_numeric(df["item_id"], errors="coerce")
    item_missing = item.isna().to_numpy()
    add("missing_item_id", item_missing)
    if known_item_ids is not None:
        known = known_item_ids if isinstance(known_item_ids, pd.Index) else pd.Index(
            np.asarray(known_item_ids, dtype=np.int64))
        add("unknown_item", ~item_missing & ~item.isin(known).to_numpy(), df["item_id"])
    return ~bad


def canonicalize_events(df: pd.DataFrame) -> pd.DataFrame:
    """Cast already-valid rows to the canonical column order and dtypes (timestamps truncated
    to whole seconds)."""
    ts = pd.to_numeric(df["timestamp"])
    if ts.dtype.kind == "f":
        ts = np.floor(ts)
    return pd.DataFrame({
        "user_id": df["user_id"].astype(str).to_numpy(dtype=object),
        "item_id": pd.to_numeric(df["item_id"]).to_numpy(dtype=np.int64),
        "action": df["action"].to_numpy(dtype=object),
        "timestamp": ts.to_numpy(dtype=np.int64),
        "duration": pd.to_numeric(df["duration"]).to_numpy(dtype=np.float64),
        "surface": df["surface"].to_numpy(dtype=object),
    })


DROP_HINT = (". To drop and count such rows instead, set examples.drop_invalid_events=True "
             "(drop_invalid=True)")


def validate_events(df: pd.DataFrame, known_item_ids, *, where: str,
                    drop_invalid: bool) -> Tuple[pd.DataFrame, Dict[str, int]]:
    """Check `df` against the event contract.

    Problems: missing user id, unknown action / surface, missing or negative timestamp, missing
    (NaN), negative or infinite duration, missing item id, item not in `known_item_ids` (None
    skips that check). Row numbers in messages are `df.index` labels (file row positions for
    frames from read_event_shard / read_csv).

    Returns (clean rows with canonical dtypes and a fresh index, {problem: rows dropped}); a row
    with several problems counts under each. Without drop_invalid any problem raises
    EventValidationError naming `where`, each problem, its row count and the first rows.
    """
    report = ProblemReport(where)
    ok = check_events(df, known_item_ids, report)
    if not drop_invalid:
        report.raise_if_any(DROP_HINT)
    clean = df if ok.all() else df[ok]
    return canonicalize_events(clean), {k: report.counts[k] for k in PROBLEMS}


# --------------------------------------------------------------------------------------------
# Items

def write_items(dir: str, item_ids, embeddings, interests, interest_names: Sequence[str]) -> str:
    """Write items.parquet (sorted by item_id) and interests.json; returns the items path.

    item_ids [N] unique ints; embeddings [N, D] content vectors; interests: per item a list of
    interest ids in [0, len(interest_names)), or an [N, K] int array padded with -1.
    """
    ids = np.asarray(item_ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"item_ids must be a 1-d integer array, got dtype {ids.dtype} "
                         f"shape {ids.shape}")
    ids = ids.astype(np.int64)
    n = len(ids)
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != n:
        raise ValueError(f"duplicate item ids: {uniq[counts > 1][:5].tolist()}")
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"embeddings must be [num_items={n}, dim], got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or inf")
    if n * emb.shape[1] >= 2 ** 31:
        raise ValueError(f"{n} x {emb.shape[1]} embedding values exceed a parquet list column")
    if isinstance(interests, np.ndarray) and interests.ndim == 2:
        if interests.shape[0] != n:
            raise ValueError(f"interests must have {n} rows, got {interests.shape}")
        valid = interests >= 0
        lengths = valid.sum(axis=1)
        # Keep each row's ids in column order, padding removed.
        flat = interests[valid].astype(np.int64)
    else:
        if len(interests) != n:
            raise ValueError(f"interests must have one list per item ({n}), got {len(interests)}")
        lengths = np.fromiter((len(x) for x in interests), dtype=np.int64, count=n)
        flat = (np.concatenate([np.asarray(x, dtype=np.int64).reshape(-1) for x in interests])
                if lengths.sum() else np.zeros(0, np.int64))
    names = [str(x) for x in interest_names]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate interest names in {names}")
    if flat.size and (flat.min() < 0 or flat.max() >= len(names)):
        raise ValueError(f"interest ids must be in [0, {len(names)}), got range "
                         f"[{flat.min()}, {flat.max()}]")
    order = np.argsort(ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(lengths)])
    new_lengths = lengths[order]
    int_offsets = np.concatenate([[0], np.cumsum(new_lengths)])
    # Gather each item's interest run in the new (sorted) order.
    sel = (np.arange(int_offsets[-1]) - np.repeat(int_offsets[:-1], new_lengths)
           + np.repeat(starts[:-1][order], new_lengths))
    d = emb.shape[1]
    emb_offsets = np.arange(n + 1, dtype=np.int32) * np.int32(d)
    table = pa.Table.from_arrays([
        pa.array(ids[order], pa.int64()),
        pa.ListArray.from_arrays(pa.array(emb_offsets), pa.array(emb[order].reshape(-1))),
        pa.ListArray.from_arrays(pa.array(int_offsets.astype(np.int32)),
                                 pa.array(flat[sel].astype(np.int32), pa.int32())),
    ], schema=ITEM_SCHEMA)
    os.makedirs(dir, exist_ok=True)
    path = os.path.join(dir, ITEMS_FILE)
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    _atomic_write(os.path.join(dir, INTERESTS_FILE),
                  lambda tmp: _write_text(tmp, json.dumps(names, indent=1) + "\n"))
    return path


def write_titles(dir: str, item_ids, titles: Sequence[str]) -> str:
    """titles.parquet (item_id int64, title string): what the recommendation service shows."""
    table = pa.table({"item_id": pa.array(np.asarray(item_ids, np.int64), pa.int64()),
                      "title": pa.array([str(t) for t in titles], pa.string())})
    path = os.path.join(dir, TITLES_FILE)
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def read_titles(dir: str) -> Dict[int, str]:
    """item_id -> title, or {} when the dataset has no titles (synthetic data)."""
    path = os.path.join(dir, TITLES_FILE)
    if not os.path.exists(path):
        return {}
    table = _read_parquet(path)
    if "item_id" not in table.column_names or "title" not in table.column_names:
        raise DatasetFormatError(f"{path}: need columns item_id, title; found {table.column_names}")
    return dict(zip(table.column("item_id").to_pylist(), table.column("title").to_pylist()))


def write_users(dir: str, user_ids, attributes: Mapping[str, Sequence[str]]) -> str:
    """users.parquet (user_id string, one string column per attribute): coarse user groups for
    inclusion slices, e.g. {"gender": [...], "age_group": [...]} aligned with user_ids."""
    ids = [str(u) for u in user_ids]
    if len(set(ids)) != len(ids):
        raise DatasetFormatError(f"{os.path.join(dir, USERS_FILE)}: user_id values are not unique")
    cols = {"user_id": pa.array(ids, pa.string())}
    for name, values in attributes.items():
        if name == "user_id" or len(values) != len(ids):
            raise ValueError(f"user attribute {name!r}: need a name other than user_id and "
                             f"{len(ids)} values, got {len(values)}")
        cols[name] = pa.array([str(v) for v in values], pa.string())
    path = os.path.join(dir, USERS_FILE)
    _atomic_write(path, lambda tmp: pq.write_table(pa.table(cols), tmp))
    return path


def read_users(dir: str) -> Optional[pd.DataFrame]:
    """users.parquet as a DataFrame (user_id and attribute columns, all str), or None when the
    dataset has no user attributes (synthetic data, MovieLens csv pairs). `dir` may be a URI
    (gs://, file://): the RetrievalEvaluator reads it from the pipeline's dataset_dir, which is
    remote on Vertex, and a remote table must not silently count as absent."""
    path = os.path.join(dir, USERS_FILE)
    if "://" in dir:
        import pyarrow.fs as pafs
        fs, where = pafs.FileSystem.from_uri(path)
        if fs.get_file_info(where).type == pafs.FileType.NotFound:
            return None
        try:
            table = pq.read_table(where, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetFormatError(f"{path}: not a readable parquet file: {e}") from None
    elif not os.path.exists(path):
        return None
    else:
        table = _read_parquet(path)
    bad = [f.name for f in table.schema if not _is_string(f.type)]
    if "user_id" not in table.column_names or bad:
        raise DatasetFormatError(f"{path}: need a user_id column and string attribute columns; "
                                 f"found {table.schema}")
    df = table.to_pandas()
    if df["user_id"].isna().any() or df["user_id"].duplicated().any():
        raise DatasetFormatError(f"{path}: user_id values must be present and unique")
    return df.fillna(UNKNOWN_ATTRIBUTE)


def _read_items_table(dir: str) -> pa.Table:
    path = os.path.join(dir, ITEMS_FILE)
    table = _read_parquet(path)
    _check_schema(table.schema, ITEM_SCHEMA, path, {
        "item_id": pa.types.is_integer,
        "embedding": lambda t: pa.types.is_list(t) and pa.types.is_floating(t.value_type),
        "interests": lambda t: pa.types.is_list(t) and pa.types.is_integer(t.value_type),
    })
    table = table.select(list(F.ITEM_COLUMNS)).cast(ITEM_SCHEMA)
    ids = table.column("item_id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise DatasetFormatError(f"{path}: item_id values are not unique")
    return table


def read_items(dir: str) -> pd.DataFrame:
    """items.parquet as a DataFrame: item_id int64, embedding (float32 arrays), interests
    (int32 arrays)."""
    return _read_items_table(dir).to_pandas()


def item_arrays(dir: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The item table as dense arrays: item_id [N] int64, embedding [N, D] float32 and
    interests [N, K] int32 padded with -1 (K = max interests per item, at least 1)."""
    table = _read_items_table(dir)
    path = os.path.join(dir, ITEMS_FILE)
    ids = table.column("item_id").to_numpy()
    emb_col = table.column("embedding").combine_chunks()
    lens = np.diff(emb_col.offsets.to_numpy())
    if len(ids) and (lens != lens[0]).any():
        raise DatasetFormatError(f"{path}: embeddings have different lengths "
                                 f"({sorted(set(lens.tolist()))[:5]})")
    dim = int(lens[0]) if len(ids) else 0
    emb = emb_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), dim)
    int_col = table.column("interests").combine_chunks()
    offs = int_col.offsets.to_numpy()
    ilens = np.diff(offs)
    k = max(1, int(ilens.max()) if len(ilens) else 1)
    interests = np.full((len(ids), k), -1, np.int32)
    flat = int_col.flatten().to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(ids)), ilens)
    cols = np.arange(len(flat)) - np.repeat(offs[:-1], ilens)
    interests[rows, cols] = flat
    return ids, emb, interests


def read_interest_names(dir: str) -> List[str]:
    """interests.json: interest names indexed by interest id."""
    path = os.path.join(dir, INTERESTS_FILE)
    try:
        with open(path) as f:
            names = json.load(f)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: not found (is {dir} a converted dataset?)") from None
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        raise DatasetFormatError(f"{path}: expected a JSON list of strings")
    return names


# --------------------------------------------------------------------------------------------
# Events

def event_shards(dir: str) -> List[str]:
    """Sorted paths of `<dir>/events/part-*.parquet`; raises if there are none."""
    return _shards(dir, EVENTS_DIR)


def impression_shards(dir: str) -> List[str]:
    """Sorted paths of `<dir>/impressions/part-*.parquet` (empty list if the dataset has none)."""
    if not os.path.isdir(os.path.join(dir, IMPRESSIONS_DIR)):
        return []
    return _shards(dir, IMPRESSIONS_DIR)


def _shards(dir: str, sub: str) -> List[str]:
    paths = sorted(glob.glob(os.path.join(dir, sub, "part-*.parquet")))
    if not paths:
        raise DatasetFormatError(f"{os.path.join(dir, sub)}: no part-*.parquet shards found")
    return paths


_EVENT_TYPE_CHECKS = {
    "user_id": lambda t: _is_string(t),
    "item_id": pa.types.is_integer,
    "action": lambda t: _is_string(t),
    "timestamp": pa.types.is_integer,
    "duration": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
    "surface": lambda t: _is_string(t),
}


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def read_event_shard(path: str) -> pd.DataFrame:
    """One event shard as a DataFrame in canonical column order.

    Types are checked (any integer width for ids/timestamps, dictionary-encoded strings are
    accepted) and a wrong or missing column raises DatasetFormatError naming the file. Values are
    not checked: run validate_events. Without nulls the dtypes are canonical (object strings,
    int64, float64); integer columns with nulls come back as pandas nullable Int64 so that
    validate_events can report them.
    """
    table = _read_parquet(path)
    _check_schema(table.schema, EVENT_SCHEMA, path, _EVENT_TYPE_CHECKS)
    cols = {}
    for field in EVENT_SCHEMA:
        col = table.column(field.name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        try:
            col = col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise DatasetFormatError(f"{path}: column {field.name!r} cannot be read as "
                                     f"{field.type}: {e}") from None
        if pa.types.is_integer(field.type) and col.null_count:
            cols[field.name] = pd.array(col.to_pylist(), dtype="Int64")
        else:
            cols[field.name] = col.to_pandas()
    return pd.DataFrame(cols)


def read_impression_shard(path: str) -> pd.DataFrame:
    """One impression shard, type-checked like read_event_shard."""
    table = _read_parquet(path)
    checks = {f.name: (_is_string if pa.types.is_string(f.type) else pa.types.is_integer)
              for f in IMPRESSION_SCHEMA}
    _check_schema(table.schema, IMPRESSION_SCHEMA, path, checks)
    return table.select(list(F.IMPRESSION_COLUMNS)).cast(IMPRESSION_SCHEMA).to_pandas()


def iter_events(dir: str, *, drop_invalid: bool = False
                ) -> Iterator[Tuple[str, pd.DataFrame, Dict[str, int]]]:
    """Yield (shard path, validated events, dropped counts) for every shard of a dataset,
    checking item ids against its item table."""
    known = pd.Index(_read_items_table(dir).column("item_id").to_numpy())
    for path in event_shards(dir):
        df, counts = validate_events(read_event_shard(path), known, where=path,
                                     drop_invalid=drop_invalid)
        yield path, df, counts


def _read_parquet(path: str) -> pa.Table:
    if not os.path.exists(path):
        raise DatasetFormatError(f"{path}: not found")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetFormatError(f"{path}: not a readable parquet file: {e}") from None


def _check_schema(schema: pa.Schema, expected: pa.Schema, path: str, checks: Mapping) -> None:
    missing = [f.name for f in expected if f.name not in schema.names]
    if missing:
        raise DatasetFormatError(f"{path}: missing column(s) {missing}; expected "
                                 f"{expected.names}, found {schema.names}")
    wrong = [f"{name} is {schema.field(name).type} (expected {expected.field(name).type})"
             for name, ok in checks.items() if not ok(schema.field(name).type)]
    if wrong:
        raise DatasetFormatError(f"{path}: wrong column type(s): " + "; ".join(wrong))


# --------------------------------------------------------------------------------------------
# Writers

class ShardWriter:
    """Buffers rows and writes `<dir>/<sub>/part-NNNNN.parquet` shards of exactly `shard_rows`
    rows (the last one shorter), so producers can stream arbitrarily many rows in bounded memory.

    Use as a context manager; the remainder is flushed on a clean exit only, so a crashed
    producer leaves no final shard (and no DATASET.json, which marks a complete dataset).
    Refuses to write into a directory that already holds shards (stale shards would mix in).
    """

    def __init__(self, dir: str, sub: str, schema: pa.Schema, shard_rows: int = 1_000_000):
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.dir = os.path.join(dir, sub)
        self.schema = schema
        self.shard_rows = int(shard_rows)
        self.paths: List[str] = []
        self.rows_written = 0
        self._buf: List[pa.Table] = []
        self._buf_rows = 0
        self._closed = False
        if glob.glob(os.path.join(self.dir, "part-*.parquet")):
            raise FileExistsError(f"{self.dir} already contains shards; remove it first")
        os.makedirs(self.dir, exist_ok=True)

    def write(self, rows: Union[pd.DataFrame, Mapping[str, Any], pa.Table]) -> None:
        """Append rows given as a DataFrame, a dict of equal-length arrays, or an Arrow table;
        columns are cast to the schema (a failed cast raises naming the column)."""
        if self._closed:
            raise RuntimeError("writer is closed")
        table = self._to_table(rows)
        if not table.num_rows:
            return
        self._buf.append(table)
        self._buf_rows += table.num_rows
        while self._buf_rows >= self.shard_rows:
            combined = pa.concat_tables(self._buf)
            self._write_shard(combined.slice(0, self.shard_rows))
            rest = combined.slice(self.shard_rows)
            self._buf = [rest] if rest.num_rows else []
            self._buf_rows = rest.num_rows

    def _to_table(self, rows) -> pa.Table:
        if isinstance(rows, pa.Table):
            return rows.select(self.schema.names).cast(self.schema)
        arrays = []
        for field in self.schema:
            if field.name not in rows:
                raise KeyError(f"{self.dir}: rows lack column {field.name!r}")
            vals = rows[field.name]
            if isinstance(vals, pd.Series):
                vals = vals.to_numpy()
            try:
                arrays.append(pa.array(vals, type=field.type, from_pandas=True))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
                raise TypeError(f"{self.dir}: column {field.name!r} is not {field.type}: {e}") \
                    from None
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _write_shard(self, table: pa.Table) -> None:
        path = os.path.join(self.dir, SHARD_PATTERN.format(len(self.paths)))
        table = table.combine_chunks()
        _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        self.paths.append(path)
        self.rows_written += table.num_rows

    def close(self) -> None:
        """Flush the remaining rows as a final shard."""
        if self._closed:
            return
        if self._buf_rows:
            self._write_shard(pa.concat_tables(self._buf))
        self._buf, self._buf_rows, self._closed = [], 0, True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._buf, self._buf_rows, self._closed = [], 0, True
        return False


class EventShardWriter(ShardWriter):
    """ShardWriter for `<dir>/events/` with the canonical event schema."""

    def __init__(self, dir: str, shard_rows: int = 1_000_000):
        super().__init__(dir, EVENTS_DIR, EVENT_SCHEMA, shard_rows)


class ImpressionShardWriter(ShardWriter):
    """ShardWriter for `<dir>/impressions/` with the impression schema."""

    def __init__(self, dir: str, shard_rows: int = 1_000_000):
        super().__init__(dir, IMPRESSIONS_DIR, IMPRESSION_SCHEMA, shard_rows)


# --------------------------------------------------------------------------------------------
# Suppression (data.suppressed_users; docs/privacy.md)

def read_user_list(path: str, where: str) -> List[str]:
    """User ids of a list file: one a line, surrounding whitespace stripped, blank lines and
    lines starting with `#` skipped. `where` names the setting in errors."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}={path}: not found") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise DatasetFormatError(f"{where}={path}: not a UTF-8 text file of user ids "
                                 f"({type(e).__name__})") from None
    return [u for u in (line.strip() for line in lines) if u and not u.startswith("#")]


def drop_users(dir: str, user_ids: Sequence[str]) -> Dict[str, Any]:
    """Remove every event, impression and ground-truth row of `user_ids` from the dataset in
    `dir`, rewriting each affected shard atomically (a shard left empty is deleted). Returns
    {"users": ids that had rows, "events", "impressions", "positives", "actions": {action: n}}
    removed, to correct DATASET.json's counts."""
    import pyarrow.compute as pc

    ids = pa.array(sorted(set(map(str, user_ids))), pa.string())
    found: set = set()
    out: Dict[str, Any] = {"events": 0, "impressions": 0, "positives": 0,
                           "actions": dict.fromkeys(F.ACTIONS, 0)}

    def rewrite(path: str) -> pa.Table:
        table = pq.read_table(path)
        hit = pc.is_in(table.column("user_id"), value_set=ids).fill_null(False)
        gone = table.filter(hit)
        if gone.num_rows:
            kept = table.filter(pc.invert(hit))
            if kept.num_rows:
                _atomic_write(path, lambda tmp: pq.write_table(kept, tmp))
            else:
                os.remove(path)
            found.update(gone.column("user_id").to_pylist())
        return gone

    for path in event_shards(dir):
        gone = rewrite(path).to_pandas()
        out["events"] += len(gone)
        for a, n in gone["action"].value_counts().items():
            out["actions"][a] = out["actions"].get(a, 0) + int(n)
        out["positives"] += int(is_positive(gone["action"].to_numpy(object),
                                            gone["duration"].to_numpy(np.float64)).sum())
    for path in impression_shards(dir):
        out["impressions"] += rewrite(path).num_rows
    # Per-user tables: the synthetic world's ground truth and the user attributes table.
    for table in (os.path.join(dir, "ground_truth", "users.parquet"),
                  os.path.join(dir, USERS_FILE)):
        if os.path.exists(table):
            rewrite(table)
    out["users"] = len(found)
    return out


# --------------------------------------------------------------------------------------------
# Manifest and housekeeping

def write_dataset_manifest(dir: str, info: Mapping[str, Any]) -> str:
    """Write DATASET.json atomically (it marks the dataset complete); returns its path."""
    doc = {"format_version": FORMAT_VERSION, **info}
    path = os.path.join(dir, MANIFEST_FILE)
    text = json.dumps(doc, indent=1, sort_keys=True, default=_json_default) + "\n"
    _atomic_write(path, lambda tmp: _write_text(tmp, text))
    return path


def read_dataset_manifest(dir: str) -> Optional[dict]:
    """DATASET.json as a dict, or None when the dataset is absent or incomplete."""
    path = os.path.join(dir, MANIFEST_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def clear_dataset(dir: str) -> None:
    """Remove the files this module's layout defines from `dir` (and nothing else), so that a
    regenerated dataset never mixes with stale shards. DATASET.json goes first."""
    import shutil
    for name in (MANIFEST_FILE, ITEMS_FILE, INTERESTS_FILE, TITLES_FILE, USERS_FILE):
        p = os.path.join(dir, name)
        if os.path.exists(p):
            os.remove(p)
    for sub in (EVENTS_DIR, IMPRESSIONS_DIR, "ground_truth"):
        p = os.path.join(dir, sub)
        if os.path.isdir(p):
            shutil.rmtree(p)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
