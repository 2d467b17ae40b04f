"""Why did a user get an item? One request through the service, then the same request again with
parts of its input taken away (the models are black boxes here: only their served signatures).

- Feature groups: the item's ranking utility and head scores without the PinnerFormer embedding
  (pf_present 0, as for a user with no snapshot), without the realtime sequence (no actions), and
  without both (request context only).
- Actions: for each of the newest actions, the request without it: where the item lands in
  retrieval (its rank among online.num_candidates, None when it drops out) and its utility.

Every variant is a real call to the served models through `Recommender.retrieve` / `.rank`, so
what is explained is what TF Serving computes, with the features the service builds.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from pinrank.components.data import ranking_features as rf
from pinrank.pipeline import features as F
from pinrank.serving.service import ModelUnavailable, Recommender, ServiceError

# Feature groups taken away from the ranker's request: (name, drop the embedding, drop the actions).
GROUPS = (("PinnerFormer embedding", True, False), ("realtime actions", False, True),
          ("both (request context only)", True, True))


@dataclasses.dataclass
class Explanation:
    user_id: str
    request_ts: int
    item_id: int
    title: str
    position: Optional[int]  # 1-based place in the answer, None when not in the top k
    mode: str
    retrieval_rank: Optional[int]  # 1-based among the retrieved candidates
    num_candidates: int
    utility: Optional[float]
    scores: Dict[str, float]
    groups: List[Dict[str, Any]]  # {without, utility, change, scores}
    actions: List[Dict[str, Any]]  # {timestamp, action, item_id, title, retrieval_rank, utility, change}

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _without(events: Mapping[str, np.ndarray], drop: Optional[int]) -> Dict[str, np.ndarray]:
    """events (chronological) without row `drop`; all of them when drop is None."""
    if drop is None:
        return dict(events)
    keep = np.arange(len(events["timestamp"])) != drop
    return {k: np.asarray(v)[keep] for k, v in events.items()}


def explain(rec: Recommender, user_id: str, request_ts: Optional[int] = None,
            item_id: Optional[int] = None, surface: Optional[str] = None,
            max_actions: int = 20) -> Explanation:
    """Explain `item_id` (default: the top answer) for one request. ServiceError 400 when there
    is nothing a model decided (cold start) or the item was not retrieved; 503 when a model is
    unavailable."""
    answer = rec.recommend(user_id, request_ts=request_ts, surface=surface)
    now, surface = answer.request_ts, answer.surface
    if answer.mode == "popular":  # PinnerFormer down
        raise ServiceError(503, "model_unavailable", "; ".join(answer.degraded))
    if not answer.items or answer.num_candidates == 0:
        raise ServiceError(400, "bad_request", f"user {user_id}: answered from the "
                                               f"{answer.mode} list; no model decided it")
    item_id = int(answer.items[0]["item_id"] if item_id is None else item_id)
    events = rec.history(user_id, now)
    seen = rec.store.seen_items(user_id, now)
    snapshot = rec.snapshot_store.snapshot_for_request(user_id, now)
    try:
        cand, _, _, pf_dim = rec.retrieve(events, snapshot, seen)
        if item_id not in set(cand.tolist()):
            raise ServiceError(400, "bad_request",
                               f"item {item_id} is not among user {user_id}'s "
                               f"{len(cand)} retrieved candidates")
        ranked = answer.mode == "ranked"

        def utility(evts, snap) -> Optional[Dict[str, Any]]:
            if not ranked:
                return None
            heads, _ = rec.rank(user_id, now, surface, evts, snap, np.array([item_id]), pf_dim)
            return {"utility": float(rec.utility(heads)[0]),
                    "scores": {h: float(v[0]) for h, v in heads.items()}}

        def retrieval_rank(evts) -> Optional[int]:
            ids = rec.retrieve(evts, snapshot, seen)[0].tolist()
            return ids.index(item_id) + 1 if item_id in ids else None

        full = utility(events, snapshot)
        groups = []
        for name, no_embedding, no_actions in GROUPS:
            out = utility(rf.sort_events(None) if no_actions else events,
                          None if no_embedding else snapshot)
            if out is not None and full is not None:
                groups.append({"without": name, **out,
                               "change": out["utility"] - full["utility"]})
        # Only actions before the request count (the store answers those); newest first.
        n = len(events["timestamp"])
        actions = []
        for j in range(n - 1, max(n - max_actions, 0) - 1, -1):
            rest = _without(events, j)
            out = utility(rest, snapshot) if ranked else None
            actions.append({
                "timestamp": int(events["timestamp"][j]), "action": str(events["action"][j]),
                "item_id": int(events["item_id"][j]),
                "title": rec.titles.get(int(events["item_id"][j]), f"item {events['item_id'][j]}"),
                # no actions left and no snapshot: nothing to retrieve with
                "retrieval_rank": (retrieval_rank(rest) if len(rest["timestamp"])
                                   or snapshot is not None else None),
                "utility": None if out is None else out["utility"],
                "change": None if out is None or full is None else out["utility"] - full["utility"]})
    except ModelUnavailable as e:
        raise ServiceError(503, "model_unavailable", str(e)) from None
    position = next((i for i, it in enumerate(answer.items, 1) if it["item_id"] == item_id), None)
    return Explanation(
        user_id=user_id, request_ts=now, item_id=item_id,
        title=rec.titles.get(item_id, f"item {item_id}"), position=position, mode=answer.mode,
        retrieval_rank=list(cand).index(item_id) + 1, num_candidates=len(cand),
        utility=None if full is None else full["utility"],
        scores={} if full is None else full["scores"], groups=groups, actions=actions)


def format_explanation(x: Explanation) -> str:
    place = f"answer #{x.position}" if x.position else "not in the answer"
    at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(x.request_ts))
    lines = [f"user {x.user_id} at {at}: {x.title} [{x.item_id}], {place} ({x.mode}); "
             f"retrieval rank {x.retrieval_rank} of {x.num_candidates}"]
    if x.utility is not None:
        lines.append(f"utility {x.utility:.4f} = " + ", ".join(
            f"{h} {x.scores[h]:.4f}" for h in F.HEADS if h in x.scores) + " (online.rank_weights)")
        lines.append("")
        lines.append(f"{'without':<30}{'utility':>10}{'change':>10}")
        for g in x.groups:
            lines.append(f"{g['without']:<30}{g['utility']:>10.4f}{g['change']:>+10.4f}")
    lines.append("")
    lines.append(f"the newest {len(x.actions)} actions, each left out:")
    lines.append(f"{'time (UTC)':<18}{'action':<8}{'item':<40}{'retrieval rank':>16}"
                 + (f"{'utility change':>16}" if x.utility is not None else ""))
    for a in x.actions:
        rank = "-" if a["retrieval_rank"] is None else str(a["retrieval_rank"])
        title = f"{a['title'][:30]} [{a['item_id']}]"
        change = "" if a["change"] is None else f"{a['change']:>+16.4f}"
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(a["timestamp"]))
        lines.append(f"{when:<18}{a['action']:<8}{title:<40}"
                     f"{x.retrieval_rank:>6} -> {rank:<6}{change}")
    return "\n".join(lines)
