"""Non-learned retrieval baselines, scored on exactly the candidate's eval users and anchors.

Each baseline sees only training users' positive engagements strictly before the eval user's
anchor (EventExampleGen's `train_positives`), never anything at or after it:
- `popularity_all`: engagement count of every item before the anchor;
- `popularity_<d>d`: engagement count in the `d` days before the anchor (what is hot now);
- `cooccurrence`: item-to-item co-occurrence with the user's recent positives. Two items
  co-occur once for every training user who engaged with both before the anchor, so the score of
  item j is sum over training users v of |recent positives of u engaged by v| * [v engaged j].

Counts are integers; ties are broken by the all-time count before the anchor and then by a fixed
random order, so a baseline is not credited with hits for items tied at the k-th score (the
recall code counts ties with the k-th score as hits).

Pure numpy; every scorer is O(training positives) per eval user.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np

from pinrank.pipeline.config import DAY_S


class TrainPositives:
    """Training users' positives as flat arrays sorted by time: user index, catalog position."""

    def __init__(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray, item_ids: np.ndarray):
        item_ids = np.asarray(item_ids, np.int64)
        sort_idx = np.argsort(item_ids, kind="stable")
        items = np.asarray(items, np.int64)
        at = np.minimum(np.searchsorted(item_ids[sort_idx], items), max(len(item_ids) - 1, 0))
        known = item_ids[sort_idx][at] == items if len(item_ids) else np.zeros(len(items), bool)
        self.unknown = int((~known).sum())  # items missing from the catalog are not counted
        order = np.argsort(np.asarray(ts, np.int64)[known], kind="stable")
        self.user = np.asarray(users, np.int64)[known][order]
        self.pos = sort_idx[at][known][order]
        self.ts = np.asarray(ts, np.int64)[known][order]
        self.num_items = len(item_ids)
        self.num_users = int(self.user.max()) + 1 if len(self.user) else 0
        # First engagement of each (user, item): co-occurrence counts users, not repeats.
        key = self.user * max(self.num_items, 1) + self.pos
        _, first = np.unique(key, return_index=True)
        first = np.sort(first)
        self.first_user, self.first_pos, self.first_ts = self.user[first], self.pos[first], self.ts[first]

    def counts_before(self, t: int, since: int | None = None) -> np.ndarray:
        """[N] engagement counts in [since, t) (all time before t when since is None)."""
        hi = np.searchsorted(self.ts, t, side="left")
        lo = 0 if since is None else np.searchsorted(self.ts, since, side="left")
        return np.bincount(self.pos[lo:hi], minlength=self.num_items).astype(np.float64)

    def cooccurrence(self, t: int, recent: np.ndarray) -> np.ndarray:
        """[N] co-occurrence score of every item with the catalog positions `recent`, as of t."""
        n = np.searchsorted(self.first_ts, t, side="left")
        users, pos = self.first_user[:n], self.first_pos[:n]
        in_recent = np.zeros(self.num_items, np.float64)
        in_recent[recent] = 1.0
        overlap = np.bincount(users, weights=in_recent[pos], minlength=self.num_users)
        return np.bincount(pos, weights=overlap[users], minlength=self.num_items)


def _tie_break(primary: np.ndarray, secondary: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """primary (integer-valued) ordered first, then secondary, then a fixed random order; all
    tie-breakers together add less than 1, so they never reorder distinct primary values."""
    sec = secondary / (secondary.max() + 1.0) if len(secondary) else secondary
    return primary + 0.5 * sec + 0.25 * jitter


def baseline_scorers(train: TrainPositives, anchors: np.ndarray, recent_positions: Sequence,
                     windows_days: Sequence[int] = (30,), seed: int = 0,
                     ) -> Dict[str, Callable[[int, int], np.ndarray]]:
    """name -> score_batch(lo, hi) ([hi - lo, N] scores) for the eval users' anchors.

    recent_positions[u]: catalog positions of eval user u's recent positive history items (the
    co-occurrence query)."""
    anchors = np.asarray(anchors, np.int64)
    jitter = np.random.default_rng(seed).random(train.num_items)

    def batch(row: Callable[[int], np.ndarray]):
        return lambda lo, hi: np.stack([row(u) for u in range(lo, hi)]) if hi > lo else \
            np.zeros((0, train.num_items))

    def popularity(days):
        def row(u):
            t = int(anchors[u])
            all_time = train.counts_before(t)
            if days is None:
                return _tie_break(all_time, np.zeros_like(all_time), jitter)
            return _tie_break(train.counts_before(t, t - days * DAY_S), all_time, jitter)
        return batch(row)

    def cooc(u):
        t = int(anchors[u])
        return _tie_break(train.cooccurrence(t, np.asarray(recent_positions[u], np.int64)),
                          train.counts_before(t), jitter)

    out = {"popularity_all": popularity(None)}
    for d in windows_days:
        out[f"popularity_{int(d)}d"] = popularity(int(d))
    out["cooccurrence"] = batch(cooc)
    return out


def recent_positive_positions(hist_items: Sequence[np.ndarray], hist_pos: Sequence[np.ndarray],
                              item_ids: np.ndarray, max_items: int) -> list:
    """Per eval user: catalog positions of the `max_items` most recent positive history items
    (histories are oldest -> newest); unknown ids are skipped."""
    item_ids = np.asarray(item_ids, np.int64)
    sort_idx = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[sort_idx]
    out = []
    for items, pos in zip(hist_items, hist_pos):
        items = np.asarray(items, np.int64)[np.asarray(pos, bool)][-max_items:]
        at = np.minimum(np.searchsorted(sorted_ids, items), max(len(item_ids) - 1, 0))
        known = sorted_ids[at] == items if len(items) else np.zeros(0, bool)
        out.append(np.unique(sort_idx[at][known]))
    return out
