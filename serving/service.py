"""The online request path: action store -> daily snapshot -> retrieve -> rank, one home.

`pinrank serve-recs` (HTTP/JSON, serving/recs_http.py) and `pinrank recommend` both answer
through `Recommender.recommend`:

1. store: the user's newest actions strictly before the request
   (`store.recent_actions(user, request_ts, limit)`, limit = max(PinnerFormer's M,
   `ranking.max_history`)), the realtime history fed by `pinrank ingest`.
2. snapshot: the PinnerFormer embedding as of the start of the request's day
   (`store.snapshot_for_request`, written by `pinrank embed-users --store`); none ->
   pf_present = 0. Same rule as RankingExampleGen, so the ranker sees what it was trained on.
3. retrieve: PinnerFormer's `retrieve` signature on TF Serving embeds the history and returns
   the top `online.num_candidates` catalogue items, every item the user ever acted on before
   the request excluded (`store.seen_items`, as the evaluation excludes the history); the index
   lives in the SavedModel, so no client builds one.
4. rank: the ranker's `rank` signature scores the candidates from the request features of
   components/data/ranking_features.py (the functions RankingExampleGen builds its training
   examples with: tests/unit/test_online_parity.py checks they agree feature by feature);
   utility = sum over heads of `online.rank_weights` x score; the top `k` are answered.

Degradation is explicit: the response's `mode` and `degraded` say what was skipped, and a
warning is logged.
- action store down: `online.on_store_down = "error"` -> ServiceError 503; "batch_only" with a
  separate `online.snapshot_store` -> retrieval from the snapshot embedding alone
  (`retrieve_embedding`), ranked with an empty history.
- ranker not served or failing -> the retrieved items in retrieval order, mode
  "retrieval-only".
- PinnerFormer not served or failing -> the cold-start list, mode "popular", degraded.
- unknown user (no action before the request and no snapshot) -> the cold-start list, mode
  "cold-start": the items with the most positive engagements in the
  `online.cold_start_window_days` before the request's day (all time before it when the window
  is empty), ties by all-time count, then item id. Computed from the dataset's events.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from pinrank.components.data import ranking_features as rf
from pinrank.pipeline import features as F
from pinrank.pipeline.config import DAY_S, PipelineConfig
from pinrank.serving import constants as C

log = logging.getLogger("pinrank.serving.service")

RANKED = "ranked"
RETRIEVAL_ONLY = "retrieval-only"
COLD_START = "cold-start"
POPULAR = "popular"
# gRPC codes after which a model counts as unavailable for this request (not a client bug).
_UNAVAILABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_FOUND", "FAILED_PRECONDITION",
                "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "CANCELLED", "ABORTED")


class ServiceError(Exception):
    """A request that cannot be answered: HTTP status, a stable code and one line."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def to_dict(self) -> Dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclasses.dataclass
class Recommendations:
    user_id: str
    request_ts: int
    surface: str
    mode: str  # RANKED, RETRIEVAL_ONLY, COLD_START or POPULAR
    degraded: List[str]  # what was skipped and why; empty on the full path
    items: List[Dict[str, Any]]  # item_id, title, retrieval_score, utility, scores {head: p}
    models: Dict[str, Optional[int]]  # model name -> version that answered (None: not used)
    snapshot_as_of: Optional[int]  # version of the daily snapshot used (None: pf_present 0)
    history_len: int  # actions before the request read from the store
    num_candidates: int  # items retrieved (and ranked)
    timings_ms: Dict[str, float]  # store, snapshot, retrieve, rank, total

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class ColdStart:
    """Most engaged items before a day, from the dataset's positive events (see docstring)."""

    def __init__(self, item_ids: np.ndarray, ts: np.ndarray, catalog: np.ndarray,
                 window_days: int):
        self.catalog = np.sort(np.asarray(catalog, np.int64))
        order = np.argsort(np.asarray(ts, np.int64), kind="stable")
        items, ts = np.asarray(item_ids, np.int64)[order], np.asarray(ts, np.int64)[order]
        pos = np.minimum(np.searchsorted(self.catalog, items), max(len(self.catalog) - 1, 0))
        known = self.catalog[pos] == items  # items outside the catalogue are not listed
        self.pos, self.ts = pos[known], ts[known]
        self.window_s = int(window_days) * DAY_S
        self._cache: Dict[int, np.ndarray] = {}

    @classmethod
    def from_dataset(cls, dataset_dir: str, window_days: int) -> "ColdStart":
        from pinrank.components.data import events as ev

        catalog = ev.item_arrays(dataset_dir)[0]
        items, ts = [], []
        for path in ev.event_shards(dataset_dir):
            df = ev.read_event_shard(path)
            pos = np.asarray(ev.is_positive(df["action"], df["duration"]), bool)
            items.append(df["item_id"].to_numpy(np.int64)[pos])
            ts.append(df["timestamp"].to_numpy(np.int64)[pos])
        return cls(np.concatenate(items) if items else np.zeros(0, np.int64),
                   np.concatenate(ts) if ts else np.zeros(0, np.int64), catalog, window_days)

    def items(self, request_ts: int, k: int) -> np.ndarray:
        day = rf.day_start(request_ts)
        if day not in self._cache:
            hi = int(np.searchsorted(self.ts, day, side="left"))
            lo = int(np.searchsorted(self.ts, day - self.window_s, side="left"))
            n = len(self.catalog)
            alltime = np.bincount(self.pos[:hi], minlength=n)
            window = np.bincount(self.pos[lo:hi], minlength=n) if hi > lo else alltime
            order = np.lexsort((self.catalog, -alltime, -window))  # window, all time, id
            self._cache = {day: self.catalog[order]}  # one day at a time: requests are "now"
        return self._cache[day][:k]


class Recommender:
    """store -> snapshot -> retrieve -> rank for one request (see the module docstring).

    client: serving.client.ServingClient; store: serving.action_store.ActionStore;
    snapshot_store: where snapshots are read (default: store); titles: item id -> title;
    cold_start: ColdStart."""

    def __init__(self, client, store, cfg: PipelineConfig, *, titles: Mapping[int, str],
                 cold_start: ColdStart, snapshot_store=None, pf_model: str = C.PINNERFORMER,
                 ranker_model: str = C.RANKER, clock: Callable[[], float] = time.time):
        self.client, self.store, self.cfg = client, store, cfg
        self.snapshot_store = snapshot_store if snapshot_store is not None else store
        self.titles, self.cold_start = titles, cold_start
        self.pf_model, self.ranker_model, self.clock = pf_model, ranker_model, clock
        self.history_limit = max(cfg.model.seq_len, cfg.ranking.max_history)

    # -- features -------------------------------------------------------------------------
    def history(self, user_id: str, request_ts: int) -> Dict[str, np.ndarray]:
        """The store's actions before the request, in the contract's order."""
        return rf.sort_events(self.store.recent_actions(user_id, request_ts, self.history_limit))

    def request_features(self, user_id: str, request_ts: int, surface: str,
                         events: Mapping[str, np.ndarray], snapshot, pf_dim: int
                         ) -> Dict[str, np.ndarray]:
        """The ranker's request features, exactly as RankingExampleGen writes them (request id
        "<user>@<ts>", as for requests derived from sessions; zeros [pf_dim] and pf_present 0
        without a snapshot embedding)."""
        hist = rf.history_before(events, request_ts, self.cfg.ranking.max_history)
        emb, present = ((snapshot[0], 1) if snapshot is not None
                        else (np.zeros(pf_dim, np.float32), 0))
        return rf.request_features(user_id, f"{user_id}@{int(request_ts)}", request_ts, surface,
                                   hist, emb, present)

    # -- the request ----------------------------------------------------------------------
    def recommend(self, user_id: str, request_ts: Optional[int] = None, k: Optional[int] = None,
                  surface: Optional[str] = None) -> Recommendations:
        online = self.cfg.online
        k = int(k if k is not None else online.k)
        if not 1 <= k <= online.num_candidates:
            raise ServiceError(400, "bad_request",
                               f"k={k}: must be in [1, online.num_candidates="
                               f"{online.num_candidates}]")
        surface = surface or online.surface
        if surface not in F.SURFACES:
            raise ServiceError(400, "bad_request", f"surface={surface!r}: must be one of "
                                                   f"{', '.join(F.SURFACES)}")
        now = int(request_ts if request_ts is not None else self.clock())
        t0 = time.perf_counter()
        timings: Dict[str, float] = {}
        degraded: List[str] = []
        models: Dict[str, Optional[int]] = {self.pf_model: None, self.ranker_model: None}

        from pinrank.serving.action_store import StoreUnavailableError
        t = time.perf_counter()
        try:
            events = self.history(user_id, now)
            seen = self.store.seen_items(user_id, now)
        except StoreUnavailableError as e:
            if online.on_store_down != "batch_only" or self.snapshot_store is self.store:
                raise ServiceError(503, "store_unavailable", str(e)) from None
            log.warning("%s; answering from the daily snapshot only", e)
            degraded.append(f"action store unavailable: batch-only features ({e})")
            events, seen = rf.sort_events(None), np.zeros(0, np.int64)
        timings["store"] = _ms(t)

        t = time.perf_counter()
        try:
            snapshot = self.snapshot_store.snapshot_for_request(user_id, now)
        except StoreUnavailableError as e:
            raise ServiceError(503, "store_unavailable", str(e)) from None
        timings["snapshot"] = _ms(t)

        def answer(mode: str, items: List[Dict[str, Any]], n_cand: int) -> Recommendations:
            timings["total"] = _ms(t0)
            return Recommendations(
                user_id=user_id, request_ts=now, surface=surface, mode=mode, degraded=degraded,
                items=items, models=models,
                snapshot_as_of=None if snapshot is None else int(snapshot[1]),
                history_len=int(len(events["timestamp"])), num_candidates=n_cand,
                timings_ms=timings)

        if not len(events["timestamp"]) and snapshot is None:
            return answer(COLD_START, self._listed(self.cold_start.items(now, k)), 0)

        t = time.perf_counter()
        try:
            cand, cand_scores, models[self.pf_model], pf_dim = self.retrieve(events, snapshot,
                                                                              seen)
        except ModelUnavailable as e:
            log.warning("retrieval unavailable: %s; answering the cold-start list", e)
            degraded.append(f"retrieval unavailable: {e}")
            timings["retrieve"] = _ms(t)
            return answer(POPULAR, self._listed(self.cold_start.items(now, k)), 0)
        timings["retrieve"] = _ms(t)

        t = time.perf_counter()
        heads = None
        if len(cand):
            try:
                heads, models[self.ranker_model] = self.rank(user_id, now, surface, events,
                                                              snapshot, cand, pf_dim)
            except ModelUnavailable as e:
                log.warning("ranker unavailable: %s; answering retrieval order", e)
                degraded.append(f"ranker unavailable: {e}")
        timings["rank"] = _ms(t)
        if heads is None:
            return answer(RETRIEVAL_ONLY, self._listed(cand[:k], cand_scores[:k]), len(cand))
        utility = self.utility(heads)
        used = [h for h in F.HEADS if h in heads]
        order = np.lexsort((cand, -utility))[:k]  # utility desc, then item id
        items = self._listed(cand[order], cand_scores[order])
        for item, i in zip(items, order):
            item["utility"] = float(utility[i])
            item["scores"] = {h: float(heads[h][i]) for h in used}
        return answer(RANKED, items, len(cand))

    def utility(self, heads: Mapping[str, np.ndarray]) -> np.ndarray:
        """The ranking utility: the heads weighted by online.rank_weights (hide's is negative)."""
        weights = dict(zip(F.HEADS, self.cfg.online.rank_weights))
        return np.sum([weights[h] * heads[h] for h in F.HEADS if h in heads], axis=0)

    def _listed(self, ids, scores=None) -> List[Dict[str, Any]]:
        """ids [n] (and retrieval scores [n], None for lists that were not retrieved)."""
        return [{"item_id": int(i), "title": self.titles.get(int(i), f"item {int(i)}"),
                 "retrieval_score": None if scores is None else float(scores[j])}
                for j, i in enumerate(ids)]

    # -- model calls ----------------------------------------------------------------------
    def retrieve(self, events, snapshot, seen):
        """(candidate ids, scores, pinnerformer version, embedding dimension D): every item the
        user acted on before the request excluded (`seen`, beyond the history's window too)."""
        n = self.cfg.online.num_candidates
        exclude = [np.union1d(events["item_id"], seen).astype(np.int64)]
        try:
            if len(events["timestamp"]):
                out, version = self.client.retrieve_versioned(
                    n, history=_padded_history(events, self.history_limit), exclude=exclude,
                    model=self.pf_model)
            else:  # batch-only: the snapshot's embedding stands for the user
                out, version = self.client.retrieve_versioned(
                    n, embedding=np.asarray(snapshot[0], np.float32)[None, :], exclude=exclude,
                    model=self.pf_model)
        except Exception as e:  # sorted by _check_unavailable
            raise _check_unavailable(e, self.pf_model) from None
        ids = np.asarray(out[C.ITEM_IDS]).reshape(-1)
        scores = np.asarray(out[C.SCORES]).reshape(-1)
        dim = (np.asarray(out[C.EMBEDDING]).shape[-1] if C.EMBEDDING in out
               else len(snapshot[0]))
        keep = ids != C.PAD_ITEM
        return ids[keep].astype(np.int64), scores[keep].astype(np.float64), int(version), dim

    def rank(self, user_id: str, now: int, surface: str, events, snapshot, cand: np.ndarray,
             pf_dim: int):
        """({head: scores [N]}, ranker version), or ModelUnavailable."""
        try:
            served = served_ranker(self.client, self.ranker_model)
            if served is None:
                raise ModelUnavailable(f"{self.ranker_model} has no AVAILABLE version with a "
                                        f"{C.RANK!r} signature")
            version, sig = served
            feats = self.request_features(user_id, now, surface, events, snapshot, pf_dim)
            inputs = rank_inputs(feats, cand)
            missing = sorted(set(sig.inputs) - set(inputs))
            if missing:
                raise ModelUnavailable(f"{self.ranker_model} v{version} wants inputs {missing} "
                                        f"the request path does not build")
            out, served_version = self.client.predict_versioned(
                self.ranker_model, C.RANK, _cast(inputs, sig), version)
        except ModelUnavailable:
            raise
        except Exception as e:  # sorted by _check_unavailable
            raise _check_unavailable(e, self.ranker_model) from None
        heads = {h: np.reshape(np.asarray(v, np.float64), (-1,)) for h, v in out.items()
                 if h in F.HEADS}
        if not heads:
            raise ModelUnavailable(f"{self.ranker_model} v{served_version} returned no head "
                                    f"of {F.HEADS}")
        return heads, int(served_version)


def available_version(client, model: str) -> Optional[int]:
    """Newest AVAILABLE version of `model`, or None when the server does not serve it."""
    from pinrank.serving.client import ServingError

    try:
        st = client.status(model)
    except ServingError as e:
        if e.code.name in ("NOT_FOUND", "UNAVAILABLE"):
            return None
        raise
    avail = [s.version for s in st if s.state == "AVAILABLE"]
    return max(avail) if avail else None


def served_ranker(client, model: str = C.RANKER):
    """(version, rank SignatureDef) of a served ranker, or None."""
    version = available_version(client, model)
    if version is None:
        return None
    sigs = client.metadata(model, version)
    if C.RANK not in sigs:
        log.warning("%s v%d has no %r signature (has %s): not ranking", model, version, C.RANK,
                    sorted(sigs))
        return None
    return version, sigs[C.RANK]


class ModelUnavailable(Exception):
    pass


def _check_unavailable(e: Exception, model: str) -> Exception:
    """A serving failure becomes ModelUnavailable (degrade); anything else is re-raised."""
    from pinrank.serving.client import ServingError

    if isinstance(e, ServingError) and e.code.name in _UNAVAILABLE:
        return ModelUnavailable(f"{model}: {e.code.name}: {e.details}")
    return e


def _ms(t: float) -> float:
    return round((time.perf_counter() - t) * 1000.0, 3)


def _padded_history(events: Mapping[str, np.ndarray], limit: int) -> Dict[str, np.ndarray]:
    """embed_raw inputs [1, limit]: the newest `limit` actions, padded after hist_len. One
    width for every request, so that TF Serving's batching (on for the pinnerformer) can put
    any two requests in one batch; the Transform keeps the model's M newest."""
    hist = rf.history_before(events, np.iinfo(np.int64).max, limit)
    return rf.pad_histories([hist], limit)


def rank_inputs(feats: Mapping[str, np.ndarray], candidates: np.ndarray) -> Dict[str, np.ndarray]:
    """`rank` signature inputs (models/realtime/serving_model.py) for one request from its
    request features: the user side once ([1, ...]), the candidates [N]."""
    hist = {name: feats[name] for name in rf.HIST_FEATURES}
    out = rf.pad_histories([hist])
    out[F.REQUEST_TS] = np.asarray(feats[F.REQUEST_TS], np.int64)
    out[F.SURFACE] = np.array([str(feats[F.SURFACE][0]).encode()], object)
    out[F.PF_EMBEDDING] = np.asarray(feats[F.PF_EMBEDDING], np.float32).reshape(1, -1)
    out[F.PF_PRESENT] = np.asarray(feats[F.PF_PRESENT], np.int64)
    out[F.CAND_ITEM] = np.asarray(candidates, np.int64)
    return out


def _cast(inputs: Mapping[str, Any], sig) -> Dict[str, Any]:
    """The signature's inputs only, in its dtypes."""
    from pinrank.serving.cli import _cast_to_signature

    return _cast_to_signature({k: inputs[k] for k in sig.inputs}, sig)
