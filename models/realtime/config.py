"""Configuration of the realtime (TransAct) module and the Pinnability-style ranker
(docs/models.md, "TransAct ranker").

Frozen dataclasses in the style of `pipeline/config.py`: every field is a plain JSON value (tuples become
lists in JSON and are turned back into tuples by `__post_init__`), so
`RankerConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c`.

Presets (functions): `tiny()` (unit tests), `cpu()` (2-core demo, dims matching the `cpu` pipeline preset),
`paper()` (TransAct paper scale: |S| = 100, d = 32 + 2*32 = 96, K = 10, W = 24 h, peak LR 0.0048).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Optional, Sequence, Tuple

FUSIONS = ("concat", "append", "none")
DEFAULT_HEADS = ("repin", "click", "closeup", "hide")  # = pipeline.features.ACTIONS
# TransAct: a hide puts weight 100 on the click and repin heads (docs/models.md, "Weighted loss").
HIDE_WEIGHT = 100.0
DAY_S = 86400


def _positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _non_negative(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _dropout(name, value):
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _set(obj, name, value):
    object.__setattr__(obj, name, value)


@dataclasses.dataclass(frozen=True)
class RealtimeConfig:
    """TransAct module (docs/models.md, "Realtime sequence and early fusion", "Encoder and output compression",
    "Random time window").

    Action ids: 0 = padding (also any id < 0), 1..num_action_types = real action types, ids above that map to
    one learned OOV row (still a real, unmasked action). The `append` fusion uses one more dedicated id for
    the candidate token, so padding never collides with a real action (the official code's id-0 collision is
    not reproduced).

    d = action_emb_dim + item_emb_dim (+ item_emb_dim with `concat` fusion); output = [B, d + latest_k*d]
    (without the max-pool branch: [B, latest_k*d]).
    """
    seq_len: int = 100  # P = |S|, newest first
    num_action_types: int = 4  # V (pipeline.features.ACTIONS); the official code uses range(0, 20)
    action_emb_dim: int = 32
    item_emb_dim: int = 32  # De: width of the frozen item (PinSage analogue) embeddings
    num_layers: int = 2
    num_heads: int = 1  # paper: 1 (official code default: 2)
    ffn_dim: int = 32
    dropout: float = 0.1
    time_window_s: int = DAY_S  # W: training mask window T ~ U{0..W} s (paper 24 h; code default 1 h); 0 = off
    fusion: str = "concat"  # concat (paper) | append (BST-style extra token) | none
    latest_k: int = 10  # K first (most recent) output rows kept
    max_pool: bool = True  # add Dense(d)(max-pool over rows)
    exclude_masked_from_output: bool = False  # False = official code: masked rows still enter max-pool/first-K
    post_ln: bool = True  # official code: Post-LN (PyTorch norm_first=False); False = Pre-LN ablation
    ln_epsilon: float = 1e-5  # PyTorch LayerNorm default

    def __post_init__(self):
        for name in ("seq_len", "num_action_types", "action_emb_dim", "item_emb_dim", "num_heads", "ffn_dim"):
            _positive(name, getattr(self, name))
        for name in ("num_layers", "time_window_s", "latest_k"):
            _non_negative(name, getattr(self, name))
        _dropout("dropout", self.dropout)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.latest_k > self.seq_len:
            raise ValueError(f"latest_k={self.latest_k} exceeds seq_len={self.seq_len}")
        if self.latest_k == 0 and not self.max_pool:
            raise ValueError("empty output: need latest_k > 0 or max_pool=True")
        if self.model_dim % self.num_heads:
            raise ValueError(f"model dim d={self.model_dim} (fusion={self.fusion!r}) is not divisible by "
                             f"num_heads={self.num_heads}")
        if not self.ln_epsilon > 0:
            raise ValueError(f"ln_epsilon must be > 0, got {self.ln_epsilon!r}")

    @property
    def model_dim(self) -> int:
        """d: width of every encoder row."""
        return self.action_emb_dim + self.item_emb_dim * (2 if self.fusion == "concat" else 1)

    @property
    def output_dim(self) -> int:
        """Width of the flattened module output (1056 for the paper: 96 + 10 * 96)."""
        d = self.model_dim
        return (d if self.max_pool else 0) + self.latest_k * d


def default_label_weights(heads: Sequence[str], hide_weight: float = HIDE_WEIGHT) -> Tuple[Tuple[float, ...], ...]:
    """M[h][a]: weight that action a (label column a) gives head h. Every action weighs 1 on every head,
    except a hide weighs `hide_weight` on the click and repin heads (the paper's only published entry; the
    rest of its matrix is not published; docs/models.md, "Weighted loss")."""
    heads = tuple(heads)
    rows = []
    for h in heads:
        row = []
        for a in heads:
            row.append(float(hide_weight) if a == "hide" and h in ("click", "repin") else 1.0)
        rows.append(tuple(row))
    return tuple(rows)


def _spec_tuple(name, specs):
    out = []
    for spec in specs:
        spec = tuple(spec)
        if len(spec) != 3:
            raise ValueError(f"{name}: each entry must be (feature_name, vocab_size, emb_dim), got {spec!r}")
        fname, vocab, dim = spec
        if not isinstance(fname, str) or not fname:
            raise ValueError(f"{name}: bad feature name {fname!r}")
        _positive(f"{name}[{fname}].vocab_size", vocab)
        _positive(f"{name}[{fname}].emb_dim", dim)
        out.append((fname, vocab, dim))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    """Pinnability-style multi-task ranker (docs/models.md, "DCNv2 and heads"): context categoricals
    (embeddings) + numeric context (BatchNorm) + PinnerFormer embedding + candidate features + TransAct output
    -> full-rank DCNv2 -> MLP -> one sigmoid head per action.

    Categorical ids must be in [0, vocab_size); anything else goes to one extra OOV row.
    `label_weights` (M, H x H, rows = heads, columns = label actions in `heads` order) defaults to
    `default_label_weights(heads)`; see losses.py for the exact weighting rule.
    Ablations (TransAct Table 2): use_pinnerformer / use_realtime on/off.
    """
    heads: Tuple[str, ...] = DEFAULT_HEADS
    realtime: RealtimeConfig = RealtimeConfig()
    use_realtime: bool = True
    use_pinnerformer: bool = True
    pinnerformer_dim: int = 64  # PinnerFormer output_dim
    context_categorical: Tuple[Tuple[str, int, int], ...] = (("surface", 7, 8), ("hour_of_day", 24, 8))
    context_numeric: Tuple[str, ...] = ()
    candidate_categorical: Tuple[Tuple[str, int, int], ...] = (("candidate_interest", 64, 8),)
    num_cross_layers: int = 3
    mlp_dims: Tuple[int, ...] = (256, 128)
    dropout: float = 0.1
    label_weights: Optional[Tuple[Tuple[float, ...], ...]] = None  # None -> default_label_weights(heads)
    no_action_weight: float = 1.0  # weight of every head on an impression with no action (our choice)
    learning_rate: float = 1e-3  # peak LR (paper: 0.0048 at batch 12000)
    warmup_steps: int = 100  # linear warmup (paper: 5000), then cosine decay
    decay_steps: int = 10000  # cosine decay length after warmup
    min_lr_ratio: float = 0.0  # LR floor as a fraction of the peak
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self):
        heads = tuple(self.heads)
        if not heads or any(not isinstance(h, str) or not h for h in heads):
            raise ValueError(f"heads must be non-empty names, got {self.heads!r}")
        if len(set(heads)) != len(heads):
            raise ValueError(f"duplicate head names in {heads}")
        _set(self, "heads", heads)
        if isinstance(self.realtime, dict):
            _set(self, "realtime", RealtimeConfig(**self.realtime))
        if not isinstance(self.realtime, RealtimeConfig):
            raise ValueError(f"realtime must be a RealtimeConfig, got {type(self.realtime).__name__}")
        _positive("pinnerformer_dim", self.pinnerformer_dim)
        _set(self, "context_categorical", _spec_tuple("context_categorical", self.context_categorical))
        _set(self, "candidate_categorical", _spec_tuple("candidate_categorical", self.candidate_categorical))
        _set(self, "context_numeric", tuple(self.context_numeric))
        names = ([s[0] for s in self.context_categorical] + list(self.context_numeric)
                 + [s[0] for s in self.candidate_categorical])
        if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique non-empty strings, got {names}")
        _non_negative("num_cross_layers", self.num_cross_layers)
        _set(self, "mlp_dims", tuple(self.mlp_dims))
        for i, w in enumerate(self.mlp_dims):
            _positive(f"mlp_dims[{i}]", w)
        _dropout("dropout", self.dropout)
        h = len(heads)
        m = default_label_weights(heads) if self.label_weights is None else self.label_weights
        try:
            m = tuple(tuple(float(v) for v in row) for row in m)
        except (TypeError, ValueError) as e:
            raise ValueError(f"label_weights must be a {h}x{h} matrix of numbers: {e}") from None
        if len(m) != h or any(len(row) != h for row in m):
            raise ValueError(f"label_weights must be {h}x{h} (heads x actions, order {heads}), "
                             f"got shape {[len(r) for r in m]}")
        if any(not math.isfinite(v) or v < 0 for row in m for v in row):
            raise ValueError("label_weights must be finite and >= 0")
        _set(self, "label_weights", m)
        if not (math.isfinite(self.no_action_weight) and self.no_action_weight >= 0):
            raise ValueError(f"no_action_weight must be finite and >= 0, got {self.no_action_weight!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        _non_negative("warmup_steps", self.warmup_steps)
        _non_negative("decay_steps", self.decay_steps)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        _positive("batch_size", self.batch_size)

    @property
    def item_emb_dim(self) -> int:
        return self.realtime.item_emb_dim

    def head_index(self, head: str) -> int:
        return self.heads.index(head)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RankerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RankerConfig fields: {sorted(unknown)}")
        d = dict(d)
        if isinstance(d.get("realtime"), dict):
            rt_known = {f.name for f in dataclasses.fields(RealtimeConfig)}
            bad = set(d["realtime"]) - rt_known
            if bad:
                raise ValueError(f"unknown RealtimeConfig fields: {sorted(bad)}")
            d["realtime"] = RealtimeConfig(**d["realtime"])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "RankerConfig":
        return cls.from_dict(json.loads(s))

    def replace(self, realtime: Optional[dict] = None, **fields) -> "RankerConfig":
        """`cfg.replace(num_cross_layers=2, realtime={"fusion": "append"})`."""
        if realtime is not None:
            fields["realtime"] = (dataclasses.replace(self.realtime, **realtime) if isinstance(realtime, dict)
                                  else realtime)
        if "heads" in fields and "label_weights" not in fields:
            fields["label_weights"] = None  # re-derive the default for the new head list
        return dataclasses.replace(self, **fields)


def tiny() -> RankerConfig:
    """Unit tests: seconds on a CPU."""
    return RankerConfig(
        realtime=RealtimeConfig(seq_len=12, action_emb_dim=4, item_emb_dim=8, ffn_dim=8, latest_k=3,
                                time_window_s=3600, dropout=0.0),
        pinnerformer_dim=8,
        context_categorical=(("surface", 7, 3), ("hour_of_day", 24, 3)),
        context_numeric=("user_age_days",),
        candidate_categorical=(("candidate_interest", 9, 3),),
        num_cross_layers=2, mlp_dims=(16, 8), dropout=0.0,
        learning_rate=5e-3, warmup_steps=0, decay_steps=0, batch_size=32)


def cpu() -> RankerConfig:
    """2-core demo; item / PinnerFormer dims match the `cpu` pipeline preset (64 / 64)."""
    return RankerConfig(
        realtime=RealtimeConfig(seq_len=50, action_emb_dim=16, item_emb_dim=64, ffn_dim=32, latest_k=10),
        pinnerformer_dim=64, num_cross_layers=2, mlp_dims=(128, 64),
        learning_rate=1e-3, warmup_steps=100, decay_steps=5000, batch_size=256)


def paper() -> RankerConfig:
    """TransAct paper scale (docs/models.md, "TransAct ranker"): P = 100, d_action = d_PinSage = 32, 2 layers,
    1 head, FFN 32, dropout 0.1, W = 24 h, K = 10; PinnerFormer 256-d; Adam with 5000 warmup steps to 0.0048,
    batch 12000. Cross-layer count and MLP widths are not published (our choice: 3 and (256, 128))."""
    return RankerConfig(
        realtime=RealtimeConfig(),
        pinnerformer_dim=256, num_cross_layers=3, mlp_dims=(256, 128),
        learning_rate=0.0048, warmup_steps=5000, decay_steps=100000, batch_size=12000)


PRESETS = {"tiny": tiny, "cpu": cpu, "paper": paper}


def preset(name: str) -> RankerConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
