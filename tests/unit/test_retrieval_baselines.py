"""Non-learned baselines and bootstrap statistics against brute-force references."""
import numpy as np
import pytest

from pinrank.components.retrieval_evaluator import baselines as B
from pinrank.components.retrieval_evaluator import stats as S
from pinrank.components.retrieval_evaluator.metrics import PER_USER, scored_metrics
from pinrank.pipeline.config import DAY_S


def _world(seed=0, n_users=6, n_items=9, n=60):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    items = rng.integers(0, n_items, n) * 10 + 5  # ids 5, 15, ...
    ts = rng.integers(0, 100 * DAY_S, n)
    item_ids = np.arange(n_items)[::-1] * 10 + 5  # catalog order differs from id order
    return users, items, ts, item_ids


def test_popularity_counts_only_before_the_anchor_and_in_the_window():
    users, items, ts, item_ids = _world()
    tp = B.TrainPositives(users, items, ts, item_ids)
    for t in (0, 10 * DAY_S, 55 * DAY_S + 7, 200 * DAY_S):
        want_all = [np.sum((items == i) & (ts < t)) for i in item_ids]
        want_30 = [np.sum((items == i) & (ts < t) & (ts >= t - 30 * DAY_S)) for i in item_ids]
        assert tp.counts_before(t).tolist() == want_all
        assert tp.counts_before(t, t - 30 * DAY_S).tolist() == want_30


def test_cooccurrence_matches_brute_force():
    users, items, ts, item_ids = _world(1)
    tp = B.TrainPositives(users, items, ts, item_ids)
    for t in (30 * DAY_S, 80 * DAY_S):
        recent_ids = [item_ids[0], item_ids[3]]
        recent = [int(np.flatnonzero(item_ids == i)[0]) for i in recent_ids]
        want = []
        for j in item_ids:
            score = 0
            for v in np.unique(users):
                seen = set(items[(users == v) & (ts < t)].tolist())
                score += sum(i in seen for i in recent_ids) * (j in seen)
            want.append(score)
        assert tp.cooccurrence(t, np.array(recent)).tolist() == want


def test_unknown_items_are_counted_not_scored():
    tp = B.TrainPositives(np.array([0, 0]), np.array([5, 999]), np.array([1, 2]), np.array([5]))
    assert tp.unknown == 1 and tp.counts_before(10).tolist() == [1]


def test_baseline_never_sees_the_anchor_or_later():
    # One training user engages item 15 exactly at the eval anchor and later: no credit.
    item_ids = np.array([5, 15, 25])
    tp = B.TrainPositives(np.array([0, 0, 0]), np.array([5, 15, 15]),
                          np.array([10, 100, 150]), item_ids)
    scorers = B.baseline_scorers(tp, np.array([100]), [np.array([0])])
    for name, fn in scorers.items():
        s = fn(0, 1)[0]
        assert s[0] > s[1] and s[0] > s[2], name  # only item 5 happened before t=100
        m = scored_metrics(fn, 1, item_ids, [[]], [[15]], [[0], [0], [0]], k=1)
        assert m["recall@1"] == 0.0


def test_ties_are_broken_so_zero_counts_earn_no_hit():
    # all counts zero: the positive is not credited as tied with the k-th score
    item_ids = np.arange(1, 21)
    tp = B.TrainPositives(np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), item_ids)
    fn = B.baseline_scorers(tp, np.array([5] * 50), [np.zeros(0, int)] * 50)["popularity_all"]
    m = scored_metrics(fn, 50, item_ids, [[]] * 50, [[i % 20 + 1] for i in range(50)],
                       [[0]] * 20, k=1)
    assert m["recall@1"] <= 0.1


def test_recent_positive_positions():
    got = B.recent_positive_positions([np.array([5, 15, 25, 7])], [np.array([1, 0, 1, 1])],
                                      np.array([25, 15, 5]), max_items=2)
    assert got[0].tolist() == [0]  # 25 -> position 0; 7 is unknown; 5 dropped by max_items


def test_bootstrap_is_paired_and_clusters_users():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    values = {"candidate": base + 0.1, "other": base}
    out = S.compare(values, np.arange(200), "candidate", n_boot=500)
    # a constant paired difference has a zero-width interval
    assert out["other"]["diff"] == pytest.approx(0.1)
    assert out["other"]["diff_interval"] == pytest.approx([0.1, 0.1])
    assert out["other"]["p_worse"] == 0.0 and out["other"]["diff_upper"] == pytest.approx(0.1)
    lo, hi = out["candidate"]["interval"]
    assert lo < np.mean(base) + 0.1 < hi
    # duplicating every example under the same user leaves the replicates' spread the same
    dup = {k: np.repeat(v, 2) for k, v in values.items()}
    out2 = S.compare(dup, np.repeat(np.arange(200), 2), "candidate", n_boot=500)
    assert out2["candidate"]["interval"] == pytest.approx(out["candidate"]["interval"])
    # ...while treating the copies as independent users narrows it (what clustering avoids)
    out3 = S.compare(dup, np.arange(400), "candidate", n_boot=500)
    w = lambda o: o["candidate"]["interval"][1] - o["candidate"]["interval"][0]  # noqa: E731
    assert w(out3) < 0.85 * w(out2)


def test_per_user_recall_is_aligned_with_users():
    item_ids = np.array([1, 2, 3])
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    m = scored_metrics(lambda lo, hi: scores[lo:hi], 3, item_ids, [[], [], []],
                       [[1], [], [1, 3]], [[0]] * 3, k=1)
    assert m[PER_USER]["user_index"].tolist() == [0, 2]
    assert m[PER_USER]["recall"].tolist() == [1.0, 1.0]  # user 2: all tied -> hits
