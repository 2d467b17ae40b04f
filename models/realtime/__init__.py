"""Realtime ranking (TransAct, Xia et al. KDD '23, inside a Pinnability-style DCNv2 ranker) in tf_keras."""
from .config import (
    DEFAULT_HEADS,
    FUSIONS,
    PRESETS,
    RankerConfig,
    RealtimeConfig,
    cpu,
    default_label_weights,
    paper,
    preset,
    tiny,
)
from .dcn import CrossLayer, CrossNetwork
from .losses import head_weights, weighted_bce, weighted_bce_from_logits
from .metrics import auc, hit_at_k
from .ranker import (
    CANDIDATE_EMB,
    PF_CANDIDATE_EMB,
    PINNERFORMER_EMB,
    REQUEST_TS,
    RT_ACTION_TS,
    RT_ACTION_TYPE,
    RT_ITEM_EMB,
    Ranker,
    candidate_feature_keys,
    make_optimizer,
    user_feature_keys,
)
from .transact import EncoderBlock, TransAct

__all__ = [
    "FUSIONS", "DEFAULT_HEADS", "PRESETS", "RankerConfig", "RealtimeConfig", "cpu", "default_label_weights",
    "paper", "preset", "tiny", "CrossLayer", "CrossNetwork", "head_weights", "weighted_bce",
    "weighted_bce_from_logits", "auc", "hit_at_k", "CANDIDATE_EMB", "PF_CANDIDATE_EMB",
    "PINNERFORMER_EMB", "REQUEST_TS",
    "RT_ACTION_TS", "RT_ACTION_TYPE", "RT_ITEM_EMB", "Ranker", "candidate_feature_keys",
    "make_optimizer", "user_feature_keys", "EncoderBlock", "TransAct",
]
