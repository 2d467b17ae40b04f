"""preprocessing_fn for the realtime ranker: the P most recent actions before the request
(newest first; docs/models.md, "Realtime sequence and early fusion"), request context, candidate
and labels.

The realtime sequence uses the same vocabularies as PinnerFormer's (action 0 = padding, never a
real action, which fixes the official TransAct code's id collision; docs/models.md, "Deviations").
Hour of day and day of week are request-context features.
"""
from typing import Any, Dict, Optional

import tensorflow as tf

from pinrank.pipeline import features as F
from pinrank.pipeline.config import config_values
from pinrank.transform.sequence import newest_first, vocab_index

# What this Transform reads from the config (pipeline.pipeline passes exactly these): P, the one
# value the Trainer also builds the model with, and the PinnerFormer embedding width.
CONFIG_PATHS = ("ranker.realtime.seq_len", "model.output_dim")


def _scalar(x):
    """[B, 1] dense -> [B]."""
    return tf.reshape(x, [-1])


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Optional[Dict[str, Any]] = None):
    """custom_config: {"config_json": PipelineConfig.sections_json(*CONFIG_PATHS)} (no defaults)."""
    if not custom_config or "config_json" not in custom_config:
        raise ValueError("pinrank.transform.ranker needs custom_config={'config_json': "
                         "cfg.sections_json(*CONFIG_PATHS)}")
    p, pf_dim = config_values(custom_config["config_json"], *CONFIG_PATHS)
    out = {}
    seqs = {
        F.HIST_ITEM: (inputs[F.HIST_ITEM], F.PAD_ITEM),
        F.HIST_ACTION: (vocab_index(inputs[F.HIST_ACTION], F.ACTION_VOCAB), F.PAD_INDEX),
        F.HIST_TS: (inputs[F.HIST_TS], 0),
    }
    for name, (rt, pad) in seqs.items():
        out[F.xf(name)], lengths = newest_first(rt, p, pad)
        if name == F.HIST_ITEM:
            out[F.SEQ_LEN_XF] = lengths
    ts = _scalar(inputs[F.REQUEST_TS])
    out[F.xf(F.REQUEST_TS)] = ts
    out["hour_xf"] = (ts % 86400) // 3600
    out["dow_xf"] = (ts // 86400 + 4) % 7  # 1970-01-01 was a Thursday
    surface = vocab_index(tf.RaggedTensor.from_tensor(inputs[F.SURFACE]), F.SURFACE_VOCAB)
    out[F.xf(F.SURFACE)] = _scalar(surface.to_tensor(shape=[None, 1]))
    out[F.xf(F.CAND_ITEM)] = _scalar(inputs[F.CAND_ITEM])
    out[F.xf(F.PF_EMBEDDING)] = inputs[F.PF_EMBEDDING].to_tensor(0.0, shape=[None, pf_dim])
    out[F.xf(F.PF_PRESENT)] = _scalar(inputs[F.PF_PRESENT])
    for head in F.HEADS:  # labels; absent at serving, where TFT prunes these outputs
        out[F.label_key(head)] = _scalar(inputs[F.label_key(head)])
    return out
