"""RankerBaselineCheck's pure parts: popularity as of the request and the decision."""
import numpy as np

from pinrank.components.ranker_eval import baseline_check as bc
from pinrank.components.retrieval_evaluator.baselines import TrainPositives
from pinrank.pipeline.config import DAY_S


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


def _requests(n_req=300, per=8, seed=0):
    """Requests with one informative feature: label_h ~ Bernoulli(sigmoid(2 x))."""
    rng = np.random.default_rng(seed)
    rid = np.repeat(np.arange(n_req), per)
    x = rng.normal(size=(n_req * per, len(bc.F.HEADS)))
    labels = (rng.random(x.shape) < 1 / (1 + np.exp(-2 * x))).astype(np.int64)
    return x, labels, rid


def test_weighted_auc_equals_the_auc_of_the_replicated_sample():
    """A bootstrap replicate = the data set with every request repeated its draw count."""
    from pinrank.components.retrieval_evaluator import stats
    from pinrank.models.realtime import metrics as RM
    rng = np.random.default_rng(3)
    rid = np.repeat(np.arange(6), 4)
    s = np.round(rng.normal(size=24), 1)  # rounding makes ties
    y = rng.random(24) < 0.4
    w = np.array([[0, 2, 1, 0, 3, 0], [1, 1, 1, 1, 1, 1]], np.float64)
    got = stats._weighted_auc(s, y, rid, w)
    for r in range(2):
        idx = np.concatenate([np.flatnonzero(rid == g) for g in range(6)
                              for _ in range(int(w[r, g]))])
        assert got[r] == __import__("pytest").approx(RM.auc(s[idx], y[idx]), abs=1e-12)


def test_equal_ranker_is_not_refused_and_a_worse_one_is():
    x, labels, rid = _requests()
    rng = np.random.default_rng(1)
    same = x + rng.normal(scale=0.3, size=x.shape)  # as good as x, other noise
    out = bc.vs_last_blessed(same, x + rng.normal(scale=0.3, size=x.shape), labels, rid, k=3,
                             max_hit_drop=0.05, max_auc_drop=0.01)
    assert out["reasons"] == []
    assert set(out["metrics"]) == {"hit@3/repin"} | {f"auc/{h}" for h in bc.F.HEADS}
    for row in out["metrics"].values():
        assert row["diff_interval"][0] <= row["diff"] <= row["diff_interval"][1]
    worse = x + rng.normal(scale=3.0, size=x.shape)  # mostly noise
    out = bc.vs_last_blessed(worse, x, labels, rid, k=3, max_hit_drop=0.05, max_auc_drop=0.01)
    assert any(r.startswith("hit@3/repin") for r in out["reasons"])
    assert any(r.startswith("auc/repin") for r in out["reasons"])
    g = bc.decide(_metrics(0.55, 0.7), 3, 0.0, tfma_blessed=True, last_blessed=out)
    assert not g["blessed"] and g["reasons"] == out["reasons"]


def test_paired_refusal_needs_confidence_not_a_point_difference():
    """A candidate below the last blessed one on a point estimate is still blessed when the
    paired interval says the gap could be chance: here it differs on one request in 60."""
    x, labels, rid = _requests(n_req=60, per=6, seed=2)
    worst_first = np.where(labels[:, 0] > 0, -1.0, 1.0)  # request 0: positives ranked last
    cand = x.copy()
    cand[rid == 0, 0] = worst_first[rid == 0]
    assert bc.RM.hit_at_k(x[rid == 0, 0], labels[rid == 0, 0], rid[rid == 0])[0] > 0
    out = bc.vs_last_blessed(cand, x, labels, rid, k=3, max_hit_drop=0.0, max_auc_drop=0.0)
    assert out["metrics"]["hit@3/repin"]["diff"] < 0  # worse on the point estimate ...
    assert out["metrics"]["auc/repin"]["diff"] < 0
    assert out["reasons"] == []  # ... but not with 95 % confidence


def test_pf_present_slices_are_compared_and_gated_on_their_own():
    """compare_pf_present equals `compare` on each slice's requests (dot product left out where
    there is no embedding); decide refuses a candidate that wins overall but loses to
    popularity on one slice, and names the slice."""
    rid = np.repeat(np.arange(4), 3).astype(object)
    pf_present = np.repeat([1, 1, 0, 0], 3)
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0])
    scores = {"candidate": np.array([3., 2, 1, 1, 3, 2, 3, 2, 1, 1, 2, 3]),  # wrong on pf=0
              "pinnerformer_dot": np.array([1., 2, 3, 3, 2, 1, 0, 0, 0, 0, 0, 0]),
              "popularity_all": np.array([1., 2, 3, 1, 2, 3, 1, 2, 3, 3, 2, 1])}
    got = bc.compare_pf_present(scores, labels, rid, pf_present, k=1)
    assert set(got) == {"pf_present=0", "pf_present=1"}
    assert set(got["pf_present=0"]) == {"candidate", "popularity_all"}
    for v in (0, 1):
        rows = pf_present == v
        want = bc.compare({n: s[rows] for n, s in scores.items()}, labels[rows], rid[rows], k=1)
        for name, m in got[f"pf_present={v}"].items():
            assert m == want[name], (v, name)
    # hand values, k=1: pf=1 candidate hits both requests; pf=0 it misses both, popularity hits
    assert got["pf_present=1"]["candidate"]["hit@1"] == 1.0
    assert got["pf_present=0"]["candidate"]["hit@1"] == 0.0
    assert got["pf_present=0"]["popularity_all"]["hit@1"] == 1.0
    overall = bc.compare(scores, labels, rid, k=1)
    assert overall["candidate"]["hit@1"] == 0.5 and overall["popularity_all"]["hit@1"] == 0.5
    winning = {"candidate": {"hit@1": 0.6, "auc": 0.7}, "popularity_all": {"hit@1": 0.5, "auc": 0.6},
               "pinnerformer_dot": {"hit@1": 0.4, "auc": 0.6}}  # overall it would be blessed
    assert bc.decide(winning, 1, 0.0, tfma_blessed=True)["blessed"]
    g = bc.decide(winning, 1, 0.0, tfma_blessed=True, slices=got)
    assert not g["blessed"]
    assert g["reasons"] and all(" on pf_present=0 " in r for r in g["reasons"]), g["reasons"]
    assert g["slice_lifts"]["pf_present=0"]["popularity"] == "popularity_all"
    assert "hit@1 vs pinnerformer_dot" not in g["slice_lifts"]["pf_present=0"]["lifts"]
    assert g["slice_lifts"]["pf_present=1"]["lifts"]["hit@1 vs pinnerformer_dot"] > 0
    g = bc.decide(winning, 1, 0.0, tfma_blessed=True, slices=got, required=False)
    assert g["blessed"] and g["slice_lifts"]["pf_present=0"]["lifts"]["hit@1 vs popularity_all"] < 0
