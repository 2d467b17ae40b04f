"""HIT@k and AUC vs brute-force references."""
import numpy as np
import pytest

from pinrank.models.realtime import auc, hit_at_k


def hit_reference(scores, labels, queries, k, seed):
    """Per query: python sort by (-score, random priority); count positives in the top k; mean over queries."""
    prio = np.random.default_rng(seed).permutation(len(scores))
    per_query = []
    for q in sorted(set(queries.tolist())):
        idx = [i for i in range(len(scores)) if queries[i] == q]
        ranked = sorted(idx, key=lambda i: (-scores[i], prio[i]))
        per_query.append(sum(labels[i] for i in ranked[:k]))
    return float(np.mean(per_query)), len(per_query)


def auc_reference(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hit_at_k_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 60
    queries = rng.integers(0, 9, n) * 7 + 3  # arbitrary, unsorted query ids; some queries tiny
    scores = rng.integers(0, 4, (n, 3)).astype(float)  # many ties
    labels = (rng.random((n, 3)) < 0.4).astype(int)
    for k in (1, 3, 10):
        got, nq = hit_at_k(scores, labels, queries, k=k, seed=seed)
        assert got.shape == (3,)
        for h in range(3):
            ref, nq_ref = hit_reference(scores[:, h], labels[:, h], queries, k, seed)
            assert nq == nq_ref
            assert got[h] == pytest.approx(ref)
    one, _ = hit_at_k(scores[:, 0], labels[:, 0], queries, k=3, seed=seed)
    assert isinstance(one, float) and one == pytest.approx(hit_reference(scores[:, 0], labels[:, 0], queries, 3,
                                                                        seed)[0])


def test_hit_at_k_hand_case_and_random_tie_breaking():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.2, 0.3])
    labels = np.array([1, 1, 0, 1, 0, 1])
    queries = np.array([0, 0, 0, 1, 1, 1])
    got, nq = hit_at_k(scores, labels, queries, k=2)
    assert nq == 2 and got == pytest.approx((1 + 2) / 2)  # q0 top2 {0.9, 0.5}: 1; q1 top2 {0.7, 0.3}: 2
    assert hit_at_k(scores, labels, queries, k=1)[0] == pytest.approx(1.0)
    # All-tied scores: the top k is a seeded random subset, not the input order; on average k * rate.
    flat = np.zeros(10)
    lab = np.r_[np.ones(5), np.zeros(5)]
    q = np.zeros(10)
    vals = [hit_at_k(flat, lab, q, k=3, seed=s)[0] for s in range(200)]
    assert len(set(vals)) > 1 and abs(np.mean(vals) - 1.5) < 0.15
    assert hit_at_k(flat, lab, q, k=3, seed=4)[0] == hit_at_k(flat, lab, q, k=3, seed=4)[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_matches_pairwise_reference(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, (40, 2)).astype(float)
    labels = (rng.random((40, 2)) < 0.3).astype(int)
    got = auc(scores, labels)
    for h in range(2):
        assert got[h] == pytest.approx(auc_reference(scores[:, h], labels[:, h]))
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert np.isnan(auc([0.1, 0.2], [1, 1]))
    assert auc([1.0, 1.0, 1.0], [0, 1, 0]) == pytest.approx(0.5)
