"""Offline ranking metrics (numpy): per-head HIT@k within requests and per-head AUC
(docs/models.md, "Evaluation (HIT@3)").

HIT@k (our definition; the paper publishes HIT@3 only as relative lifts):
    for each request (query id) and head h, rank the request's candidates by the head's score, descending;
    HIT@k/h of the request = number of candidates among the top k with a positive label for h (requests
    with fewer than k candidates use all of them); report the mean over ALL requests (requests without a
    positive count as 0) and the number of requests.
    Ties: the paper randomises the served order to remove position bias; here every candidate gets a
    random priority `np.random.default_rng(seed).permutation(n)` (one draw per call, shared by all heads),
    and among equal scores the lower priority ranks first. So tied candidates are ordered by a seeded
    random shuffle, never by their input position.

AUC: Mann-Whitney U with average ranks for ties (= P(score_pos > score_neg) + 0.5 P(tie)); NaN when a head has
no positive or no negative.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np


def _as_2d(x, name):
    x = np.asarray(x)
    if x.ndim == 1:
        return x[:, None], True
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N] or [N, H], got shape {x.shape}")
    return x, False


def hit_at_k(scores, labels, query_ids, k: int = 3, seed: int = 0) -> Tuple[Union[float, np.ndarray], int]:
    """scores / labels [N] or [N, H] (labels 0/1 or counts), query_ids [N] -> (HIT@k: float, or [H] per
    head, number of requests)."""
    per_query, _ = hit_at_k_per_query(scores, labels, query_ids, k, seed)
    n = per_query.shape[0]
    if n == 0:
        s = np.asarray(scores)
        return (float("nan") if s.ndim == 1 else np.full(s.shape[1], np.nan)), 0
    means = per_query.mean(axis=0)
    return (float(means[0]) if np.asarray(scores).ndim == 1 else means), n


def hit_at_k_per_query(scores, labels, query_ids, k: int = 3, seed: int = 0
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """HIT@k of every request: ([Q, H] hits, [Q] sorted distinct query ids); H = 1 for [N] input."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    s, _ = _as_2d(np.asarray(scores, np.float64), "scores")
    y, _ = _as_2d(np.asarray(labels, np.float64), "labels")
    q = np.asarray(query_ids).reshape(-1)
    n = s.shape[0]
    if y.shape != s.shape or q.shape[0] != n:
        raise ValueError(f"shape mismatch: scores {s.shape}, labels {y.shape}, query_ids {q.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if n == 0:
        return np.zeros((0, s.shape[1])), q[:0]
    keys, group = np.unique(q, return_inverse=True)
    num_queries = int(group.max()) + 1
    priority = np.random.default_rng(seed).permutation(n)
    hits = np.zeros((num_queries, s.shape[1]))
    for h in range(s.shape[1]):
        order = np.lexsort((priority, -s[:, h], group))  # by query, then score desc, then random priority
        g = group[order]
        start = np.searchsorted(g, g, side="left")  # first index of each row's query in `order`
        rank = np.arange(n) - start
        top = rank < k
        hits[:, h] = np.bincount(g[top], weights=y[order, h][top], minlength=num_queries)
    return hits, keys


def auc(scores, labels) -> Union[float, np.ndarray]:
    """Rank-based AUC with tied scores counted 1/2; scores / labels [N] or [N, H] -> float or [H]."""
    s, squeeze = _as_2d(np.asarray(scores, np.float64), "scores")
    y, _ = _as_2d(np.asarray(labels), "labels")
    if y.shape != s.shape:
        raise ValueError(f"shape mismatch: scores {s.shape}, labels {y.shape}")
    out = np.full(s.shape[1], np.nan)
    for h in range(s.shape[1]):
        pos = y[:, h] > 0
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = _average_ranks(s[:, h])
        out[h] = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return float(out[0]) if squeeze else out


def _average_ranks(x):
    """1-based ranks, ties get the average of their ranks (scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.r_[True, xs[1:] != xs[:-1], True]
    idx = np.flatnonzero(boundaries)  # starts of tie groups + n
    avg = (idx[:-1] + idx[1:] + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, np.diff(idx))
    return ranks
