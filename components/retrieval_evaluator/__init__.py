"""Retrieval evaluation: offline metrics (recall, coverage, interest entropy) and the gate report."""
from pinrank.components.retrieval_evaluator.metrics import (
    p90_coverage,
    popularity_baseline_metrics,
    retrieval_metrics,
)
from pinrank.components.retrieval_evaluator.report import gate_decision, write_report

__all__ = ["gate_decision", "p90_coverage", "popularity_baseline_metrics", "retrieval_metrics",
           "write_report"]
