"""HIT@k: a query-based (per request) TFMA 0.47 metric for the multi-head ranker.

Definition (docs/models.md, "Evaluation (HIT@3)"): within one request (query), rank the candidates
by the score of one model output (head) and count the candidates in the top k whose label for that
head is positive.
The metric value is the mean of that count over requests (weighted by the example weight when
``MetricsSpec.example_weights.weighted`` is set; the weight must be constant within a request).

* Requests with fewer than k candidates use all of them (top-min(k, n)).
* By default every request counts, including requests without any positive label for the head
  (they add 0): this is the paper's "averaged over requests". ``skip_queries_without_positives``
  averages over requests with at least one positive only, like TFMA's NDCG and MinLabelPosition.
  Absolute values depend on that choice; relative comparisons between models on the same data
  do not.
* Ties in the score are resolved without depending on the order in which Beam delivers a
  request's examples (that order is not deterministic on distributed runners):
    - ``"expected"`` (default): the expected HIT@k under a uniformly random order of the tied
      candidates. A tie group that straddles the cut-off at position k contributes
      positives_in_group * slots_left / group_size (so the value can be fractional).
    - ``"pessimistic"``: negatives are ranked before positives inside a tie group (a constant-score
      model gets the minimum possible value; useful for gating).
    - ``"optimistic"``: positives first inside a tie group.
* A label counts as positive when it is > 0 (labels are 0/1 int64 in the ranking examples).

Usage (needs ``MetricsSpec.query_key``; multi-output models need ``output_names=[head]`` and the
``ModelSpec.label_keys`` mapping head -> label feature):

    tfma.MetricsSpec(
        query_key="request_id", output_names=["repin"],
        metrics=[tfma.MetricConfig(class_name="HitAtK", module="pinrank.components.ranker_eval.hit_at_k",
                                   config='{"k": 3}')],
        thresholds={"hit@3": tfma.MetricThreshold(...)})

The metric key is ``MetricKey(name="hit@3", output_name="repin")`` (model_name "candidate" /
"baseline" when a baseline is configured). It deliberately carries **no** ``sub_key``: TFMA builds
threshold keys from the metric name plus the MetricsSpec's binarize sub_keys, so a metric that
invented its own ``top_k`` sub_key could not be gated on ("Metric not found").
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2
from tensorflow_model_analysis.utils import util

HIT_AT_K_NAME_FORMAT = "hit@{k}"
TIE_BREAKING = ("expected", "pessimistic", "optimistic")


def hit_at_k_name(k: int) -> str:
    return HIT_AT_K_NAME_FORMAT.format(k=int(k))


def query_hit_at_k(scores, labels, k: int, tie_breaking: str = "expected") -> float:
    """HIT@k of one request: positives among the top-k candidates ranked by ``scores``.

    Pure numpy; the TFMA combiner and the tests share this definition of ties.
    """
    if tie_breaking not in TIE_BREAKING:
        raise ValueError(f"tie_breaking must be one of {TIE_BREAKING}, got {tie_breaking!r}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = (np.asarray(labels, dtype=np.float64).reshape(-1) > 0)
    if scores.size != positive.size:
        raise ValueError(f"scores and labels differ in size: {scores.size} != {positive.size}")
    if k <= 0 or scores.size == 0:
        return 0.0
    # Tie groups in descending score order (np.unique sorts ascending).
    unique_scores, group = np.unique(-scores, return_inverse=True)
    del unique_scores
    group_size = np.bincount(group)
    group_pos = np.bincount(group, weights=positive.astype(np.float64), minlength=group_size.size)
    hits = 0.0
    slots = int(k)
    for size, pos in zip(group_size, group_pos):
        if slots <= 0:
            break
        if size <= slots:
            hits += pos
        elif tie_breaking == "expected":
            hits += pos * slots / size
        elif tie_breaking == "pessimistic":
            hits += max(0.0, slots - (size - pos))
        else:  # optimistic
            hits += min(pos, slots)
        slots -= size
    return float(hits)


class HitAtK(metric_types.Metric):
    """HIT@k per query (request), averaged over queries. See the module docstring."""

    def __init__(self, k: int = 3, name: Optional[str] = None, label_key: Optional[str] = None,
                 tie_breaking: str = "expected", skip_queries_without_positives: bool = False):
        """Args:
          k: cut-off (number of top-ranked candidates considered).
          name: metric name; defaults to ``hit@<k>``.
          label_key: optional *feature* key to read the labels from instead of the model's
            labels (like MinLabelPosition's label_key).
          tie_breaking: "expected" (default), "pessimistic" or "optimistic".
          skip_queries_without_positives: average only over requests with a positive label.
        """
        if int(k) <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if tie_breaking not in TIE_BREAKING:
            raise ValueError(f"tie_breaking must be one of {TIE_BREAKING}, got {tie_breaking!r}")
        super().__init__(_hit_at_k, k=int(k), name=name or hit_at_k_name(k), label_key=label_key,
                         tie_breaking=tie_breaking,
                         skip_queries_without_positives=bool(skip_queries_without_positives))


metric_types.register_metric(HitAtK)


def _hit_at_k(k: int, name: str, label_key: Optional[str] = None, tie_breaking: str = "expected",
              skip_queries_without_positives: bool = False,
              eval_config: Optional[config_pb2.EvalConfig] = None,
              model_names: Optional[List[str]] = None,
              output_names: Optional[List[str]] = None,
              example_weighted: bool = False,
              query_key: str = "") -> metric_types.MetricComputations:
    """Returns one computation per (model, output)."""
    if not query_key:
        raise ValueError("a query_key is required to use the HitAtK metric "
                         "(set MetricsSpec.query_key, e.g. 'request_id')")
    preprocessors = None
    if label_key:
        preprocessors = [metric_types.FeaturePreprocessor(feature_keys=[label_key])]
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(name=name, model_name=model_name,
                                         output_name=output_name,
                                         example_weighted=example_weighted)
            computations.append(metric_types.MetricComputation(
                keys=[key], preprocessors=preprocessors,
                combiner=_HitAtKCombiner(key, eval_config, example_weighted, k, label_key,
                                         tie_breaking, skip_queries_without_positives)))
    return computations


class _HitAtKAccumulator:
    __slots__ = ["total_hits", "total_weighted_queries"]

    def __init__(self):
        self.total_hits = 0.0
        self.total_weighted_queries = 0.0


class _HitAtKCombiner(beam.CombineFn):
    """Each input element holds all examples of one query (TFMA groups by query_key first)."""

    def __init__(self, key: metric_types.MetricKey, eval_config: Optional[config_pb2.EvalConfig],
                 example_weighted: bool, k: int, label_key: Optional[str], tie_breaking: str,
                 skip_queries_without_positives: bool):
        self._key = key
        self._eval_config = eval_config
        self._example_weighted = example_weighted
        self._k = k
        self._label_key = label_key
        self._tie_breaking = tie_breaking
        self._skip_empty = skip_queries_without_positives

    def create_accumulator(self) -> _HitAtKAccumulator:
        return _HitAtKAccumulator()

    def add_input(self, accumulator: _HitAtKAccumulator,
                  element: metric_types.StandardMetricInputs) -> _HitAtKAccumulator:
        labels, predictions, example_weight = next(
            metric_util.to_label_prediction_example_weight(
                element,
                eval_config=self._eval_config,
                model_name=self._key.model_name,
                output_name=self._key.output_name,
                example_weighted=self._example_weighted,
                flatten=False,
                allow_none=True,
                require_single_example_weight=True))  # pytype: disable=wrong-arg-types
        if self._label_key:
            labels = util.get_by_keys(element.features, [self._label_key])
        if labels is None or predictions is None:
            return accumulator
        labels = np.asarray(labels).reshape(-1)
        predictions = np.asarray(predictions).reshape(-1)
        if labels.size != predictions.size:
            raise ValueError(
                f"{self._key}: expected one label per prediction within a query, got "
                f"{labels.size} labels and {predictions.size} predictions (is the output a "
                "per-candidate scalar and the label a single value per example?)")
        if self._skip_empty and not np.any(labels > 0):
            return accumulator
        weight = float(example_weight)
        accumulator.total_hits += weight * query_hit_at_k(predictions, labels, self._k,
                                                          self._tie_breaking)
        accumulator.total_weighted_queries += weight
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_HitAtKAccumulator]
                           ) -> _HitAtKAccumulator:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for acc in accumulators:
            result.total_hits += acc.total_hits
            result.total_weighted_queries += acc.total_weighted_queries
        return result

    def extract_output(self, accumulator: _HitAtKAccumulator
                       ) -> Dict[metric_types.MetricKey, float]:
        if accumulator.total_weighted_queries > 0:
            value = accumulator.total_hits / accumulator.total_weighted_queries
        else:
            value = float("nan")
        return {self._key: value}
