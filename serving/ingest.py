"""Ingestion: canonical events from a file, stdin or a Redis Stream into the action store.

    pinrank ingest --store URL --file events.jsonl|.csv|.parquet|-  [--until TS] [--items DIR]
    pinrank ingest --store URL --redis-stream redis://host:6379/0 --stream events \
        [--group G --consumer C] [--block-ms N] [--max-events N]

Every batch is validated with the batch reader's rules (events.check_events: domains of action
and surface, timestamps, durations, ids, and item ids against the item table when --items is
given). Invalid events are counted per problem and logged, one line each (the batch reader's
message for that row), at most LOG_BURST lines and then one per LOG_INTERVAL_S with the number
suppressed; they never stop the consumer. A line that is not a JSON object counts as
"malformed". Events at or after --until are skipped (counted), so replaying a log with --until T
leaves each user's store history equal to the batch history before T.

Redis Stream: one entry per event, its fields the event columns (and optionally event_id), or
one field "event" holding the event as JSON. The consumer joins a consumer group (created at the
stream's start, MKSTREAM, when missing), first re-reads its own pending entries (delivered before
a crash, never acknowledged), then new ones; each batch is written to the store and only then
XACKed (invalid entries too: they are counted and logged, not retried). A crash between the
write and the XACK re-delivers the batch on restart; the store's idempotency on event ids makes
that harmless (counted "duplicate"). --block-ms N stops after a read that waited N ms for
nothing (replays, tests); without it the consumer waits for events until interrupted.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TextIO

import numpy as np
import pandas as pd

from pinrank.components.data import events as ev
from pinrank.pipeline import features as F
from pinrank.serving.action_store import EVENT_ID, ActionStore, StoreError, StoreUnavailableError

log = logging.getLogger("pinrank.serving.ingest")

MALFORMED = "malformed"
DEFAULT_GROUP = "pinrank-ingest"
DEFAULT_CONSUMER = "ingest-1"
DEFAULT_CHUNK_ROWS = 10_000
STREAM_BATCH = 500
LOG_BURST = 20
LOG_INTERVAL_S = 10.0
_COLUMNS = F.EVENT_COLUMNS + (EVENT_ID,)


class IngestUsageError(ValueError):
    """The input cannot be read as asked (unknown file type, parquet on stdin)."""


@dataclasses.dataclass
class IngestStats:
    read: int = 0
    added: int = 0
    duplicate: int = 0
    stale: int = 0
    trimmed: int = 0
    skipped_until: int = 0
    invalid_events: int = 0  # an event with several problems counts once here ...
    invalid: Dict[str, int] = dataclasses.field(default_factory=dict)  # ... and under each
    interrupted: bool = False  # KeyboardInterrupt (Ctrl-C, or SIGTERM via the CLI) stopped it

    def summary(self) -> str:
        parts = [f"read {self.read}", f"added {self.added}", f"duplicate {self.duplicate}",
                 f"stale {self.stale}", f"trimmed {self.trimmed}",
                 f"skipped (at/after --until) {self.skipped_until}",
                 f"invalid {self.invalid_events}"]
        problems = ", ".join(f"{k} {v}" for k, v in self.invalid.items() if v)
        return ("ingest: " + ("interrupted, " if self.interrupted else "") + ", ".join(parts)
                + (f" ({problems})" if problems else ""))

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["invalid"] = d.pop("invalid_events")
        d["invalid_by_problem"] = {k: v for k, v in self.invalid.items() if v}
        return d


class _RateLimitedLog:
    """LOG_BURST lines, then at most one per LOG_INTERVAL_S (saying how many were dropped)."""

    def __init__(self, burst: int = LOG_BURST, interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.burst, self.interval_s, self.clock = burst, interval_s, clock
        self.emitted = 0
        self.suppressed = 0
        self._last = -float("inf")

    def warn(self, message: Callable[[], str]) -> None:
        """Logs message() (built only when it is logged) unless the rate is exceeded."""
        now = self.clock()
        if self.emitted >= self.burst and now - self._last < self.interval_s:
            self.suppressed += 1
            return
        self.emitted += 1
        self._last = now
        text = message()
        if self.suppressed:
            text += f" ({self.suppressed} invalid-event lines suppressed before this)"
            self.suppressed = 0
        log.warning("%s", text)


def known_item_ids(path: Optional[str]) -> Optional[pd.Index]:
    """Item ids of a dataset dir or its items.parquet (None: no item check)."""
    if not path:
        return None
    d = os.path.dirname(path) if os.path.basename(path) == ev.ITEMS_FILE else path
    return pd.Index(ev.read_items(d)["item_id"].to_numpy(np.int64))


class Ingestor:
    """Validates batches (DataFrames of raw rows), writes the valid events, keeps counts."""

    def __init__(self, store: ActionStore, *, known_items: Optional[pd.Index] = None,
                 until: Optional[int] = None, limiter: Optional[_RateLimitedLog] = None):
        self.store = store
        self.known_items = known_items
        self.until = until
        self.stats = IngestStats(invalid={**{k: 0 for k in ev.PROBLEMS}, MALFORMED: 0})
        self.limiter = limiter or _RateLimitedLog()

    def malformed(self, where: str, detail: str) -> None:
        self.stats.read += 1
        self.stats.invalid[MALFORMED] += 1
        self.stats.invalid_events += 1
        self.limiter.warn(lambda: f"{where}: malformed event ({detail})")

    def batch(self, df: pd.DataFrame, where: str) -> None:
        """Rows labelled by their position in the input (df.index) for messages."""
        self.stats.read += len(df)
        if not len(df):
            return
        for col in F.EVENT_COLUMNS:  # an absent field is a missing value, reported per row
            if col not in df.columns:
                df[col] = None
        report = ev.ProblemReport(where)
        ok = ev.check_events(df, self.known_items, report)
        for name, n in report.counts.items():
            self.stats.invalid[name] = self.stats.invalid.get(name, 0) + n
        bad = np.flatnonzero(~ok)
        self.stats.invalid_events += len(bad)
        for i in bad:  # one line per event: the batch reader's message for that row alone
            self.limiter.warn(lambda: self._row_message(df.iloc[[i]], where))
        good = df.iloc[np.flatnonzero(ok)]
        if self.until is not None and len(good):
            ts = pd.to_numeric(good["timestamp"]).to_numpy()
            keep = np.floor(ts) < self.until
            self.stats.skipped_until += int((~keep).sum())
            good = good.iloc[np.flatnonzero(keep)]
        if len(good):
            cols = [c for c in _COLUMNS if c in good.columns]
            counts = self.store.append(good[cols])
            for k in ("added", "duplicate", "stale", "trimmed"):
                setattr(self.stats, k, getattr(self.stats, k) + counts[k])


    def _row_message(self, row: pd.DataFrame, where: str) -> str:
        report = ev.ProblemReport(where)
        ev.check_events(row, self.known_items, report)
        return report.message()


# ------------------------------------------------------------------------------------ files


def iter_json_lines(stream: Iterable[str], where: str, ingestor: Ingestor,
                    chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """DataFrames of JSON-object lines (rows numbered from 0 over non-blank lines); a line that
    is not a JSON object is reported to the ingestor as malformed."""
    records: List[Dict[str, Any]] = []
    rows: List[int] = []
    row = -1
    for line in stream:
        if not line.strip():
            continue
        row += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            ingestor.malformed(f"{where} row {row}", f"not JSON: {e.msg}")
            continue
        if not isinstance(obj, dict):
            ingestor.malformed(f"{where} row {row}", f"not a JSON object: {type(obj).__name__}")
            continue
        records.append(obj)
        rows.append(row)
        if len(records) >= chunk_rows:
            yield _with_index(records, rows)
            records, rows = [], []
    if records:
        yield _with_index(records, rows)


def _with_index(records: List[Dict[str, Any]], rows: List[int]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records)
    df.index = pd.Index(rows)
    return df


def _csv_chunks(src, where: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        reader = pd.read_csv(src, chunksize=chunk_rows, keep_default_na=False, na_values=[""],
                             dtype={"user_id": str, "action": str, "surface": str,
                                    EVENT_ID: str})
        for chunk in reader:
            yield chunk
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ev.DatasetFormatError(f"{where}: unreadable csv: {' '.join(str(e).split())}") \
            from None


def _parquet_chunks(path: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise ev.DatasetFormatError(f"{path}: not a readable parquet file: {e}") from None
    cols = [c for c in _COLUMNS if c in pf.schema_arrow.names]
    row = 0
    for batch in pf.iter_batches(batch_size=chunk_rows, columns=cols):
        df = batch.to_pandas()
        df.index = pd.RangeIndex(row, row + len(df))
        row += len(df)
        yield df


FORMATS = ("auto", "jsonl", "csv", "parquet")


def file_format(path: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    ext = path.lower().rsplit(".", 1)[-1] if "." in os.path.basename(path) else ""
    return {"jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl", "csv": "csv",
            "parquet": "parquet", "pq": "parquet"}.get(ext, "")


def ingest_file(path: str, store: ActionStore, *, fmt: str = "auto",
                known_items: Optional[pd.Index] = None, until: Optional[int] = None,
                chunk_rows: int = DEFAULT_CHUNK_ROWS, stdin: Optional[TextIO] = None
                ) -> IngestStats:
    """Replays a JSON-lines, CSV or parquet file (`-`: stdin, JSON lines unless fmt=csv)."""
    ing = Ingestor(store, known_items=known_items, until=until)
    where = "stdin" if path == "-" else path
    if path == "-":
        src = stdin or sys.stdin
        kind = "jsonl" if fmt == "auto" else fmt
        if kind == "parquet":
            raise IngestUsageError("parquet cannot be read from stdin; pass a file")
    else:
        kind = file_format(path, fmt)
        if not kind:
            raise IngestUsageError(f"{path}: unknown event file type; use .jsonl, .csv or "
                                   f".parquet (or --format)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such event file")
    if kind == "parquet":
        chunks: Iterable[pd.DataFrame] = _parquet_chunks(path, chunk_rows)
    elif kind == "csv":
        chunks = _csv_chunks(src if path == "-" else path, where, chunk_rows)
    else:
        f = src if path == "-" else open(path, encoding="utf-8", errors="replace")
        chunks = iter_json_lines(f, where, ing, chunk_rows)
    try:
        for df in chunks:
            ing.batch(df, where)
    except KeyboardInterrupt:
        ing.stats.interrupted = True
    return ing.stats


def ingest_dataset(data_dir: str, store: ActionStore, *, until: Optional[int] = None
                   ) -> Dict[str, int]:
    """Replays every event shard of a canonical dataset (items checked against its item
    table) and returns the summed counts (IngestStats.to_dict's integers)."""
    known = known_item_ids(data_dir)
    counts: Dict[str, int] = {}
    for shard in ev.event_shards(data_dir):
        for key, v in ingest_file(shard, store, known_items=known, until=until).to_dict().items():
            if isinstance(v, int) and not isinstance(v, bool):
                counts[key] = counts.get(key, 0) + v
    return counts


# ------------------------------------------------------------------------------ Redis Stream


def _entry_record(fields: Dict[bytes, bytes]) -> Dict[str, Any]:
    """A stream entry's fields -> an event dict (values stay strings; validation parses them)."""
    d = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()}
    if "event" in d and len(d) == 1:
        obj = json.loads(d["event"])
        if not isinstance(obj, dict):
            raise ValueError(f"not a JSON object: {type(obj).__name__}")
        return obj
    return d


def _stream_frame(entries, where: str, ing: Ingestor) -> pd.DataFrame:
    records, rows = [], []
    for entry_id, fields in entries:
        eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        if fields is None:  # pending, but deleted from the stream (XDEL / MAXLEN) since
            ing.malformed(f"{where} entry {eid}", "deleted from the stream before it was read")
            continue
        try:
            rec = _entry_record(fields)
        except (ValueError, json.JSONDecodeError) as e:
            ing.malformed(f"{where} entry {eid}", str(e))
            continue
        records.append(rec)
        rows.append(eid)
    if not records:
        return pd.DataFrame()
    df = pd.DataFrame.from_records(records)
    df.index = pd.Index(rows)
    return df


def ingest_redis_stream(stream_url: str, stream: str, store: ActionStore, *,
                        group: str = DEFAULT_GROUP, consumer: str = DEFAULT_CONSUMER,
                        block_ms: Optional[int] = None, max_events: Optional[int] = None,
                        batch: int = STREAM_BATCH, known_items: Optional[pd.Index] = None,
                        until: Optional[int] = None,
                        should_stop: Callable[[], bool] = lambda: False) -> IngestStats:
    """Consumes `stream` as `consumer` of `group` (see the module docstring); returns counts.
    Stops after `max_events` entries, after a read that waited `block_ms` for nothing, or when
    should_stop() turns true between batches."""
    import redis

    ing = Ingestor(store, known_items=known_items, until=until)
    where = f"{stream_url} stream {stream}"
    r = redis.Redis.from_url(stream_url, socket_connect_timeout=5.0,
                             socket_timeout=None if not block_ms else max(5.0, block_ms / 500))
    try:
        try:
            r.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):  # e.g. WRONGTYPE: the key is not a stream
                raise StoreError(f"event stream {where}: {' '.join(str(e).split())}") from None
        pending = True  # first our own un-acknowledged entries (id 0), then new ones (>)
        while not should_stop():
            count = batch if max_events is None else min(batch, max_events - ing.stats.read)
            if count <= 0:
                break
            resp: Any = r.xreadgroup(group, consumer, {stream: "0" if pending else ">"},
                                count=count, block=None if pending else (block_ms or 0))
            entries = resp[0][1] if resp else []
            if pending and not entries:
                pending = False
                continue
            if not entries:
                break  # waited block_ms for nothing
            ing.batch(_stream_frame(entries, where, ing), where)
            r.xack(stream, group, *[e[0] for e in entries])  # after the store write
    except KeyboardInterrupt:  # un-acknowledged entries stay pending for the next start
        ing.stats.interrupted = True
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        raise StoreUnavailableError(f"event stream {where} unavailable: "
                                    f"{' '.join(str(e).split())}") from None
    finally:
        r.close()
    return ing.stats

