"""Daily incremental user-embedding job (Beam) and its versioned snapshots.

    run_daily_embeddings(model_dir, dataset_dir, snapshot_root, as_of_ts)  -> snapshot path
    pinrank embed-users --model DIR --data DIR --out ROOT --as-of TS      (serving/batch_cli.py)

One run, for a cut-off `as_of` (unix seconds):

1. Pre-flight (driver, before anything is written): the dataset is complete (DATASET.json), the
   item table and every event shard's parquet footer/columns are readable, the model has an
   `embed_raw` signature, the previous snapshot (the newest good one with as_of < this as_of)
   is readable.
2. Beam: every event shard is read and validated with the canonical readers
   (`events.read_event_shard` + `events.validate_events` against the item table; any bad row fails
   the run). Events at or after `as_of` are dropped: they never influence this snapshot. Per
   user, the M most recent remaining actions are kept (pre-truncated per shard, merged by a
   CombineFn, so one user's events may span shards); a user is *active* if one of them is in
   [since, as_of). `since` defaults to the previous snapshot's as_of (everything when there is
   none).
3. Active users are embedded in batches through the SavedModel's `embed_raw` signature (loaded
   once per DoFn instance in `setup`), exactly as the online path builds its requests
   (client.embed_request_from_events: oldest first, ties by item id, padded after hist_len).
4. Left-outer merge with the previous snapshot: active users get the new embedding
   (updated_at = as_of), everybody else keeps theirs (and their updated_at). If the previous
   snapshot was made by a different model (fingerprint of saved_model.pb + variables index), its
   vectors live in another embedding space: the run becomes a full refresh (every user with
   history before as_of is re-embedded, nothing is carried) and the manifest says so.
5. The write happens only after every shard validated (the writer takes the validation count
   as a side input, which Beam materialises first), into `<root>/.tmp-<as_of>-<id>/`; the driver
   then re-reads and checks the file (unique users, one dimension, finite values), writes
   `manifest.json` and `_SUCCESS`, and renames the directory to `<root>/<as_of>/`. A failure at
   any point removes the temporary directory, so a corrupt or missing input never replaces or
   shadows a good snapshot.

Snapshot layout (`<root>/<as_of>/`):
    embeddings.parquet   user_id string, embedding list<float32> [D], as_of int64 (this
                         snapshot's cut-off), updated_at int64 (cut-off of the run that computed
                         this user's vector: the embedding reflects history strictly before it)
    manifest.json        counts {embedded, carried, total}, model version/fingerprint, since,
                         previous snapshot, max_len, dimension, dataset fingerprint
    _SUCCESS             written last; a directory without it is ignored as corrupt

Key-value loading: `load_into_kv(snapshot, kv)` writes `<prefix><user_id>` -> float32 bytes
(little-endian, `decode_embedding` reverses it) plus a meta key with the snapshot's as_of, and
refuses to load a snapshot older than the one the store holds. Two stores ship: `DictKV`
(in-memory, dict-like) and `SqliteKV` (one file, transactional batches). Redis or Bigtable plug in
by implementing the same two methods, `put_many(items)` and `get(key)`:

    class RedisKV:                       # redis-py
        def __init__(self, client): self.r = client
        def put_many(self, items):
            pipe = self.r.pipeline(transaction=False)
            for k, v in items: pipe.set(k, v)
            pipe.execute()
        def get(self, key): return self.r.get(key)

    class BigtableKV:                    # google-cloud-bigtable; row key = key, family "e"
        def put_many(self, items):
            rows = []
            for k, v in items:
                row = self.table.direct_row(k.encode())
                row.set_cell("e", b"v", v)
                rows.append(row)
            self.table.mutate_rows(rows)
        def get(self, key):
            row = self.table.read_row(key.encode())
            return None if row is None else row.cells["e"][b"v"][0].value

The realtime action store (serving/action_store.py, SQLite or Redis) holds snapshots too, versioned
by as_of: `load_snapshot_into_store(snapshot, store)` (`pinrank embed-users --store URL`).

At production scale the load is itself a Beam step (one `put_many` per bundle, e.g. Dataflow's
BigtableIO.WriteToBigTable) and readers switch snapshots by reading the meta key, so a half-loaded
snapshot never serves.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from pinrank.components.data import events as ev
from pinrank.components.data import ranking_features as rf
from pinrank.pipeline import features as F
from pinrank.pipeline.artifacts import sha256_file
from pinrank.serving import constants as C

log = logging.getLogger("pinrank.serving.batch_embeddings")

EMBEDDINGS_FILE = "embeddings.parquet"
MANIFEST_FILE = "manifest.json"
SUCCESS_FILE = "_SUCCESS"
TMP_PREFIX = ".tmp-"
SNAPSHOT_FORMAT_VERSION = 1
# Width of the embed_raw request when neither the signature nor the model fixes M (the
# Transform keeps the M most recent anyway, so a wider request is correct, only slower).
DEFAULT_MAX_LEN = 512
DEFAULT_BATCH_SIZE = 256
# Same defaults as pipeline/runs.py (not imported: that module pulls in TFX).
DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
KV_PREFIX = "user_emb:"
KV_META_PREFIX = "__meta__:"

# numpy bytes ('S'): pad_histories copies them without a Python loop.
_ACTIONS_B = np.array([a.encode() for a in F.ACTIONS], dtype=bytes)
_SURFACES_B = np.array([s.encode() for s in F.SURFACES], dtype=bytes)


class SnapshotError(RuntimeError):
    """A snapshot directory is incomplete (no _SUCCESS), unreadable or inconsistent."""


def _snapshot_schema():
    import pyarrow as pa

    return pa.schema([("user_id", pa.string()), ("embedding", pa.list_(pa.float32())),
                      ("as_of", pa.int64()), ("updated_at", pa.int64())])


# ------------------------------------------------------------------------------ model helpers


def resolve_model_dir(path: str, model: str = C.PINNERFORMER) -> str:
    """A SavedModel dir, a model base (`<base>/<version>/`, newest complete version) or a serving
    dir (`<serving>/<model>/<version>/`) -> the SavedModel directory to load."""
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted((int(n) for n in _listdir(path) if n.isdigit() and
                       os.path.isfile(os.path.join(path, n, "saved_model.pb"))))
    if versions:
        return os.path.join(path, str(versions[-1]))
    if os.path.isdir(os.path.join(path, model)):
        return resolve_model_dir(os.path.join(path, model), model)
    raise FileNotFoundError(f"{path}: no SavedModel (saved_model.pb), no <version>/saved_model.pb "
                            f"and no {model}/ sub-directory")


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def model_version(model_path: str) -> str:
    """The version directory name the Pusher gave it, else 'unversioned'."""
    name = os.path.basename(os.path.normpath(model_path))
    return name if name.isdigit() else "unversioned"


def model_fingerprint(model_path: str) -> str:
    """sha256 over saved_model.pb and the variables index: equal iff same graph and weights
    layout (two pushes of the same trained model share it, a retrained model does not)."""
    h = hashlib.sha256()
    for rel in ("saved_model.pb", os.path.join("variables", "variables.index")):
        p = os.path.join(model_path, rel)
        if os.path.exists(p):
            h.update(sha256_file(p).encode())
    # Weights themselves: the data shards' checksums (the index alone may repeat across runs).
    for p in sorted(glob.glob(os.path.join(model_path, "variables", "variables.data-*"))):
        h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def fixed_history_len(sig_def) -> Optional[int]:
    """The static L of a signature's hist_item input ([-1, L]), or None when it is dynamic."""
    info = sig_def.inputs.get(F.HIST_ITEM)
    if info is None or info.tensor_shape.unknown_rank or len(info.tensor_shape.dim) != 2:
        return None
    size = info.tensor_shape.dim[1].size
    return int(size) if size > 0 else None


def model_seq_len(model_path: str) -> Optional[int]:
    """M of a PinnerFormer SavedModel, from the shape of its positional embedding [M, H]."""
    import tensorflow as tf

    try:
        for name, shape in tf.train.list_variables(os.path.join(model_path, "variables",
                                                                "variables")):
            if name.split("/")[0] == "positional_embedding" and len(shape) == 2:
                return int(shape[0])
    except (tf.errors.OpError, ValueError):
        return None
    return None


def history_width(model_path: str, max_len: Optional[int]) -> int:
    """Width of the embed_raw rows: the signature's fixed L, else max_len, else the model's M,
    else DEFAULT_MAX_LEN."""
    from pinrank.serving.local_server import signature_defs

    sigs = signature_defs(model_path)
    if C.EMBED_RAW not in sigs:
        raise ValueError(f"{model_path}: no {C.EMBED_RAW!r} signature (has {sorted(sigs)})")
    fixed = fixed_history_len(sigs[C.EMBED_RAW])
    if fixed is not None:
        if max_len is not None and max_len != fixed:
            raise ValueError(f"max_len={max_len} but the {C.EMBED_RAW} signature fixes L={fixed}")
        return fixed
    if max_len is not None:
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        return int(max_len)
    return model_seq_len(model_path) or DEFAULT_MAX_LEN


# ------------------------------------------------------------------------------ snapshots


@dataclasses.dataclass
class Snapshot:
    """A loaded snapshot: rows sorted by user_id."""
    path: str
    as_of: int
    user_ids: np.ndarray  # object (str) [N]
    embeddings: np.ndarray  # float32 [N, D]
    updated_at: np.ndarray  # int64 [N]
    manifest: Dict[str, Any]

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def index(self) -> Dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids.tolist())}

    def get(self, user_id: str) -> Optional[np.ndarray]:
        i = np.searchsorted(self.user_ids, user_id)
        if i < len(self.user_ids) and self.user_ids[i] == user_id:
            return self.embeddings[i]
        return None

    def as_dict(self) -> Dict[str, np.ndarray]:
        return dict(zip(self.user_ids.tolist(), self.embeddings))


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, SUCCESS_FILE))


def list_snapshots(root: str) -> List[Tuple[int, str]]:
    """(as_of, path) of every complete snapshot under `root`, oldest first. Directories without
    _SUCCESS (crashed or partial copies) and temporary directories are skipped."""
    out = []
    for name in _listdir(root):
        p = os.path.join(root, name)
        if name.isdigit() and os.path.isdir(p):
            if is_complete(p):
                out.append((int(name), p))
            else:
                log.warning("ignoring %s: no %s marker (incomplete or corrupt snapshot)", p,
                            SUCCESS_FILE)
    return sorted(out)


def latest_snapshot(root: str, before: Optional[int] = None) -> Optional[str]:
    """Path of the newest complete snapshot (with as_of < `before` if given), or None."""
    snaps = [(a, p) for a, p in list_snapshots(root) if before is None or a < before]
    return snaps[-1][1] if snaps else None


def read_manifest(path: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(path, MANIFEST_FILE)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SnapshotError(f"{path}: unreadable {MANIFEST_FILE}: {e}") from None


def load_snapshot(path: str) -> Snapshot:
    """Reads a complete snapshot directory (raises SnapshotError without _SUCCESS)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not is_complete(path):
        raise SnapshotError(f"{path}: no {SUCCESS_FILE} marker (incomplete or corrupt snapshot)")
    manifest = read_manifest(path)
    file = os.path.join(path, EMBEDDINGS_FILE)
    try:
        table = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as e:
        raise SnapshotError(f"{file}: unreadable: {e}") from None
    users, emb, updated = _table_arrays(table, file)
    order = np.argsort(users, kind="stable")
    as_of = int(manifest.get("as_of", os.path.basename(os.path.normpath(path))))
    return Snapshot(path=path, as_of=as_of, user_ids=users[order], embeddings=emb[order],
                    updated_at=updated[order], manifest=manifest)


def _table_arrays(table, where: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_ids, embeddings [N, D], updated_at) of a snapshot table, checked."""
    missing = [n for n in _snapshot_schema().names if n not in table.column_names]
    if missing:
        raise SnapshotError(f"{where}: missing column(s) {missing}")
    users = np.asarray(table.column("user_id").to_pylist(), dtype=object)
    col = table.column("embedding").combine_chunks()
    n = len(users)
    lens = np.diff(col.offsets.to_numpy()) if n else np.zeros(0, np.int64)
    if n and (lens != lens[0]).any():
        raise SnapshotError(f"{where}: embeddings of different lengths "
                            f"{sorted(set(lens.tolist()))[:5]}")
    dim = int(lens[0]) if n else 0
    flat = col.flatten().to_numpy(zero_copy_only=False)
    emb = np.asarray(flat, np.float32).reshape(n, dim)
    if not np.isfinite(emb).all():
        raise SnapshotError(f"{where}: embeddings contain NaN or inf")
    if len(set(users.tolist())) != n:
        raise SnapshotError(f"{where}: duplicate user ids")
    updated = table.column("updated_at").to_numpy().astype(np.int64)
    return users, emb, updated


# ------------------------------------------------------------------------------ Beam pieces


def _shard_histories(path: str, known_items, as_of: int, since: Optional[int], m: int
                     ) -> Tuple[List[Tuple[str, tuple]], Dict[str, int]]:
    """Reads + validates one shard (raises on any bad row) and returns per user the M most
    recent actions before as_of as a compact tuple (ts, item, action code, surface code,
    duration, active) plus counts."""
    import pandas as pd

    df, _ = ev.validate_events(ev.read_event_shard(path), known_items, where=path,
                               drop_invalid=False)
    counts = {"events_read": len(df)}
    df = df[df["timestamp"].to_numpy() < as_of]
    counts["events_before_as_of"] = len(df)
    if not len(df):
        return [], counts
    users, ucode = np.unique(df["user_id"].to_numpy(dtype=object).astype(str),
                             return_inverse=True)
    ts = df["timestamp"].to_numpy(np.int64)
    item = df["item_id"].to_numpy(np.int64)
    act = pd.Categorical(df["action"], categories=list(F.ACTIONS)).codes.astype(np.int8)
    surf = pd.Categorical(df["surface"], categories=list(F.SURFACES)).codes.astype(np.int8)
    dur = df["duration"].to_numpy(np.float32)
    order = np.lexsort((dur, surf, act, item, ts, ucode))
    ucode = ucode[order]
    bounds = np.flatnonzero(np.diff(ucode)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(ucode)]])
    out = []
    for s, e in zip(starts, ends):
        idx = order[max(s, e - m):e]  # newest m of this user in this shard
        active = True if since is None else bool((ts[order[s:e]] >= since).any())
        out.append((str(users[ucode[s]]),
                    (ts[idx], item[idx], act[idx], surf[idx], dur[idx], active)))
    return out, counts


def merge_histories(a: Optional[tuple], b: Optional[tuple], m: int) -> Optional[tuple]:
    """Union of two per-user histories, keeping the m most recent (order: time, then item id,
    action, surface, duration: deterministic whatever the shard order)."""
    if a is None:
        return b
    if b is None:
        return a
    cols = [np.concatenate([x, y]) for x, y in zip(a[:5], b[:5])]
    ts, item, act, surf, dur = cols
    order = np.lexsort((dur, surf, act, item, ts))[-m:]
    return tuple(c[order] for c in cols) + (bool(a[5] or b[5]),)


def embed_inputs(histories: Sequence[tuple], width: int) -> Dict[str, np.ndarray]:
    """embed_raw inputs [B, width] from compact histories (chronological, padded after
    hist_len with the serving pad values)."""
    return rf.pad_histories([{F.HIST_TS: ts, F.HIST_ITEM: item,
                              F.HIST_ACTION: _ACTIONS_B[act.astype(np.int64)],
                              F.HIST_SURFACE: _SURFACES_B[surf.astype(np.int64)],
                              F.HIST_DURATION: dur}
                             for ts, item, act, surf, dur in (h[:5] for h in histories)], width)


def _beam():
    import apache_beam as beam

    return beam


def _make_transforms():
    """Beam DoFn/CombineFn classes (built lazily so importing this module stays TF/Beam-free)."""
    beam = _beam()
    from apache_beam.metrics import Metrics

    class ReadShard(beam.DoFn):
        def __init__(self, known_items, as_of, since, m):
            self.known_items, self.as_of, self.since, self.m = known_items, as_of, since, m

        def setup(self):
            import pandas as pd

            self._known = pd.Index(np.asarray(self.known_items, np.int64))
            self._read = Metrics.counter("embed_users", "events_read")
            self._used = Metrics.counter("embed_users", "events_before_as_of")

        def process(self, path):
            records, counts = _shard_histories(path, self._known, self.as_of, self.since, self.m)
            self._read.inc(counts["events_read"])
            self._used.inc(counts["events_before_as_of"])
            for rec in records:
                yield beam.pvalue.TaggedOutput("histories", rec)
            yield path  # main output: one element per validated shard

    class MergeHistories(beam.CombineFn):
        def __init__(self, m):
            self.m = m

        def create_accumulator(self):
            return None

        def add_input(self, acc, h):
            return merge_histories(acc, h, self.m)

        def merge_accumulators(self, accs):
            out = None
            for a in accs:
                out = merge_histories(out, a, self.m)
            return out

        def extract_output(self, acc):
            return acc

    class Embed(beam.DoFn):
        """Loads the SavedModel once per DoFn instance; embeds a batch of (user, history)."""

        def __init__(self, model_path, width):
            self.model_path, self.width = model_path, width

        def setup(self):
            import tensorflow as tf

            self._tf = tf
            self._model = tf.saved_model.load(self.model_path)
            self._fn = self._model.signatures[C.EMBED_RAW]
            self._count = Metrics.counter("embed_users", "embedded")

        def process(self, batch):
            tf = self._tf
            users = [u for u, _ in batch]
            inputs = embed_inputs([h for _, h in batch], self.width)
            emb = self._fn(**{k: tf.constant(v) for k, v in inputs.items()})[C.EMBEDDING]
            emb = np.asarray(emb.numpy(), np.float32)
            if emb.shape[0] != len(users) or not np.isfinite(emb).all():
                raise ValueError(f"{self.model_path}: {C.EMBED_RAW} returned shape {emb.shape} "
                                 f"for {len(users)} users or non-finite values")
            self._count.inc(len(users))
            for u, e in zip(users, emb):
                yield u, e

    return ReadShard, MergeHistories, Embed


def _merge_row(kv, as_of: int, carry: bool):
    user, groups = kv
    new, prev = list(groups["new"]), list(groups["prev"])
    if len(new) > 1 or len(prev) > 1:
        raise ValueError(f"user {user!r}: {len(new)} new and {len(prev)} previous embeddings")
    if new:
        return [{"user_id": user, "embedding": np.asarray(new[0], np.float32).tolist(),
                 "as_of": as_of, "updated_at": as_of}]
    if prev and carry:
        emb, updated = prev[0]
        return [{"user_id": user, "embedding": list(emb), "as_of": as_of,
                 "updated_at": int(updated)}]
    return []


def _check_validated(row, n_validated: int, n_shards: int):
    if n_validated != n_shards:
        raise RuntimeError(f"only {n_validated} of {n_shards} event shards validated")
    return row


# ------------------------------------------------------------------------------ the job


def _preflight_dataset(dataset_dir: str) -> Tuple[List[str], np.ndarray, Dict[str, Any]]:
    """Cheap checks before anything runs: complete dataset, item table, every shard's footer
    and columns (values are validated in the pipeline, before the write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = ev.read_dataset_manifest(dataset_dir)
    if manifest is None:
        raise ev.DatasetFormatError(f"{dataset_dir}: no {ev.MANIFEST_FILE} (missing or "
                                    f"incomplete dataset)")
    items = ev.read_items(dataset_dir)["item_id"].to_numpy(np.int64)
    shards = ev.event_shards(dataset_dir)
    for path in shards:
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except (pa.ArrowInvalid, OSError) as e:
            raise ev.DatasetFormatError(f"{path}: not a readable parquet file: {e}") from None
        missing = [c for c in F.EVENT_COLUMNS if c not in names]
        if missing:
            raise ev.DatasetFormatError(f"{path}: missing column(s) {missing}; expected "
                                        f"{list(F.EVENT_COLUMNS)}, found {names}")
    return shards, items, manifest


def run_daily_embeddings(model_dir: str, dataset_dir: str, snapshot_root: str, as_of_ts: int, *,
                         since_ts: Optional[int] = None, max_len: Optional[int] = None,
                         beam_args: Optional[Sequence[str]] = None,
                         batch_size: int = DEFAULT_BATCH_SIZE, overwrite: bool = False) -> str:
    """Runs the daily job (see the module docstring) and returns `<snapshot_root>/<as_of_ts>`.

    model_dir: a SavedModel, a model base (<base>/<version>/) or a serving dir (newest version of
    `pinnerformer`). since_ts: users with an action in [since_ts, as_of_ts) are re-embedded
    (default: the previous snapshot's as_of, or every user). max_len: the M most recent actions
    (default: the signature's fixed L, else the model's M). An existing complete snapshot for
    as_of_ts raises FileExistsError unless `overwrite`.
    """
    import apache_beam as beam
    import pyarrow.parquet as pq
    from apache_beam.io import parquetio
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    as_of = int(as_of_ts)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    final = os.path.join(os.path.abspath(snapshot_root), str(as_of))
    if is_complete(final) and not overwrite:
        raise FileExistsError(f"{final} is a complete snapshot already (pass overwrite=True to "
                              f"rebuild it)")
    # -- pre-flight: nothing is written before these pass
    model_path = resolve_model_dir(model_dir)
    width = history_width(model_path, max_len)
    fingerprint = model_fingerprint(model_path)
    shards, known_items, data_manifest = _preflight_dataset(dataset_dir)
    prev_path = latest_snapshot(snapshot_root, before=as_of)
    prev_manifest = read_manifest(prev_path) if prev_path else None
    full_refresh = False
    if prev_path is not None:
        prev_as_of = int(prev_manifest.get("as_of", os.path.basename(prev_path)))
        prev_table = os.path.join(prev_path, EMBEDDINGS_FILE)
        try:
            pq.ParquetFile(prev_table)
        except Exception as e:
            raise SnapshotError(f"{prev_table}: unreadable previous snapshot: {e}") from None
        if prev_manifest.get("model_fingerprint") != fingerprint:
            full_refresh = True
            log.warning("previous snapshot %s was made by model %s (%s), this run uses %s (%s): "
                        "full refresh, nothing carried over", prev_path,
                        prev_manifest.get("model_version"), prev_manifest.get("model_fingerprint"),
                        model_version(model_path), fingerprint)
    since = None if full_refresh else (
        int(since_ts) if since_ts is not None else (prev_as_of if prev_path else None))
    if since is not None and since >= as_of:
        raise ValueError(f"since_ts={since} must be < as_of_ts={as_of}")
    carry = prev_path is not None and not full_refresh

    os.makedirs(snapshot_root, exist_ok=True)
    tmp = os.path.join(os.path.abspath(snapshot_root),
                       f"{TMP_PREFIX}{as_of}-{uuid.uuid4().hex[:8]}")
    started = time.time()
    ReadShard, MergeHistories, Embed = _make_transforms()
    options = PipelineOptions(list(beam_args if beam_args is not None else DEFAULT_BEAM_ARGS))
    try:
        os.makedirs(tmp)
        with beam.Pipeline(options=options) as p:
            read = (p | "Shards" >> beam.Create(shards)
                    | "ReadValidate" >> beam.ParDo(ReadShard(known_items, as_of, since, width))
                    .with_outputs("histories", main="validated"))
            n_validated = read.validated | "CountValidated" >> beam.combiners.Count.Globally()
            new = (read.histories
                   | "LastM" >> beam.CombinePerKey(MergeHistories(width))
                   | "Active" >> beam.Filter(lambda kv: kv[1][5])
                   | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
                   | "Embed" >> beam.ParDo(Embed(model_path, width)))
            if carry:
                prev = (p | "ReadPrevious" >> parquetio.ReadFromParquet(prev_table)
                        | "KeyPrevious" >> beam.Map(
                            lambda r: (r["user_id"], (r["embedding"], r["updated_at"]))))
            else:
                prev = p | "NoPrevious" >> beam.Create([])
            _ = ({"new": new, "prev": prev}
                 | "Merge" >> beam.CoGroupByKey()
                 | "Rows" >> beam.FlatMap(_merge_row, as_of, carry)
                 # Side input: Beam computes it (every shard validated) before this step runs.
                 | "AfterValidation" >> beam.Map(_check_validated,
                                                 beam.pvalue.AsSingleton(n_validated), len(shards))
                 | "Write" >> parquetio.WriteToParquet(
                     os.path.join(tmp, EMBEDDINGS_FILE), _snapshot_schema(), num_shards=1,
                     shard_name_template=""))
        result = p.result
        metrics: Dict[str, Any] = {}
        try:
            for c in result.metrics().query(MetricsFilter().with_namespace("embed_users"))[
                    "counters"]:
                metrics[c.key.metric.name] = metrics.get(c.key.metric.name, 0) + int(c.committed)
        except Exception:
            pass
        # -- verify what was written, then commit
        file = os.path.join(tmp, EMBEDDINGS_FILE)
        if not os.path.isfile(file):  # no rows at all: Beam wrote nothing
            pq.write_table(_snapshot_schema().empty_table(), file)
        users, emb, updated = _table_arrays(pq.read_table(file), file)
        embedded = int((updated == as_of).sum())
        manifest = {
            "format_version": SNAPSHOT_FORMAT_VERSION,
            "as_of": as_of,
            "since": since,
            "full_refresh": full_refresh,
            "previous_snapshot": prev_path,
            "previous_as_of": prev_as_of if prev_path else None,
            "model_dir": model_path,
            "model_version": model_version(model_path),
            "model_fingerprint": fingerprint,
            "max_len": width,
            "embedding_dim": int(emb.shape[1]) if len(users) else None,
            "counts": {"embedded": embedded, "carried": int(len(users) - embedded),
                       "total": int(len(users))},
            "metrics": metrics,
            "dataset_dir": os.path.abspath(dataset_dir),
            "dataset_fingerprint": data_manifest.get("fingerprint"),
            "event_shards": len(shards),
            "created_at": int(time.time()),
            "wall_s": round(time.time() - started, 2),
        }
        with open(os.path.join(tmp, MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
        with open(os.path.join(tmp, SUCCESS_FILE), "w") as f:
            f.write("")
        _commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("snapshot %s: %s", final, manifest["counts"])
    return final


def _commit(tmp: str, final: str) -> None:
    """Renames the finished temporary dir into place. A leftover `final` without _SUCCESS is
    garbage and removed; a complete one (overwrite) is moved aside first and removed after."""
    old = None
    if os.path.exists(final):
        old = f"{final}{TMP_PREFIX}old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------ key-value stores


def encode_embedding(vec) -> bytes:
    return np.asarray(vec, dtype="<f4").tobytes()


def decode_embedding(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").copy()


class DictKV(dict):
    """In-memory store (a dict with the store protocol: put_many + get)."""

    def put_many(self, items: Iterable[Tuple[str, bytes]]) -> None:
        self.update(items)


class SqliteKV:
    """One-table sqlite store: `kv(key TEXT PRIMARY KEY, value BLOB)`, one transaction per
    put_many batch. Dict-like reads: kv[key], key in kv, len(kv)."""

    def __init__(self, path: str):
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB)")
        self._db.commit()

    def put_many(self, items: Iterable[Tuple[str, bytes]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                                 ((k, sqlite3.Binary(v)) for k, v in items))

    def get(self, key: str, default=None):
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else bytes(row[0])

    def __getitem__(self, key: str) -> bytes:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "SqliteKV":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _put_many(kv, items: List[Tuple[str, bytes]]) -> None:
    if hasattr(kv, "put_many"):
        kv.put_many(items)
    else:  # any MutableMapping
        kv.update(items)


def kv_meta_key(prefix: str = KV_PREFIX) -> str:
    return f"{KV_META_PREFIX}{prefix}as_of"


def load_into_kv(snapshot: Union[str, Snapshot], kv, *, prefix: str = KV_PREFIX,
                 batch_size: int = 10_000, force: bool = False) -> int:
    """Writes every user's embedding (`<prefix><user_id>` -> float32 bytes) and then the
    snapshot's as_of under kv_meta_key(prefix); returns the number of users written. Refuses a
    snapshot older than the one the store already holds unless `force`."""
    snap = snapshot if isinstance(snapshot, Snapshot) else load_snapshot(snapshot)
    current = kv.get(kv_meta_key(prefix))
    if current is not None and not force:
        held = int(current.decode() if isinstance(current, bytes) else current)
        if held > snap.as_of:
            raise ValueError(f"store holds snapshot as_of={held}, newer than {snap.as_of} "
                             f"(pass force=True to load it anyway)")
    batch: List[Tuple[str, bytes]] = []
    for user, vec in zip(snap.user_ids.tolist(), snap.embeddings):
        batch.append((f"{prefix}{user}", encode_embedding(vec)))
        if len(batch) >= batch_size:
            _put_many(kv, batch)
            batch = []
    if batch:
        _put_many(kv, batch)
    _put_many(kv, [(kv_meta_key(prefix), str(snap.as_of).encode())])
    return len(snap)


def load_snapshot_into_store(snapshot: Union[str, Snapshot], store) -> int:
    """Loads a snapshot into the realtime action store (serving/action_store.py) as version
    `as_of`, atomically (readers see the previous versions until it is complete); returns the
    number of users. The request path then reads it through
    `store.snapshot_for_request(user, request_ts)`: the newest version <= the request's day
    start."""
    snap = snapshot if isinstance(snapshot, Snapshot) else load_snapshot(snapshot)
    m = snap.manifest
    meta = {"snapshot": os.path.abspath(snap.path), "model_version": m.get("model_version"),
            "model_fingerprint": m.get("model_fingerprint"), "max_len": m.get("max_len"),
            "counts": m.get("counts")}
    embeddings = snap.embeddings if len(snap) else np.zeros((0, m.get("embedding_dim") or 0),
                                                             np.float32)
    return store.put_snapshot(snap.as_of, snap.user_ids, embeddings, meta)


def kv_embedding(kv, user_id: str, prefix: str = KV_PREFIX) -> Optional[np.ndarray]:
    blob = kv.get(f"{prefix}{user_id}")
    return None if blob is None else decode_embedding(blob)
