"""Per-user slices of the retrieval metrics: quality on important slices and inclusion.

Every eval example (one user, one anchor) gets one label per slice family:
- `history_length`: actions in the example's history before the anchor, in buckets set by
  `eval.history_length_edges` (e.g. (20, 100) -> "<=20", "21-100", ">100"). The history is
  capped at `examples.max_history` actions, so edges are meaningful below that cap;
- one family per user attribute of the dataset (`users.parquet`, components/data/events.py;
  ML-100K: gender, age_group); users absent from the table are labelled UNKNOWN.

For each slice with at least `min_users` users: the candidate's and the strongest popularity
baseline's per-user recall@k, the candidate's lift with a bootstrap interval, all from
stats.compare restricted to the slice. The users are resampled from the whole eval set with the
same seed for every slice, so replicates of different slices are paired: the gap between the best
and the worst group of a family (by the candidate's recall) gets its interval from them. Smaller
slices are skipped and counted, not reported with meaningless intervals.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from pinrank.components.data.events import UNKNOWN_ATTRIBUTE as UNKNOWN
from pinrank.components.retrieval_evaluator import stats as S
from pinrank.components.retrieval_evaluator.metrics import PER_USER

HISTORY_LENGTH = "history_length"
# UNKNOWN: a user without a row or value in the attribute table (not a group: no gap, no gate).


def history_labels(lengths: Sequence[int], edges: Sequence[int]) -> np.ndarray:
    """Bucket label of every history length: "<=e0", "e0+1-e1", ..., ">e_last"."""
    edges = [int(e) for e in edges]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0:
        raise ValueError(f"history length edges must be non-negative and strictly increasing, "
                         f"got {edges}")
    names = [f"<={edges[0]}"] + [f"{a + 1}-{b}" for a, b in zip(edges, edges[1:])] + [f">{edges[-1]}"]
    # side="left": a length equal to an edge belongs to the bucket that ends at it.
    bucket = np.searchsorted(np.asarray(edges), np.asarray(lengths, np.int64), side="left")
    return np.asarray(names, dtype=object)[bucket]


def attribute_labels(users: Sequence, table) -> Dict[str, np.ndarray]:
    """attribute -> label of every example's user (UNKNOWN when the user has no row).

    users: per-example user ids (bytes or str); table: events.read_users output (a DataFrame with
    user_id and string attribute columns) or None (the dataset has no user attributes)."""
    if table is None:
        return {}
    keys = [u.decode() if isinstance(u, bytes) else str(u) for u in users]
    out = {}
    for col in table.columns:
        if col == "user_id":
            continue
        lookup = dict(zip(table["user_id"], table[col]))
        out[col] = np.asarray([lookup.get(k, UNKNOWN) for k in keys], dtype=object)
    return out


def _ordered(values) -> list:
    """Slice values in display order: buckets by their first number ("<25" < "25-34" < "45+",
    "<=20" < "21-100" < ">100"), names alphabetically, UNKNOWN last."""
    def key(v):
        v = str(v)
        digits = "".join(c for c in v.split("-")[0] if c.isdigit())
        return (v == UNKNOWN, int(digits) if digits else 0, 0 if v[:1] == "<" else 1, v)
    return sorted(set(values), key=key)


def slice_report(methods: Mapping[str, dict], users: Sequence, families: Mapping[str, np.ndarray],
                 *, candidate: str, popularity: Optional[str], min_users: int,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Per-slice figures of the candidate against `popularity` (a method name; None: the
    candidate alone). families: name -> [num examples] labels (history_labels,
    attribute_labels). Methods must have been scored on the same users (their PER_USER
    user_index equal). Returns {"min_users", "popularity", "num_skipped", "families": {family:
    {"slices": [{"value", "num_users", "num_examples", "candidate": {"mean", "interval"},
    "popularity": {...} | None, "lift", "lift_interval", "p_worse"}], "skipped": [{"value",
    "num_users"}], "gap": {"best", "worst", "diff", "diff_interval"} | None}}}."""
    index = methods[candidate][PER_USER]["user_index"]
    names = [candidate] + ([popularity] if popularity else [])
    values = {n: np.asarray(methods[n][PER_USER]["recall"], np.float64) for n in names}
    for n in names:
        if not np.array_equal(methods[n][PER_USER]["user_index"], index):
            raise ValueError(f"{n} was scored on other users than the candidate")
    groups = np.asarray(users, dtype=object)[index]
    out: dict = {"min_users": int(min_users), "popularity": popularity, "num_skipped": 0,
                 "families": {}}
    for family, labels in families.items():
        labels = np.asarray(labels, dtype=object)
        if len(labels) != len(users):
            raise ValueError(f"slice {family}: {len(labels)} labels for {len(users)} examples")
        labels = labels[index]
        rows, skipped, reps = [], [], {}
        for value in _ordered(labels):
            mask = labels == value
            n_users = len(set(groups[mask]))
            if n_users < min_users:
                skipped.append({"value": value, "num_users": n_users})
                continue
            comp = S.compare(values, groups, candidate, n_boot=n_boot, level=level, seed=seed,
                             within=mask)
            row = {"value": value, "num_users": n_users, "num_examples": int(mask.sum()),
                   "candidate": {k: comp[candidate][k] for k in ("mean", "interval")},
                   "popularity": None}
            if popularity:
                p = comp[popularity]
                row.update(popularity={k: p[k] for k in ("mean", "interval")}, lift=p["lift"],
                           lift_interval=p["lift_interval"], p_worse=p["p_worse"])
            rows.append(row)
            reps[value] = S.replicate_means({candidate: values[candidate]}, groups, n_boot, seed,
                                            within=mask)[candidate]
        out["families"][family] = {"slices": rows, "skipped": skipped,
                                   "gap": _gap(rows, reps, level)}
        out["num_skipped"] += len(skipped)
    return out


def _gap(rows: list, reps: Dict[str, np.ndarray], level: float) -> Optional[dict]:
    """Best minus worst group's candidate recall (point), with the paired bootstrap interval."""
    groups = [r for r in rows if r["value"] != UNKNOWN]
    if len(groups) < 2:
        return None
    best = max(groups, key=lambda r: r["candidate"]["mean"])
    worst = min(groups, key=lambda r: r["candidate"]["mean"])
    return {"best": best["value"], "worst": worst["value"],
            "diff": best["candidate"]["mean"] - worst["candidate"]["mean"],
            "diff_interval": S.interval(reps[best["value"]] - reps[worst["value"]], level)}


def slice_gate_reasons(report: Optional[dict], gate_families: Sequence[str], *, k: int,
                       min_lift: float) -> list:
    """One line per reported slice of a gated family whose candidate does not beat popularity by
    more than min_lift (relative lift in recall@k, strict like the overall check; NaN fails).
    Families without slices in this run (no user attributes) are not checked."""
    if not report:
        return []
    reasons = []
    pop = report.get("popularity") or "popularity (no baseline computed)"
    for family in gate_families:
        for row in report["families"].get(family, {}).get("slices", []):
            if row["value"] == UNKNOWN:
                continue
            lift = row.get("lift")
            lift = float("nan") if lift is None else float(lift)
            if not lift > min_lift:
                p = (row.get("popularity") or {}).get("mean", float("nan"))
                reasons.append(
                    f"slice {family}={row['value']} ({row['num_users']} users): recall@{k} "
                    f"{row['candidate']['mean']:.4f} does not beat {pop} ({p:.4f}): lift "
                    f"{lift:+.1%} <= min_slice_lift_over_popularity {min_lift:+.1%}")
    return reasons
