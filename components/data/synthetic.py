"""A seedable Pinterest-like world with known ground truth, streamed into the canonical layout.

Why: real logs have no ground truth; here we know every user's interests, so tests can check that
the pipeline recovers them, and the size knob (num_users x events_per_user) scales to 10M+ events
without holding them in memory (users are simulated in fixed chunks and streamed to shards).

World model (constants below are the world's physics, not tuning knobs; DataConfig holds the
knobs of the temporal dynamics, on by default):
- Interests have Zipf-like sizes. Items belong to 1-2 interests (primary weight 1, or 0.7/0.3),
  have a Zipf-like base popularity and a latent quality; their content embedding is the
  normalised mix of their interests' random centroids plus noise.
- Items have a lifecycle: `release_fraction_at_start` of the catalogue exists at the start
  (released up to a year before it), the rest is released in weekly waves spread uniformly over
  `horizon_days` (two years). Current popularity = base popularity x a curve of the item's age:
  it rises over the first days, then halves every half-life (lognormal around
  `popularity_half_life_days`; `evergreen_fraction` of the items decay 10x slower) down to a
  tail of 0.5 % of its peak. Slates draw by the current popularity of the session's week, so
  what is hot now is not what was hot a year ago, and no item is shown before its release.
- A user has a sparse long-term mixture: 1 + Poisson(2) interests (picked by interest size),
  Dirichlet(1) weights, zero elsewhere; an activity level (target engagement count, lognormal
  with mean events_per_user); and an active period of weeks to months (lognormal around
  `user_active_days`) placed uniformly within the horizon, so timelines cover different eras.
  The mixture drifts: after each session, with probability `interest_drift_per_session`, the
  weight of one interest (picked by weight) moves to another (picked by interest size).
- Sessions: inter-session gaps are lognormal (at least 30 min), scaled so that the sessions the
  user still needs fill what is left of the active period. One request per session shows a
  slate of ~18 distinct items: mostly popular items of the session's focus interest, the rest
  popular items overall. The focus repeats the previous session's with P_STAY (short-term
  persistence), otherwise comes from the mixture; with P_DRIFT the second half of the slate
  drifts to a new random interest, which then persists into the next sessions (short-term drift
  away from the long-term mixture).
- Engagement with a shown item depends on affinity = long-term weight of its interests
  (relative to the user's top weight) + match with the current focus + item quality: hides on
  low affinity; closeups (dwell lognormal, longer for better matches), repins (mostly after a
  closeup) and outbound clicks (duration lognormal, many short) on high affinity. Within a
  session, views are seconds apart and engagements add their dwell time.
- Events are the engagements (not bare impressions); impressions/ record every shown
  candidate with its labels.
- `temporal_dynamics=false` reproduces the static world of WORLD_VERSION 1 exactly (the other
  temporal knobs are ignored): every item exists from day 0 with its base popularity, 120 days,
  start days in the first quarter, gaps scaled to the rest of the horizon, fixed mixtures, and a
  repeated item shortens its slate.

Ground truth: `<dir>/ground_truth/users.parquet` (user_id, mixture and mixture_end:
list<float32> over interest ids, the long-term mixture at the user's first and after the last
session) and `<dir>/ground_truth/items.parquet` (item_id, base popularity, quality, release_ts,
half_life_days; items of the starting catalogue have release_ts <= the world's start; the
static world has release_ts = start and half_life_days = inf); item interests are in
items.parquet. The output is a deterministic function of the DataConfig (and
with_impressions).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinrank.components.data import events as E
from pinrank.pipeline import features as F
from pinrank.pipeline.config import DAY_S, DataConfig

# Bump whenever the simulation's output for the same DataConfig changes (invalidates caches).
WORLD_VERSION = 2
START_TS = 1_672_531_200  # 2023-01-01T00:00:00Z
STATIC_HORIZON_DAYS = 120  # temporal_dynamics=false (the WORLD_VERSION 1 world)
USERS_PER_CHUNK = 1024  # part of the world's definition: chunk c uses its own seeded stream
INTEREST_ZIPF = 0.7
ITEM_ZIPF = 0.9
P_SECOND_INTEREST = 0.3
CONTENT_NOISE = 0.6  # norm of the content noise relative to the (unit) interest centroid mix
MEAN_EXTRA_INTERESTS = 2.0
ACTIVITY_SIGMA = 0.7
P_STAY = 0.5
P_DRIFT = 0.15
P_IN_FOCUS = 0.75
SLATE_MEAN, SLATE_MIN, SLATE_MAX = 18, 6, 40
SURFACE_PROBS = {"homefeed": 0.62, "related": 0.18, "search": 0.12, "profile": 0.05,
                 "other": 0.03}
GAP_SIGMA = 1.0
MIN_GAP_S = 1800
EVENTS_PER_SESSION_EST = 5.5  # calibrates session gaps so most users reach their target
MAX_SESSIONS = 20_000
# Temporal dynamics (temporal_dynamics=true).
POP_STEP_DAYS = 7  # popularity is piecewise constant per week; releases come in weekly waves
RISE_DAYS = 3.0  # an item's popularity rises as 1 - exp(-age / RISE_DAYS) ...
TAIL_POPULARITY = 0.005  # ... then decays by half-lives towards this fraction of its peak
HALF_LIFE_SIGMA = 0.5  # per-item half-life: lognormal around popularity_half_life_days
EVERGREEN_FACTOR = 10.0  # evergreen items decay this much slower
START_CATALOGUE_AGE_DAYS = 365  # items existing at the start were released up to this long ago
ACTIVE_SIGMA = 0.8  # a user's active period: lognormal around user_active_days ...
MIN_ACTIVE_DAYS = 7  # ... at least a week, at most the horizon

INTEREST_NAMES = (
    "home_decor", "recipes", "womens_fashion", "diy_crafts", "travel", "beauty", "art",
    "weddings", "gardening", "quotes", "hair", "fitness", "mens_fashion", "kids", "tattoos",
    "photography", "architecture", "cars", "animals", "design", "education", "humor", "film",
    "music", "books", "gaming", "technology", "science", "history", "sports", "outdoors",
    "parenting", "holidays", "illustration", "jewelry", "nail_art", "baking", "drinks",
    "health", "finance",
)

assert tuple(SURFACE_PROBS) == F.SURFACES
_ACT = {a: i for i, a in enumerate(F.ACTIONS)}


def interest_names(n: int) -> List[str]:
    return [INTEREST_NAMES[k] if k < len(INTEREST_NAMES) else f"interest_{k:03d}"
            for k in range(n)]


def user_ids(start: int, stop: int, num_users: int) -> np.ndarray:
    width = max(6, len(str(max(num_users - 1, 0))))
    return np.array([f"u{i:0{width}d}" for i in range(start, stop)], dtype=object)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


@dataclasses.dataclass
class World:
    """Items and interests: everything shared by all users."""
    num_interests: int
    interest_pop: np.ndarray  # [K] interest size distribution
    item_ids: np.ndarray  # [N] int64, 1..N
    item_int: np.ndarray  # [N, 2] int32 interest ids, -1 padded
    item_w: np.ndarray  # [N, 2] float membership weights (0 for padding)
    popularity: np.ndarray  # [N] sums to 1
    quality: np.ndarray  # [N]
    embedding: np.ndarray  # [N, D] float32, unit norm
    pop_cdf: np.ndarray  # [N] global popularity cdf
    seg_cdf: np.ndarray  # [M] per-interest membership cdfs, interest k's values in (k, k+1]
    seg_item: np.ndarray  # [M] item index of each membership
    seg_end: np.ndarray  # [K] one past the last membership of each interest
    release_day: np.ndarray  # [N] days since START_TS (<= 0: part of the starting catalogue)
    half_life: np.ndarray  # [N] popularity half-life in days (inf: static world)
    # Temporal dynamics only: the same tables per popularity step e (POP_STEP_DAYS), flattened
    # step-major. Global: values e + cdf over items; per interest: e * K + k + cdf over the
    # memberships of k. *_last: the last entry with positive mass (released items only).
    step_s: float = 0.0
    num_steps: int = 0
    pop_cdf_t: Optional[np.ndarray] = None  # [E * N]
    pop_last_t: Optional[np.ndarray] = None  # [E] flat index
    seg_cdf_t: Optional[np.ndarray] = None  # [E * M]
    seg_last_t: Optional[np.ndarray] = None  # [E * K] flat index
    interest_cdf: Optional[np.ndarray] = None  # [K] cdf of interest sizes (mixture drift)


def horizon_days(cfg: DataConfig) -> int:
    return cfg.horizon_days if cfg.temporal_dynamics else STATIC_HORIZON_DAYS


def lifecycle(age_days: np.ndarray, half_life: np.ndarray) -> np.ndarray:
    """Current popularity relative to the base popularity, for ages >= 0 (days)."""
    decay = TAIL_POPULARITY + (1.0 - TAIL_POPULARITY) * np.exp2(-age_days / half_life)
    return -np.expm1(-age_days / RISE_DAYS) * decay


def build_world(cfg: DataConfig) -> World:
    K, N, D = cfg.num_interests, cfg.num_items, cfg.content_dim
    rng = _rng(cfg.seed, 0)
    interest_pop = 1.0 / np.arange(1, K + 1) ** INTEREST_ZIPF
    interest_pop = interest_pop[rng.permutation(K)]
    interest_pop /= interest_pop.sum()
    primary = rng.choice(K, size=N, p=interest_pop)
    primary[:K] = rng.permutation(K)  # every interest has items
    second = rng.choice(K, size=N, p=interest_pop)
    has_second = (rng.random(N) < P_SECOND_INTEREST) & (second != primary)
    item_int = np.stack([primary, np.where(has_second, second, -1)], 1).astype(np.int32)
    item_w = np.stack([np.where(has_second, 0.7, 1.0), np.where(has_second, 0.3, 0.0)], 1)
    popularity = 1.0 / np.arange(1, N + 1) ** ITEM_ZIPF
    popularity = popularity[rng.permutation(N)]
    popularity /= popularity.sum()
    # Popular items are somewhat better on average; quality also varies independently.
    logp = np.log(popularity)
    quality = 0.25 * (logp - logp.mean()) / (logp.std() + 1e-9) + rng.normal(0, 0.4, N)
    centroids = rng.normal(size=(K, D))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    mix = item_w[:, :1] * centroids[item_int[:, 0]]
    mix += item_w[:, 1:] * centroids[np.maximum(item_int[:, 1], 0)]
    mix /= np.linalg.norm(mix, axis=1, keepdims=True) + 1e-12
    emb = mix + rng.normal(0, CONTENT_NOISE / np.sqrt(D), size=(N, D))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # Per-interest sampling tables: memberships sorted by interest, cdf shifted by k.
    m_item = np.concatenate([np.arange(N), np.flatnonzero(has_second)])
    m_int = np.concatenate([item_int[:, 0], item_int[has_second, 1]]).astype(np.int64)
    m_wt = np.concatenate([item_w[:, 0], item_w[has_second, 1]]) * popularity[m_item]
    order = np.lexsort((m_item, m_int))
    m_item, m_int, m_wt = m_item[order], m_int[order], m_wt[order]
    seg_end = np.searchsorted(m_int, np.arange(K), side="right")
    seg_start = np.concatenate([[0], seg_end[:-1]])
    seg_cdf = np.empty(len(m_item))
    for k in range(K):
        c = np.cumsum(m_wt[seg_start[k]:seg_end[k]])
        seg_cdf[seg_start[k]:seg_end[k]] = k + c / c[-1]
        seg_cdf[seg_end[k] - 1] = k + 1.0
    pop_cdf = np.cumsum(popularity)
    pop_cdf[-1] = 1.0
    world = World(K, interest_pop, np.arange(1, N + 1, dtype=np.int64), item_int, item_w,
                  popularity, quality, emb.astype(np.float32), pop_cdf, seg_cdf, m_item, seg_end,
                  np.zeros(N), np.full(N, np.inf))
    if cfg.temporal_dynamics:
        m_w = np.concatenate([item_w[:, 0], item_w[has_second, 1]])[order]
        _add_lifecycles(world, cfg, m_item, m_w, seg_start)
    return world


def _add_lifecycles(world: World, cfg: DataConfig, m_item: np.ndarray, m_w: np.ndarray,
                    seg_start: np.ndarray) -> None:
    """Release days, half-lives and the per-step sampling tables (own random stream, so the
    static part of the world is the same with and without dynamics). m_item, m_w: item and
    membership weight of each membership, sorted by interest like seg_item."""
    K, N, M = world.num_interests, len(world.item_ids), len(m_item)
    rng = _rng(cfg.seed, 2)
    step = POP_STEP_DAYS
    E = max(1, int(np.ceil(cfg.horizon_days / step)))
    at_start = rng.random(N) < cfg.release_fraction_at_start
    at_start[:K] = True  # one item of every interest exists from the start
    wave = rng.integers(1, max(E, 2), N)  # weekly release waves after the start
    age0 = rng.uniform(0, START_CATALOGUE_AGE_DAYS, N)
    release_day = np.where(at_start, -age0, wave * step).astype(np.float64)
    if E == 1:
        release_day = np.minimum(release_day, 0.0)
    half_life = cfg.popularity_half_life_days * rng.lognormal(0.0, HALF_LIFE_SIGMA, N)
    half_life *= np.where(rng.random(N) < cfg.evergreen_fraction, EVERGREEN_FACTOR, 1.0)
    # Popularity during step e: the lifecycle at the step's midpoint, zero before release.
    mid = (np.arange(E) + 0.5) * step
    age = mid[:, None] - release_day[None, :]  # [E, N]
    released = release_day[None, :] <= (mid - 0.5 * step)[:, None]
    weight = np.where(released, world.popularity[None, :] * lifecycle(
        np.maximum(age, 0.0), half_life[None, :]), 0.0)
    steps = np.arange(E)[:, None]
    c = np.cumsum(weight, axis=1)
    pop_cdf_t = steps + c / c[:, -1:]
    last = N - 1 - np.argmax(weight[:, ::-1] > 0, axis=1)
    pop_last_t = np.arange(E) * N + last
    # Per interest and step: cdf over the interest's memberships.
    m_wt = m_w[None, :] * weight[:, m_item]  # [E, M]
    seg_cdf_t = np.empty((E, M))
    seg_last_t = np.empty((E, K), np.int64)
    for k in range(K):
        a, b = seg_start[k], world.seg_end[k]
        ck = np.cumsum(m_wt[:, a:b], axis=1)
        seg_cdf_t[:, a:b] = steps * K + k + ck / ck[:, -1:]
        seg_last_t[:, k] = np.arange(E) * M + b - 1 - np.argmax(m_wt[:, a:b][:, ::-1] > 0, axis=1)
    world.release_day, world.half_life = release_day, half_life
    world.step_s, world.num_steps = float(step * DAY_S), E
    world.pop_cdf_t, world.pop_last_t = pop_cdf_t.reshape(-1), pop_last_t
    world.seg_cdf_t, world.seg_last_t = seg_cdf_t.reshape(-1), seg_last_t.reshape(-1)
    world.interest_cdf = np.cumsum(world.interest_pop)


def _sample_in_interest(world: World, interest: np.ndarray, u: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(world.seg_cdf, interest + u, side="right")
    return world.seg_item[np.minimum(idx, world.seg_end[interest] - 1)]


def _sample_popular(world: World, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(world.pop_cdf, u, side="right"), len(world.pop_cdf) - 1)


def _sample_in_interest_at(world: World, interest: np.ndarray, u: np.ndarray,
                           step: np.ndarray) -> np.ndarray:
    """Like _sample_in_interest, by the current popularity of popularity step `step`."""
    key = step * world.num_interests + interest
    idx = np.minimum(np.searchsorted(world.seg_cdf_t, key + u, side="right"),
                     world.seg_last_t[key])
    return world.seg_item[idx - step * len(world.seg_item)]


def _sample_popular_at(world: World, u: np.ndarray, step: np.ndarray) -> np.ndarray:
    idx = np.minimum(np.searchsorted(world.pop_cdf_t, step + u, side="right"),
                     world.pop_last_t[step])
    return idx - step * len(world.item_ids)


def _user_mixtures(rng: np.random.Generator, n: int, world: World) -> np.ndarray:
    K = world.num_interests
    support = np.minimum(1 + rng.poisson(MEAN_EXTRA_INTERESTS, n), K)
    # Gumbel top-k: each user's support drawn without replacement by interest size.
    keys = np.log(world.interest_pop)[None, :] + rng.gumbel(size=(n, K))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    w = rng.gamma(1.0, size=(n, K)) * (rank < support[:, None])
    return w / w.sum(axis=1, keepdims=True)


def _simulate_chunk(world: World, cfg: DataConfig, chunk: int, lo: int, hi: int,
                    with_impressions: bool):
    """Simulate users [lo, hi) (local indices 0..hi-lo-1); returns (events, impressions or
    None, long-term mixtures [U, K] at the start and at the end, number of sessions). Events are
    sorted by user and time."""
    rng = _rng(cfg.seed, 1, chunk)
    U, K = hi - lo, world.num_interests
    dynamic = cfg.temporal_dynamics
    theta = _user_mixtures(rng, U, world)
    theta_start = theta.copy() if dynamic else theta
    theta_rel = theta / theta.max(axis=1, keepdims=True)
    theta_cdf = np.cumsum(theta, axis=1)
    target = np.maximum(3, np.round(rng.lognormal(
        np.log(cfg.events_per_user) - ACTIVITY_SIGMA ** 2 / 2, ACTIVITY_SIGMA, U))).astype(int)
    horizon = horizon_days(cfg) * DAY_S
    if dynamic:
        # An active period of weeks to months, anywhere within the horizon.
        period = np.clip(rng.lognormal(np.log(cfg.user_active_days), ACTIVE_SIGMA, U),
                         MIN_ACTIVE_DAYS, max(horizon_days(cfg), MIN_ACTIVE_DAYS)) * DAY_S
        period = np.minimum(period, horizon)
        start = rng.uniform(0, 1, U) * (horizon - period)
    else:
        start = rng.uniform(0, 0.25 * horizon, U)
        period = (horizon - start).astype(np.float64)
    sessions_est = np.maximum(1.0, target / EVENTS_PER_SESSION_EST)
    gap_median = 0.9 * period / sessions_est / np.exp(GAP_SIGMA ** 2 / 2)
    t_next = start.copy()
    count = np.zeros(U, np.int64)
    session_no = np.zeros(U, np.int64)
    prev_focus = np.full(U, -1, np.int64)
    surface_p = np.array(list(SURFACE_PROBS.values()))
    ev: Dict[str, List[np.ndarray]] = {k: [] for k in ("user", "item", "act", "ts", "dur", "surf")}
    im: Dict[str, List[np.ndarray]] = {k: [] for k in (
        "user", "session", "item", "ts", "surf", "pos", "repin", "click", "closeup", "hide")}
    S = SLATE_MAX
    slot = np.arange(S)[None, :]
    active = np.flatnonzero((count < target) & (t_next < horizon))
    while active.size:
        A = active.size
        th_rel = theta_rel[active]
        # Session focus: persist, or draw from the long-term mixture.
        cdf = theta_cdf[active]
        mix_draw = (rng.random((A, 1)) * cdf[:, -1:] < cdf).argmax(axis=1)
        stay = (rng.random(A) < P_STAY) & (prev_focus[active] >= 0)
        focus = np.where(stay, prev_focus[active], mix_draw)
        drift = rng.random(A) < P_DRIFT
        new_interest = rng.integers(0, K, A)
        length = np.clip(rng.poisson(SLATE_MEAN, A), SLATE_MIN, SLATE_MAX)
        drift_at = np.where(drift, rng.integers(1, np.maximum(length, 2)), S)
        slot_focus = np.where(slot >= drift_at[:, None], new_interest[:, None], focus[:, None])
        in_focus = rng.random((A, S)) < P_IN_FOCUS
        u = rng.random((A, S))
        if dynamic:  # by the popularity of the session's week
            step = np.minimum(t_next[active] // world.step_s, world.num_steps - 1)
            step = np.broadcast_to(step.astype(np.int64)[:, None], (A, S))
            items = np.empty((A, S), np.int64)
            items[in_focus] = _sample_in_interest_at(world, slot_focus[in_focus], u[in_focus],
                                                     step[in_focus])
            out = ~in_focus
            items[out] = _sample_popular_at(world, u[out], step[out])
            shown = np.ones((A, S), bool)
        else:
            items = np.where(in_focus, _sample_in_interest(world, slot_focus, u),
                             _sample_popular(world, u))
            shown = slot < length[:, None]
        # A slate never repeats an item: keep the first occurrence.
        order = np.argsort(np.where(shown, items, -1), axis=1, kind="stable")
        srt = np.take_along_axis(items, order, 1)
        dup_sorted = np.zeros((A, S), bool)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = np.zeros((A, S), bool)
        np.put_along_axis(dup, order, dup_sorted, 1)
        shown &= ~dup
        if dynamic:  # duplicates are replaced by the next distinct candidates
            shown &= np.cumsum(shown, axis=1) <= length[:, None]
        # Affinity and engagement.
        k1, k2 = world.item_int[items, 0], world.item_int[items, 1]
        w1, w2 = world.item_w[items, 0], world.item_w[items, 1]
        rows = np.arange(A)[:, None]
        lt = w1 * th_rel[rows, k1] + w2 * th_rel[rows, np.maximum(k2, 0)]
        st = w1 * (k1 == slot_focus) + w2 * (k2 == slot_focus)
        score = 2.0 * lt + 1.2 * st + world.quality[items] - 1.2
        hide = shown & (rng.random((A, S)) < _sigmoid(-3.1 - 0.75 * score))
        ok = shown & ~hide
        closeup = ok & (rng.random((A, S)) < _sigmoid(-2.07 + 0.725 * score))
        p_repin = np.where(closeup, _sigmoid(-1.76 + 0.57 * score), _sigmoid(-4.35 + 0.8 * score))
        repin = ok & (rng.random((A, S)) < p_repin)
        click = ok & (rng.random((A, S)) < _sigmoid(-3.35 + 0.46 * score))
        d_close = np.minimum(rng.lognormal(np.log(4.0) + 0.6 * score, 0.9), 900.0)
        d_click = np.minimum(rng.lognormal(np.log(4.0) + 0.9 * score, 1.2), 1800.0)
        d_close = np.where(closeup, np.round(d_close, 1), 0.0)
        d_click = np.where(click, np.round(d_click, 1), 0.0)
        # Within-session time: scroll gaps plus the time spent engaging with earlier slots.
        scroll = np.where(shown, rng.lognormal(np.log(4.0), 0.8, (A, S)), 0.0)
        spent = scroll + d_close + d_click
        t0 = START_TS + t_next[active]
        t_view = t0[:, None] + np.cumsum(spent, axis=1) - d_close - d_click
        surface = rng.choice(len(F.SURFACES), size=A, p=surface_p)
        uidx = np.broadcast_to(active[:, None], (A, S))
        surf2 = np.broadcast_to(surface[:, None], (A, S))
        for act, mask, ts, dur in (
                ("hide", hide, t_view + 1, 0.0),
                ("closeup", closeup, t_view + 1, d_close),
                ("repin", repin, t_view + 2 + d_close, 0.0),
                ("click", click, t_view + 3 + d_close, d_click)):
            n = int(mask.sum())
            ev["user"].append(uidx[mask])
            ev["item"].append(items[mask])
            ev["act"].append(np.full(n, _ACT[act], np.int8))
            ev["ts"].append(np.floor(ts[mask] if np.ndim(ts) else np.full(n, ts)).astype(np.int64))
            ev["dur"].append(np.asarray(dur)[mask] if np.ndim(dur) else np.full(n, dur))
            ev["surf"].append(surf2[mask])
        if with_impressions:
            im["user"].append(uidx[shown])
            im["session"].append(np.broadcast_to(session_no[active][:, None], (A, S))[shown])
            im["item"].append(items[shown])
            im["ts"].append(np.broadcast_to(np.floor(t0)[:, None], (A, S))[shown].astype(np.int64))
            im["surf"].append(surf2[shown])
            im["pos"].append((np.cumsum(shown, axis=1) - 1)[shown].astype(np.int32))
            for name, mask in (("repin", repin), ("click", click), ("closeup", closeup),
                               ("hide", hide)):
                im[name].append(mask[shown].astype(np.int8))
        count[active] += (hide.sum(axis=1) + closeup.sum(axis=1) + repin.sum(axis=1)
                          + click.sum(axis=1))
        session_end = t_next[active] + spent.sum(axis=1) + 5.0
        if dynamic:
            # Spread the sessions the user still needs (at the user's own events per session so
            # far) over what is left of the active period.
            eps = ((count[active] + 2 * EVENTS_PER_SESSION_EST) / (session_no[active] + 3))
            left = np.maximum(1.0, (target[active] - count[active]) / eps)
            remaining = np.maximum(start[active] + period[active] - session_end, MIN_GAP_S)
            median = 0.9 * remaining / left / np.exp(GAP_SIGMA ** 2 / 2)
        else:
            median = gap_median[active]
        gap = np.maximum(MIN_GAP_S, rng.lognormal(np.log(median), GAP_SIGMA))
        t_next[active] = session_end + gap
        prev_focus[active] = slot_focus[:, -1]
        session_no[active] += 1
        if dynamic:  # long-term drift: one interest's weight moves to another interest
            moved = active[rng.random(A) < cfg.interest_drift_per_session]
            n = moved.size
            if n:
                th, r = theta[moved], np.arange(n)
                cdf = np.cumsum(th, axis=1)
                src = (rng.random((n, 1)) * cdf[:, -1:] < cdf).argmax(axis=1)
                dst = np.minimum(np.searchsorted(world.interest_cdf, rng.random(n) *
                                                 world.interest_cdf[-1], side="right"), K - 1)
                w = th[r, src]
                th[r, src] = 0.0
                th[r, dst] += w
                theta[moved] = th
                theta_rel[moved] = th / th.max(axis=1, keepdims=True)
                theta_cdf[moved] = np.cumsum(th, axis=1)
        active = np.flatnonzero((count < target) & (t_next < horizon) & (session_no < MAX_SESSIONS))
    events = {k: np.concatenate(v) for k, v in ev.items()}
    order = np.lexsort((events["act"], events["ts"], events["user"]))
    events = {k: v[order] for k, v in events.items()}
    imps = None
    if with_impressions:
        imps = {k: np.concatenate(v) for k, v in im.items()}
        order = np.lexsort((imps["pos"], imps["session"], imps["user"]))
        imps = {k: v[order] for k, v in imps.items()}
    return events, imps, theta_start, theta, int(session_no.sum())


def generate(out_dir: str, cfg: DataConfig, with_impressions: bool = True, *,
             shard_rows: int = 1_000_000,
             progress: Optional[Callable[[dict], None]] = None) -> dict:
    """Simulate the world described in the module docstring into `out_dir` (previous dataset
    files there are removed) and return a summary (also stored in DATASET.json)."""
    # The sizes and the dynamics' knobs were checked when the DataConfig was built.
    t_begin = time.time()
    os.makedirs(out_dir, exist_ok=True)
    E.clear_dataset(out_dir)
    world = build_world(cfg)
    names = interest_names(cfg.num_interests)
    E.write_items(out_dir, world.item_ids, world.embedding, world.item_int, names)
    gt_dir = os.path.join(out_dir, "ground_truth")
    os.makedirs(gt_dir, exist_ok=True)
    pq.write_table(pa.table({"item_id": pa.array(world.item_ids),
                             "popularity": pa.array(world.popularity),
                             "quality": pa.array(world.quality),
                             "release_ts": pa.array(START_TS + np.round(
                                 world.release_day * DAY_S).astype(np.int64)),
                             "half_life_days": pa.array(world.half_life)}),
                   os.path.join(gt_dir, "items.parquet"))
    users_schema = pa.schema([("user_id", pa.string()), ("mixture", pa.list_(pa.float32())),
                              ("mixture_end", pa.list_(pa.float32()))])
    action_names = np.array(F.ACTIONS, dtype=object)
    surface_names = np.array(F.SURFACES, dtype=object)
    action_counts = np.zeros(len(F.ACTIONS), np.int64)
    n_pos = n_imps = n_requests = 0
    ts_min, ts_max = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    with contextlib.ExitStack() as stack:
        ev_writer = stack.enter_context(E.EventShardWriter(out_dir, shard_rows))
        imp_writer = (stack.enter_context(E.ImpressionShardWriter(out_dir, shard_rows))
                      if with_impressions else None)
        users_writer = stack.enter_context(
            pq.ParquetWriter(os.path.join(gt_dir, "users.parquet"), users_schema))
        for chunk, lo in enumerate(range(0, cfg.num_users, USERS_PER_CHUNK)):
            hi = min(cfg.num_users, lo + USERS_PER_CHUNK)
            ev, imps, theta, theta_end, n_sessions = _simulate_chunk(world, cfg, chunk, lo, hi,
                                                                     with_impressions)
            uids = user_ids(lo, hi, cfg.num_users)
            actions = action_names[ev["act"]]
            ev_writer.write({"user_id": uids[ev["user"]], "item_id": world.item_ids[ev["item"]],
                             "action": actions, "timestamp": ev["ts"], "duration": ev["dur"],
                             "surface": surface_names[ev["surf"]]})
            action_counts += np.bincount(ev["act"], minlength=len(F.ACTIONS))
            n_pos += int(E.is_positive(actions, ev["dur"]).sum())
            if len(ev["ts"]):
                ts_min, ts_max = min(ts_min, int(ev["ts"].min())), max(ts_max, int(ev["ts"].max()))
            offsets = (np.arange(hi - lo + 1) * cfg.num_interests).astype(np.int32)
            users_writer.write_table(pa.Table.from_arrays(
                [pa.array(uids, pa.string())] + [
                    pa.ListArray.from_arrays(pa.array(offsets),
                                             pa.array(th.astype(np.float32).reshape(-1)))
                    for th in (theta, theta_end)],
                schema=users_schema))
            if imp_writer is not None:
                # Rows are grouped by (user, session): name each request once, then repeat.
                key = imps["user"] * (MAX_SESSIONS + 1) + imps["session"]
                first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
                names_ = np.array([f"{uids[u]}-s{k:05d}" for u, k in
                                   zip(imps["user"][first], imps["session"][first])], dtype=object)
                req = np.repeat(names_, np.diff(np.r_[first, len(key)]))
                imp_writer.write({
                    "request_id": req, "user_id": uids[imps["user"]],
                    "item_id": world.item_ids[imps["item"]], "timestamp": imps["ts"],
                    "surface": surface_names[imps["surf"]], "position": imps["pos"],
                    **{k: imps[k] for k in F.IMPRESSION_LABELS}})
                n_imps += len(imps["item"])
            n_requests += n_sessions
            if progress is not None:
                elapsed = max(time.time() - t_begin, 1e-9)
                written = int(action_counts.sum())
                progress({"users": hi, "num_users": cfg.num_users, "events": written,
                          "events_per_s": written / elapsed})
    n_events = int(action_counts.sum())
    summary = {
        "source": "synthetic",
        "config": dataclasses.asdict(cfg),
        "with_impressions": with_impressions,
        "counts": {
            "users": cfg.num_users, "items": cfg.num_items, "interests": cfg.num_interests,
            "events": n_events, "positives": n_pos,
            "actions": dict(zip(F.ACTIONS, action_counts.tolist())),
            "impressions": n_imps, "requests": n_requests,
            "event_shards": len(ev_writer.paths),
            "impression_shards": len(imp_writer.paths) if imp_writer is not None else 0,
        },
        "events_per_user": n_events / cfg.num_users,
        "time_range": [ts_min, ts_max] if n_events else None,
        "world": {"version": WORLD_VERSION, "start_ts": START_TS,
                  "horizon_days": horizon_days(cfg), "users_per_chunk": USERS_PER_CHUNK},
    }
    E.write_dataset_manifest(out_dir, summary)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pinrank.components.data.synthetic",
        description="Generate a synthetic Pinterest-like dataset in the canonical layout.")
    d = DataConfig()
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--num-users", type=int, default=d.num_users)
    p.add_argument("--num-items", type=int, default=d.num_items)
    p.add_argument("--num-interests", type=int, default=d.num_interests)
    p.add_argument("--events-per-user", type=int, default=d.events_per_user)
    p.add_argument("--content-dim", type=int, default=d.content_dim)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--horizon-days", type=int, default=d.horizon_days)
    p.add_argument("--static", action="store_true",
                   help="the static world (temporal_dynamics=false, WORLD_VERSION 1)")
    p.add_argument("--shard-rows", type=int, default=1_000_000)
    p.add_argument("--no-impressions", action="store_true", help="skip impressions/")
    a = p.parse_args(argv)
    cfg = DataConfig(source="synthetic", num_users=a.num_users, num_items=a.num_items,
                     num_interests=a.num_interests, events_per_user=a.events_per_user,
                     content_dim=a.content_dim, seed=a.seed, horizon_days=a.horizon_days,
                     temporal_dynamics=not a.static)

    def report(s):
        print(f"users {s['users']}/{s['num_users']}  events {s['events']:,}  "
              f"({s['events_per_s']:,.0f} events/s)", file=sys.stderr, flush=True)

    summary = generate(a.out, cfg, with_impressions=not a.no_impressions,
                       shard_rows=a.shard_rows, progress=report)
    c = summary["counts"]
    print(f"wrote {a.out}: {c['events']:,} events ({c['positives']:,} positive), "
          f"{c['impressions']:,} impressions in {c['requests']:,} requests, "
          f"{c['users']:,} users, {c['items']:,} items", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
