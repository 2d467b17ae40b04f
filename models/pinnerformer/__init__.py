"""PinnerFormer (Pancha et al., KDD '22) in tf_keras: user tower, pin tower, objectives, loss."""
from .layers import ActionFeatures, ItemTower, OutputHead, TransformerBlock, attention_mask
from .losses import (
    Negatives,
    assemble_negatives,
    in_batch_log_q,
    per_user_mean,
    sampled_softmax_loss,
    user_positive_mask,
)
from .model import PinnerFormer
from .objectives import (
    Timeline,
    all_action_pairs,
    candidates,
    dense_all_action_pairs,
    make_pairs,
    next_action_pairs,
    sasrec_pairs,
    timeline_from_features,
)
from .sketch import CountMinSketch
from .time_encoding import PeriodicTimeEncoding, abs_periods, rel_periods

__all__ = [
    "ActionFeatures", "ItemTower", "OutputHead", "TransformerBlock", "attention_mask",
    "Negatives", "assemble_negatives", "in_batch_log_q", "per_user_mean", "sampled_softmax_loss",
    "user_positive_mask", "PinnerFormer", "Timeline", "all_action_pairs", "candidates",
    "dense_all_action_pairs", "make_pairs", "next_action_pairs", "sasrec_pairs",
    "timeline_from_features", "CountMinSketch", "PeriodicTimeEncoding", "abs_periods", "rel_periods",
]
