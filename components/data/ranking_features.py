"""The ranker's request features, one home for offline and online.

RankingExampleGen (components/ranking_example_gen.py) builds its training examples with these
functions and the recommendation service (serving/service.py) builds its `rank` requests with
them, so the two cannot drift apart; tests/unit/test_online_parity.py checks that a request
built online after replaying the events equals the offline tf.Example, feature by feature.

Contract (pipeline/features.py, "Ranking examples"): the history is the user's actions strictly
before the request, chronological with ties broken by item id, its `max_history` newest kept;
the PinnerFormer embedding is the one as of the start of the request's day (pf_present 0 and
zeros when the user had no action before that day). numpy only: the service loads no TFX.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from pinrank.pipeline import features as F
from pinrank.pipeline.config import DAY_S
from pinrank.serving import constants as C

# Order of the history features in examples and requests, and the event column each comes from.
HIST_FEATURES = (F.HIST_ITEM, F.HIST_ACTION, F.HIST_SURFACE, F.HIST_TS, F.HIST_DURATION)
HIST_SOURCE = {F.HIST_ITEM: "item_id", F.HIST_ACTION: "action", F.HIST_SURFACE: "surface",
               F.HIST_TS: "timestamp", F.HIST_DURATION: "duration"}
HIST_DTYPES = {F.HIST_ITEM: np.int64, F.HIST_ACTION: object, F.HIST_SURFACE: object,
               F.HIST_TS: np.int64, F.HIST_DURATION: np.float32}
HIST_PADS = {F.HIST_ITEM: C.PAD_ITEM, F.HIST_ACTION: C.PAD_STRING, F.HIST_SURFACE: C.PAD_STRING,
             F.HIST_TS: C.PAD_INT, F.HIST_DURATION: C.PAD_FLOAT}
_EVENT_FIELDS = ("item_id", "action", "timestamp", "duration", "surface")


def day_start(ts: int) -> int:
    """Start (unix s, UTC) of the day of `ts`: the cut-off of the PinnerFormer embedding a
    request at `ts` uses (the daily batch job of that day sees only earlier actions)."""
    return (int(ts) // DAY_S) * DAY_S


def sort_events(events: Optional[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """One user's events (columns item_id, action, timestamp, duration, surface) in the
    contract's order: by time, ties by item id. None or no rows -> empty typed arrays."""
    if events is None or not len(events["timestamp"]):
        return {"item_id": np.zeros(0, np.int64), "action": np.zeros(0, object),
                "timestamp": np.zeros(0, np.int64), "duration": np.zeros(0, np.float64),
                "surface": np.zeros(0, object)}
    order = np.lexsort((np.asarray(events["item_id"]), np.asarray(events["timestamp"])))
    return {k: np.asarray(events[k])[order] for k in _EVENT_FIELDS}


def history_slice(r: Mapping[str, np.ndarray], end: int, max_history: int
                  ) -> Dict[str, np.ndarray]:
    """hist_* arrays of the sorted events r[:end], the `max_history` newest kept."""
    lo = max(0, end - max_history)
    return {name: np.asarray(r[src][lo:end]).astype(HIST_DTYPES[name])
            for name, src in HIST_SOURCE.items()}


def history_before(r: Mapping[str, np.ndarray], ts: int, max_history: int
                   ) -> Dict[str, np.ndarray]:
    """hist_* arrays of the sorted events strictly before `ts`, the `max_history` newest."""
    end = int(np.searchsorted(np.asarray(r["timestamp"], np.int64), int(ts), side="left"))
    return history_slice(r, end, max_history)


def request_features(user_id: str, request_id: str, request_ts: int, surface: str,
                     hist: Mapping[str, np.ndarray], embedding: np.ndarray, present: int
                     ) -> Dict[str, np.ndarray]:
    """The request-level features of every candidate's example, typed as in the contract:
    int64 / float32 / object (str) arrays."""
    out: Dict[str, np.ndarray] = {
        F.REQUEST_ID: np.array([request_id], object),
        F.USER_ID: np.array([user_id], object),
        F.REQUEST_TS: np.array([int(request_ts)], np.int64),
        F.SURFACE: np.array([surface], object),
    }
    for name in HIST_FEATURES:
        out[name] = np.asarray(hist[name]).astype(HIST_DTYPES[name])
    out[F.PF_EMBEDDING] = np.asarray(embedding, np.float32).reshape(-1)
    out[F.PF_PRESENT] = np.array([int(present)], np.int64)
    return out


def pad_histories(hists: Sequence[Mapping[str, Any]], width: Optional[int] = None
                  ) -> Dict[str, np.ndarray]:
    """The history inputs of `embed_raw` and `rank` (hist_* [B, width] and hist_len [B]), the
    one builder offline (RankingExampleGen, the daily job) and online (client, service) use:
    each row's actions chronological, padded after hist_len with the serving pad values,
    strings as bytes. `width`: a fixed L (rows keep their L newest actions), else the longest
    row (at least 1)."""
    lens = np.array([len(h[F.HIST_TS]) for h in hists], np.int64)
    if width is None:
        width = max(1, int(lens.max()) if len(lens) else 1)
    lens = np.minimum(lens, width)
    out: Dict[str, np.ndarray] = {}
    for name in HIST_FEATURES:
        arr: np.ndarray = np.full((len(hists), width), HIST_PADS[name], HIST_DTYPES[name])
        for i, h in enumerate(hists):
            n = int(lens[i])
            if n:
                values = h[name][len(h[name]) - n:]
                arr[i, :n] = _as_bytes(values) if arr.dtype == object else values
        out[name] = arr
    out[C.HIST_LEN] = lens
    return out


def _as_bytes(values):
    if isinstance(values, np.ndarray) and values.dtype.kind == "S":
        return values  # numpy stores them as bytes objects, without a Python loop
    return [v.encode() if isinstance(v, str) else bytes(v) for v in values]
