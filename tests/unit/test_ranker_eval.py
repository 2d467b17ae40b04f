"""Ranker Evaluator config + HIT@k metric, end to end through tfma.run_model_analysis (TFMA 0.47).

A tiny tf.Module SavedModel scores each candidate with a float feature (``s_<head>``, or the
near-oracle ``o_<head>`` for the "better" model), so rankings are known exactly; the numbers
TFMA writes are compared with numpy brute force (HIT@k over all score-consistent orderings,
rank-based AUC, NDCG@k).
"""
import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from pinrank.components.ranker_eval import (
    AUC_NAME,
    HitAtK,
    gate_slicing_specs,
    hide_hit_name,
    hit_at_k_name,
    query_hit_at_k,
    ranker_eval_config,
)
from pinrank.components.ranker_eval.eval_config import pipeline_eval_config
from pinrank.pipeline.config import apply_overrides, preset
from pinrank.pipeline.features import HEADS, label_key

K = 3
HIT = hit_at_k_name(K)
SURFACES = ("homefeed", "search")


# ------------------------------------------------------------------------------------------------
# Data and models
# ------------------------------------------------------------------------------------------------
def _make_requests():
    """6 requests (3-6 candidates) -> list of dict rows."""
    rng = np.random.default_rng(7)
    sizes = [5, 4, 6, 3, 5, 4]
    n = sum(sizes)
    rows = []
    # Distinct, well-separated scores per head (AUC buckets never merge distinct values).
    scores = {h: rng.permutation(np.linspace(0.05, 0.95, n)) for h in HEADS}
    i = 0
    for r, size in enumerate(sizes):
        for _ in range(size):
            row = {"request_id": f"req{r}", "surface": SURFACES[r % 2]}
            for h in HEADS:
                p = 0.15 if h == "hide" else 0.4
                row[label_key(h)] = int(rng.random() < p)
                row[f"s_{h}"] = float(round(scores[h][i], 4))
            rows.append(row)
            i += 1
    # Guarantee both classes per head, and a request without any hide positive exists.
    rows[0][label_key("hide")] = 1
    rows[1][label_key("hide")] = 0
    for h in HEADS:
        rows[2][label_key(h)] = 1 if h != "hide" else rows[2][label_key(h)]
        rows[3][label_key(h)] = 0
    # A closeup tie that straddles the top-3 cut-off of request 2 (candidates 9..14), with one
    # positive and one negative in the tie group: HIT@3 is then fractional ("expected" ties).
    req2 = [j for j, row in enumerate(rows) if row["request_id"] == "req2"]
    order = sorted(req2, key=lambda j: -rows[j]["s_closeup"])
    a, b = order[2], order[3]
    rows[b]["s_closeup"] = rows[a]["s_closeup"]
    rows[a][label_key("closeup")], rows[b][label_key("closeup")] = 1, 0
    # pf_present is per request (the user's embedding as of the request's day).
    for row in rows:
        row["pf_present"] = int(row["request_id"] in ("req0", "req1", "req2"))
    # Near-oracle scores (for the "better" model): positives above negatives, with noise.
    for row in rows:
        for h in HEADS:
            row[f"o_{h}"] = float(0.25 + 0.5 * row[label_key(h)] + 0.01 * rng.random())
    return rows


def _write_examples(rows, path):
    with tf.io.TFRecordWriter(path) as w:
        for row in rows:
            feats = {}
            for key, v in row.items():
                if isinstance(v, str):
                    feats[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
                elif isinstance(v, int):
                    feats[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
                else:
                    feats[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feats))
                    .SerializeToString())


class _FeatureScorer(tf.Module):
    """serving_default(examples: string[B]) -> {head: float[B]} = feature <prefix><head>."""

    def __init__(self, prefix):
        super().__init__()
        self._spec = {f"{prefix}{h}": tf.io.FixedLenFeature([1], tf.float32) for h in HEADS}
        self._prefix = prefix

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        parsed = tf.io.parse_example(examples, self._spec)
        return {h: tf.reshape(parsed[f"{self._prefix}{h}"], [-1]) for h in HEADS}


def _save_model(prefix, path):
    m = _FeatureScorer(prefix)
    tf.saved_model.save(m, path, signatures={"serving_default": m.serve})
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("ranker_eval")
    rows = _make_requests()
    data = str(d / "eval.tfrecord")
    _write_examples(rows, data)
    return {"dir": d, "rows": rows, "data": data,
            "model": _save_model("s_", str(d / "model_s")),
            "oracle": _save_model("o_", str(d / "model_o"))}


def _run(env, cfg, out_name, model="model", baseline=None):
    """Like the TFX Evaluator: defaults applied with rubber_stamp=True (change thresholds are
    dropped when there is no baseline; plain run_model_analysis would raise on them)."""
    out = str(env["dir"] / out_name)
    cfg = tfma.utils.update_eval_config_with_defaults(cfg, has_baseline=baseline is not None,
                                                      rubber_stamp=True)
    if baseline is None:
        shared = tfma.default_eval_shared_model(env[model], eval_config=cfg)
    else:
        shared = [tfma.default_eval_shared_model(env[model], eval_config=cfg,
                                                 model_name=tfma.CANDIDATE_KEY),
                  tfma.default_eval_shared_model(env[baseline], eval_config=cfg,
                                                 model_name=tfma.BASELINE_KEY)]
    tfma.run_model_analysis(eval_shared_model=shared, eval_config=cfg,
                            data_location=env["data"], output_path=out)
    return out


def _metrics(out):
    """{(slice, model_name, output_name, name, sub_key, is_diff): value} from TFMA's output."""
    res = {}
    for mfs in tfma.load_metrics(out):
        sl = tuple((c.column, c.bytes_value.decode() or c.int64_value)
                   for c in mfs.slice_key.single_slice_keys)
        for kv in mfs.metric_keys_and_values:
            k = kv.key
            sub = "topK:%d" % k.sub_key.top_k.value if k.sub_key.HasField("top_k") else ""
            res[(sl, k.model_name, k.output_name, k.name, sub, k.is_diff)] = \
                kv.value.double_value.value
    return res


# ------------------------------------------------------------------------------------------------
# numpy references
# ------------------------------------------------------------------------------------------------
def _brute_hit(scores, labels, k):
    """Mean over all orderings that sort by score descending (ties in every order)."""
    vals = []
    for perm in itertools.permutations(range(len(scores))):
        s = [scores[i] for i in perm]
        if all(s[i] >= s[i + 1] for i in range(len(s) - 1)):
            vals.append(sum(labels[i] > 0 for i in perm[:k]))
    return float(np.mean(vals))


def _groups(rows, surface=None, pf_present=None):
    by = {}
    for row in rows:
        if ((surface is None or row["surface"] == surface)
                and (pf_present is None or row["pf_present"] == pf_present)):
            by.setdefault(row["request_id"], []).append(row)
    return list(by.values())


def _np_hit(rows, head, k, surface=None, label_head=None, pf_present=None):
    lh = label_head or head
    return float(np.mean([_brute_hit([r[f"s_{head}"] for r in g], [r[label_key(lh)] for r in g],
                                     k) for g in _groups(rows, surface, pf_present)]))


def _np_auc(labels, scores):
    labels, scores = np.asarray(labels), np.asarray(scores)
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # midranks for ties
        ranks[scores == v] = ranks[scores == v].mean()
    pos = labels > 0
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _np_ndcg(rows, head, k):
    vals = []
    for g in _groups(rows):
        gains = np.array([r[label_key(head)] for r in g], float)
        if gains.max() <= 0:
            continue
        s = np.array([r[f"s_{head}"] for r in g])
        ranked = gains[np.argsort(-s, kind="stable")][:k]
        ideal = np.sort(gains)[::-1][:k]
        disc = 1 / np.log2(np.arange(2, len(ranked) + 2))
        vals.append((ranked * disc).sum() / (ideal * disc).sum())
    return float(np.mean(vals))


def _computations(cfg):
    from tensorflow_model_analysis.metrics import metric_specs
    return [c for c in metric_specs.to_computations(list(cfg.metrics_specs), cfg)
            if hasattr(c, "keys")]


# ------------------------------------------------------------------------------------------------
# Pure-python tests
# ------------------------------------------------------------------------------------------------
def test_query_hit_at_k_ties_and_edges():
    s, y = [0.9, 0.5, 0.5, 0.5, 0.1], [0, 1, 0, 0, 1]
    # top-3 = 0.9 plus 2 of the 3 tied 0.5s (one positive among them)
    assert query_hit_at_k(s, y, 3) == pytest.approx(2 / 3) == _brute_hit(s, y, 3)
    assert query_hit_at_k(s, y, 3, "pessimistic") == 0.0
    assert query_hit_at_k(s, y, 3, "optimistic") == 1.0
    assert query_hit_at_k(s, y, 10) == 2.0  # fewer candidates than k
    assert query_hit_at_k([0.2, 0.8], [1, 1], 1) == 1.0
    assert query_hit_at_k([], [], 3) == 0.0
    # order of arrival does not matter
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.permutation(5)
        assert query_hit_at_k(np.array(s)[p], np.array(y)[p], 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        query_hit_at_k([1.0], [1, 0], 3)


def test_hit_metric_config_roundtrip_and_requires_query_key():
    m = HitAtK(k=5)
    assert m.name == "hit@5"
    assert HitAtK.from_config(m.get_config()).get_config() == m.get_config()
    with pytest.raises(ValueError, match="query_key"):
        m.computations(output_names=["repin"])
    keys = [c.keys for c in m.computations(output_names=["repin", "hide"], query_key="q")]
    assert [(k[0].name, k[0].output_name, k[0].sub_key) for k in keys] == [
        ("hit@5", "repin", None), ("hit@5", "hide", None)]


def test_eval_config_shape_and_threshold_keys():
    cfg = ranker_eval_config(min_auc={"repin": 0.6, "hide": 0.55}, min_hit={"repin": 0.5},
                             max_auc_drop=0.01, max_hit_drop=0.02)
    (spec,) = cfg.model_specs
    assert spec.model_type == "tf_generic" and spec.signature_name == "serving_default"
    assert dict(spec.label_keys) == {h: f"label_{h}" for h in HEADS}
    assert [list(s.feature_keys) for s in cfg.slicing_specs] == [[], ["surface"]]
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(cfg.metrics_specs, cfg)
    got = {(k.name, k.output_name, k.is_diff) for k in thresholds}
    assert got == ({("auc", h, True) for h in HEADS}
                   | {("auc", "repin", False), ("auc", "hide", False),
                      ("hit@3", "repin", False), ("hit@3", "repin", True)})
    for key, lst in thresholds.items():  # all gated on the overall slice only
        assert [s for s, _ in lst] == [tfma.SlicingSpec()]
    # Threshold keys must equal the computed keys (example_weighted=False); MetricsSpec.thresholds
    # would build them with example_weighted=None -> "Metric not found" in TFMA 0.47.
    computed = {k for c in _computations(cfg) for k in c.keys}
    assert set(thresholds) - {k.make_diff_key() for k in computed} <= computed
    assert all(k.example_weighted is False for k in thresholds)
    with pytest.raises(ValueError, match="no thresholds"):
        ranker_eval_config(min_auc={}, min_hit={}, max_auc_drop=None, max_hit_drop=None)
    with pytest.raises(ValueError, match="unknown heads"):
        ranker_eval_config(min_auc={"like": 0.5}, min_hit={})


def _bounds(thresholds, name, head):
    """{slicing spec (text): lower bound} of one value threshold."""
    key = next(k for k in thresholds if (k.name, k.output_name, k.is_diff) == (name, head, False))
    return {" ".join(str(s).split()) or "overall": t.lower_bound.value
            for s, t in thresholds[key] if isinstance(t, tfma.GenericValueThreshold)}


def test_gate_slicing_specs():
    assert gate_slicing_specs(["overall", "surface", "pf_present=0"]) == [
        tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["surface"]),
        tfma.SlicingSpec(feature_values={"pf_present": "0"})]
    for bad in ("", "=1", "surface="):
        with pytest.raises(ValueError, match="expected 'overall', a feature name or"):
            gate_slicing_specs([bad])


def test_per_slice_thresholds_on_the_gated_slices():
    """Overall bounds on the overall slice, slice bounds on each surface and pf_present value,
    as TFMA reads them back (metric_thresholds_from_metrics_specs)."""
    cfg = ranker_eval_config(
        min_auc={"repin": 0.6, "hide": 0.55}, min_hit={"repin": 0.5},
        slice_min_auc={"repin": 0.52}, slice_min_hit={"repin": 0.3},
        max_auc_drop=None, max_hit_drop=None, slice_features=("surface", "pf_present"),
        gate_slices=gate_slicing_specs(["overall", "surface", "pf_present"]))
    assert [list(s.feature_keys) for s in cfg.slicing_specs] == [[], ["surface"], ["pf_present"]]
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(cfg.metrics_specs, cfg)
    surface, pf = 'feature_keys: "surface"', 'feature_keys: "pf_present"'
    assert _bounds(thresholds, "auc", "repin") == pytest.approx(
        {"overall": 0.6, surface: 0.52, pf: 0.52})
    assert _bounds(thresholds, "hit@3", "repin") == pytest.approx(
        {"overall": 0.5, surface: 0.3, pf: 0.3})
    assert _bounds(thresholds, "auc", "hide") == pytest.approx({"overall": 0.55})  # no slice bound
    # Slice bounds default to the overall ones.
    cfg = ranker_eval_config(min_auc={"repin": 0.6}, min_hit={}, max_auc_drop=None,
                             max_hit_drop=None, gate_slices=gate_slicing_specs(["surface"]))
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(cfg.metrics_specs, cfg)
    assert _bounds(thresholds, "auc", "repin") == pytest.approx({surface: 0.6})
    with pytest.raises(ValueError, match=r"\['pf_present'\] not in slice_features"):
        ranker_eval_config(min_auc={"repin": 0.6}, min_hit={},
                           gate_slices=gate_slicing_specs(["pf_present=1"]))
    with pytest.raises(ValueError, match="slice_min_auc: unknown heads"):
        ranker_eval_config(min_auc={"repin": 0.6}, min_hit={}, slice_min_auc={"like": 0.5})


def test_pipeline_eval_config_gates_overall_each_surface_and_pf_present():
    e = preset("cpu").ranker_eval
    cfg = pipeline_eval_config(e)
    assert [list(s.feature_keys) for s in cfg.slicing_specs] == [[], ["surface"], ["pf_present"]]
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(cfg.metrics_specs, cfg)
    assert not any(k.is_diff for k in thresholds)  # the change decision is RankerBaselineCheck's
    sliced = {"overall": None, 'feature_keys: "surface"': None, 'feature_keys: "pf_present"': None}
    for head, overall, other in (("repin", e.min_auc, e.slice_min_auc),
                                 ("closeup", e.min_auc, e.slice_min_auc),
                                 ("click", e.min_auc_other, e.slice_min_auc_other),
                                 ("hide", e.min_auc_other, e.slice_min_auc_other)):
        want = dict.fromkeys(sliced, other)
        want["overall"] = overall
        assert _bounds(thresholds, "auc", head) == pytest.approx(want), head
    want = dict.fromkeys(sliced, e.slice_min_hit_repin)
    want["overall"] = e.min_hit_repin
    assert _bounds(thresholds, "hit@3", "repin") == pytest.approx(want)
    # The section reaches it: one pf_present value only, and no surface slices.
    e = apply_overrides(preset("cpu"), ['ranker_eval.gate_slices=["overall", "pf_present=0"]',
                                        'ranker_eval.slice_features=["pf_present"]',
                                        "ranker_eval.slice_min_auc=0.51"]).ranker_eval
    cfg = pipeline_eval_config(e)
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(cfg.metrics_specs, cfg)
    assert [list(s.feature_keys) for s in cfg.slicing_specs] == [[], ["pf_present"]]
    assert _bounds(thresholds, "auc", "repin") == pytest.approx(
        {"overall": e.min_auc, 'feature_values { key: "pf_present" value: "0" }': 0.51})


# ------------------------------------------------------------------------------------------------
# End to end through TFMA
# ------------------------------------------------------------------------------------------------
def test_metrics_match_numpy_and_value_thresholds_pass(env):
    rows = env["rows"]
    cfg = ranker_eval_config(min_auc={h: 0.0 for h in HEADS}, min_hit={"repin": 0.1})
    out = _run(env, cfg, "pass")
    m = _metrics(out)
    overall = ()
    for h in HEADS:
        assert m[(overall, "", h, HIT, "", False)] == pytest.approx(_np_hit(rows, h, K)), h
        auc = _np_auc([r[label_key(h)] for r in rows], [r[f"s_{h}"] for r in rows])
        assert m[(overall, "", h, AUC_NAME, "", False)] == pytest.approx(auc, abs=1e-3), h
        if h != "closeup":  # closeup has a tie: TFMA's NDCG order inside ties is arbitrary
            assert m[(overall, "", h, "ndcg", "topK:3", False)] == pytest.approx(
                _np_ndcg(rows, h, K)), h
        for surface in SURFACES:
            assert m[((("surface", surface),), "", h, HIT, "", False)] == pytest.approx(
                _np_hit(rows, h, K, surface)), (h, surface)
    # closeup HIT@3 is fractional: the straddling tie is averaged.
    assert _np_hit(rows, "closeup", K) * 6 % 1 != 0
    # hides among the top 3 by repin score (informative, lower is better)
    assert m[(overall, "", "repin", hide_hit_name(K), "", False)] == pytest.approx(
        _np_hit(rows, "repin", K, label_head="hide"))
    assert m[(overall, "", "", "example_count", "", False)] == len(rows)
    vr = tfma.load_validation_result(out)
    assert vr.validation_ok, vr


def test_too_high_value_threshold_fails(env):
    cfg = ranker_eval_config(min_auc={"repin": 0.0}, min_hit={"repin": 2.9})
    vr = tfma.load_validation_result(_run(env, cfg, "fail"))
    assert not vr.validation_ok
    failed = {(f.metric_key.name, f.metric_key.output_name, f.message)
              for s in vr.metric_validations_per_slice for f in s.failures}
    assert failed == {(HIT, "repin", "")}, failed


def test_change_threshold_against_better_baseline_fails(env):
    """Candidate (s_ scores) vs. a near-oracle baseline: the value thresholds pass, the change
    thresholds on AUC and HIT@3/repin fail on their diff keys."""
    cfg = ranker_eval_config(("repin", "hide"), min_auc={"repin": 0.0}, min_hit={"repin": 0.0},
                             max_auc_drop=0.01, max_hit_drop=0.02, ndcg=False)
    out = _run(env, cfg, "change_bad", model="model", baseline="oracle")
    vr = tfma.load_validation_result(out)
    assert not vr.validation_ok
    failed = {(f.metric_key.name, f.metric_key.output_name, f.metric_key.is_diff)
              for s in vr.metric_validations_per_slice for f in s.failures}
    assert ("hit@3", "repin", True) in failed and ("auc", "repin", True) in failed
    assert all(is_diff for _, _, is_diff in failed), failed
    m = _metrics(out)
    hit_c = m[((), "candidate", "repin", HIT, "", False)]
    hit_b = m[((), "baseline", "repin", HIT, "", False)]
    assert hit_c == pytest.approx(_np_hit(env["rows"], "repin", K))
    assert m[((), "candidate", "repin", HIT, "", True)] == pytest.approx(hit_c - hit_b)
    # Swapped (the better model is the candidate): every threshold passes.
    vr = tfma.load_validation_result(_run(env, cfg, "change_good", model="oracle",
                                          baseline="model"))
    assert vr.validation_ok, vr


def test_each_gated_slice_must_pass_on_its_own(env):
    """HIT@3/repin per pf_present value from numpy; a slice bound between the two values fails
    exactly the weaker pf_present slice, with the overall and surface slices passing; a gated
    value the eval data lacks refuses as a missing slice."""
    rows = env["rows"]
    hit = {v: _np_hit(rows, "repin", K, pf_present=v) for v in (0, 1)}
    weak, strong = sorted(hit, key=hit.get)
    assert hit[weak] < hit[strong]
    bound = (hit[weak] + hit[strong]) / 2
    surfaces = [_np_hit(rows, "repin", K, surface=s) for s in SURFACES]
    cfg = ranker_eval_config(
        min_auc={"repin": 0.0}, min_hit={"repin": 0.0}, slice_min_auc={"repin": 0.0},
        slice_min_hit={"repin": min(bound, min(surfaces))}, max_auc_drop=None,
        max_hit_drop=None, slice_features=("surface", "pf_present"), ndcg=False,
        gate_slices=gate_slicing_specs(["overall", "surface"]))
    assert tfma.load_validation_result(_run(env, cfg, "slices_pass")).validation_ok
    cfg = ranker_eval_config(
        min_auc={"repin": 0.0}, min_hit={"repin": 0.0}, slice_min_auc={"repin": 0.0},
        slice_min_hit={"repin": bound}, max_auc_drop=None, max_hit_drop=None,
        slice_features=("surface", "pf_present"), ndcg=False,
        gate_slices=gate_slicing_specs(["overall", "pf_present"]))
    out = _run(env, cfg, "slices_fail")
    m = _metrics(out)
    for v in (0, 1):
        assert m[((("pf_present", v),), "", "repin", HIT, "", False)] == pytest.approx(hit[v])
    vr = tfma.load_validation_result(out)
    assert not vr.validation_ok
    failed = [(tuple((c.column, c.int64_value) for c in s.slice_key.single_slice_keys),
               f.metric_key.name, f.metric_value.double_value.value)
              for s in vr.metric_validations_per_slice for f in s.failures]
    assert failed == [((("pf_present", weak),), HIT, pytest.approx(hit[weak]))], failed
    # The run summary reports every slice and names the failed one.
    from pinrank.pipeline.runs import ranker_metrics
    summary = ranker_metrics(out)
    assert summary["validation_ok"] is False
    assert set(summary["slices"]) == {"surface=homefeed", "surface=search", "pf_present=0",
                                      "pf_present=1"}
    for v in (0, 1):
        assert summary["slices"][f"pf_present={v}"]["repin"][HIT] == pytest.approx(hit[v])
    assert summary["overall"]["repin"][HIT] == pytest.approx(_np_hit(rows, "repin", K))
    assert len(summary["failures"]) == 1
    assert summary["failures"][0].startswith(f"pf_present={weak} {HIT}/repin {hit[weak]:.4f} fails "
                                             f"value_threshold {{ lower_bound {{ value: ")
    cfg = ranker_eval_config(
        min_auc={"repin": 0.0}, min_hit={}, max_auc_drop=None, max_hit_drop=None,
        slice_features=("pf_present",), ndcg=False,
        gate_slices=gate_slicing_specs(["overall", "pf_present=7"]))
    vr = tfma.load_validation_result(_run(env, cfg, "slices_missing"))
    assert not vr.validation_ok and not vr.metric_validations_per_slice
    assert list(vr.missing_slices) == [tfma.SlicingSpec(feature_values={"pf_present": "7"})]
    assert ranker_metrics(str(env["dir"] / "slices_missing"))["failures"] == [
        "missing slice pf_present=7"]
