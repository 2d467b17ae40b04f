"""RankerBaselineCheck's pure parts: popularity as of the request and the decision."""
import numpy as np

from components.ranker_eval import baseline_check as bc
from components.retrieval_evaluator.baselines import TrainPositives
from pipeline.config import DAY_S


def test_popularity_as_of_the_request_matches_brute_force():
    rng = np.random.default_rng(0)
    item_ids = np.array([30, 10, 20, 40])
    items = rng.choice(item_ids, 80)
    ts = rng.integers(0, 90 * DAY_S, 80)
    pos = TrainPositives(np.zeros(80, int), items, ts, item_ids)
    request_ts = np.array([40 * DAY_S, 40 * DAY_S, 70 * DAY_S, 5])
    cand = np.array([10, 40, 20, 99])  # 99: not in the catalog
    got = bc.popularity_scores(pos, item_ids, request_ts, cand, window_days=30)
    for i, (t, c) in enumerate(zip(request_ts, cand)):
        assert got["popularity_all"][i] == np.sum((items == c) & (ts < t))
        window = np.sum((items == c) & (ts < t) & (ts >= t - 30 * DAY_S))
        assert int(got["popularity_30d"][i]) == window  # + a tie-breaker below 1
        assert got["popularity_30d"][i] - window < 1.0


def _metrics(cand_hit, cand_auc):
    return {"candidate": {"hit@3": cand_hit, "auc": cand_auc},
            "pinnerformer_dot": {"hit@3": 0.4, "auc": 0.6},
            "popularity_all": {"hit@3": 0.3, "auc": 0.55},
            "popularity_30d": {"hit@3": 0.5, "auc": 0.58}}


def test_decision_needs_tfma_and_both_baselines_beaten():
    g = bc.decide(_metrics(0.55, 0.7), 3, 0.0, tfma_blessed=True)
    assert g["blessed"] and g["popularity"] == "popularity_30d"
    g = bc.decide(_metrics(0.45, 0.7), 3, 0.0, tfma_blessed=True)
    assert not g["blessed"]
    assert g["reasons"] == ["hit@3/repin 0.4500 does not beat popularity_30d's 0.5000 "
                            "(lift -10.0% <= +0.0%)"]
    g = bc.decide(_metrics(0.55, 0.59), 3, 0.0, tfma_blessed=False)
    assert not g["blessed"] and len(g["reasons"]) == 2 and "TFMA" in g["reasons"][0]
    assert "auc/repin 0.5900 does not beat pinnerformer_dot's 0.6000" in g["reasons"][1]


def test_compare_uses_request_level_hit_and_auc():
    scores = {"candidate": np.array([3.0, 2.0, 1.0, 0.0, 1.0, 2.0]),
              "flat": np.zeros(6)}
    labels = np.array([1, 0, 0, 0, 0, 1])
    rid = np.array([b"a", b"a", b"a", b"b", b"b", b"b"], object)
    m = bc.compare(scores, labels, rid, k=1)
    # AUC pools all examples like TFMA: the positive at 2.0 ties one negative -> 7.5 / 8
    assert m["candidate"] == {"hit@1": 1.0, "auc": 0.9375}
    assert m["flat"]["auc"] == 0.5


def test_not_required_reports_but_does_not_gate():
    g = bc.decide(_metrics(0.2, 0.5), 3, 0.0, tfma_blessed=True, required=False)
    assert g["blessed"] and g["lifts"]["hit@3 vs popularity_30d"] < 0
