"""Realtime action store: each user's last actions and the daily PinnerFormer snapshots, one
interface with two back ends.

    store = open_store("sqlite:///runs/actions.db")     # embedded default (make demo, laptops)
    store = open_store("redis://127.0.0.1:6379/0")      # production (Debian's redis-server)
    store.append(events)                    -> {"added", "duplicate", "stale", "trimmed"}
    store.recent_actions(user, before_ts, limit)       the ranker's / PinnerFormer's history
    store.put_snapshot(as_of, user_ids, embeddings, meta)
    store.snapshot_embedding(user, as_of)   -> (vector, snapshot_as_of) or None
    store.forget_user(user)                 -> {"actions", "seen", "snapshot_rows"} removed
    store.purge_before(cutoff_ts)           -> {"actions", "seen", "users"} removed (retention)

Events are the canonical event format (components/data/events.py: user_id, item_id, action,
timestamp, duration, surface) plus an optional `event_id` column. Without it the event id is
`event_id_of(...)`: the hex blake2b-128 of user_id, item_id, action, timestamp, surface and
duration (repr of the float) joined by 0x1f, so a re-sent event has the same id. Event ids are
unique per user.

Per user the store keeps the `capacity` newest actions (default `default_capacity`: max of
PinnerFormer's M, the ranker's P and `ranking.max_history`, the history a ranking example holds,
so the service can build RankingExampleGen's features exactly). Order is (timestamp, item_id) as RankingExampleGen's
`_sorted_events` and client.embed_request_from_events order them; exact ties on both are broken
by the stored record (action, surface, duration, event id; bytewise), where the batch path keeps
file order, so the two agree whenever (user, timestamp, item) is unique, as in every source we
generate. Arrival order never matters: an append re-sorts, so a late event lands in its place.
After each append the oldest actions beyond `capacity` are dropped (counted "trimmed") and the
newest dropped one becomes the user's watermark: an event at or below it can never be among the
newest `capacity` again, so it is counted "stale" and not stored. An event whose id is held is
"duplicate". Appending the same events twice, in any order or interleaving, gives the same state.

Snapshots: `put_snapshot(as_of, ...)` writes a version under its own key and then flips the
versions index, in one transaction, so a reader sees the whole old or the whole new version,
never a mix. The newest `keep_snapshots` versions are kept; older ones are dropped in the same
transaction. `snapshot_embedding(user, as_of)` reads the newest version with version <= as_of.
The request path asks for `day_start(request_ts)` (`snapshot_for_request`): the embedding of the
actions before the request's day, exactly RankingExampleGen's "as of the previous day" rule;
None means pf_present = 0.

Privacy (docs/privacy.md): `forget_user` deletes everything held under one user id (actions,
event ids, watermark, seen items, and the user's row in every snapshot version, including one
being loaded) in one transaction / one Lua script; calling it again removes nothing.
`purge_before(cutoff)` is the retention rule (`online.retention_days`, `pinrank purge`): actions
with timestamp < cutoff are deleted; seen items keep only those first seen at or after the
cutoff or named by a held action (their first time then becomes that action's); a user with no
action left loses every key; a user with actions left gets the watermark (cutoff, ""), so an
expired event sent again is counted "stale" and never stored.

Every back-end failure to connect, a lost connection or a closed store raises
StoreUnavailableError with one line naming the store's URL (password masked).

Redis key layout (`{u}` is the user id inside a hash tag, so one user's keys share a cluster
slot; `p` is the prefix, default "pinrank"):
    p:{u}:a       ZSET   score = timestamp, member = record (below); ZSET ties sort bytewise
    p:{u}:i       HASH   event id -> record (idempotency; trimmed with the ZSET)
    p:{u}:w       STRING watermark "<timestamp> <record>" of the newest trimmed action
    p:{u}:s       ZSET   score = first timestamp, member = item prefix of the record: every item
                  the user acted on, trimmed or not (`seen_items`, the retrieval exclusions)
    p:snap:versions      ZSET   as_of -> as_of (the versions index; flipped last)
    p:snap:<as_of>       HASH   user id -> float32 little-endian bytes
    p:snap:<as_of>:meta  STRING JSON {"as_of", "dim", "users", ...meta}
    p:snap:load:<uuid>   HASH   a version being written (renamed into place by the flip)
    p:snap:loading       SET    the staging keys being written (forget_user clears them too)
A record is "<item_id + 2**63 as 20 digits>|<action>|<surface>|<repr(duration)>|<event id>":
the fixed-width item id makes bytewise order numeric. One Lua script per user does dedupe,
watermark, insert and trim atomically; another resolves a snapshot version and reads the vector
atomically (a concurrent flip cannot drop the version between the two steps).

SQLite (one file, WAL, so readers never block the writer): tables actions(user_id, event_id,
timestamp, rec, item_id, action, surface, duration), watermarks(user_id, timestamp, rec),
snapshot_versions(as_of, meta) and snapshot_embeddings(as_of, user_id, embedding). Ordering is
(timestamp, rec) with the same record string as Redis, so both back ends order identically.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import threading
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

from pinrank.components.data import events as ev
from pinrank.components.data.ranking_features import day_start  # the snapshot a request uses
from pinrank.pipeline.config import PipelineConfig

EVENT_ID = "event_id"
DEFAULT_KEEP_SNAPSHOTS = 3
DEFAULT_REDIS_PREFIX = "pinrank"
_ITEM_OFFSET = 1 << 63
_SEP = "\x1f"
_COUNTS = ("added", "duplicate", "stale", "trimmed")
ACTION_KEYS = ("item_id", "action", "surface", "duration", "timestamp")


class StoreError(RuntimeError):
    """The action store refused an operation (bad URL, corrupt content)."""


class StoreUnavailableError(StoreError):
    """The back end cannot be reached (down, wrong address, connection lost, store closed)."""


def default_capacity(cfg: Optional[PipelineConfig] = None) -> int:
    """Actions kept per user: enough for PinnerFormer's M, the ranker's P and the history a
    ranking example holds (`ranking.max_history`, what the service sends the ranker)."""
    cfg = cfg or PipelineConfig()
    return max(int(cfg.model.seq_len), int(cfg.ranker.realtime.seq_len),
               int(cfg.ranking.max_history))


def event_id_of(user_id: str, item_id: int, action: str, timestamp: int, surface: str,
                duration: float) -> str:
    """The deterministic id of an event without an explicit one (see the module docstring)."""
    text = _SEP.join((str(user_id), str(int(item_id)), str(action), str(int(timestamp)),
                      str(surface), repr(float(duration))))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def record_of(item_id: int, action: str, surface: str, duration: float, event_id: str) -> str:
    """The stored record; its bytewise order is (item_id, action, surface, duration, id)."""
    return f"{int(item_id) + _ITEM_OFFSET:020d}|{action}|{surface}|{float(duration)!r}|{event_id}"


def parse_record(rec: str) -> Tuple[int, str, str, float, str]:
    item, action, surface, duration, eid = rec.split("|", 4)
    return int(item) - _ITEM_OFFSET, action, surface, float(duration), eid


def empty_actions() -> Dict[str, np.ndarray]:
    return {"item_id": np.zeros(0, np.int64), "action": np.zeros(0, object),
            "surface": np.zeros(0, object), "duration": np.zeros(0, np.float64),
            "timestamp": np.zeros(0, np.int64)}


def _actions_from(rows: Sequence[Tuple[int, str]]) -> Dict[str, np.ndarray]:
    """(timestamp, record) rows, chronological -> the recent_actions dict."""
    if not rows:
        return empty_actions()
    parsed = [parse_record(rec) for _, rec in rows]
    return {"item_id": np.array([p[0] for p in parsed], np.int64),
            "action": np.array([p[1] for p in parsed], object),
            "surface": np.array([p[2] for p in parsed], object),
            "duration": np.array([p[3] for p in parsed], np.float64),
            "timestamp": np.array([int(ts) for ts, _ in rows], np.int64)}


@dataclasses.dataclass
class _Prepared:
    """Validated events of one append, grouped per user: (event id, timestamp, record)."""
    per_user: Dict[str, List[Tuple[str, int, str]]]


def _prepare(events: Union[pd.DataFrame, Sequence[Mapping[str, Any]]]) -> _Prepared:
    df = events if isinstance(events, pd.DataFrame) else pd.DataFrame(list(events))
    if not len(df):
        return _Prepared({})
    df = df.reset_index(drop=True)
    # Invalid rows raise (naming rows): the ingest consumer drops and counts them before this.
    clean, _ = ev.validate_events(df, None, where="action store append", drop_invalid=False)
    if EVENT_ID in df.columns:
        given = df[EVENT_ID]
        missing = given.isna() | given.astype(str).eq("")
        ids = given.astype(str).to_numpy(dtype=object)
    else:
        missing = pd.Series(True, index=df.index)
        ids = np.empty(len(df), object)
    per_user: Dict[str, List[Tuple[str, int, str]]] = {}
    for i, (u, item, action, ts, dur, surf) in enumerate(zip(
            clean["user_id"].tolist(), clean["item_id"].tolist(), clean["action"].tolist(),
            clean["timestamp"].tolist(), clean["duration"].tolist(), clean["surface"].tolist())):
        eid = event_id_of(u, item, action, ts, surf, dur) if missing.iat[i] else ids[i]
        per_user.setdefault(u, []).append((eid, int(ts), record_of(item, action, surf, dur, eid)))
    return _Prepared(per_user)


_ITEM_DIGITS = 20  # the fixed-width item id that starts every record (record_of)


def _items_of(prefixes) -> np.ndarray:
    """Record item prefixes (item id + 2**63, 20 digits) -> sorted int64 item ids."""
    return np.sort(np.array([int(p) - _ITEM_OFFSET for p in prefixes], np.int64))


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for messages and output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class ActionStore(abc.ABC):
    """The interface; see the module docstring for the semantics both back ends share."""

    url: str
    capacity: int
    keep_snapshots: int

    # -- actions
    @abc.abstractmethod
    def append(self, events: Union[pd.DataFrame, Sequence[Mapping[str, Any]]]) -> Dict[str, int]:
        """Store canonical events; returns counts {added, duplicate, stale, trimmed}."""

    @abc.abstractmethod
    def recent_actions(self, user_id: str, before_ts: int,
                       limit: Optional[int] = None) -> Dict[str, np.ndarray]:
        """The `limit` (default: all held) newest actions with timestamp < before_ts,
        chronological, ties by item id: item_id int64, action, surface (object str), duration
        float64, timestamp int64. Empty arrays for an unknown user."""

    @abc.abstractmethod
    def seen_items(self, user_id: str, before_ts: int) -> np.ndarray:
        """Every item the user acted on before `before_ts`, trimmed actions included (int64,
        ascending): what the request path excludes from retrieval, as the evaluation excludes
        the whole history. Not bounded by `capacity`: at most one entry per distinct item."""

    # -- snapshots
    @abc.abstractmethod
    def put_snapshot(self, as_of: int, user_ids: Sequence[str], embeddings: np.ndarray,
                     meta: Optional[Mapping[str, Any]] = None) -> int:
        """Write snapshot version `as_of` (replacing one with the same as_of) and make it
        visible atomically; drops versions beyond the newest keep_snapshots. Returns the
        number of users written."""

    @abc.abstractmethod
    def snapshot_embedding(self, user_id: str, as_of: int) -> Optional[Tuple[np.ndarray, int]]:
        """(float32 vector, version) from the newest version <= as_of; None when there is no
        such version or the user is not in it."""

    @abc.abstractmethod
    def snapshot_versions(self) -> List[int]:
        """Held snapshot versions (as_of), oldest first."""

    @abc.abstractmethod
    def snapshot_meta(self, as_of: int) -> Optional[Dict[str, Any]]:
        """The meta of a held version ({"as_of", "dim", "users", ...}), or None."""

    # -- privacy
    @abc.abstractmethod
    def forget_user(self, user_id: str) -> Dict[str, int]:
        """Delete everything held under `user_id`, atomically; returns what was removed:
        {"actions", "seen", "snapshot_rows"} (rows over all snapshot versions). Idempotent."""

    @abc.abstractmethod
    def purge_before(self, cutoff_ts: int) -> Dict[str, int]:
        """Retention: delete actions with timestamp < cutoff_ts (module docstring); returns
        {"actions", "seen", "users"} removed ("users": users left with nothing)."""

    # -- lifecycle
    @abc.abstractmethod
    def ping(self) -> None:
        """Raises StoreUnavailableError when the back end cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; later calls raise StoreUnavailableError."""

    def snapshot_for_request(self, user_id: str, request_ts: int
                             ) -> Optional[Tuple[np.ndarray, int]]:
        """The PinnerFormer embedding a request at `request_ts` uses: the snapshot as of the
        start of its day (RankingExampleGen's rule); None -> pf_present = 0."""
        return self.snapshot_embedding(user_id, day_start(request_ts))

    def _unavailable(self, e: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"action store {mask_url(self.url)} unavailable: "
                                     f"{_one_line(e)}")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({mask_url(self.url)!r})"


def _check_snapshot_args(as_of: int, user_ids, embeddings) -> Tuple[List[str], np.ndarray]:
    users = [str(u) for u in (user_ids.tolist() if isinstance(user_ids, np.ndarray)
                               else list(user_ids))]
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(users):
        raise ValueError(f"snapshot {as_of}: embeddings must be [{len(users)}, D], got "
                         f"shape {emb.shape}")
    if len(set(users)) != len(users):
        raise ValueError(f"snapshot {as_of}: duplicate user ids")
    if not np.isfinite(emb).all():
        raise ValueError(f"snapshot {as_of}: embeddings contain NaN or inf")
    return users, emb


def _meta_doc(as_of: int, n: int, dim: int, meta: Optional[Mapping[str, Any]]) -> str:
    return json.dumps({**dict(meta or {}), "as_of": int(as_of), "dim": int(dim), "users": n},
                      sort_keys=True, default=str)


def _check_capacity(capacity: Optional[int], keep_snapshots: int) -> Tuple[int, int]:
    cap = default_capacity() if capacity is None else int(capacity)
    if cap < 1:
        raise ValueError(f"capacity must be >= 1, got {cap}")
    if int(keep_snapshots) < 1:
        raise ValueError(f"keep_snapshots must be >= 1, got {keep_snapshots}")
    return cap, int(keep_snapshots)


# ------------------------------------------------------------------------------------ SQLite

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    user_id TEXT NOT NULL, event_id TEXT NOT NULL, timestamp INTEGER NOT NULL, rec TEXT NOT NULL,
    PRIMARY KEY (user_id, event_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS actions_order ON actions (user_id, timestamp, rec);
CREATE TABLE IF NOT EXISTS seen (
    user_id TEXT NOT NULL, item TEXT NOT NULL, first_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, item)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watermarks (
    user_id TEXT PRIMARY KEY, timestamp INTEGER NOT NULL, rec TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshot_versions (as_of INTEGER PRIMARY KEY, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot_embeddings (
    as_of INTEGER NOT NULL, user_id TEXT NOT NULL, embedding BLOB NOT NULL,
    PRIMARY KEY (as_of, user_id)) WITHOUT ROWID;
"""


class SqliteActionStore(ActionStore):
    """One SQLite file in WAL mode; safe for several processes (one writer at a time, a 10 s
    busy timeout) and for threads sharing the object (a lock serialises its connection)."""

    def __init__(self, path: str, *, capacity: Optional[int] = None,
                 keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS, url: Optional[str] = None):
        self.capacity, self.keep_snapshots = _check_capacity(capacity, keep_snapshots)
        self.path = path
        self.url = url or f"sqlite:///{os.path.abspath(path)}"
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        try:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)  # a new store's directory, like any output path
            db = sqlite3.connect(path, timeout=10.0, check_same_thread=False,
                                 isolation_level=None)  # explicit BEGIN/COMMIT below
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SQLITE_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise self._unavailable(e) from None
        self._db = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailableError(f"action store {self.url} unavailable: store is closed")
        return self._db

    def _run(self, fn, write: bool = False):
        with self._lock:
            db = self._conn()
            try:
                if write:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        out = fn(db)
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                    db.execute("COMMIT")
                    return out
                return fn(db)
            except sqlite3.IntegrityError:  # a bug, not the back end going away
                raise
            except (sqlite3.OperationalError, sqlite3.DatabaseError, sqlite3.ProgrammingError) as e:
                raise self._unavailable(e) from None

    def append(self, events) -> Dict[str, int]:
        prepared = _prepare(events)
        cap = self.capacity

        def write(db: sqlite3.Connection) -> Dict[str, int]:
            counts = dict.fromkeys(_COUNTS, 0)
            for user, rows in prepared.per_user.items():
                wm = db.execute("SELECT timestamp, rec FROM watermarks WHERE user_id = ?",
                                (user,)).fetchone()
                db.executemany("INSERT INTO seen (user_id, item, first_ts) VALUES (?, ?, ?) "
                               "ON CONFLICT (user_id, item) DO UPDATE SET first_ts = "
                               "min(first_ts, excluded.first_ts)",
                               [(user, rec[:_ITEM_DIGITS], ts) for _, ts, rec in rows])
                for eid, ts, rec in rows:
                    if wm is not None and (ts, rec) <= (wm[0], wm[1]):
                        held = db.execute("SELECT 1 FROM actions WHERE user_id = ? AND "
                                          "event_id = ?", (user, eid)).fetchone()
                        counts["duplicate" if held else "stale"] += 1
                        continue
                    cur = db.execute("INSERT OR IGNORE INTO actions (user_id, event_id, "
                                     "timestamp, rec) VALUES (?, ?, ?, ?)", (user, eid, ts, rec))
                    counts["added" if cur.rowcount == 1 else "duplicate"] += 1
                n = db.execute("SELECT COUNT(*) FROM actions WHERE user_id = ?",
                               (user,)).fetchone()[0]
                if n > cap:
                    old = db.execute("SELECT event_id, timestamp, rec FROM actions WHERE "
                                     "user_id = ? ORDER BY timestamp, rec LIMIT ?",
                                     (user, n - cap)).fetchall()
                    db.executemany("DELETE FROM actions WHERE user_id = ? AND event_id = ?",
                                   [(user, r[0]) for r in old])
                    db.execute("INSERT OR REPLACE INTO watermarks (user_id, timestamp, rec) "
                               "VALUES (?, ?, ?)", (user, old[-1][1], old[-1][2]))
                    counts["trimmed"] += len(old)
            return counts

        if not prepared.per_user:
            return dict.fromkeys(_COUNTS, 0)
        return self._run(write, write=True)

    def recent_actions(self, user_id: str, before_ts: int,
                       limit: Optional[int] = None) -> Dict[str, np.ndarray]:
        n = self.capacity if limit is None else int(limit)
        if n <= 0:
            return empty_actions()
        rows = self._run(lambda db: db.execute(
            "SELECT timestamp, rec FROM actions WHERE user_id = ? AND timestamp < ? "
            "ORDER BY timestamp DESC, rec DESC LIMIT ?", (str(user_id), int(before_ts), n)
        ).fetchall())
        return _actions_from(rows[::-1])

    def seen_items(self, user_id: str, before_ts: int) -> np.ndarray:
        rows = self._run(lambda db: db.execute(
            "SELECT item FROM seen WHERE user_id = ? AND first_ts < ?",
            (str(user_id), int(before_ts))).fetchall())
        return _items_of(r[0] for r in rows)

    def put_snapshot(self, as_of: int, user_ids, embeddings, meta=None) -> int:
        users, emb = _check_snapshot_args(as_of, user_ids, embeddings)
        as_of = int(as_of)
        doc = _meta_doc(as_of, len(users), emb.shape[1], meta)
        blobs = [emb[i].astype("<f4").tobytes() for i in range(len(users))]
        keep = self.keep_snapshots

        def write(db: sqlite3.Connection) -> int:
            # One transaction: WAL readers see the previous versions until COMMIT.
            db.execute("DELETE FROM snapshot_embeddings WHERE as_of = ?", (as_of,))
            db.executemany("INSERT INTO snapshot_embeddings (as_of, user_id, embedding) "
                           "VALUES (?, ?, ?)", [(as_of, u, b) for u, b in zip(users, blobs)])
            db.execute("INSERT OR REPLACE INTO snapshot_versions (as_of, meta) VALUES (?, ?)",
                       (as_of, doc))
            drop = [r[0] for r in db.execute("SELECT as_of FROM snapshot_versions ORDER BY "
                                             "as_of DESC LIMIT -1 OFFSET ?", (keep,))]
            for v in drop:
                db.execute("DELETE FROM snapshot_versions WHERE as_of = ?", (v,))
                db.execute("DELETE FROM snapshot_embeddings WHERE as_of = ?", (v,))
            return len(users)

        return self._run(write, write=True)

    def snapshot_embedding(self, user_id: str, as_of: int) -> Optional[Tuple[np.ndarray, int]]:
        row = self._run(lambda db: db.execute(
            "SELECT v.as_of, e.embedding FROM (SELECT as_of FROM snapshot_versions WHERE "
            "as_of <= ? ORDER BY as_of DESC LIMIT 1) v JOIN snapshot_embeddings e "
            "ON e.as_of = v.as_of AND e.user_id = ?", (int(as_of), str(user_id))).fetchone())
        if row is None:
            return None
        return np.frombuffer(row[1], dtype="<f4").astype(np.float32), int(row[0])

    def snapshot_versions(self) -> List[int]:
        return [int(r[0]) for r in self._run(lambda db: db.execute(
            "SELECT as_of FROM snapshot_versions ORDER BY as_of").fetchall())]

    def snapshot_meta(self, as_of: int) -> Optional[Dict[str, Any]]:
        row = self._run(lambda db: db.execute(
            "SELECT meta FROM snapshot_versions WHERE as_of = ?", (int(as_of),)).fetchone())
        return None if row is None else json.loads(row[0])

    def forget_user(self, user_id: str) -> Dict[str, int]:
        user = str(user_id)

        def write(db: sqlite3.Connection) -> Dict[str, int]:
            out = {"actions": db.execute("DELETE FROM actions WHERE user_id = ?",
                                         (user,)).rowcount,
                   "seen": db.execute("DELETE FROM seen WHERE user_id = ?", (user,)).rowcount,
                   # Per version: the primary key (as_of, user_id) finds the row, no scan.
                   "snapshot_rows": sum(db.execute(
                       "DELETE FROM snapshot_embeddings WHERE as_of = ? AND user_id = ?",
                       (v, user)).rowcount for (v,) in db.execute(
                           "SELECT as_of FROM snapshot_versions").fetchall())}
            db.execute("DELETE FROM watermarks WHERE user_id = ?", (user,))
            return out

        return self._run(write, write=True)

    def purge_before(self, cutoff_ts: int) -> Dict[str, int]:
        cutoff = int(cutoff_ts)

        def write(db: sqlite3.Connection) -> Dict[str, int]:
            users_before = db.execute("SELECT COUNT(*) FROM (SELECT user_id FROM actions UNION "
                                      "SELECT user_id FROM seen)").fetchone()[0]
            seen_before = db.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
            actions = db.execute("DELETE FROM actions WHERE timestamp < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM seen WHERE first_ts < ?", (cutoff,))
            # Items of held actions stay seen, first seen at their oldest held action.
            db.execute("INSERT INTO seen (user_id, item, first_ts) SELECT user_id, "
                       "substr(rec, 1, ?), MIN(timestamp) FROM actions WHERE true GROUP BY "
                       "user_id, substr(rec, 1, ?) ON CONFLICT (user_id, item) DO UPDATE SET "
                       "first_ts = min(first_ts, excluded.first_ts)",
                       (_ITEM_DIGITS, _ITEM_DIGITS))
            db.execute("DELETE FROM seen WHERE user_id NOT IN (SELECT user_id FROM actions)")
            db.execute("DELETE FROM watermarks WHERE user_id NOT IN "
                       "(SELECT user_id FROM actions)")
            db.execute("INSERT INTO watermarks (user_id, timestamp, rec) SELECT DISTINCT "
                       "user_id, ?, '' FROM actions WHERE true ON CONFLICT (user_id) DO UPDATE "
                       "SET timestamp = excluded.timestamp, rec = '' WHERE timestamp < ?",
                       (cutoff, cutoff))
            seen_after = db.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
            users_after = db.execute("SELECT COUNT(DISTINCT user_id) FROM actions").fetchone()[0]
            return {"actions": actions, "seen": seen_before - seen_after,
                    "users": users_before - users_after}

        return self._run(write, write=True)

    def ping(self) -> None:
        self._run(lambda db: db.execute("SELECT 1").fetchone())

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# ------------------------------------------------------------------------------------ Redis

# KEYS: actions ZSET, ids HASH, watermark STRING, seen ZSET. ARGV: capacity, then (event id, timestamp,
# record) triples. Returns {added, duplicate, stale, trimmed}.
_APPEND_LUA = """
local zkey, hkey, wkey = KEYS[1], KEYS[2], KEYS[3]
local cap = tonumber(ARGV[1])
-- Bytewise, like ZSET ties; Lua's own `<` follows the server's locale (strcoll).
local function le(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local wts, wrec
local w = redis.call('GET', wkey)
if w then
  local sp = string.find(w, ' ', 1, true)
  wts, wrec = tonumber(string.sub(w, 1, sp - 1)), string.sub(w, sp + 1)
end
local added, dup, stale, trimmed = 0, 0, 0, 0
for i = 2, #ARGV, 3 do
  local eid, ts, rec = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  redis.call('ZADD', KEYS[4], 'LT', ts, string.sub(rec, 1, 20))  -- first time the item was seen
  if redis.call('HEXISTS', hkey, eid) == 1 then
    dup = dup + 1
  elseif wts and (ts < wts or (ts == wts and le(rec, wrec))) then
    stale = stale + 1
  else
    redis.call('ZADD', zkey, ts, rec)
    redis.call('HSET', hkey, eid, rec)
    added = added + 1
  end
end
local n = redis.call('ZCARD', zkey)
if n > cap then
  local old = redis.call('ZRANGE', zkey, 0, n - cap - 1, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', zkey, 0, n - cap - 1)
  for j = 1, #old, 2 do
    local p = 0
    for _ = 1, 4 do p = string.find(old[j], '|', p + 1, true) end
    redis.call('HDEL', hkey, string.sub(old[j], p + 1))
  end
  redis.call('SET', wkey, old[#old] .. ' ' .. old[#old - 1])
  trimmed = n - cap
end
return {added, dup, stale, trimmed}
"""

# KEYS: versions ZSET. ARGV: as_of, user id, key prefix. Returns {version, blob} or {}.
_SNAPSHOT_GET_LUA = """
local v = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'LIMIT', 0, 1)
if #v == 0 then return {} end
local blob = redis.call('HGET', ARGV[3] .. v[1], ARGV[2])
if not blob then return {} end
return {v[1], blob}
"""

# KEYS: versions ZSET, staging HASH, version HASH, version meta, loading SET. ARGV: as_of, meta
# JSON, keep, key prefix. Renames the staged version into place, flips the index, drops old
# versions.
_SNAPSHOT_FLIP_LUA = """
redis.call('SREM', KEYS[5], KEYS[2])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RENAME', KEYS[2], KEYS[3])
else
  redis.call('DEL', KEYS[3])
end
redis.call('SET', KEYS[4], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
local keep = tonumber(ARGV[3])
if n > keep then
  local old = redis.call('ZRANGE', KEYS[1], 0, n - keep - 1)
  for _, v in ipairs(old) do
    redis.call('DEL', ARGV[4] .. v, ARGV[4] .. v .. ':meta')
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - keep - 1)
end
return n
"""

# KEYS: actions ZSET, ids HASH, watermark STRING, seen ZSET, versions ZSET, loading SET.
# ARGV: user id, snapshot key prefix. Returns {actions, seen, snapshot rows} removed.
_FORGET_LUA = """
local actions = redis.call('ZCARD', KEYS[1])
local seen = redis.call('ZCARD', KEYS[4])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local rows = 0
for _, v in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  rows = rows + redis.call('HDEL', ARGV[2] .. v, ARGV[1])
end
for _, k in ipairs(redis.call('SMEMBERS', KEYS[6])) do  -- versions being loaded
  rows = rows + redis.call('HDEL', k, ARGV[1])
end
return {actions, seen, rows}
"""

# KEYS: actions ZSET, ids HASH, watermark STRING, seen ZSET. ARGV: cutoff. Returns {actions
# removed, seen removed, 1 if the user has nothing left}.
_PURGE_LUA = """
local cutoff = tonumber(ARGV[1])
local seen0 = redis.call('ZCARD', KEYS[4])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
for _, rec in ipairs(old) do
  local p = 0
  for _ = 1, 4 do p = string.find(rec, '|', p + 1, true) end
  redis.call('HDEL', KEYS[2], string.sub(rec, p + 1))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
local left = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
if #left == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
  return {#old, seen0, 1}
end
for j = 1, #left, 2 do  -- items of held actions stay seen
  redis.call('ZADD', KEYS[4], 'LT', left[j + 1], string.sub(left[j], 1, 20))
end
local w = redis.call('GET', KEYS[3])
if not w or tonumber(string.sub(w, 1, string.find(w, ' ', 1, true) - 1)) < cutoff then
  redis.call('SET', KEYS[3], ARGV[1] .. ' ')
end
return {#old, seen0 - redis.call('ZCARD', KEYS[4]), 0}
"""


class RedisActionStore(ActionStore):
    """redis-py against a Redis server (`redis://[:password@]host:port/db`)."""

    def __init__(self, url: str, *, capacity: Optional[int] = None,
                 keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
                 prefix: str = DEFAULT_REDIS_PREFIX, timeout_s: float = 5.0,
                 batch_users: int = 256):
        import redis

        self.capacity, self.keep_snapshots = _check_capacity(capacity, keep_snapshots)
        self.url = url
        self.prefix = prefix
        self.batch_users = int(batch_users)
        self._errors: Tuple[type, ...] = (redis.exceptions.ConnectionError,
                                          redis.exceptions.TimeoutError)
        try:
            # No client-side retries: a down server answers at once; callers decide to retry.
            self._r: Any = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                                socket_connect_timeout=timeout_s,
                                                retry_on_timeout=False)
        except ValueError as e:
            raise StoreError(f"action store {mask_url(url)}: bad Redis URL: {_one_line(e)}") \
                from None
        self._append = self._r.register_script(_APPEND_LUA)
        self._snap_get = self._r.register_script(_SNAPSHOT_GET_LUA)
        self._snap_flip = self._r.register_script(_SNAPSHOT_FLIP_LUA)
        self._forget = self._r.register_script(_FORGET_LUA)
        self._purge = self._r.register_script(_PURGE_LUA)
        self._closed = False

    def _keys(self, user: str) -> List[str]:
        base = f"{self.prefix}:{{{user}}}"
        return [f"{base}:a", f"{base}:i", f"{base}:w", f"{base}:s"]

    @property
    def _snap(self) -> str:
        return f"{self.prefix}:snap:"

    def _call(self, fn):
        if self._closed:
            raise StoreUnavailableError(f"action store {mask_url(self.url)} unavailable: "
                                        "store is closed")
        try:
            return fn()
        except self._errors as e:
            raise self._unavailable(e) from None

    def append(self, events) -> Dict[str, int]:
        prepared = _prepare(events)
        counts = dict.fromkeys(_COUNTS, 0)
        users = list(prepared.per_user.items())

        def run(chunk):
            pipe = self._r.pipeline(transaction=False)
            for user, rows in chunk:
                args: List[Any] = [self.capacity]
                for eid, ts, rec in rows:
                    args += [eid, ts, rec]
                self._append(keys=self._keys(user), args=args, client=pipe)
            return pipe.execute()

        for lo in range(0, len(users), self.batch_users):
            for res in self._call(lambda: run(users[lo:lo + self.batch_users])):
                for name, n in zip(_COUNTS, res):
                    counts[name] += int(n)
        return counts

    def recent_actions(self, user_id: str, before_ts: int,
                       limit: Optional[int] = None) -> Dict[str, np.ndarray]:
        n = self.capacity if limit is None else int(limit)
        if n <= 0:
            return empty_actions()
        rows = self._call(lambda: self._r.zrevrangebyscore(
            self._keys(str(user_id))[0], f"({int(before_ts)}", "-inf", start=0, num=n,
            withscores=True))
        return _actions_from([(int(score), rec.decode("utf-8")) for rec, score in rows[::-1]])

    def seen_items(self, user_id: str, before_ts: int) -> np.ndarray:
        rows = self._call(lambda: self._r.zrangebyscore(
            self._keys(str(user_id))[3], "-inf", f"({int(before_ts)}"))
        return _items_of(r.decode("ascii") for r in rows)

    def put_snapshot(self, as_of: int, user_ids, embeddings, meta=None) -> int:
        users, emb = _check_snapshot_args(as_of, user_ids, embeddings)
        as_of = int(as_of)
        staging = f"{self._snap}load:{uuid.uuid4().hex}"
        doc = _meta_doc(as_of, len(users), emb.shape[1], meta)

        def write():
            try:
                # Registered first, so that forget_user also reaches a version being loaded.
                self._r.sadd(f"{self._snap}loading", staging)
                for lo in range(0, len(users), 10_000):
                    hi = min(lo + 10_000, len(users))
                    self._r.hset(staging, mapping={users[i]: emb[i].astype("<f4").tobytes()
                                                   for i in range(lo, hi)})
                self._snap_flip(keys=[f"{self._snap}versions", staging,
                                      f"{self._snap}{as_of}", f"{self._snap}{as_of}:meta",
                                      f"{self._snap}loading"],
                                args=[as_of, doc, self.keep_snapshots, self._snap])
            except BaseException:
                try:  # a half-written staging hash is never visible; drop it
                    self._r.delete(staging)
                    self._r.srem(f"{self._snap}loading", staging)
                except self._errors:
                    pass
                raise

        self._call(write)
        return len(users)

    def snapshot_embedding(self, user_id: str, as_of: int) -> Optional[Tuple[np.ndarray, int]]:
        res = self._call(lambda: self._snap_get(keys=[f"{self._snap}versions"],
                                                args=[int(as_of), str(user_id), self._snap]))
        if not res:
            return None
        return np.frombuffer(res[1], dtype="<f4").astype(np.float32), int(res[0])

    def snapshot_versions(self) -> List[int]:
        return sorted(int(v) for v in self._call(
            lambda: self._r.zrange(f"{self._snap}versions", 0, -1)))

    def snapshot_meta(self, as_of: int) -> Optional[Dict[str, Any]]:
        doc = self._call(lambda: self._r.get(f"{self._snap}{int(as_of)}:meta"))
        return None if doc is None else json.loads(doc)

    def forget_user(self, user_id: str) -> Dict[str, int]:
        user = str(user_id)
        res = self._call(lambda: self._forget(
            keys=self._keys(user) + [f"{self._snap}versions", f"{self._snap}loading"],
            args=[user, self._snap]))
        return dict(zip(("actions", "seen", "snapshot_rows"), (int(n) for n in res)))

    def _user_of_seen_key(self, key: bytes) -> str:
        """`p:{u}:s` -> u."""
        return key.decode("utf-8")[len(self.prefix) + 2:-3]

    def purge_before(self, cutoff_ts: int) -> Dict[str, int]:
        out = {"actions": 0, "seen": 0, "users": 0}
        # Every user with an action has a seen set (append adds to it first); SCAN visits each
        # key present for the whole scan at least once, and the script is idempotent.
        pattern = f"{self.prefix}:{{*}}:s"

        def run(keys):
            pipe = self._r.pipeline(transaction=False)
            for key in keys:
                self._purge(keys=self._keys(self._user_of_seen_key(key)), args=[int(cutoff_ts)],
                            client=pipe)
            return pipe.execute()

        cursor = 0
        while True:
            cursor, keys = self._call(lambda: self._r.scan(cursor, match=pattern,
                                                           count=self.batch_users))
            for res in (self._call(lambda: run(keys)) if keys else []):
                for name, n in zip(("actions", "seen", "users"), res):
                    out[name] += int(n)
            if int(cursor) == 0:
                return out

    def ping(self) -> None:
        self._call(self._r.ping)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._r.close()


# ------------------------------------------------------------------------------------ URLs

_SCHEMES = ("sqlite", "redis", "rediss", "unix")


def open_store(url: str, *, capacity: Optional[int] = None,
               keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS) -> ActionStore:
    """`sqlite:///relative/or/absolute.db` (`sqlite:////abs` also works), or
    `redis://[:password@]host:port/db` / `rediss://...` / `unix:///path.sock`. Checks the back
    end is reachable (StoreUnavailableError otherwise); a malformed URL is a StoreError."""
    m = re.match(r"^([a-z]+)://", url or "")
    if not m or m.group(1) not in _SCHEMES:
        raise StoreError(f"action store URL {url!r}: expected sqlite:///PATH or "
                         f"redis://HOST:PORT/DB")
    store: ActionStore
    if m.group(1) == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise StoreError(f"action store URL {url!r}: expected sqlite:///PATH")
        store = SqliteActionStore(path, capacity=capacity, keep_snapshots=keep_snapshots,
                                  url=url)
    else:
        store = RedisActionStore(url, capacity=capacity, keep_snapshots=keep_snapshots)
    try:
        store.ping()
    except BaseException:
        store.close()
        raise
    return store

