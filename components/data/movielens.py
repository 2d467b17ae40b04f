"""MovieLens as canonical events: ML-100K fetched at run time, or any MovieLens-format csv pair.

ML-100K comes from the `recbole==1.2.1` wheel on PyPI (`recbole/dataset_example/ml-100k/`):
downloaded with `python -m pip download`, checked against a pinned sha256, and unpacked into a
cache (`$PINRANK_CACHE`, DataConfig.cache_dir, default `~/.cache/pinrank`, subdirectory
`ml-100k/`). MovieLens's licence forbids redistribution, so the data is never written into the
repository; an offline machine can point `PINRANK_RECBOLE_WHEEL` at a copy of the wheel (it is
verified the same way).

Ratings become actions (RATING_ACTIONS; a rating r maps to the first row with r >= threshold):

    r >= 4.5 (5 stars)      -> repin,   duration 20 s   positive
    3.5 <= r < 4.5 (4)      -> closeup, duration 30 s   positive (closeup >= 10 s)
    2.5 <= r < 3.5 (3)      -> click,   duration  5 s   NOT positive (short click)
    r < 2.5 (<= 2 stars)    -> hide,    duration  0 s

Half-star ratings (ML-latest, 25M) are rounded by the same thresholds, so x.5 goes up. Ratings
must lie in [0, 5]; anything else (missing, non-numeric, a 10-point scale) is reported like any
other invalid event row. Every event gets surface "homefeed" and the rating's timestamp. Items are
all movies of the item file (also unrated ones); interests are the genres found in that file
(sorted by name; ML-100K has 19 including "unknown"). The content embedding is the L2-normalised
genre multi-hot followed by YEAR_WEIGHT x a one-hot release-year bucket (YEAR_EDGES; all zeros
when the year is unknown): genre + era is legitimate item content, known before any rating.

Every such fallback (no release year; no genres, or only ML-100K's "unknown") is counted in
DATASET.json under "fallbacks"; check_fallbacks stops the run when too many items fall back.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import zipfile
from typing import Iterable, Sequence, Tuple

import numpy as np
import pandas as pd

from pinrank.components.data import events as E
from pinrank.pipeline import pinned_wheel
from pinrank.pipeline.artifacts import sha256_file

# Bump whenever the conversion's output for the same inputs changes (invalidates caches).
CONVERSION_VERSION = 3  # 3: users.parquet (gender, age_group) from ml-100k.user
RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_PREFIX = "recbole/dataset_example/ml-100k/"
ML100K_DIR = "ml-100k"
MARKER_FILE = ".complete.json"
WHEEL_ENV = "PINRANK_RECBOLE_WHEEL"
CACHE_ENV = pinned_wheel.CACHE_ENV
cache_root = pinned_wheel.cache_root  # DataConfig.cache_dir, $PINRANK_CACHE, ~/.cache/pinrank

# (minimum rating, action, duration in seconds), highest threshold first.
RATING_ACTIONS: Tuple[Tuple[float, str, float], ...] = (
    (4.5, "repin", 20.0),
    (3.5, "closeup", 30.0),
    (2.5, "click", 5.0),
    (float("-inf"), "hide", 0.0),
)
MIN_RATING, MAX_RATING = 0.0, 5.0
SURFACE = "homefeed"
YEAR_EDGES = (1960, 1980, 1990, 1995, 2000, 2010)  # buckets: <1960, [1960,1980), ..., >= 2010
YEAR_WEIGHT = 0.5
NO_GENRES = "(no genres listed)"
PLACEHOLDER_GENRES = ("unknown",)  # ML-100K's genre for "none known": kept, but counted missing
YEAR_COLUMN = "year"  # optional movies.csv column; wins over the title's "(YYYY)"

# Fallback -> (what the items lack, how to fix the movies file), for check_fallbacks.
FALLBACKS = {
    "release_year_missing": ("no release year",
                             f'add a {YEAR_COLUMN} column or "(YYYY)" to titles'),
    "genres_missing": ("no genres", 'fill the genres column ("Comedy|Drama")'),
}

_THRESHOLDS = np.array([t for t, _, _ in RATING_ACTIONS[::-1][1:]])  # ascending, finite
_ACTIONS_ASC = np.array([a for _, a, _ in RATING_ACTIONS[::-1]], dtype=object)
_DURATIONS_ASC = np.array([d for _, _, d in RATING_ACTIONS[::-1]])


class MovieLensFetchError(RuntimeError):
    """The recbole wheel could not be obtained or failed verification."""


# --------------------------------------------------------------------------------------------
# Mapping

def ratings_to_actions(rating) -> Tuple[np.ndarray, np.ndarray]:
    """Map star ratings to (action names, durations) with RATING_ACTIONS. Ratings must already
    be valid (finite, within [MIN_RATING, MAX_RATING])."""
    r = np.asarray(rating, dtype=np.float64)
    bucket = np.searchsorted(_THRESHOLDS, r, side="right")
    return _ACTIONS_ASC[bucket], _DURATIONS_ASC[bucket]


def content_embeddings(genres: Sequence[Sequence[str]], years: Sequence[float],
                       genre_names: Sequence[str]) -> np.ndarray:
    """[N, len(genre_names) + len(YEAR_EDGES) + 1] float32: normalised genre multi-hot, then
    YEAR_WEIGHT x release-year bucket one-hot (zeros for an unknown year)."""
    index = {g: i for i, g in enumerate(genre_names)}
    n, g = len(genres), len(genre_names)
    out = np.zeros((n, g + len(YEAR_EDGES) + 1), np.float32)
    rows = np.repeat(np.arange(n), [len(x) for x in genres])
    cols = np.array([index[x] for gs in genres for x in gs], dtype=np.int64)
    out[rows, cols] = 1.0
    norm = np.linalg.norm(out[:, :g], axis=1, keepdims=True)
    out[:, :g] /= np.maximum(norm, 1.0)
    y = np.asarray(years, dtype=np.float64)
    known = np.isfinite(y)
    bucket = np.searchsorted(np.array(YEAR_EDGES), y[known], side="right")
    out[np.flatnonzero(known), g + bucket] = YEAR_WEIGHT
    return out


# --------------------------------------------------------------------------------------------
# Fetching ML-100K

def fetch_movielens_100k(cache_dir: str = "") -> str:
    """Return a directory holding the ML-100K RecBole atomic files (ml-100k.inter, .item, ...).

    The first call downloads and verifies the recbole wheel and extracts only
    `recbole/dataset_example/ml-100k/*`; later calls find the marker and touch no network.
    """
    root = cache_root(cache_dir)
    dest = os.path.join(root, ML100K_DIR)
    if _cache_valid(dest):
        return dest
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ml-100k-", dir=root) as tmp:
        wheel = _obtain_wheel(tmp)
        staging = os.path.join(tmp, ML100K_DIR)
        os.makedirs(staging)
        files = {}
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(ML100K_PREFIX) or info.is_dir():
                    continue
                name = info.filename[len(ML100K_PREFIX):]
                if not name or "/" in name or name.startswith("."):
                    continue
                with zf.open(info) as src, open(os.path.join(staging, name), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                files[name] = sha256_file(os.path.join(staging, name))
        for needed in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
            if needed not in files:
                raise MovieLensFetchError(f"{RECBOLE_WHEEL} lacks {ML100K_PREFIX}{needed}")
        with open(os.path.join(staging, MARKER_FILE), "w") as f:
            json.dump({"wheel": RECBOLE_WHEEL, "wheel_sha256": RECBOLE_WHEEL_SHA256,
                       "files": files}, f, indent=1, sort_keys=True)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return dest


def _cache_valid(dest: str) -> bool:
    try:
        with open(os.path.join(dest, MARKER_FILE)) as f:
            marker = json.load(f)
        if marker.get("wheel_sha256") != RECBOLE_WHEEL_SHA256:
            return False
        return all(sha256_file(os.path.join(dest, name)) == digest
                   for name, digest in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _obtain_wheel(tmp: str) -> str:
    """The verified recbole wheel (downloaded into `tmp`, or $PINRANK_RECBOLE_WHEEL)."""
    try:
        return pinned_wheel.obtain(f"recbole=={RECBOLE_VERSION}", RECBOLE_WHEEL,
                                   RECBOLE_WHEEL_SHA256, WHEEL_ENV, tmp)
    except pinned_wheel.PinnedWheelError as e:
        raise MovieLensFetchError(
            f"MovieLens-100K: {e}\nOr use data.source=path with a ratings.csv/movies.csv "
            "directory.") from None


# --------------------------------------------------------------------------------------------
# Reading inputs

def read_atomic_file(path: str) -> pd.DataFrame:
    """A RecBole atomic file (tab-separated, header `name:type`) with the types stripped from
    the column names: token/token_seq columns stay strings, float columns become float64
    (NaN where unparsable)."""
    try:
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str,
                         keep_default_na=False, na_values=[], encoding="utf-8")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise E.DatasetFormatError(f"{path}: cannot read RecBole atomic file: {e}") from None
    names = {}
    for col in df.columns:
        name, _, typ = col.partition(":")
        if not typ:
            raise E.DatasetFormatError(f"{path}: header field {col!r} lacks a ':type' suffix")
        names[col] = name
        if typ == "float":
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
    return df.rename(columns=names)


# Coarse age groups for inclusion slices: each holds 28-66 of ML-100K's ~180 eval users
# (docs/protocol.md); finer groups would be too small for an interval.
AGE_EDGES = (25, 35, 45)
AGE_GROUPS = ("<25", "25-34", "35-44", "45+")
GENDERS = {"F": "female", "M": "male"}


def age_groups(ages) -> list:
    """AGE_GROUPS label of every age (years); a missing or non-positive age -> "unknown"."""
    ages = pd.to_numeric(pd.Series(list(ages), dtype=object), errors="coerce").to_numpy(np.float64)
    bucket = np.searchsorted(np.asarray(AGE_EDGES), np.nan_to_num(ages, nan=-1.0), side="right")
    return [AGE_GROUPS[b] if a > 0 else E.UNKNOWN_ATTRIBUTE for a, b in zip(ages, bucket)]


def _users_from_100k(path: str) -> pd.DataFrame:
    """ml-100k.user -> user_id, gender, age_group. Occupation (21 values) and zip code are left
    out: too fine for ~180 eval users, and the zip code identifies people."""
    users = read_atomic_file(path)
    for col in ("user_id", "age", "gender"):
        if col not in users.columns:
            raise E.DatasetFormatError(f"{path}: missing column {col!r} "
                                       f"(found {list(users.columns)})")
    return pd.DataFrame({
        "user_id": users["user_id"].astype(str).str.strip(),
        "gender": [GENDERS.get(g.strip(), E.UNKNOWN_ATTRIBUTE) for g in users["gender"]],
        "age_group": age_groups(users["age"]),
    })


def _movies_from_100k(path: str) -> pd.DataFrame:
    items = read_atomic_file(path)
    for col in ("item_id", "release_year", "class"):
        if col not in items.columns:
            raise E.DatasetFormatError(f"{path}: missing column {col!r} "
                                       f"(found {list(items.columns)})")
    years = pd.to_numeric(items["release_year"], errors="coerce")  # "unkonwn" -> NaN
    titles = (items["movie_title"].astype(str) if "movie_title" in items.columns
              else "movie " + items["item_id"].astype(str))
    return pd.DataFrame({
        "movieId": items["item_id"],
        "title": [t if np.isnan(y) else f"{t} ({int(y)})" for t, y in zip(titles, years)],
        "genres": [[g for g in s.split(" ") if g] for s in items["class"]],
        "year": years,
    })


_YEAR_RE = re.compile(r"\((\d{4})\)\s*$")


def _movies_from_csv(path: str) -> pd.DataFrame:
    try:
        movies = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise E.DatasetFormatError(f"{path}: cannot read movies csv: {e}") from None
    missing = [c for c in ("movieId", "title", "genres") if c not in movies.columns]
    if missing:
        raise E.DatasetFormatError(f"{path}: missing column(s) {missing}; expected "
                                   f"movieId,title,genres, found {list(movies.columns)}")
    return pd.DataFrame({
        "movieId": movies["movieId"],
        "title": movies["title"],
        "genres": [[g for g in s.split("|") if g and g != NO_GENRES] for s in movies["genres"]],
        "year": _csv_years(movies, path),
    })


def _csv_years(movies: pd.DataFrame, path: str) -> pd.Series:
    """Release years (NaN: unknown): the year column where it has a value, else the title's
    trailing "(YYYY)". A year cell that is not a whole number is an error, not a fallback."""
    years = pd.to_numeric(movies["title"].str.strip().str.extract(_YEAR_RE, expand=False),
                          errors="coerce")
    if YEAR_COLUMN not in movies.columns:
        return years
    raw = movies[YEAR_COLUMN].str.strip()
    given = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        bad = (raw != "").to_numpy() & ~(np.isfinite(given) & (given == np.floor(given)))
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(f"row {r} {raw.iloc[r]!r}" for r in rows[:E.MAX_EXAMPLES])
        raise E.DatasetFormatError(f"{path}: column {YEAR_COLUMN!r}: {len(rows)} movie(s) with a "
                                   f"non-numeric year ({shown}); leave the cell empty if unknown")
    return pd.Series(np.where(raw != "", given, years.to_numpy(np.float64)), index=movies.index)


def has_year_column(movies_csv: str) -> bool:
    """Whether movies.csv has a year column. Only such inputs convert differently since the
    column is read, so it enters their fingerprint instead of bumping CONVERSION_VERSION (which
    would rebuild every MovieLens dataset and invalidate its pipeline cache)."""
    try:
        with open(movies_csv, newline="", encoding="utf-8-sig") as f:
            return YEAR_COLUMN in next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False  # the conversion reports the unreadable file


def _movie_ids(movies: pd.DataFrame, where: str) -> np.ndarray:
    raw = movies["movieId"].astype(str).str.strip()
    ids = pd.to_numeric(raw, errors="coerce")
    bad = ids.isna() | (ids != np.floor(ids)) | (ids < 0)
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())
        shown = ", ".join(f"row {r} {raw.iloc[r]!r}" for r in rows[:E.MAX_EXAMPLES])
        raise E.DatasetFormatError(f"{where}: {len(rows)} movie(s) with a missing or "
                                   f"non-integer movieId ({shown})")
    ids = ids.to_numpy(dtype=np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise E.DatasetFormatError(f"{where}: duplicate movieId(s) "
                                   f"{uniq[counts > 1][:E.MAX_EXAMPLES].tolist()}")
    return ids


# --------------------------------------------------------------------------------------------
# Conversion

def convert_movielens_100k(src_dir: str, out_dir: str, *, drop_invalid: bool = False,
                           shard_rows: int = 1_000_000) -> dict:
    """Convert the RecBole ML-100K atomic files in `src_dir` (see fetch_movielens_100k)."""
    inter_path = os.path.join(src_dir, "ml-100k.inter")
    item_path = os.path.join(src_dir, "ml-100k.item")
    user_path = os.path.join(src_dir, "ml-100k.user")
    movies = _movies_from_100k(item_path)
    users = _users_from_100k(user_path)
    inter = read_atomic_file(inter_path)
    for col in ("user_id", "item_id", "rating", "timestamp"):
        if col not in inter.columns:
            raise E.DatasetFormatError(f"{inter_path}: missing column {col!r} "
                                       f"(found {list(inter.columns)})")
    ratings = inter.rename(columns={"user_id": "userId", "item_id": "movieId"})
    info = {"source": "movielens-100k",
            "origin": f"PyPI {RECBOLE_WHEEL} ({ML100K_PREFIX})",
            "inputs": {"wheel": {"name": RECBOLE_WHEEL, "sha256": RECBOLE_WHEEL_SHA256},
                       os.path.basename(inter_path): sha256_file(inter_path),
                       os.path.basename(item_path): sha256_file(item_path),
                       os.path.basename(user_path): sha256_file(user_path)}}
    return _convert(movies, item_path, [ratings], inter_path, out_dir, info,
                    drop_invalid=drop_invalid, shard_rows=shard_rows, user_table=users)


def convert_movielens_csv(ratings_csv: str, movies_csv: str, out_dir: str, *,
                          drop_invalid: bool = False, shard_rows: int = 1_000_000,
                          chunk_rows: int = 1_000_000) -> dict:
    """Convert a MovieLens-format pair: ratings.csv (userId,movieId,rating,timestamp) and
    movies.csv (movieId,title,genres with '|' separators; the year is read from an optional
    year column, else from the title's trailing "(YYYY)"). Ratings are streamed in chunks, so
    ML-25M-sized files fit in memory.

    Invalid rows (unknown movieId, bad rating/timestamp, missing userId) raise an
    EventValidationError naming ratings_csv with file-wide counts (row numbers are 0-based data
    rows), unless drop_invalid, which drops and counts them in DATASET.json.
    """
    movies = _movies_from_csv(movies_csv)
    try:
        reader = pd.read_csv(ratings_csv, dtype={"userId": str}, chunksize=chunk_rows)
        chunks = _check_ratings_columns(reader, ratings_csv)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise E.DatasetFormatError(f"{ratings_csv}: cannot read ratings csv: {e}") from None
    info = {"source": "movielens-csv",
            "inputs": {"ratings_csv": {"path": os.path.abspath(ratings_csv),
                                       "sha256": sha256_file(ratings_csv)},
                       "movies_csv": {"path": os.path.abspath(movies_csv),
                                      "sha256": sha256_file(movies_csv)}}}
    return _convert(movies, movies_csv, chunks, ratings_csv, out_dir, info,
                    drop_invalid=drop_invalid, shard_rows=shard_rows)


def _check_ratings_columns(reader, path: str) -> Iterable[pd.DataFrame]:
    it = iter(reader)
    while True:
        try:
            chunk = next(it)
        except StopIteration:
            return
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
            raise E.DatasetFormatError(f"{path}: cannot read ratings csv: {e}") from None
        missing = [c for c in ("userId", "movieId", "rating", "timestamp")
                   if c not in chunk.columns]
        if missing:
            raise E.DatasetFormatError(f"{path}: missing column(s) {missing}; expected "
                                       f"userId,movieId,rating,timestamp, found "
                                       f"{list(chunk.columns)}")
        yield chunk


def _convert(movies: pd.DataFrame, movies_where: str, rating_chunks: Iterable[pd.DataFrame],
             ratings_where: str, out_dir: str, info: dict, *, drop_invalid: bool,
             shard_rows: int, user_table: pd.DataFrame | None = None) -> dict:
    item_ids = _movie_ids(movies, movies_where)
    genre_names = sorted({g for gs in movies["genres"] for g in gs})
    fallbacks = {  # items whose content feature is unknown (zeros, or ML-100K's "unknown" genre)
        "release_year_missing": int(movies["year"].isna().sum()),
        "genres_missing": sum(all(g in PLACEHOLDER_GENRES for g in gs)
                              for gs in movies["genres"]),
    }
    emb = content_embeddings(movies["genres"].tolist(), movies["year"].to_numpy(), genre_names)
    index = {g: i for i, g in enumerate(genre_names)}
    interests = [[index[g] for g in dict.fromkeys(gs)] for gs in movies["genres"]]
    os.makedirs(out_dir, exist_ok=True)
    E.clear_dataset(out_dir)
    E.write_items(out_dir, item_ids, emb, interests, genre_names)
    E.write_titles(out_dir, item_ids, movies["title"].astype(str).str.strip().tolist())
    if user_table is not None:
        E.write_users(out_dir, user_table["user_id"],
                      {c: user_table[c].tolist() for c in user_table.columns if c != "user_id"})
    known = pd.Index(item_ids)
    report = E.ProblemReport(ratings_where)
    users: set = set()
    action_counts = {a: 0 for _, a, _ in RATING_ACTIONS}
    n_events = n_pos = 0
    ts_min, ts_max = None, None
    try:
        with E.EventShardWriter(out_dir, shard_rows) as writer:
            for chunk in rating_chunks:
                rating = pd.to_numeric(chunk["rating"], errors="coerce").to_numpy(np.float64)
                bad_rating = ~((rating >= MIN_RATING) & (rating <= MAX_RATING))
                report.add("invalid_rating", bad_rating, chunk.index,
                           chunk["rating"].to_numpy(dtype=object),
                           label=f"missing or out-of-range rating (need {MIN_RATING:g}-"
                                 f"{MAX_RATING:g} stars)", show_values=True)
                actions, durations = ratings_to_actions(np.where(bad_rating, 0.0, rating))
                item = pd.to_numeric(chunk["movieId"], errors="coerce")
                if not item.isna().any():
                    item = item.astype(np.int64)
                ev = pd.DataFrame({
                    "user_id": chunk["userId"].to_numpy(dtype=object),
                    "item_id": item.to_numpy(),
                    "action": actions, "timestamp": chunk["timestamp"].to_numpy(),
                    "duration": durations, "surface": SURFACE}, index=chunk.index)
                ok = E.check_events(ev, known, report) & ~bad_rating
                if not drop_invalid and report.any:
                    continue  # keep scanning: the error reports file-wide counts
                clean = E.canonicalize_events(ev if ok.all() else ev[ok])
                writer.write(clean)
                n_events += len(clean)
                n_pos += int(E.is_positive(clean["action"], clean["duration"]).sum())
                for a, c in clean["action"].value_counts().items():
                    action_counts[a] += int(c)
                users.update(pd.unique(clean["user_id"]))
                if len(clean):
                    lo, hi = int(clean["timestamp"].min()), int(clean["timestamp"].max())
                    ts_min = lo if ts_min is None else min(ts_min, lo)
                    ts_max = hi if ts_max is None else max(ts_max, hi)
            if not drop_invalid:
                report.raise_if_any(E.DROP_HINT)
            if n_events == 0:
                raise E.DatasetFormatError(f"{ratings_where}: no valid ratings (the file has "
                                           f"{'no data rows' if not report.any else 'only invalid rows'})")
    except BaseException:
        E.clear_dataset(out_dir)  # never leave a half-written dataset behind
        raise
    summary = {
        **info,
        "conversion_version": CONVERSION_VERSION,
        "mapping": {"rating_actions": [[t if np.isfinite(t) else None, a, d]
                                       for t, a, d in RATING_ACTIONS],
                    "surface": SURFACE, "year_edges": list(YEAR_EDGES),
                    "year_weight": YEAR_WEIGHT},
        "counts": {"users": len(users), "items": len(item_ids), "interests": len(genre_names),
                   "events": n_events, "positives": n_pos, "actions": action_counts,
                   "event_shards": len(writer.paths),
                   "dropped": {k: v for k, v in report.counts.items() if v}},
        "time_range": [ts_min, ts_max] if n_events else None,
        "fallbacks": {k: {"count": v, "of": len(item_ids)} for k, v in fallbacks.items()},
    }
    if user_table is not None:  # group sizes of the attribute table (all users, not only raters)
        summary["user_attributes"] = {c: {str(k): int(v) for k, v in user_table[c].value_counts(
            ).sort_index().items()} for c in user_table.columns if c != "user_id"}
    E.write_dataset_manifest(out_dir, summary)
    return summary


def check_fallbacks(fallbacks: dict, where: str, max_share: float, allow: bool) -> None:
    """Raise DatasetFormatError (one line naming `where`, each feature, its count and the fix)
    when more than `max_share` of the items fall back for some feature, unless `allow`."""
    if allow:
        return
    parts = []
    for name, (lack, fix) in FALLBACKS.items():
        fb = fallbacks.get(name) or {}
        n, of = fb.get("count", 0), fb.get("of", 0)
        if of and n / of > max_share:
            parts.append(f"{n:,} of {of:,} items have {lack} ({n / of:.0%} > "
                         f"data.max_fallback_share={max_share:g}); {fix}")
    if parts:
        raise E.DatasetFormatError(
            f"{where}: " + "; ".join(parts) + ", or --set data.allow_fallbacks=true (or raise "
            "data.max_fallback_share)")
