"""Configuration: frozen dataclasses with presets `tiny` (tests), `cpu` (demo), `paper` (GPU).

Configs travel to executors as JSON (exec properties / Trainer custom_config), so every field is a
plain JSON value and `from_dict(to_dict(c)) == c`.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

from models.realtime import config as realtime_config
from models.realtime.config import RankerConfig

OBJECTIVES = ("next_action", "sasrec", "all_action", "dense_all_action")
DAY_S = 86400


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where events come from. source: synthetic | movielens | path (MovieLens-format csv dir)."""
    source: str = "movielens"
    path: str = ""  # for source=path: directory with ratings.csv + movies.csv
    cache_dir: str = ""  # MovieLens download cache; default ~/.cache/pinrank
    # Synthetic world size (source=synthetic).
    num_users: int = 2000
    num_items: int = 5000
    num_interests: int = 40
    events_per_user: int = 120
    content_dim: int = 32
    seed: int = 0
    # Synthetic temporal dynamics (see components/data/synthetic.py). false: the static
    # WORLD_VERSION 1 world (120 days, fixed popularity and interests; knobs below ignored).
    temporal_dynamics: bool = True
    horizon_days: int = 730
    release_fraction_at_start: float = 0.2  # the rest is released in weekly waves
    popularity_half_life_days: float = 60.0  # median; popularity rises over days, then decays
    evergreen_fraction: float = 0.05  # items decaying 10x slower
    user_active_days: float = 90.0  # median length of a user's active period
    interest_drift_per_session: float = 0.05  # P(one interest's weight moves to another)
    # Items whose release year / genres fall back to "unknown" (counted in DATASET.json): a share
    # above this, per feature, stops the run, since the model would silently train without it.
    max_fallback_share: float = 0.5
    allow_fallbacks: bool = False  # True: only count fallbacks, never stop

    def __post_init__(self):
        if not 0.0 <= self.max_fallback_share <= 1.0:
            raise ValueError(f"data.max_fallback_share must be in [0, 1], "
                             f"got {self.max_fallback_share}")


@dataclasses.dataclass(frozen=True)
class ExampleGenConfig:
    """Turning events into per-user anchor examples (docs/protocol.md, "Examples (EventExampleGen)")."""
    eval_user_percent: int = 20  # stable hash of user_id -> eval split
    train_window_days: int = 28  # training label window (dense all action K)
    eval_window_days: int = 14  # evaluation label window
    max_history: int = 512  # actions kept per example before Transform truncates to M (counted)
    max_future: int = 64  # training positives kept per anchor (counted)
    max_eval_future: int = 1000  # evaluation positives kept per anchor (counted)
    anchors_per_user: int = 4  # training anchors sampled per training user
    min_history: int = 1
    full_train_window: bool = False  # True: training anchors need t + window <= data end
    drop_invalid_events: bool = False  # False: bad rows fail the run; True: drop and count
    # Who is evaluated. "test": the held-out users (bucket < eval_user_percent). "validation":
    # the test users are left out entirely and `validation_user_percent` of the *training* users
    # are evaluated instead, so hyper-parameters are chosen without ever seeing a test user.
    eval_users: str = "test"
    validation_user_percent: int = 20
    # Training users held out as the Trainer's validation split (its val_loss drives early
    # stopping), so no stopping decision ever looks at the evaluated users.
    valid_user_percent: int = 10
    eval_anchors_per_user: int = 1  # > 1: several anchors per eval user (intervals over users)
    # Out-of-time protocol: > 0 puts every eval anchor at or after the cut
    # data_start + q * (data_end - data_start), and cuts training timelines (history, labels and
    # the baselines' counts) at that time, so training never sees the eval period.
    eval_after_time_quantile: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.eval_users not in ("test", "validation"):
            raise ValueError(f"examples.eval_users must be 'test' or 'validation', "
                             f"got {self.eval_users!r}")
        used = self.eval_user_percent + self.valid_user_percent + (
            self.validation_user_percent if self.eval_users == "validation" else 0)
        if min(self.eval_user_percent, self.valid_user_percent, self.validation_user_percent) < 0 \
                or used >= 100:
            raise ValueError(f"examples: the user percentages (eval, valid, validation) must be "
                             f">= 0 and leave training users, got {used} % in use")
        if self.eval_anchors_per_user < 1:
            raise ValueError(f"examples.eval_anchors_per_user must be >= 1, "
                             f"got {self.eval_anchors_per_user}")
        if not 0.0 <= self.eval_after_time_quantile < 1.0:
            raise ValueError(f"examples.eval_after_time_quantile must be in [0, 1), "
                             f"got {self.eval_after_time_quantile}")


@dataclasses.dataclass(frozen=True)
class ItemEmbeddingConfig:
    """PinSage analogue: co-engagement PPMI factorisation + content features, frozen."""
    dim: int = 64
    cf_dim: int = 48  # dims from the co-engagement factorisation, rest from content
    min_count: int = 1
    max_items_per_user: int = 256  # most recent positives kept per training user (counted)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PinnerFormerConfig:
    seq_len: int = 64  # M
    hidden: int = 64  # H
    num_layers: int = 2  # L
    num_heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.1
    output_dim: int = 64  # D
    action_emb_dim: int = 8
    surface_emb_dim: int = 8
    item_id_embedding_dim: int = 0  # > 0: learned id embedding beside the frozen one (deviation)
    objective: str = "dense_all_action"
    label_window_days: int = 28  # K for all_action / dense_all_action
    num_sampled_positions: int = 16  # dense all action positions per sequence
    max_labels: int = 32  # all action labels per sequence
    max_in_batch_negatives: int = 5000
    num_random_negatives: int = 512
    logq_correction: bool = True
    sketch_width: int = 4096
    sketch_depth: int = 4
    init_temperature: float = 0.07
    min_temperature: float = 0.01

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden={self.hidden} not divisible by num_heads={self.num_heads}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    train_steps: int = 1000
    eval_steps: int = 20
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    # > 0: stop when the validation split's loss has not improved for this many epochs of
    # `steps_per_epoch` steps and keep the best epoch's weights (0: train all train_steps).
    early_stopping_patience: int = 0
    steps_per_epoch: int = 100
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class RetrievalEvalConfig:
    k: int = 10
    entropy_k: int = 50
    min_recall: float = 0.01  # absolute gate on Recall@k
    min_coverage: float = 0.0  # absolute gate on P90 coverage@k
    # vs the last blessed model: refused only when worse by more than this with
    # `gate_confidence` (paired bootstrap over users), not on a point difference.
    max_recall_drop: float = 0.0
    gate_confidence: float = 0.95
    # The candidate must beat the stronger popularity baseline: relative lift in recall@k >
    # this. Set to a large negative number to switch the check off.
    min_lift_over_popularity: float = 0.0
    popularity_window_days: int = 30  # trailing-window popularity baseline (besides all time)
    cooccurrence_history: int = 50  # recent positives that query the co-occurrence baseline
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0


@dataclasses.dataclass(frozen=True)
class RankingConfig:
    """Ranking examples (RankingExampleGen): requests, candidates, history and the time split.
    The realtime model's P (actions it keeps) is a model setting, not part of this section."""
    session_gap_s: int = 1800  # MovieLens-style requests: a gap >= this starts a new session
    negatives_per_request: int = 10  # MovieLens-style requests: sampled never-interacted items
    max_candidates: int = 50  # candidates kept per request (counted when exceeded)
    max_history: int = 256  # actions kept before a request / a day start (counted)
    eval_time_quantile: float = 0.8  # requests at or after this quantile of request times -> eval
    seed: int = 0

    def __post_init__(self):
        for name in ("session_gap_s", "max_candidates", "max_history"):
            if getattr(self, name) < 1:
                raise ValueError(f"ranking.{name} must be >= 1, got {getattr(self, name)}")
        if self.negatives_per_request < 0:
            raise ValueError(f"ranking.negatives_per_request must be >= 0, "
                             f"got {self.negatives_per_request}")
        if not 0.0 < self.eval_time_quantile < 1.0:
            raise ValueError(f"ranking.eval_time_quantile must be in (0, 1), "
                             f"got {self.eval_time_quantile}")


@dataclasses.dataclass(frozen=True)
class RankerTrainConfig:
    enabled: bool = True  # False: the pipeline stops after pushing PinnerFormer
    train_steps: int = 500
    eval_steps: int = 20
    shuffle_labels: bool = False  # randomisation test: such a ranker must not be blessed


@dataclasses.dataclass(frozen=True)
class RankerEvalConfig:
    """TFMA gate of the ranker: value thresholds plus change thresholds vs the last blessed one."""
    hit_k: int = 3
    min_auc: float = 0.55  # lower bound on AUC of the repin and closeup heads
    min_auc_other: float = 0.5  # click and hide: weak signals on MovieLens (3-star "short click")
    min_hit_repin: float = 0.0  # HIT@k/repin lower bound
    max_auc_drop: float = 0.01  # candidate AUC may not fall below baseline - this (per head)
    max_hit_drop: float = 0.05
    # RankerBaselineCheck: HIT@k/repin and AUC/repin must beat popularity as of the request and
    # the PinnerFormer dot product by more than this relative lift (large negative: off).
    min_lift_over_baselines: float = 0.0
    popularity_window_days: int = 30


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    name: str = "pinrank"
    preset: str = "cpu"
    data: DataConfig = DataConfig()
    examples: ExampleGenConfig = ExampleGenConfig()
    items: ItemEmbeddingConfig = ItemEmbeddingConfig()
    model: PinnerFormerConfig = PinnerFormerConfig()
    train: TrainConfig = TrainConfig()
    eval: RetrievalEvalConfig = RetrievalEvalConfig()
    ranking: RankingConfig = RankingConfig()
    ranker: RankerConfig = dataclasses.field(
        default_factory=lambda: realtime_config.cpu().replace(learning_rate=5e-4, batch_size=128))
    ranker_train: RankerTrainConfig = RankerTrainConfig()
    ranker_eval: RankerEvalConfig = RankerEvalConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def sections_json(self, *names: str) -> str:
        """JSON of only these sections: components get just what they use, so changing, say,
        the objective does not invalidate the cached data components."""
        return json.dumps({n: dataclasses.asdict(getattr(self, n)) for n in names}, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        return _from_dict(cls, d)

    @classmethod
    def from_json(cls, s: str) -> "PipelineConfig":
        return cls.from_dict(json.loads(s))

    def replace(self, **sections: Any) -> "PipelineConfig":
        """`cfg.replace(model={"objective": "next_action"}, train={"seed": 1})`."""
        updates = {}
        for key, val in sections.items():
            cur = getattr(self, key)
            updates[key] = dataclasses.replace(cur, **val) if isinstance(val, dict) else val
        return dataclasses.replace(self, **updates)


def _from_dict(cls, d):
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    for name, val in d.items():
        sub = _SECTIONS.get(name) if cls is PipelineConfig else None
        if sub is RankerConfig:
            kwargs[name] = RankerConfig.from_dict(val)
        else:
            kwargs[name] = _from_dict(sub, val) if sub is not None else val
    return cls(**kwargs)


_SECTIONS = {"data": DataConfig, "examples": ExampleGenConfig, "items": ItemEmbeddingConfig,
             "model": PinnerFormerConfig, "train": TrainConfig, "eval": RetrievalEvalConfig,
             "ranking": RankingConfig, "ranker": RankerConfig, "ranker_train": RankerTrainConfig,
             "ranker_eval": RankerEvalConfig}


def preset(name: str, source: Optional[str] = None) -> PipelineConfig:
    """Named presets. `tiny`: seconds, for tests. `cpu`: the 2-core demo. `paper`: GPU scale."""
    if name == "tiny":
        cfg = PipelineConfig(
            preset="tiny",
            data=DataConfig(source="synthetic", num_users=150, num_items=300, num_interests=8,
                            events_per_user=60, content_dim=8),
            examples=ExampleGenConfig(anchors_per_user=2, max_history=64, max_future=32),
            items=ItemEmbeddingConfig(dim=16, cf_dim=8),
            model=PinnerFormerConfig(seq_len=16, hidden=32, num_layers=1, num_heads=2, output_dim=32,
                                     num_sampled_positions=4, max_labels=8, num_random_negatives=64,
                                     sketch_width=512, dropout=0.0),
            train=TrainConfig(batch_size=32, train_steps=60, eval_steps=2, warmup_steps=10,
                              learning_rate=3e-3),
            eval=RetrievalEvalConfig(min_recall=0.0),
            # Higher learning rates collapse this small ranker to constant scores (AUC 0.5).
            ranker=realtime_config.tiny().replace(context_numeric=(), learning_rate=5e-4),
            ranker_train=RankerTrainConfig(train_steps=2000, eval_steps=2),
            ranker_eval=RankerEvalConfig(min_auc=0.54, min_auc_other=0.0),
        )
    elif name == "cpu":
        cfg = PipelineConfig(preset="cpu")
    elif name == "paper":
        cfg = PipelineConfig(
            preset="paper",
            examples=ExampleGenConfig(max_history=1024, max_future=128, anchors_per_user=8),
            items=ItemEmbeddingConfig(dim=256, cf_dim=192),
            model=PinnerFormerConfig(seq_len=256, hidden=768, num_layers=6, num_heads=8,
                                     output_dim=256, action_emb_dim=32, surface_emb_dim=32,
                                     num_sampled_positions=32, num_random_negatives=8192,
                                     sketch_width=1 << 20),
            train=TrainConfig(batch_size=128, train_steps=20000, warmup_steps=2000,
                              learning_rate=5e-4),
            ranker=realtime_config.paper(),
            ranker_train=RankerTrainConfig(train_steps=50000, eval_steps=200),
        )
    else:
        raise ValueError(f"unknown preset {name!r}; choose tiny, cpu or paper")
    if source is not None:
        cfg = cfg.replace(data={"source": source})
    return cfg


def apply_overrides(cfg: PipelineConfig, overrides) -> PipelineConfig:
    """`["model.objective=next_action", "train.seed=1"]` -> new config (values parsed by type)."""
    for item in overrides or ():
        key, sep, raw = item.partition("=")
        section, _, field = key.partition(".")
        if not sep or not field or section not in _SECTIONS:
            raise ValueError(f"bad override {item!r}: expected section.field=value with section "
                             f"in {sorted(_SECTIONS)}")
        types = {f.name: f.type for f in dataclasses.fields(_SECTIONS[section])}
        if field not in types:
            raise ValueError(f"unknown field {field!r} in {section}; known: {sorted(types)}")
        kind = types[field] if isinstance(types[field], str) else types[field].__name__
        value: Any = {"int": int, "float": float, "str": str,
                      "bool": lambda s: s.lower() in ("1", "true", "yes")}[kind](raw)
        cfg = cfg.replace(**{section: {field: value}})
    return cfg
