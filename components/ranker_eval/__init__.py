"""Ranker evaluation for the TFX Evaluator (TFMA 0.47): HIT@k metric and the EvalConfig."""
from pinrank.components.ranker_eval.eval_config import (
    AUC_NAME,
    EXAMPLE_COUNT_NAME,
    NDCG_NAME,
    OVERALL,
    gate_slicing_specs,
    hide_hit_name,
    ranker_eval_config,
)
from pinrank.components.ranker_eval.hit_at_k import HitAtK, hit_at_k_name, query_hit_at_k

__all__ = ["AUC_NAME", "EXAMPLE_COUNT_NAME", "HitAtK", "NDCG_NAME", "OVERALL",
           "gate_slicing_specs", "hide_hit_name", "hit_at_k_name", "query_hit_at_k", "ranker_eval_config"]
