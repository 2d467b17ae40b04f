"""TFMA 0.47 EvalConfig for the multi-head ranker (Evaluator blessing; docs/tfx-notes.md,
"Evaluator blessing and LatestBlessedModelStrategy").

Model contract: ``serving_default`` takes serialized raw tf.Examples (``examples`` string [B]) and
returns one probability per head, ``{"repin": [B], "click": [B], "closeup": [B], "hide": [B]}``.
Eval data: one tf.Example per (request, candidate) with ``request_id`` (query key), ``surface`` and
``label_<head>`` (pipeline/features.py).

Metrics (keys as TFMA writes them; with a baseline every key also exists with
``model_name="baseline"`` and the candidate keys carry ``model_name="candidate"``; change
thresholds are checked on the diff key, i.e. ``is_diff=True``):

  per head h (one MetricsSpec each, ``output_names=[h]``):
    ``auc``            MetricKey(name="auc", output_name=h)
    ``hit@<k>``        MetricKey(name="hit@3", output_name=h)   custom HitAtK, query_key=request_id
    ``ndcg``           MetricKey(name="ndcg", output_name=h, sub_key=SubKey(top_k=k))
                       ("topK:3"); gain = label_<h>; query_key=request_id
  overall:
    ``example_count``  MetricKey(name="example_count")
  informative (no threshold), when "hide" is a head and gate_head != "hide":
    ``hide_hit@<k>``   MetricKey(name="hide_hit@3", output_name=gate_head): hides among the top k
                       when the request is ranked by the gate head's score (lower is better; this
                       is the paper's HIT@3/hide reading; docs/models.md, "Evaluation (HIT@3)").

Direction: every per-head metric above ranks by *that head's own* score, so higher is better for
all heads, including ``hide`` (its AUC/HIT@k measure how well it classifies hides). Only the
informative ``hide_hit@k`` (ranked by the gate head) is lower-is-better.

Thresholds (``MetricConfig.per_slice_thresholds``, restricted to ``gate_slices``, by default the
overall slice only; an unsliced threshold would gate *every* slice, e.g. each surface):
  * value (lower bound): ``auc`` for the heads in ``min_auc``, ``hit@k`` for the heads in
    ``min_hit`` on the overall slice; on every other gated slice ``slice_min_auc`` /
    ``slice_min_hit`` (default: the same bounds);
  * change vs. baseline (HIGHER_IS_BETTER, ``absolute = -max_drop``): ``auc`` for every head in
    ``max_auc_drop`` (a float means all heads), ``hit@k`` for ``gate_head`` (a float) or for the
    heads of a dict in ``max_hit_drop``. Change thresholds are ignored on the first run (the
    Evaluator rubber-stamps when no baseline is resolved).

Why these shapes (TFMA 0.47):
  * Thresholds sit on the ``MetricConfig`` (``threshold`` / ``per_slice_thresholds``), not on
    ``MetricsSpec.thresholds`` / ``MetricsSpec.per_slice_thresholds``. The MetricsSpec maps are
    meant for in-graph (Keras/estimator) metrics: their keys are built with
    ``example_weighted=None`` while post-export metrics (AUC, NDCG, HitAtK, ...) are computed
    under ``example_weighted=False``; ``MetricKey`` equality is a plain tuple comparison, so
    every such threshold fails with "Metric not found" (verified with run_model_analysis).
  * NDCG needs a top_k; it is given through ``MetricsSpec.binarize.top_k_list`` (not through the
    metric's ``top_k_list`` config) so that a threshold on ``ndcg`` would resolve to the same
    ``topK:k`` key ("Metric not found" otherwise). That spec is separate because binarize applies
    to every metric of the spec. NDCG per output works: ``gain_key`` is a *feature* (label_<h>)
    and the ranking uses the prediction of the spec's output name.
  * HIT@k carries no sub_key for the same reason (see hit_at_k.py).
  * The query specs group examples by ``request_id``; slicing then uses the union of the
    request's slice keys, so a slice feature must be constant within a request: ``surface`` (the
    request's surface) and ``pf_present`` (whether the user had a PinnerFormer embedding as of
    the request's day) are; both are raw features of the eval examples, so no
    preprocessing_function_names are needed.

Per-slice gating (TFMA 0.47 semantics, evaluators/metrics_validator.py):
  * A ``SlicingSpec(feature_keys=[f])`` in ``per_slice_thresholds`` applies to *each* slice of
    ``f`` separately (every surface, every pf_present value): each one must pass on its own.
    ``SlicingSpec(feature_values={f: v})`` applies to that one slice; ``SlicingSpec()`` to the
    overall slice only. (``gate_slicing_specs`` builds them from "overall" / "f" / "f=v".)
  * A gated SlicingSpec that matches no computed slice (a value absent from the eval data, or a
    feature not in ``slice_features``) makes the whole validation fail ("missing_slices"), so
    a ``feature_values`` gate on a value the eval split lacks refuses every model.
  * A threshold whose metric a slice lacks fails as "Metric not found"; a NaN metric fails its
    lower bound. AUC of a slice without positives is 0 in TFMA (not NaN), so such a slice fails
    any lower bound above 0.
  * Each PerSliceMetricThreshold is checked independently, so the overall slice and the other
    gated slices can carry different bounds (two entries on one MetricConfig).
"""
from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence, Union

import tensorflow_model_analysis as tfma

from pinrank.components.ranker_eval.hit_at_k import hit_at_k_name
from pinrank.pipeline.config import RankerEvalConfig
from pinrank.pipeline.features import HEADS, REQUEST_ID, SURFACE, label_key

AUC_NAME = "auc"
NDCG_NAME = "ndcg"
EXAMPLE_COUNT_NAME = "example_count"
HIT_AT_K_MODULE = "pinrank.components.ranker_eval.hit_at_k"
HIDE_HEAD = "hide"
OVERALL = "overall"

Drop = Union[None, float, Mapping[str, float]]


def hide_hit_name(k: int) -> str:
    return f"{HIDE_HEAD}_{hit_at_k_name(k)}"


def _drops(drop: Drop, heads: Sequence[str], default_heads: Sequence[str], what: str
           ) -> dict:
    if drop is None:
        return {}
    if isinstance(drop, Mapping):
        out = {h: float(v) for h, v in drop.items()}
    else:
        out = {h: float(drop) for h in default_heads}
    for h, v in out.items():
        if h not in heads:
            raise ValueError(f"{what}: unknown head {h!r} (heads={list(heads)})")
        if v < 0:
            raise ValueError(f"{what}: a drop must be >= 0, got {v} for {h!r}")
    return out


def _threshold(lower: Optional[float], drop: Optional[float]) -> Optional[tfma.MetricThreshold]:
    if lower is None and drop is None:
        return None
    t = tfma.MetricThreshold()
    if lower is not None:
        t.value_threshold.lower_bound.value = float(lower)
    if drop is not None:
        t.change_threshold.direction = tfma.MetricDirection.HIGHER_IS_BETTER
        t.change_threshold.absolute.value = -float(drop)
    return t


def gate_slicing_specs(entries: Sequence[str]) -> list:
    """["overall", "surface", "pf_present=0"] -> SlicingSpecs: the overall slice, each value of
    a feature (one slice per value, gated separately), or one feature value."""
    specs = []
    for entry in entries:
        name, sep, value = entry.partition("=")
        if entry == OVERALL:
            specs.append(tfma.SlicingSpec())
        elif not name or (sep and not value):
            raise ValueError(f"gate slice {entry!r}: expected {OVERALL!r}, a feature name or "
                             f"feature=value")
        elif sep:
            specs.append(tfma.SlicingSpec(feature_values={name: value}))
        else:
            specs.append(tfma.SlicingSpec(feature_keys=[name]))
    return specs


def _per_slice_thresholds(overall: Optional[tfma.MetricThreshold],
                          other: Optional[tfma.MetricThreshold],
                          gate_slices: Sequence[tfma.SlicingSpec]) -> list:
    """The overall gated slice gets `overall`, every other gated slice `other`."""
    out = []
    for threshold, specs in ((overall, [s for s in gate_slices if s == tfma.SlicingSpec()]),
                             (other, [s for s in gate_slices if s != tfma.SlicingSpec()])):
        if threshold is not None and specs:
            out.append(tfma.PerSliceMetricThreshold(slicing_specs=specs, threshold=threshold))
    return out


def ranker_eval_config(
    heads: Sequence[str] = HEADS,
    *,
    k: int = 3,
    min_auc: Mapping[str, float],
    min_hit: Mapping[str, float],
    gate_head: str = "repin",
    max_auc_drop: Drop = 0.01,
    max_hit_drop: Drop = 0.02,
    query_key: str = REQUEST_ID,
    slice_features: Sequence[str] = (SURFACE,),
    gate_slices: Sequence[tfma.SlicingSpec] = (tfma.SlicingSpec(),),
    slice_min_auc: Optional[Mapping[str, float]] = None,
    slice_min_hit: Optional[Mapping[str, float]] = None,
    signature_name: str = "serving_default",
    prediction_keys: Optional[Mapping[str, str]] = None,
    preprocessing_function_names: Sequence[str] = (),
    ndcg: bool = True,
) -> tfma.EvalConfig:
    """EvalConfig for the Evaluator (single, unnamed candidate ModelSpec).

    Args:
      heads: model outputs / label suffixes (``label_<head>``).
      k: cut-off of HIT@k and NDCG@k.
      min_auc: head -> lower bound on AUC (heads not listed get no value threshold).
      min_hit: head -> lower bound on HIT@k (mean positives in the top k per request).
      gate_head: head whose HIT@k gets the change threshold when ``max_hit_drop`` is a float;
        also the ranking used by the informative ``hide_hit@k``.
      max_auc_drop: allowed absolute AUC drop vs. the baseline; float = every head, dict = per
        head, None = no AUC change threshold.
      max_hit_drop: allowed absolute HIT@k drop vs. the baseline; float = gate_head only, dict =
        per head, None = none.
      query_key: request id feature.
      slice_features: one extra slice per feature (besides overall).
      gate_slices: slices the thresholds apply to (default: overall only; see
        gate_slicing_specs). Every gated slice other than the overall one must be computed, i.e.
        its feature must be in slice_features.
      slice_min_auc / slice_min_hit: head -> lower bound on the gated slices other than the
        overall one (None: min_auc / min_hit). Change thresholds apply to every gated slice.
      signature_name: serving signature (serialized tf.Examples in, per-head dict out).
      prediction_keys: optional head -> output key of the signature when they differ.
      preprocessing_function_names: e.g. ["transform_features"] if slicing needs transformed
        features (not needed for ``surface``, a raw feature).
      ndcg: also compute NDCG@k per head (informative).

    The Evaluator adds the baseline ModelSpec itself (``update_eval_config_with_defaults(...,
    has_baseline=True)`` copies this spec as "baseline" and renames this one "candidate").
    Raises ValueError if the result would have no threshold at all: the Evaluator then writes
    no ``blessed`` property and the Pusher never pushes (docs/tfx-notes.md,
    "Evaluator blessing and LatestBlessedModelStrategy").
    """
    heads = tuple(heads)
    if not heads:
        raise ValueError("heads must not be empty")
    if gate_head not in heads:
        raise ValueError(f"gate_head {gate_head!r} not in heads {heads}")
    if int(k) <= 0:
        raise ValueError(f"k must be positive, got {k}")
    slice_min_auc = min_auc if slice_min_auc is None else slice_min_auc
    slice_min_hit = min_hit if slice_min_hit is None else slice_min_hit
    for spec in gate_slices:
        missing = (set(spec.feature_keys) | set(spec.feature_values)) - set(slice_features)
        if missing:
            raise ValueError(f"gate_slices: {sorted(missing)} not in slice_features "
                             f"{list(slice_features)} (TFMA would report the slice missing and "
                             f"refuse every model)")
    for what, d in (("min_auc", min_auc), ("min_hit", min_hit), ("slice_min_auc", slice_min_auc),
                    ("slice_min_hit", slice_min_hit)):
        unknown = set(d) - set(heads)
        if unknown:
            raise ValueError(f"{what}: unknown heads {sorted(unknown)} (heads={list(heads)})")
    if prediction_keys:
        unknown = set(prediction_keys) - set(heads)
        if unknown:
            raise ValueError(f"prediction_keys: unknown heads {sorted(unknown)}")
    auc_drops = _drops(max_auc_drop, heads, heads, "max_auc_drop")
    hit_drops = _drops(max_hit_drop, heads, (gate_head,), "max_hit_drop")
    hit_config = json.dumps({"k": int(k)})

    model_spec = tfma.ModelSpec(
        signature_name=signature_name,
        label_keys={h: label_key(h) for h in heads},
        model_type="tf_generic",
        preprocessing_function_names=list(preprocessing_function_names))
    if prediction_keys:
        model_spec.prediction_keys.update(dict(prediction_keys))

    specs = [tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="ExampleCount")])]
    n_thresholds = 0
    for h in heads:
        auc = tfma.MetricConfig(class_name="AUC")
        per_slice = _per_slice_thresholds(_threshold(min_auc.get(h), auc_drops.get(h)),
                                          _threshold(slice_min_auc.get(h), auc_drops.get(h)),
                                          gate_slices)
        auc.per_slice_thresholds.extend(per_slice)
        n_thresholds += len(per_slice)
        specs.append(tfma.MetricsSpec(output_names=[h], metrics=[auc]))

        hit = tfma.MetricConfig(class_name="HitAtK", module=HIT_AT_K_MODULE, config=hit_config)
        per_slice = _per_slice_thresholds(_threshold(min_hit.get(h), hit_drops.get(h)),
                                          _threshold(slice_min_hit.get(h), hit_drops.get(h)),
                                          gate_slices)
        hit.per_slice_thresholds.extend(per_slice)
        n_thresholds += len(per_slice)
        hit_metrics = [hit]
        if h == gate_head and HIDE_HEAD in heads and gate_head != HIDE_HEAD:
            hit_metrics.append(tfma.MetricConfig(
                class_name="HitAtK", module=HIT_AT_K_MODULE,
                config=json.dumps({"k": int(k), "name": hide_hit_name(k),
                                   "label_key": label_key(HIDE_HEAD)})))
        specs.append(tfma.MetricsSpec(output_names=[h], query_key=query_key,
                                      metrics=hit_metrics))

        if ndcg:
            specs.append(tfma.MetricsSpec(
                output_names=[h], query_key=query_key,
                binarize=tfma.BinarizationOptions(top_k_list={"values": [int(k)]}),
                metrics=[tfma.MetricConfig(class_name="NDCG",
                                           config=json.dumps({"gain_key": label_key(h)}))]))
    if n_thresholds == 0:
        raise ValueError("no thresholds configured: the Evaluator would not bless any model")

    return tfma.EvalConfig(
        model_specs=[model_spec],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[f])
                                             for f in slice_features],
        metrics_specs=specs)


def pipeline_eval_config(e: RankerEvalConfig, heads: Sequence[str] = HEADS) -> tfma.EvalConfig:
    """The pipeline's ranker EvalConfig from its `ranker_eval` section (pipeline.config
    RankerEvalConfig): AUC lower bounds (min_auc on repin and closeup, min_auc_other on click
    and hide; slice_* on the gated slices other than the overall one), HIT@k/repin, every
    metric per slice_features, thresholds on gate_slices. No change thresholds: the change
    decision is RankerBaselineCheck's paired test (point diffs are noise)."""
    def auc(strong: float, other: float) -> dict:
        return {h: strong if h in ("repin", "closeup") else other for h in heads}
    return ranker_eval_config(
        heads, k=e.hit_k, min_auc=auc(e.min_auc, e.min_auc_other),
        min_hit={"repin": e.min_hit_repin}, max_auc_drop=None, max_hit_drop=None,
        slice_features=e.slice_features, gate_slices=gate_slicing_specs(e.gate_slices),
        slice_min_auc=auc(e.slice_min_auc, e.slice_min_auc_other),
        slice_min_hit={"repin": e.slice_min_hit_repin})
