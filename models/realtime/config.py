"""Configuration of the realtime (TransAct) module and the Pinnability-style ranker
(docs/models.md, "TransAct ranker").

The classes live in `pipeline/config.py`, as the `ranker` section of the one TF-free config tree
(one from_dict / override / JSON machinery for every section; `from_dict(to_dict(c)) == c`, tuples
included). This module keeps the ranker's names for models/realtime and its tests.

Presets (functions): `tiny()` (unit tests), `cpu()` (2-core demo, dims matching the `cpu` pipeline preset),
`paper()` (TransAct paper scale: |S| = 100, d = 32 + 2*32 = 96, K = 10, W = 24 h, peak LR 0.0048).
"""
from pinrank.pipeline.config import (  # noqa: F401
    DAY_S,
    DEFAULT_HEADS,
    FUSIONS,
    HIDE_WEIGHT,
    RankerConfig,
    RealtimeConfig,
    default_label_weights,
)
from pinrank.pipeline.config import RANKER_PRESETS as PRESETS  # noqa: F401
from pinrank.pipeline.config import ranker_cpu as cpu  # noqa: F401
from pinrank.pipeline.config import ranker_paper as paper  # noqa: F401
from pinrank.pipeline.config import ranker_preset as preset  # noqa: F401
from pinrank.pipeline.config import ranker_tiny as tiny  # noqa: F401
