"""Offline retrieval metrics of PinnerFormer (docs/protocol.md, "Retrieval evaluation (RetrievalEvaluator)";
docs/models.md, "Offline evaluation (Recall@10, P90 coverage, interest entropy)").

Pure numpy. Users are scored in batches (one [batch, N] score matrix at a time) so that 10k users x
100k items needs O(batch_size * N) memory, and every per-user quantity uses O(N) selection
(`np.partition`) instead of a full sort.

Conventions:
- Recall@k: a positive p is a hit when fewer than k index items score *strictly* above p; ties with
  p's score do not count as above (an item tied with p is not ranked ahead of it). The index is the
  catalog minus the user's history minus the user's other positives; p is scored against the index,
  not inserted into it. Equivalently: hit iff s(p) >= the k-th largest index score (always a hit
  when the index has fewer than k items), which is what the batched code computes.
- Served lists (coverage, entropy) are the top items of the catalog minus the user's history,
  ordered by score descending, ties broken by catalog position (lower first), so results are
  deterministic and independent of the batch size.
- Scores must be finite (history/positives are masked with -inf internally).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np

DEFAULT_CURVE_KS = (1, 5, 10, 20, 50, 100)
PER_USER = "per_user"  # key of the per-user arrays in a metrics dict (dropped from JSON)


def p90_coverage(slot_counts: np.ndarray, num_items: int) -> float:
    """Smallest fraction of the catalog whose items fill 90% of all pooled served slots.

    `slot_counts[i]` = how many users were served item i. Low values mean a few items are served
    to everybody (collapse). NaN when nothing was served."""
    counts = np.sort(np.asarray(slot_counts, dtype=np.int64))[::-1]
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    cum = np.cumsum(counts)
    # Integer test cum >= 0.9 * total, free of float rounding.
    needed = int(np.argmax(cum * 10 >= total * 9)) + 1
    return needed / num_items


def _interest_table(item_interests, num_items: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense [N+1, K] (interest code, weight) tables; row N is an empty sentinel for padding.

    An item with m distinct interests gives each weight 1/m (so every item has unit weight);
    negative ids are padding. Interest ids are remapped to 0..n_interests-1."""
    rows = list(item_interests)  # ragged list, or the rows of an [N, K] padded array
    if len(rows) != num_items:
        raise ValueError(f"item_interests has {len(rows)} rows, expected {num_items}")
    rows = [np.unique(r[r >= 0]) for r in (np.atleast_1d(np.asarray(r, np.int64)) for r in rows)]
    vocab = np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
    width = max([len(r) for r in rows] + [1])
    codes = np.zeros((num_items + 1, width), np.int64)
    weights = np.zeros((num_items + 1, width), np.float64)
    for i, r in enumerate(rows):
        if len(r):
            codes[i, : len(r)] = np.searchsorted(vocab, r)
            weights[i, : len(r)] = 1.0 / len(r)
    return codes, weights, len(vocab)


def _entropies(lists: np.ndarray, codes, weights, n_interests: int) -> np.ndarray:
    """Shannon entropy (nats) of the interest distribution of each row of `lists` ([b, m] catalog
    positions, -1 = padding). NaN for a row with no interest-bearing item."""
    b = lists.shape[0]
    if n_interests == 0:
        return np.full(b, np.nan)
    lists = np.where(lists < 0, codes.shape[0] - 1, lists)  # padding -> empty sentinel row
    keys = (np.arange(b)[:, None, None] * n_interests + codes[lists]).ravel()
    mass = np.bincount(keys, weights[lists].ravel(), minlength=b * n_interests)
    mass = mass.reshape(b, n_interests)
    total = mass.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = mass / total
        h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    return np.where(total[:, 0] > 0, h, np.nan)


def _top_lists(scores: np.ndarray, valid: np.ndarray, m: int) -> np.ndarray:
    """[b, m] catalog positions of each row's top-m valid items, by (score desc, position asc);
    -1 where a row has fewer than m valid items."""
    b, n = scores.shape
    m_eff = min(m, n)
    masked = np.where(valid, scores, -np.inf)
    thr = np.partition(masked, n - m_eff, axis=1)[:, n - m_eff][:, None]  # m-th largest
    above = valid & (masked > thr)
    tied = valid & (masked == thr)
    sel = above | tied
    need = m_eff - above.sum(axis=1)
    for r in np.flatnonzero(tied.sum(axis=1) > need):  # keep the lowest positions among ties
        sel[r, np.flatnonzero(tied[r])[need[r]:]] = False
    rows, cols = np.nonzero(sel)
    order = np.lexsort((cols, -scores[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    slot = np.arange(len(rows)) - np.searchsorted(rows, rows)  # rank within the row
    out = np.full((b, m), -1, np.int64)
    out[rows, slot] = cols
    return out


def _ragged_positions(lists, lookup, lo: int, hi: int):
    """(row, catalog position) pairs of the known ids of users lo..hi-1, and the unknown count."""
    rows, cols, unknown = [], [], 0
    for r, ids in enumerate(lists[lo:hi]):
        pos, known = lookup(np.unique(np.asarray(ids, np.int64)))
        unknown += int((~known).sum())
        rows.append(np.full(int(known.sum()), r, np.int64))
        cols.append(pos[known])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    return np.concatenate(rows), np.concatenate(cols), unknown


def _evaluate(score_batch: Callable[[int, int], np.ndarray], num_users: int, item_ids, history,
              positives, item_interests, k: int, entropy_k: int, batch_size: int,
              curve_ks: Sequence[int]) -> dict:
    item_ids = np.asarray(item_ids, np.int64)
    n = len(item_ids)
    if len(np.unique(item_ids)) != n:
        raise ValueError("item_ids must be unique")
    if len(history) != num_users or len(positives) != num_users:
        raise ValueError("history and positives need one entry per user")
    sort_idx = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[sort_idx]

    def lookup(ids):
        at = np.minimum(np.searchsorted(sorted_ids, ids), max(n - 1, 0))
        known = sorted_ids[at] == ids if n else np.zeros(len(ids), bool)
        return sort_idx[at], known

    codes, weights, n_interests = _interest_table(item_interests, n)
    ks = sorted({int(k), *(int(c) for c in curve_ks)})
    kth = [n - min(c, n) for c in ks]  # c-th largest of a row sits at position n - c
    slot_counts = np.zeros(n, np.int64)
    user_hits: Dict[int, list] = {c: [] for c in ks}  # per user with >=1 positive: hit fraction
    user_index = []  # which users those are (for paired comparisons and bootstraps)
    pair_hits, unknown_total, entropies = 0, 0, []

    for lo in range(0, num_users, batch_size):
        hi = min(lo + batch_size, num_users)
        s = np.array(score_batch(lo, hi), dtype=np.float32)  # own copy: masked in place below
        if s.shape != (hi - lo, n):
            raise ValueError(f"score batch has shape {s.shape}, expected {(hi - lo, n)}")
        if not np.isfinite(s).all():
            raise ValueError("scores must be finite")
        h_rows, h_cols, _ = _ragged_positions(history, lookup, lo, hi)
        p_rows, p_cols, unknown = _ragged_positions(positives, lookup, lo, hi)
        unknown_total += unknown
        p_scores = s[p_rows, p_cols]

        # Served lists: catalog minus history.
        valid = np.ones_like(s, dtype=bool)
        valid[h_rows, h_cols] = False
        top = _top_lists(s, valid, max(k, entropy_k))
        top_k = top[:, :k]
        slot_counts += np.bincount(top_k[top_k >= 0], minlength=n)
        entropies.append(_entropies(top[:, :entropy_k], codes, weights, n_interests))

        # Recall index: catalog minus history minus all positives (p itself is scored, not indexed).
        s[h_rows, h_cols] = -np.inf
        s[p_rows, p_cols] = -np.inf
        s.partition(kth, axis=1)
        n_pos = np.array([len(np.unique(np.asarray(p, np.int64))) for p in positives[lo:hi]])
        user_index.append(lo + np.flatnonzero(n_pos > 0))
        for c, col in zip(ks, kth):
            hit = p_scores >= s[p_rows, col]  # fewer than c index items strictly above p
            per_user = np.bincount(p_rows, hit, minlength=hi - lo)
            user_hits[c].append(per_user[n_pos > 0] / n_pos[n_pos > 0])
            if c == k:
                pair_hits += int(hit.sum())

    recall = {c: float(np.mean(np.concatenate(v))) if sum(map(len, v)) else float("nan")
              for c, v in user_hits.items()}
    num_pairs = int(sum(len(np.unique(np.asarray(p, np.int64))) for p in positives))
    ent = np.concatenate(entropies) if entropies else np.zeros(0)
    ent = ent[~np.isnan(ent)]
    return {
        f"recall@{k}": recall[k],
        f"recall@{k}_global": pair_hits / num_pairs if num_pairs else float("nan"),
        f"p90_coverage@{k}": p90_coverage(slot_counts, n),
        f"interest_entropy@{entropy_k}": float(ent.mean()) if len(ent) else float("nan"),
        "recall_at_k_curve": {c: recall[c] for c in ks},
        "num_users": int(sum(len(v) for v in user_hits[k])),
        "num_pairs": num_pairs,
        "unknown_positives": unknown_total,
        "num_items": n,
        "k": int(k),
        "entropy_k": int(entropy_k),
        # Not part of the JSON record: per-user Recall@k of the users counted above, in order.
        PER_USER: {"user_index": np.concatenate(user_index) if user_index else np.zeros(0, int),
                   "recall": np.concatenate(user_hits[k]) if user_hits[k] else np.zeros(0)},
    }


def retrieval_metrics(user_emb, item_emb, item_ids, history, positives, item_interests,
                      k: int = 10, entropy_k: int = 50, batch_size: int = 256, *,
                      curve_ks: Sequence[int] = DEFAULT_CURVE_KS) -> dict:
    """Recall@k (per user and pooled), P90 coverage@k and interest entropy@entropy_k (nats) of
    dot-product retrieval `user_emb [U, D] @ item_emb[N, D].T`.

    history[u] / positives[u]: item ids seen before the anchor / engaged in the eval window.
    Positives are deduplicated; ids not in item_ids count as misses (`unknown_positives`).
    item_interests: per item interest ids, ragged or [N, K] padded with -1; a multi-interest item
    splits its unit weight evenly, items without interests are ignored; users whose top list has
    no interest are left out of the entropy mean.
    Returns a dict with keys f"recall@{k}", f"recall@{k}_global", f"p90_coverage@{k}",
    f"interest_entropy@{entropy_k}", "recall_at_k_curve" {k': per-user recall@k'}, "num_users"
    (users with >= 1 positive), "num_pairs", "unknown_positives", "num_items", "k", "entropy_k".
    """
    user_emb = np.asarray(user_emb, np.float32)
    item_emb_t = np.ascontiguousarray(np.asarray(item_emb, np.float32).T)
    return _evaluate(lambda lo, hi: user_emb[lo:hi] @ item_emb_t, len(user_emb), item_ids,
                     history, positives, item_interests, k, entropy_k, batch_size, curve_ks)


def scored_metrics(score_batch: Callable[[int, int], np.ndarray], num_users: int, item_ids,
                   history, positives, item_interests, k: int = 10, entropy_k: int = 50,
                   batch_size: int = 256, *, curve_ks: Sequence[int] = DEFAULT_CURVE_KS) -> dict:
    """Same metrics for any scorer: `score_batch(lo, hi)` -> [hi - lo, N] scores of users lo..hi-1
    (used for the non-learned baselines, whose scores depend on each user's anchor time)."""
    return _evaluate(score_batch, num_users, item_ids, history, positives, item_interests, k,
                     entropy_k, batch_size, curve_ks)


def popularity_baseline_metrics(item_scores, item_ids, history, positives, item_interests,
                                k: int = 10, entropy_k: int = 50, batch_size: int = 256, *,
                                curve_ks: Sequence[int] = DEFAULT_CURVE_KS) -> dict:
    """Same metrics for a non-personalized ranker: `item_scores [N]` (e.g. training-window
    engagement counts) shared by all users, so the report can show a most-popular baseline.
    History exclusion still applies per user."""
    scores = np.asarray(item_scores, np.float32)
    if scores.shape != (len(item_ids),):
        raise ValueError(f"item_scores has shape {scores.shape}, expected ({len(item_ids)},)")
    return _evaluate(lambda lo, hi: np.broadcast_to(scores, (hi - lo, len(scores))),
                     len(positives), item_ids, history, positives, item_interests, k, entropy_k,
                     batch_size, curve_ks)
