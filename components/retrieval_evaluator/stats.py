"""Bootstrap intervals over users for per-user metrics (numpy only).

Examples of the same user are resampled together (a cluster bootstrap), so several anchors per
user do not pretend to be independent. Every method is scored on the same resampled users in
each replicate, which makes differences and ratios *paired*.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from numpy.typing import ArrayLike


def replicate_means(values: Dict[str, np.ndarray], groups: ArrayLike, n_boot: int = 1000,
                    seed: int = 0, within: ArrayLike | None = None) -> Dict[str, np.ndarray]:
    """name -> [n_boot] means of that method's per-example values over resampled user groups.

    values: name -> [n] per-example metric, all aligned with `groups` ([n] user keys).
    within: optional [n] bool mask: the mean is taken over the resampled examples in the mask
    only (a slice), while the users are still drawn from all of `groups`. The draws depend only
    on `groups` and `seed`, so replicates of different slices are paired (their differences are
    valid replicates of the gap between slices). NaN where a replicate drew nobody in the slice."""
    groups = np.asarray(groups)
    _, g = np.unique(groups, return_inverse=True)
    n_groups = int(g.max()) + 1 if len(g) else 0
    if n_groups == 0:
        return {name: np.full(n_boot, np.nan) for name in values}
    mask = np.ones(len(g)) if within is None else np.asarray(within, bool).astype(np.float64)
    if mask.shape != g.shape:
        raise ValueError(f"within: {mask.shape} values for {g.shape} examples")
    counts = np.bincount(g, weights=mask, minlength=n_groups)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.float64)
    denom = w @ counts
    out = {}
    for name, v in values.items():
        v = np.asarray(v, np.float64)
        if v.shape != g.shape:
            raise ValueError(f"{name}: {v.shape} values for {g.shape} examples")
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = (w @ np.bincount(g, weights=v * mask, minlength=n_groups)) / denom
    return out


def interval(samples: np.ndarray, level: float = 0.95) -> list:
    """Percentile interval [lo, hi] of bootstrap samples."""
    a = (1.0 - level) / 2.0
    return [float(np.nanquantile(samples, a)), float(np.nanquantile(samples, 1.0 - a))]


def compare(values: Dict[str, np.ndarray], groups: ArrayLike, candidate: str, n_boot: int = 1000,
            level: float = 0.95, confidence: float = 0.95, seed: int = 0,
            within: ArrayLike | None = None) -> Dict[str, dict]:
    """For every method: mean with interval; for every other method also the candidate's
    relative lift (mean ratio - 1) and paired difference (candidate - method), each with its
    `level` interval, `p_worse` = share of replicates where the candidate's mean is below the
    method's, and `diff_upper` = the one-sided `confidence` upper bound of the difference (the
    candidate is worse by more than m with that confidence when diff_upper < -m).
    within: restrict every mean to a slice of the examples (see replicate_means)."""
    reps = replicate_means(values, groups, n_boot, seed, within)
    keep = slice(None) if within is None else np.asarray(within, bool)
    points = {name: np.asarray(v, np.float64)[keep] for name, v in values.items()}
    out = {}
    cand = reps[candidate]
    for name, v in points.items():
        row = {"mean": float(np.mean(v)) if len(v) else float("nan"),
               "interval": interval(reps[name], level)}
        if name != candidate:
            base_mean = row["mean"]
            with np.errstate(divide="ignore", invalid="ignore"):
                row["lift"] = float(np.mean(points[candidate]) / base_mean - 1.0)
                row["lift_interval"] = interval(cand / reps[name] - 1.0, level)
            diff = cand - reps[name]
            row["diff"] = float(np.mean(points[candidate]) - base_mean)
            row["diff_interval"] = interval(diff, level)
            row["p_worse"] = float(np.mean(diff < 0))
            row["diff_upper"] = float(np.nanquantile(diff, confidence))
        out[name] = row
    return out


def paired_auc_replicates(score_a: np.ndarray, score_b: np.ndarray, labels: np.ndarray,
                          groups: ArrayLike, n_boot: int = 1000, seed: int = 0,
                          chunk: int = 50) -> np.ndarray:
    """[n_boot] bootstrap replicates of AUC(a) - AUC(b), resampling whole groups (requests).

    AUC pools every example like the point estimate (Mann-Whitney, ties count 1/2); a group drawn
    c times weighs its examples by c. Both scorers see the same draws (paired)."""
    labels = np.asarray(labels) > 0
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(g.max()) + 1 if len(g) else 0
    if n_groups == 0 or labels.all() or not labels.any():
        return np.full(n_boot, np.nan)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.float64)
    return np.concatenate([_weighted_auc(score_a, labels, g, w[i:i + chunk])
                           - _weighted_auc(score_b, labels, g, w[i:i + chunk])
                           for i in range(0, n_boot, chunk)])


def _weighted_auc(scores: np.ndarray, pos: np.ndarray, g: np.ndarray, group_w: np.ndarray
                  ) -> np.ndarray:
    """AUC under each row of group weights [R, G]: sum over (positive, negative) pairs of
    w_p w_n (1[s_p > s_n] + 1/2 1[s_p = s_n]) / (W_pos W_neg)."""
    order = np.argsort(np.asarray(scores, np.float64), kind="mergesort")
    s, p = np.asarray(scores, np.float64)[order], pos[order]
    w = group_w[:, g[order]]  # [R, N] example weights in score order
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups of equal scores
    wp = np.add.reduceat(np.where(p, w, 0.0), starts, axis=1)
    wn = np.add.reduceat(np.where(p, 0.0, w), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each tie group
    num = np.sum(wp * (below + 0.5 * wn), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / (wp.sum(axis=1) * wn.sum(axis=1))
