"""preprocessing_fn for PinnerFormer: keep the M most recent actions, newest first, fixed shape.

Raw sequences arrive chronological and ragged; the model wants row 0 = most recent action
(docs/models.md, "Inputs and per-action features") with padding at the old end, so we take the
last M, pad, then reverse each row within its length. Action and surface strings become
vocabulary indices with 0 reserved for padding and the last index for out-of-vocabulary values.
Time features (periodic encodings with learned phases) live in the model, since their phases are
trained.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from pinrank.pipeline import features as F
from pinrank.pipeline.config import config_values
from pinrank.transform.sequence import newest_first, oldest_first, vocab_index

# What this Transform reads from the config (pipeline.pipeline passes exactly these): M, the one
# value the Trainer also builds the model with, and F, the training positives kept per anchor.
CONFIG_PATHS = ("model.seq_len", "examples.max_future")


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Optional[Dict[str, Any]] = None):
    """custom_config: {"config_json": PipelineConfig.sections_json(*CONFIG_PATHS)} (no defaults)."""
    if not custom_config or "config_json" not in custom_config:
        raise ValueError("pinrank.transform.pinnerformer needs custom_config={'config_json': "
                         "cfg.sections_json(*CONFIG_PATHS)}")
    m, f = config_values(custom_config["config_json"], *CONFIG_PATHS)
    out = {}
    seqs = {
        F.HIST_ITEM: (inputs[F.HIST_ITEM], F.PAD_ITEM),
        F.HIST_ACTION: (vocab_index(inputs[F.HIST_ACTION], F.ACTION_VOCAB), F.PAD_INDEX),
        F.HIST_SURFACE: (vocab_index(inputs[F.HIST_SURFACE], F.SURFACE_VOCAB), F.PAD_INDEX),
        F.HIST_TS: (inputs[F.HIST_TS], 0),
        F.HIST_DURATION: (inputs[F.HIST_DURATION], 0.0),
        F.HIST_POS: (inputs[F.HIST_POS], 0),
    }
    for name, (rt, pad) in seqs.items():
        out[F.xf(name)], lengths = newest_first(rt, m, pad)
        if name == F.HIST_ITEM:  # from a serving input, so serving graphs keep it
            out[F.SEQ_LEN_XF] = lengths
    # Labels: serving graphs get no fut_* inputs and TFT prunes these outputs there.
    out[F.xf(F.FUT_ITEM)], out[F.FUT_LEN_XF] = oldest_first(inputs[F.FUT_ITEM], f, F.PAD_ITEM)
    out[F.xf(F.FUT_TS)], _ = oldest_first(inputs[F.FUT_TS], f, 0)
    return out
