"""RankingExampleGen: events (+ impressions) + blessed PinnerFormer -> ranking examples.

One tf.Example per (request, candidate), with the features of pipeline/features.py's "Ranking
examples" contract (request_id, user_id, request_ts, surface, cand_item, label_<head>, the user's
history strictly before the request, and the PinnerFormer embedding as of the request's day).

Requests
- Datasets with `impressions/` (synthetic): every impression row is one example; its request is
  its `request_id` (one user, one timestamp = request time and one surface per request, else the
  request is invalid). Labels are the row's int8 labels. Candidates are ordered by `position`;
  a request with more than `ranking.max_candidates` rows keeps the first ones (counted as
  `candidates_truncated` / `candidates_dropped_by_max_candidates`). A request_id shared by two
  users fails the run (it would merge two queries in TFMA).
- Datasets without impressions (MovieLens, path): requests are derived from the ratings. Per
  user, events sorted by (time, item) are cut into sessions: a gap >= `session_gap_s` between
  consecutive events starts a new session. Each session is one request at the session's first
  timestamp (surface = that event's surface, request_id = "<user_id>@<request_ts>"). Its
  candidates are the session's distinct items in order of first event, labelled from the session's
  events on them (repin -> label_repin, closeup -> label_closeup, click -> label_click, hide ->
  label_hide; several events on one item set several labels), followed by
  `negatives_per_request` items drawn uniformly without replacement (RNG seeded by
  (ranking.seed, user_id, request_ts)) from the catalog minus every item the user ever
  interacted with, as impressions without action (all labels 0; `negatives_short` counts
  requests whose user left fewer items than asked). At most `max_candidates` candidates are kept
  (session items first; counted). Because the request time is the session's first timestamp, no
  event of the session itself is ever in the history.

History: the user's actions with timestamp < request_ts, chronological (ties by item id), the
`max_history` most recent kept (`history_truncated`, `history_actions_dropped_by_max_history`).
Never an action at or after the request. It may be empty (the user's first request).

PinnerFormer embedding "as of the previous day": day = floor(request_ts / 86400); the embedding
is the blessed model's `embed_raw` output on the user's actions with timestamp < day * 86400
(its `max_history` most recent), i.e. what a daily batch job run at the start of the request's day
would have produced; it never sees an action at or after the request (day start <= request_ts).
It is computed once per (user, day) in batches (`EmbedUserDays` loads the SavedModel in setup())
and joined back onto that day's requests. The batches are a pure function of the data (see
"Reproducibility" below). Users without any action before the day start get a
zero vector and pf_present = 0 (`pf_user_days_without_history`, `users_without_pf_embedding`).
The model must be blessed (ModelBlessing custom property blessed == 1), else ModelNotBlessedError.

Split by time: with the request times sorted (one per request), cutoff =
times[floor(eval_time_quantile * n)]; requests with request_ts >= cutoff go to `eval`, the
rest to `train` (ranking is evaluated on the future, like TransAct's week-3 evaluation). Ties at
the cutoff all go to eval. With `ranking.eval_sample_percent` < 100 an eval request is kept when
sha256(request_id) falls in that percent of the hash range (whole requests, the same ones in every
run and for every model), and the others are counted (`requests_eval_sampled_out`,
`examples_eval_sampled_out`), so large data sets get a bounded evaluation. A (user, day) whose
requests are all sampled out is not embedded either (`pf_user_days_eval_sampled_out`). The
cutoff is exact: all request times (8 bytes each) are combined on one worker, fine up to ~10^8
requests; beyond that switch to beam.ApproximateQuantiles.

Events are validated with events.validate_events and impressions with validate_impressions;
`examples.drop_invalid_events` decides between failing (naming the file and rows) and dropping +
counting. Every counter goes to `<examples>/ranking_example_gen.json` and onto the artifact as
int custom properties (eval_cutoff_ts too).

Scale: Beam keyed by user (one user's events in memory at a time, as in EventExampleGen), then by
(user, day) to join embeddings with requests; the embed calls are batched across users.

Reproducibility (docs/status.md, "Reproducibility"): the output is the same, record for record
and byte for byte, in every process on the same machine. A model's output for one row depends
on the rows batched with it at the float rounding level (kernels change with the batch shape), so
the (user, day) rows are not batched by Beam's BatchElements, which sizes batches from measured
run times: the rows are split in two groups, days with a train request and days with eval
requests only (so the train split is the same whatever `eval_sample_percent`), each row goes to
bucket sha256(user_id) mod ceil(#group rows / EMBED_BATCH) of its group, and a bucket's rows,
sorted by (user, day), are embedded in chunks of EMBED_BATCH. Each (user, day)'s requests
are emitted sorted by (request_ts, request_id), and Examples are serialized deterministically
(map fields in key order; protobuf's default order varies between processes). The order of
(user, day) groups across the output is the runner's: fixed with the default in-memory
DirectRunner with one worker (pipeline/runs.py DEFAULT_BEAM_ARGS), not on parallel runners.
"""
# No `from __future__ import annotations`: the @component parser needs real annotation objects.
import hashlib
import json
import math
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import pandas as pd
import tensorflow as tf

# Same objects as tfx.v1's; the implementation modules avoid tfx.v1's slow kfp/aiplatform imports.
from tfx.dsl.component.experimental.annotations import (
    BeamComponentParameter,
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import path_utils

from pinrank.components.data import beam_io
from pinrank.components.data import events as ev
from pinrank.components.data import ranking_features as rf
from pinrank.components.types import EventLog
from pinrank.pipeline import features as F
from pinrank.pipeline.config import DAY_S, PipelineConfig, RankingConfig
from pinrank.serving import constants as C

SPLITS = ("train", "eval")
STATS_FILE = "ranking_example_gen.json"
SOURCE_IMPRESSIONS = "impressions"
SOURCE_SESSIONS = "derived_sessions"
EMBED_BATCH = 256  # (user, day) rows per embed_raw call
_HEAD_INDEX = {h: i for i, h in enumerate(F.HEADS)}

assert set(F.HEADS) == set(F.IMPRESSION_LABELS) == set(F.ACTIONS)


class ModelNotBlessedError(RuntimeError):
    """The PinnerFormer handed to RankingExampleGen was not blessed by its evaluator."""


class RankingDataError(ValueError):
    """Impressions violate the request contract (see the module docstring)."""


# --------------------------------------------------------------------------------------------
# Impression validation

IMPRESSION_PROBLEMS = {
    "missing_request_id": "missing request id",
    "missing_user_id": "missing user id",
    "missing_timestamp": "missing timestamp",
    "negative_timestamp": "negative timestamp",
    "unknown_surface": "unknown surface",
    "missing_item_id": "missing item id",
    "unknown_item": "item id not in the item table",
    "bad_position": "missing or negative position",
    "bad_label": "label not 0 or 1",
}
_IMP_SHOW = {"negative_timestamp", "unknown_surface", "unknown_item", "bad_position", "bad_label"}


def validate_impressions(df: pd.DataFrame, known_item_ids, *, where: str, drop_invalid: bool
                         ) -> Tuple[pd.DataFrame, Dict[str, int]]:
    """Check impression rows (read_impression_shard output) like events.validate_events: raise
    EventValidationError naming `where`, or (drop_invalid) drop the rows and count them.
    Returns (clean rows with canonical dtypes, {problem: rows dropped})."""
    report = ev.ProblemReport(where)
    idx = df.index
    bad = np.zeros(len(df), dtype=bool)

    def add(name, mask, values=None):
        nonlocal bad
        mask = np.asarray(mask, dtype=bool)
        report.add(name, mask, idx, values, label=IMPRESSION_PROBLEMS[name],
                   show_values=name in _IMP_SHOW)
        bad |= mask

    for col, name in (("request_id", "missing_request_id"), ("user_id", "missing_user_id")):
        add(name, df[col].isna().to_numpy() | df[col].eq("").to_numpy())
    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    add("missing_timestamp", ts.isna().to_numpy())
    add("negative_timestamp", (ts < 0).to_numpy(dtype=bool, na_value=False), ts)
    add("unknown_surface", ~df["surface"].isin(F.SURFACES).to_numpy(), df["surface"])
    item = pd.to_numeric(df["item_id"], errors="coerce")
    add("missing_item_id", item.isna().to_numpy())
    known = pd.Index(np.asarray(known_item_ids, dtype=np.int64))
    add("unknown_item", ~item.isna().to_numpy() & ~item.isin(known).to_numpy(), df["item_id"])
    pos = pd.to_numeric(df["position"], errors="coerce")
    add("bad_position", (pos.isna() | (pos < 0)).to_numpy(dtype=bool, na_value=True),
        df["position"])
    for label in F.IMPRESSION_LABELS:
        lab = pd.to_numeric(df[label], errors="coerce")
        add("bad_label", ~lab.isin([0, 1]).to_numpy(), df[label])
    if not drop_invalid:
        report.raise_if_any(ev.DROP_HINT)
    clean = df[~bad]
    out = pd.DataFrame({
        "request_id": clean["request_id"].astype(str).to_numpy(dtype=object),
        "user_id": clean["user_id"].astype(str).to_numpy(dtype=object),
        "item_id": pd.to_numeric(clean["item_id"]).to_numpy(dtype=np.int64),
        "timestamp": pd.to_numeric(clean["timestamp"]).to_numpy(dtype=np.int64),
        "surface": clean["surface"].to_numpy(dtype=object),
        "position": pd.to_numeric(clean["position"]).to_numpy(dtype=np.int64),
        **{lab: pd.to_numeric(clean[lab]).to_numpy(dtype=np.int64)
           for lab in F.IMPRESSION_LABELS}})
    return out, {k: report.counts[k] for k in IMPRESSION_PROBLEMS}


# --------------------------------------------------------------------------------------------
# Per-user logic (pure functions, tested directly)

def _request_rng(user_id: str, request_ts: int, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{user_id}:{int(request_ts)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def session_ids(ts: np.ndarray, gap_s: int) -> np.ndarray:
    """Session index per event (ts sorted ascending): a gap >= gap_s starts a new session."""
    if not len(ts):
        return np.zeros(0, np.int64)
    return np.concatenate([[0], np.cumsum(np.diff(ts) >= gap_s)]).astype(np.int64)


def sample_negatives(catalog: np.ndarray, exclude: np.ndarray, k: int,
                     rng: np.random.Generator) -> np.ndarray:
    """k distinct items drawn uniformly from sorted unique `catalog` minus `exclude` (all of them,
    shuffled, when fewer remain)."""
    if k <= 0 or not len(catalog):
        return np.zeros(0, np.int64)
    excl = np.unique(np.asarray(exclude, np.int64))
    excl = excl[np.isin(excl, catalog)]
    n_free = len(catalog) - len(excl)
    if n_free <= k or 2 * len(excl) > len(catalog):
        pool = np.setdiff1d(catalog, excl, assume_unique=True)
        return rng.permutation(pool)[:k].astype(np.int64)
    # Rejection sampling: at least half of the catalog is free, so ~2k draws suffice.
    excluded = set(excl.tolist())
    chosen: List[int] = []
    seen = set()
    while len(chosen) < k:
        for x in catalog[rng.integers(0, len(catalog), size=2 * (k - len(chosen)) + 8)].tolist():
            if x not in excluded and x not in seen:
                seen.add(x)
                chosen.append(x)
                if len(chosen) == k:
                    break
    return np.asarray(chosen, np.int64)


_sorted_events = rf.sort_events
_history = rf.history_slice


def _impression_requests(imps: Dict[str, np.ndarray], user_id: str, drop_invalid: bool
                         ) -> Tuple[List[dict], Dict[str, int]]:
    df = pd.DataFrame(imps)
    df = df.sort_values(["timestamp", "request_id", "position", "item_id"], kind="stable")
    out: List[dict] = []
    counters: Dict[str, int] = {}
    for rid, g in df.groupby("request_id", sort=False):
        if g["timestamp"].nunique() != 1 or g["surface"].nunique() != 1:
            msg = (f"request {rid!r} of user {user_id!r} has several timestamps "
                   f"{sorted(g['timestamp'].unique().tolist())[:3]} or surfaces "
                   f"{sorted(g['surface'].unique().tolist())[:3]}; a request has one of each")
            if not drop_invalid:
                raise RankingDataError(msg + ev.DROP_HINT)
            counters["requests_dropped_inconsistent"] = counters.get(
                "requests_dropped_inconsistent", 0) + 1
            counters["impressions_dropped_inconsistent"] = counters.get(
                "impressions_dropped_inconsistent", 0) + len(g)
            continue
        labels = np.stack([g[h].to_numpy(np.int64) for h in F.HEADS], axis=1)
        out.append({"request_id": str(rid), "request_ts": int(g["timestamp"].iloc[0]),
                    "surface": str(g["surface"].iloc[0]),
                    "cand_item": g["item_id"].to_numpy(np.int64), "labels": labels})
    return out, counters


def _session_requests(r: Dict[str, np.ndarray], user_id: str, cfg: RankingConfig,
                      catalog: np.ndarray) -> Tuple[List[dict], Dict[str, int]]:
    ts = r["timestamp"]
    sess = session_ids(ts, cfg.session_gap_s)
    interacted = np.unique(r["item_id"])
    starts = (np.flatnonzero(np.concatenate([[True], sess[1:] != sess[:-1]])) if len(ts)
              else np.zeros(0, np.int64))
    ends = list(starts[1:]) + [len(ts)]
    out, counters = [], {"sessions": len(starts), "negatives_sampled": 0, "negatives_short": 0}
    for s, e in zip(starts, ends):
        request_ts = int(ts[s])
        items, first = np.unique(r["item_id"][s:e], return_index=True)
        order = np.argsort(first, kind="stable")
        items = items[order]
        slot = {int(x): i for i, x in enumerate(items.tolist())}
        labels = np.zeros((len(items), len(F.HEADS)), np.int64)
        for item, action in zip(r["item_id"][s:e].tolist(), r["action"][s:e].tolist()):
            labels[slot[item], _HEAD_INDEX[action]] = 1
        rng = _request_rng(user_id, request_ts, cfg.seed)
        neg = sample_negatives(catalog, interacted, cfg.negatives_per_request, rng)
        counters["negatives_sampled"] += len(neg)
        counters["negatives_short"] += int(len(neg) < cfg.negatives_per_request)
        out.append({"request_id": f"{user_id}@{request_ts}", "request_ts": request_ts,
                    "surface": str(r["surface"][s]),
                    "cand_item": np.concatenate([items, neg]).astype(np.int64),
                    "labels": np.concatenate([labels, np.zeros((len(neg), len(F.HEADS)),
                                                               np.int64)])})
    return out, counters


def user_requests(user_id: str, events: Optional[Dict[str, np.ndarray]],
                  impressions: Optional[Dict[str, np.ndarray]], cfg: RankingConfig,
                  catalog: Optional[np.ndarray] = None, drop_invalid: bool = False
                  ) -> Iterator[Tuple[str, object]]:
    """One user's events (+ impression rows, or None to derive requests from sessions with
    `catalog`, the sorted unique item ids) -> tagged outputs:
      ("pf", ((user_id, day), history before day start))   one per distinct request day
      ("req", ((user_id, day), request dict))               request_id, request_ts, surface,
                                                            cand_item [n], labels [n, HEADS],
                                                            hist {hist_*: [m]}
      ("counters", dict)
    """
    r = _sorted_events(events)
    ts = r["timestamp"]
    if impressions is not None:
        requests, counters = _impression_requests(impressions, user_id, drop_invalid)
        if not len(ts):
            counters["impression_users_without_events"] = 1
    else:
        if catalog is None:
            raise ValueError("deriving requests from sessions needs the item catalog")
        requests, counters = _session_requests(r, user_id, cfg, catalog)
    if not requests:
        counters["users_without_requests"] = counters.get("users_without_requests", 0) + 1
        yield "counters", counters
        return
    counters.update({"users_with_requests": 1, "requests": 0, "candidates_truncated": 0,
                     "candidates_dropped_by_max_candidates": 0, "history_truncated": 0,
                     "history_actions_dropped_by_max_history": 0, "requests_without_history": 0,
                     "pf_user_days": 0, "pf_user_days_without_history": 0,
                     "pf_history_truncated": 0})
    days = sorted({req["request_ts"] // DAY_S for req in requests})
    for day in days:
        end = int(np.searchsorted(ts, day * DAY_S, side="left"))
        counters["pf_user_days"] += 1
        counters["pf_user_days_without_history"] += int(end == 0)
        counters["pf_history_truncated"] += int(end > cfg.max_history)
        yield "pf", ((user_id, int(day)), _history(r, end, cfg.max_history))
    counters["users_without_pf_embedding"] = int(
        np.searchsorted(ts, days[0] * DAY_S, side="left") == 0)
    for req in requests:
        n = len(req["cand_item"])
        if n > cfg.max_candidates:
            counters["candidates_truncated"] += 1
            counters["candidates_dropped_by_max_candidates"] += n - cfg.max_candidates
            req["cand_item"] = req["cand_item"][:cfg.max_candidates]
            req["labels"] = req["labels"][:cfg.max_candidates]
        end = int(np.searchsorted(ts, req["request_ts"], side="left"))  # strictly before
        counters["requests"] += 1
        counters["requests_without_history"] += int(end == 0)
        counters["history_truncated"] += int(end > cfg.max_history)
        counters["history_actions_dropped_by_max_history"] += max(0, end - cfg.max_history)
        req["hist"] = _history(r, end, cfg.max_history)
        yield "req", ((user_id, int(req["request_ts"] // DAY_S)), req)
    yield "counters", counters


# --------------------------------------------------------------------------------------------
# Embeddings

def embed_buckets(num_rows: int) -> int:
    """Buckets for `num_rows` (user, day) rows: EMBED_BATCH rows per bucket on average."""
    return max(1, -(-int(num_rows) // EMBED_BATCH))


def embed_bucket(user_id: str, num_buckets: int) -> int:
    """A user's bucket: sha256, not hash() (str hashes are salted per process)."""
    digest = hashlib.sha256(user_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_buckets


def sorted_batches(rows: Iterable[tuple], batch_size: int = EMBED_BATCH) -> Iterator[list]:
    """One bucket's ((user, day), history) rows -> chunks of <= batch_size rows in (user, day)
    order: the same chunks whatever order the runner delivered the rows in."""
    rows = sorted(rows, key=lambda kv: kv[0])
    for i in range(0, len(rows), batch_size):
        yield rows[i:i + batch_size]


class EmbedUserDays(beam.DoFn):
    """Batches of ((user, day), history) -> ((user, day), (embedding [D] float32, present)).
    Empty histories are not sent to the model: zeros, present = 0."""

    def __init__(self, model_dir: str):
        self._model_dir = model_dir
        self._fn: Any = None
        self._dim = None
        self._width = None

    def setup(self):
        loaded = tf.saved_model.load(self._model_dir)
        if C.EMBED_RAW not in loaded.signatures:
            raise ValueError(f"{self._model_dir}: no {C.EMBED_RAW!r} signature "
                             f"(has {sorted(loaded.signatures.keys())})")
        self._loaded = loaded  # keep the object (and its variables) alive
        self._fn = loaded.signatures[C.EMBED_RAW]
        try:
            dim = self._fn.structured_outputs[C.EMBEDDING].shape[-1]
            self._dim = int(dim) if dim is not None else None
        except (AttributeError, KeyError, TypeError, IndexError):
            self._dim = None
        # The real export takes [B, None]; a signature with a fixed L gets the L newest actions.
        spec = self._fn.structured_input_signature[1].get(F.HIST_ITEM)
        if spec is None:
            raise ValueError(f"{self._model_dir}: {C.EMBED_RAW} has no {F.HIST_ITEM!r} input")
        self._width = spec.shape[1] if spec.shape.rank == 2 else None

    def _embed(self, hists: List[Dict[str, np.ndarray]]) -> np.ndarray:
        x = rf.pad_histories(hists, self._width)
        out = self._fn(**{k: tf.constant(v, dtype=tf.string if v.dtype == object else None)
                          for k, v in x.items()})[C.EMBEDDING].numpy().astype(np.float32)
        if out.ndim != 2 or out.shape[0] != len(hists):
            raise ValueError(f"{C.EMBED_RAW} returned shape {out.shape} for {len(hists)} rows")
        if not np.isfinite(out).all():
            raise ValueError(f"{self._model_dir}: {C.EMBED_RAW} returned non-finite embeddings")
        self._dim = out.shape[1]
        return out

    def process(self, batch):
        batch = list(batch)
        real = [i for i, (_, h) in enumerate(batch) if len(h[F.HIST_TS])]
        emb = self._embed([batch[i][1] for i in real]) if real else None
        if self._dim is None:  # only empty histories so far and no static D: probe once
            self._embed([{F.HIST_ITEM: np.zeros(1, np.int64),
                          F.HIST_ACTION: np.array(["repin"], object),
                          F.HIST_SURFACE: np.array(["homefeed"], object),
                          F.HIST_TS: np.zeros(1, np.int64),
                          F.HIST_DURATION: np.zeros(1, np.float32)}])
        out = np.zeros((len(batch), self._dim), np.float32)
        present = np.zeros(len(batch), np.int64)
        if real:
            out[real] = emb
            present[real] = 1
        for i, (key, _) in enumerate(batch):
            yield key, (out[i], int(present[i]))


# --------------------------------------------------------------------------------------------
# Examples

def time_cutoff(times: Iterable[int], quantile: float) -> Optional[int]:
    """times sorted, n of them: times[floor(quantile * n)] (None when there are none)."""
    t = np.sort(np.asarray(list(times), np.int64))
    if not len(t):
        return None
    return int(t[min(len(t) - 1, int(math.floor(quantile * len(t))))])


def split_of(request_ts: int, cutoff: int) -> str:
    return "eval" if request_ts >= cutoff else "train"


def in_eval_sample(request_id: str, percent: float) -> bool:
    """Whether an eval request is kept under `ranking.eval_sample_percent` (100: all)."""
    if percent >= 100.0:
        return True
    h = int.from_bytes(hashlib.sha256(str(request_id).encode()).digest()[:8], "big")
    return h % 1_000_000 < round(percent * 10_000)


def kept_split(request_ts: int, request_id: str, cutoff: int, eval_sample_percent: float
               ) -> Optional[str]:
    """A request's split, or None when it is an eval request left out of the eval sample."""
    split = split_of(request_ts, cutoff)
    if split == "eval" and not in_eval_sample(request_id, eval_sample_percent):
        return None
    return split


def _ints(f, key, values):
    lst = f[key].int64_list
    lst.SetInParent()  # an empty list still has its kind (parsers see an empty int64 list)
    lst.value.extend(int(v) for v in values)


def _floats(f, key, values):
    lst = f[key].float_list
    lst.SetInParent()
    lst.value.extend(float(v) for v in values)


def _bytes(f, key, values):
    lst = f[key].bytes_list
    lst.SetInParent()
    lst.value.extend(v.encode() if isinstance(v, str) else bytes(v) for v in values)


def request_examples(user_id: str, req: dict, embedding: np.ndarray, present: int
                     ) -> List[tf.train.Example]:
    """One request -> one Example per candidate (features.py "Ranking examples"); the request
    features come from ranking_features.request_features, as the online service's do."""
    feats = rf.request_features(user_id, req["request_id"], req["request_ts"], req["surface"],
                                req["hist"], embedding, present)
    base = tf.train.Example()
    f = base.features.feature
    for key, values in feats.items():
        if values.dtype == object:
            _bytes(f, key, values)
        elif values.dtype == np.float32:
            _floats(f, key, values)
        else:
            _ints(f, key, values)
    out = []
    for item, labels in zip(req["cand_item"].tolist(), req["labels"].tolist()):
        ex = tf.train.Example()
        ex.CopyFrom(base)
        g = ex.features.feature
        _ints(g, F.CAND_ITEM, [item])
        for head, y in zip(F.HEADS, labels):
            _ints(g, F.label_key(head), [y])
        out.append(ex)
    return out


def sample_user_day(element, cutoff: Optional[int], eval_sample_percent: float
                    ) -> Iterator[object]:
    """((user, day), (history, [(request_ts, request_id)])) -> (group, ((user, day), history))
    for a day with a request that becomes an example, else a counter. Group 0: the day has a
    train request; 1: eval requests only. The groups are batched apart, so the training data's
    embeddings (a function of their batches, module docstring) do not depend on the eval sample."""
    key, (hist, reqs) = element
    splits = {kept_split(ts, rid, cutoff, eval_sample_percent) for ts, rid in reqs}
    if "train" in splits:
        yield 0, (key, hist)
    elif "eval" in splits:
        yield 1, (key, hist)
    else:
        yield beam.pvalue.TaggedOutput("counters", {"pf_user_days_eval_sampled_out": 1})


def _join_examples(element, cutoff, eval_sample_percent: float = 100.0) -> Iterator[tuple]:
    (user_id, day), grouped = element
    pf = list(grouped["pf"])
    # Runners deliver a key's values in no fixed order; request ids are unique.
    reqs = sorted(grouped["req"], key=lambda r: (r["request_ts"], r["request_id"]))
    kept = []
    for req in reqs:
        split = kept_split(req["request_ts"], req["request_id"], cutoff, eval_sample_percent)
        if split is None:
            yield None, None, {"requests_eval_sampled_out": 1,
                               "examples_eval_sampled_out": len(req["cand_item"])}
        else:
            kept.append((split, req))
    if len(pf) != int(bool(kept)):  # sample_user_day embeds exactly the days with a kept request
        raise RuntimeError(f"internal: {len(pf)} embeddings for user {user_id!r} day {day} "
                           f"with {len(kept)} kept requests")
    emb, present = pf[0] if pf else (None, 0)
    for split, req in kept:
        exs = request_examples(user_id, req, emb, present)
        counters = {f"requests_{split}": 1, f"examples_{split}": len(exs),
                    f"examples_without_pf_embedding_{split}": len(exs) * int(not present)}
        for j, head in enumerate(F.HEADS):
            counters[f"{F.label_key(head)}_positives_{split}"] = int(req["labels"][:, j].sum())
        yield None, None, counters
        for ex in exs:
            yield split, ex.SerializeToString(deterministic=True), None


# --------------------------------------------------------------------------------------------
# Beam graph

class _ReadImpressions(beam.DoFn):
    """One impression shard -> validated (user_id, columns) groups, (request_id, user_id) pairs
    and counters."""

    def __init__(self, input_base: str, drop_invalid: bool):
        self._input_base = input_base
        self._drop_invalid = drop_invalid
        self._known = None

    def setup(self):
        self._known = ev.read_items(self._input_base)["item_id"].to_numpy()

    def process(self, path: str):
        df = ev.read_impression_shard(path)
        clean, dropped = validate_impressions(df, self._known, where=path,
                                              drop_invalid=self._drop_invalid)
        counters = {"impressions_read": len(df), "impressions_kept": len(clean)}
        counters.update({f"impressions_dropped_{k}": int(v) for k, v in dropped.items()})
        yield beam.pvalue.TaggedOutput("counters", counters)
        for pair in clean[["request_id", "user_id"]].drop_duplicates().itertuples(index=False):
            yield beam.pvalue.TaggedOutput("pairs", (pair[0], pair[1]))
        for user_id, g in clean.groupby("user_id", sort=False):
            yield user_id, {c: g[c].to_numpy() for c in clean.columns if c != "user_id"}


class _UserRequests(beam.DoFn):
    def __init__(self, input_base: str, cfg: RankingConfig, derive: bool, drop_invalid: bool):
        self._input_base = input_base
        self._cfg = cfg
        self._derive = derive
        self._drop_invalid = drop_invalid
        self._catalog = None

    def setup(self):
        if self._derive:
            self._catalog = np.unique(ev.read_items(self._input_base)["item_id"].to_numpy()
                                      ).astype(np.int64)

    def process(self, element):
        user_id, grouped = element
        events = beam_io.concat_columns(grouped["events"])
        imps = None if self._derive else beam_io.concat_columns(grouped["imps"])
        if not self._derive and imps is None:
            yield beam.pvalue.TaggedOutput("counters", {"users_without_requests": 1})
            return
        pf, day_requests = [], {}
        for tag, value in user_requests(user_id, events, imps, self._cfg, self._catalog,
                                        self._drop_invalid):
            if tag == "req":
                day_requests.setdefault(value[0], []).append(
                    (int(value[1]["request_ts"]), str(value[1]["request_id"])))
                yield value
            elif tag == "pf":
                pf.append(value)
            else:
                yield beam.pvalue.TaggedOutput(tag, value)
        # A day's request keys travel with its history, so that sample_user_day can skip the
        # days whose every request is sampled out of the eval split before they are embedded.
        for key, hist in pf:
            yield beam.pvalue.TaggedOutput("pf", (key, (hist, day_requests[key])))


def _check_request_ids(dups: List[Tuple[str, int]]) -> None:
    if dups:
        shown = ", ".join(f"{rid!r} ({n} users)" for rid, n in sorted(dups)[:3])
        raise RankingDataError(f"{len(dups)} request_id(s) shared by several users: {shown}; "
                               "a request belongs to one user")


def build_examples(p: beam.Pipeline, input_base: str, model_dir: str, cfg: RankingConfig,
                   drop_invalid: bool, output_uri: str) -> str:
    """The Beam graph; returns the request source (SOURCE_IMPRESSIONS or SOURCE_SESSIONS)."""
    shards = ev.event_shards(input_base)
    imp_shards = ev.impression_shards(input_base)
    derive = not imp_shards
    events = (p | "EventShards" >> beam.Create(shards)
              | "ReadEvents" >> beam.ParDo(beam_io.ReadValidatedEvents(input_base, drop_invalid))
              .with_outputs("counters", main="rows"))
    inputs = {"events": events.rows}
    counter_pcs = [events.counters]
    if not derive:
        imps = (p | "ImpressionShards" >> beam.Create(imp_shards)
                | "ReadImpressions" >> beam.ParDo(_ReadImpressions(input_base, drop_invalid))
                .with_outputs("counters", "pairs", main="rows"))
        inputs["imps"] = imps.rows
        counter_pcs.append(imps.counters)
        _ = (imps.pairs | "DistinctPairs" >> beam.Distinct()
             | "PerRequest" >> beam.MapTuple(lambda rid, _: (rid, 1))
             | "UsersPerRequest" >> beam.CombinePerKey(sum)
             | "Shared" >> beam.Filter(lambda kv: kv[1] > 1)
             | "CollectShared" >> beam.combiners.ToList()
             | "CheckShared" >> beam.Map(_check_request_ids))
    per_user = (inputs | "GroupByUser" >> beam.CoGroupByKey()
                | "Requests" >> beam.ParDo(_UserRequests(input_base, cfg, derive, drop_invalid))
                .with_outputs("pf", "counters", main="req"))
    counter_pcs.append(per_user.counters)
    cutoff_pc = (per_user.req | "RequestTimes" >> beam.Map(lambda kv: kv[1]["request_ts"])
                 | "AllTimes" >> beam.combiners.ToList()
                 | "Cutoff" >> beam.Map(time_cutoff, cfg.eval_time_quantile))
    cutoff = beam.pvalue.AsSingleton(cutoff_pc)
    sampled = (per_user.pf | "SampleUserDays" >> beam.FlatMap(
        sample_user_day, cutoff, cfg.eval_sample_percent).with_outputs("counters", main="rows"))
    counter_pcs.append(sampled.counters)
    # Batches decided by the data alone, per group (module docstring, "Reproducibility").
    num_buckets = beam.pvalue.AsDict(
        sampled.rows | "GroupOfUserDay" >> beam.Map(lambda g_kv: (g_kv[0], 1))
        | "CountUserDays" >> beam.CombinePerKey(sum)
        | "EmbedBuckets" >> beam.MapTuple(lambda g, n: (g, embed_buckets(n))))
    embeddings = (sampled.rows
                  | "KeyByBucket" >> beam.Map(
                      lambda g_kv, n: ((g_kv[0], embed_bucket(g_kv[1][0][0], n[g_kv[0]])),
                                       g_kv[1]), num_buckets)
                  | "GroupBuckets" >> beam.GroupByKey()
                  | "BatchUserDays" >> beam.FlatMap(lambda kv: sorted_batches(kv[1]))
                  | "Embed" >> beam.ParDo(EmbedUserDays(model_dir)))
    out = ({"pf": embeddings, "req": per_user.req} | "JoinByUserDay" >> beam.CoGroupByKey()
           | "Examples" >> beam.FlatMap(_join_examples, cutoff, cfg.eval_sample_percent))
    for split in SPLITS:
        (out | f"Only{split}" >> beam.Filter(lambda x, s=split: x[0] == s)
         | f"Serialize{split}" >> beam.Map(lambda x: x[1])
         | f"Write{split}" >> beam.io.WriteToTFRecord(
             os.path.join(output_uri, f"Split-{split}", "data_tfrecord"),
             file_name_suffix=".gz"))
    counter_pcs.append(out | "ExampleCounters" >> beam.FlatMap(
        lambda x: [x[2]] if x[2] is not None else []))
    counter_pcs.append(cutoff_pc | "CutoffCounter" >> beam.Map(
        lambda c: {"eval_cutoff_ts": -1 if c is None else c}))
    counter_pcs.append(p | "ZeroCounters" >> beam.Create([{k: 0 for k in ZERO_COUNTERS}]))
    counters = (counter_pcs | "AllCounters" >> beam.Flatten()
                | "Sum" >> beam.CombineGlobally(beam_io.sum_counters))
    _ = counters | "WriteStats" >> beam.Map(lambda c: _write_stats(output_uri, c))
    return SOURCE_IMPRESSIONS if not derive else SOURCE_SESSIONS


# Always in the stats (0 when nothing happened), so readers need no defaults.
ZERO_COUNTERS = tuple(
    [f"{name}_{split}" for split in SPLITS for name in (
        "requests", "examples", "examples_without_pf_embedding",
        *(f"{F.label_key(h)}_positives" for h in F.HEADS))]
    + ["requests", "users_with_requests", "users_without_requests", "candidates_truncated",
       "candidates_dropped_by_max_candidates", "history_truncated",
       "history_actions_dropped_by_max_history", "requests_without_history", "pf_user_days",
       "pf_user_days_without_history", "pf_history_truncated", "users_without_pf_embedding",
       "requests_eval_sampled_out", "examples_eval_sampled_out",
       "pf_user_days_eval_sampled_out"])


def _write_stats(output_uri: str, counters: Dict[str, int]) -> None:
    tf.io.gfile.makedirs(output_uri)
    with tf.io.gfile.GFile(os.path.join(output_uri, STATS_FILE), "w") as fh:
        fh.write(json.dumps(counters, indent=2, sort_keys=True))


def read_stats(examples_uri: str) -> Dict[str, int]:
    with tf.io.gfile.GFile(os.path.join(examples_uri, STATS_FILE)) as fh:
        return json.load(fh)


def check_blessed(model_blessing, model_uri: str) -> None:
    """Raise ModelNotBlessedError unless the blessing says blessed == 1 (the Pusher's test)."""
    blessed = model_blessing.get_int_custom_property("blessed")
    if blessed != 1:
        raise ModelNotBlessedError(
            f"PinnerFormer model {model_uri} is not blessed (ModelBlessing {model_blessing.uri} "
            f"has blessed={blessed}); RankingExampleGen only embeds users with a blessed model. "
            "Feed it the model and blessing of an evaluator that passed, or a "
            "LatestBlessedModelStrategy resolver's outputs.")


@component(use_beam=True)
def RankingExampleGen(
    model: InputArtifact[standard_artifacts.Model],
    model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    examples: OutputArtifact[standard_artifacts.Examples],
    events: InputArtifact[EventLog],
    config_json: Parameter[str],
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Events (+ impressions) of the canonical dataset (DatasetGen's EventLog) and a blessed
    PinnerFormer -> ranking Examples (splits train / eval by request time). config_json:
    PipelineConfig JSON; its `ranking` and `examples` (drop_invalid_events) sections are used."""
    input_base = events.uri
    check_blessed(model_blessing, model.uri)
    full = PipelineConfig.from_json(config_json)
    model_dir = path_utils.serving_model_path(model.uri)
    with beam_pipeline as p:
        source = build_examples(p, input_base, model_dir, full.ranking,
                                full.examples.drop_invalid_events, examples.uri)
    from tfx.components.util import examples_utils  # slow import: only when executing

    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
    for key, val in read_stats(examples.uri).items():
        examples.set_int_custom_property(key, int(val))
    examples.set_string_custom_property("request_source", source)
    examples.set_string_custom_property("pinnerformer_model", model.uri)
