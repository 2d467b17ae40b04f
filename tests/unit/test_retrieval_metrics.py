"""Retrieval metrics vs. an independent brute-force reference (python loops, full sort) and
hand-computed cases."""
import math
from collections import Counter

import numpy as np
import pytest

from pinrank.components.retrieval_evaluator.metrics import (
    PER_USER,
    p90_coverage,
    popularity_baseline_metrics,
    retrieval_metrics,
)


def reference(scores, item_ids, history, positives, interests, k, entropy_k):
    """Brute force, straight from the definitions: count items above each positive, full sort."""
    n = len(item_ids)
    pos_of = {int(i): j for j, i in enumerate(item_ids)}
    user_recall, pair_hits, num_pairs, unknown = [], 0, 0, 0
    slots, entropies = Counter(), []
    for u in range(len(scores)):
        s = [float(x) for x in scores[u]]
        hist = {pos_of[int(i)] for i in history[u] if int(i) in pos_of}
        pos = sorted({int(p) for p in positives[u]})
        known = {pos_of[p] for p in pos if p in pos_of}
        hits = []
        for p in pos:
            if p not in pos_of:
                unknown += 1
                hits.append(0)
                continue
            j = pos_of[p]
            index = [i for i in range(n) if i not in hist and i not in known]
            hits.append(int(sum(1 for i in index if s[i] > s[j]) < k))
        if pos:
            user_recall.append(sum(hits) / len(hits))
            pair_hits += sum(hits)
            num_pairs += len(hits)
        served = sorted((i for i in range(n) if i not in hist), key=lambda i: (-s[i], i))
        slots.update(served[:k])
        mass = Counter()
        for i in served[:entropy_k]:
            ints = {int(x) for x in interests[i] if x >= 0}
            for x in ints:
                mass[x] += 1.0 / len(ints)
        if mass:
            total = sum(mass.values())
            entropies.append(-sum(m / total * math.log(m / total) for m in mass.values()))
    counts = sorted(slots.values(), reverse=True)
    total, cum, needed = sum(counts), 0, 0
    for c in counts:
        cum += c
        needed += 1
        if cum >= 0.9 * total:
            break
    return {
        f"recall@{k}": sum(user_recall) / len(user_recall),
        f"recall@{k}_global": pair_hits / num_pairs,
        f"p90_coverage@{k}": needed / n,
        f"interest_entropy@{entropy_k}": sum(entropies) / len(entropies),
        "num_users": len(user_recall),
        "num_pairs": num_pairs,
        "unknown_positives": unknown,
    }


def random_case(seed, n_users=7, n_items=30, dim=3):
    """Small-integer embeddings: exact float32 scores with many ties."""
    rng = np.random.default_rng(seed)
    user_emb = rng.integers(-2, 3, (n_users, dim)).astype(np.float32)
    item_emb = rng.integers(-2, 3, (n_items, dim)).astype(np.float32)
    item_ids = rng.permutation(1000)[:n_items].astype(np.int64) + 100
    history = [rng.choice(item_ids, rng.integers(0, 8), replace=False) for _ in range(n_users)]
    positives = [rng.choice(item_ids, rng.integers(0, 5)) for _ in range(n_users)]  # dups too
    positives[1] = np.array([item_ids[3], 99999, 5], np.int64)  # unknown ids
    positives[2] = np.concatenate([positives[2], history[2][:1]])  # re-engaged history item
    interests = np.full((n_items, 3), -1, np.int64)
    for i in range(n_items):
        m = rng.integers(0, 4)
        interests[i, :m] = rng.choice(6, m, replace=False)
    return user_emb, item_emb, item_ids, history, positives, interests


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k,entropy_k", [(10, 50), (3, 5), (1, 1)])
def test_matches_brute_force(seed, k, entropy_k):
    user_emb, item_emb, item_ids, history, positives, interests = random_case(seed)
    got = retrieval_metrics(user_emb, item_emb, item_ids, history, positives, interests,
                            k=k, entropy_k=entropy_k)
    want = reference(user_emb @ item_emb.T, item_ids, history, positives, interests, k, entropy_k)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key
    assert got["unknown_positives"] == 2  # 99999 and 5
    for c, v in got["recall_at_k_curve"].items():
        ref = reference(user_emb @ item_emb.T, item_ids, history, positives, interests, c, 1)
        assert v == pytest.approx(ref[f"recall@{c}"], abs=1e-12), c


def test_float_embeddings_match_brute_force():
    rng = np.random.default_rng(7)
    _, _, item_ids, history, positives, interests = random_case(7, n_users=9, n_items=40)
    user_emb = rng.normal(size=(9, 8)).astype(np.float32)
    item_emb = rng.normal(size=(40, 8)).astype(np.float32)
    got = retrieval_metrics(user_emb, item_emb, item_ids, history, positives, list(interests),
                            k=5, entropy_k=10)
    want = reference(user_emb @ item_emb.T, item_ids, history, positives, interests, 5, 10)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key


@pytest.mark.parametrize("batch_size", [1, 2, 3, 6])
def test_batch_size_does_not_change_results(batch_size):
    args = random_case(11)
    a, b = retrieval_metrics(*args, batch_size=batch_size), retrieval_metrics(*args, batch_size=256)
    pa, pb = a.pop(PER_USER), b.pop(PER_USER)
    assert a == b
    assert pa["user_index"].tolist() == pb["user_index"].tolist()
    assert pa["recall"].tolist() == pb["recall"].tolist()
    assert np.mean(pa["recall"]) == pytest.approx(a["recall@10"] if "recall@10" in a else
                                                  a[f"recall@{a['k']}"])


def test_popularity_baseline_matches_brute_force():
    _, _, item_ids, history, positives, interests = random_case(3)
    pop = np.random.default_rng(0).integers(0, 6, len(item_ids)).astype(np.float32)  # ties
    got = popularity_baseline_metrics(pop, item_ids, history, positives, interests, k=4,
                                      entropy_k=6, batch_size=2)
    want = reference(np.tile(pop, (len(positives), 1)), item_ids, history, positives, interests,
                     4, 6)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key


# --- hand-computed cases: one user, 1-D embeddings, item score = its value -------------------

ITEMS = np.arange(20, dtype=np.int64)            # ids 0..19
SCORES = np.arange(20, 0, -1, dtype=np.float32)  # id i scores 20 - i: id 0 is rank 1
NO_INTERESTS = [[] for _ in ITEMS]


def one_user(history, positives, k=10):
    return retrieval_metrics(np.ones((1, 1), np.float32), SCORES[:, None], ITEMS, [history],
                             [np.array(positives, np.int64)], NO_INTERESTS, k=k, entropy_k=5)


def test_rank_10_hits_rank_11_misses():
    assert one_user([], [9])["recall@10"] == 1.0   # 9 items above
    assert one_user([], [10])["recall@10"] == 0.0  # 10 items above


def test_history_items_leave_the_index():
    assert one_user([0], [10])["recall@10"] == 1.0
    assert one_user([0], [11])["recall@10"] == 0.0


def test_other_positives_leave_the_index():
    # Positives 0 (rank 1) and 10 (rank 11): 10 only has 9 index items above once 0 is removed.
    m = one_user([], [0, 10])
    assert m["recall@10"] == 1.0 and m["num_pairs"] == 2
    m = one_user([], [0, 11, 11])  # duplicates count once; 11 has 10 index items above
    assert m["recall@10"] == 0.5 and m["num_pairs"] == 2


def test_ties_with_the_positive_are_not_above():
    scores = SCORES.copy()
    scores[:12] = 50.0  # ids 0..11 tie for the top
    m = retrieval_metrics(np.ones((1, 1), np.float32), scores[:, None], ITEMS, [[]],
                          [np.array([11])], NO_INTERESTS, k=1)
    assert m["recall@1"] == 1.0  # 11 index items tie with the positive, none is above
    scores[0] = 51.0
    m = retrieval_metrics(np.ones((1, 1), np.float32), scores[:, None], ITEMS, [[]],
                          [np.array([11])], NO_INTERESTS, k=1)
    assert m["recall@1"] == 0.0


def test_unknown_positive_is_a_miss_and_users_average_first():
    m = retrieval_metrics(np.ones((2, 1), np.float32), SCORES[:, None], ITEMS, [[], []],
                          [np.array([0, 12345]), np.array([1, 2, 3])], NO_INTERESTS, k=10)
    assert m["unknown_positives"] == 1
    assert m["recall@10"] == pytest.approx((0.5 + 1.0) / 2)  # per user, then over users
    assert m["recall@10_global"] == pytest.approx(4 / 5)     # pooled pairs
    assert m["num_users"] == 2 and m["num_pairs"] == 5


def test_users_without_positives_do_not_count_for_recall():
    m = retrieval_metrics(np.ones((2, 1), np.float32), SCORES[:, None], ITEMS, [[], []],
                          [np.array([0]), np.array([], np.int64)], NO_INTERESTS, k=10)
    assert m["recall@10"] == 1.0 and m["num_users"] == 1


def test_p90_coverage_on_hand_made_pooled_lists():
    lists = [[0, 1], [0, 2], [0, 1], [0, 3]]  # counts 4, 2, 1, 1 of 8 slots
    counts = np.bincount(np.ravel(lists), minlength=10)
    assert p90_coverage(counts, 10) == 0.4   # 4 + 2 + 1 = 7 < 7.2, all 4 items needed
    counts = np.zeros(100, np.int64)
    counts[0], counts[1:11] = 90, 1           # one item fills exactly 90% of 100 slots
    assert p90_coverage(counts, 100) == 0.01
    assert math.isnan(p90_coverage(np.zeros(5), 5))


def test_coverage_of_served_lists_excludes_history():
    # Both users are served the top-2 of the catalog minus history: {0,1} and {0,2}... with
    # user 1 having seen item 1. Pooled counts 0:2, 1:1, 2:1 -> 90% of 4 slots needs 3 items.
    m = retrieval_metrics(np.ones((2, 1), np.float32), SCORES[:, None], ITEMS, [[], [1]],
                          [[], []], NO_INTERESTS, k=2)
    assert m["p90_coverage@2"] == pytest.approx(3 / 20)


def test_entropy_with_multi_interest_items():
    # Top-3 list: item 0 interests {1, 2}, item 1 interest {1}, item 2 none (ignored).
    # Mass: interest 1 = 0.5 + 1 = 1.5, interest 2 = 0.5 -> p = (0.75, 0.25).
    interests = np.array([[1, 2], [1, -1], [-1, -1], [7, -1]])
    m = retrieval_metrics(np.ones((1, 1), np.float32), np.array([[3], [2], [1], [0]], np.float32),
                          np.arange(4), [[]], [[0]], interests, k=1, entropy_k=3)
    want = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert m["interest_entropy@3"] == pytest.approx(want)
    # Ragged input, the same, plus a user whose list has no interests (left out of the mean).
    m = retrieval_metrics(np.array([[1], [-1]], np.float32),
                          np.array([[3], [2], [1], [-5]], np.float32), np.arange(4),
                          [[], [3]], [[0], []], [[1, 2], [1], [], [7]], k=1, entropy_k=3)
    assert m["interest_entropy@3"] == pytest.approx(want)


def test_scale_smoke_bounded_batches():
    # Not a timing test: a wider catalog than batch runs through several batches consistently.
    rng = np.random.default_rng(0)
    user_emb = rng.normal(size=(50, 4)).astype(np.float32)
    item_emb = rng.normal(size=(500, 4)).astype(np.float32)
    ids = np.arange(500)
    positives = [rng.choice(500, 3) for _ in range(50)]
    history = [rng.choice(500, 5) for _ in range(50)]
    interests = rng.integers(-1, 20, (500, 2))
    a = retrieval_metrics(user_emb, item_emb, ids, history, positives, interests, batch_size=7)
    b = retrieval_metrics(user_emb, item_emb, ids, history, positives, interests, batch_size=50)
    a.pop(PER_USER), b.pop(PER_USER)
    assert a == b
    assert 0 < a["recall@10"] < 1 and 0 < a["p90_coverage@10"] <= 1


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="unique"):
        retrieval_metrics(np.ones((1, 1)), np.ones((2, 1)), [1, 1], [[]], [[1]], [[], []])
    with pytest.raises(ValueError, match="finite"):
        popularity_baseline_metrics([np.inf, 0.0], [1, 2], [[]], [[1]], [[], []])
