"""Training pairs for the four PinnerFormer objectives (PinnerFormer Fig. 2; docs/models.md,
"Training objectives (next action, SASRec, all action, dense all action)"). Pure TF.

Every objective returns `(position_index [B, S] int32, label_item [B, S] int64, valid [B, S] bool)`:
the per-position embedding e_{position_index} should score `label_item` highly. Invalid slots carry
position 0 and label PAD_ITEM and must be dropped by the caller.

Positions index the newest-first history (0 = most recent action). The *combined timeline* of a row is its
history positives followed by its future positives (`fut_*`, oldest first, all after the anchor). A label
candidate for position s is
  * a history position j < s (newer, since newest first) with a positive engagement and ts[j] > ts[s], or
  * a valid future positive f with fut_ts[f] > ts[s];
windowed objectives additionally require label_ts <= ts[s] + K (K = label_window_days).
Only real positions (s < seq_len) are ever used. `Timeline.hist_label` / `fut_label` may be narrowed by the
caller (the model drops label items that have no frozen embedding).

Randomness is stateless: `seed` is an int32/int64 tensor of shape [2]; the same seed gives the same pairs.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import tensorflow as tf

from pinrank.pipeline import features as F
from pinrank.pipeline.config import DAY_S, PinnerFormerConfig

from . import inputs

_BIG = tf.int32.max


class Timeline(NamedTuple):
    hist_item: tf.Tensor  # [B, M] int64
    hist_ts: tf.Tensor  # [B, M] int64
    real: tf.Tensor  # [B, M] bool: position < seq_len
    hist_label: tf.Tensor  # [B, M] bool: real & positive (& usable as a label)
    seq_len: tf.Tensor  # [B] int32
    fut_item: tf.Tensor  # [B, F] int64
    fut_ts: tf.Tensor  # [B, F] int64
    fut_label: tf.Tensor  # [B, F] bool: index < fut_len (& usable as a label)


def timeline_from_features(features, label_ok=None) -> Timeline:
    """Builds a Timeline from Transform outputs. `label_ok(item_ids) -> bool` optionally vetoes labels."""
    hist_item = inputs.sequence(features, F.HIST_ITEM)
    hist_ts = inputs.sequence(features, F.HIST_TS)
    hist_pos = inputs.sequence(features, F.HIST_POS)
    m = inputs.width(hist_item)
    seq_len = inputs.length(features, F.SEQ_LEN_XF, m)
    real = tf.sequence_mask(seq_len, m)
    fut_item = inputs.sequence(features, F.FUT_ITEM)
    fut_ts = inputs.sequence(features, F.FUT_TS)
    fut_len = inputs.length(features, F.FUT_LEN_XF, inputs.width(fut_item))
    fut_valid = tf.sequence_mask(fut_len, inputs.width(fut_item))
    hist_label = real & tf.equal(hist_pos, 1)
    if label_ok is not None:
        hist_label &= label_ok(hist_item)
        fut_valid &= label_ok(fut_item)
    return Timeline(hist_item, hist_ts, real, hist_label, seq_len, fut_item, fut_ts, fut_valid)


def candidates(tl: Timeline, window_s: Optional[float] = None):
    """Label candidates per position over the combined timeline.

    Returns (mask [B, M, M+F] bool, item [B, M+F] int64, ts [B, M+F] int64); mask[b, s, c] says candidate c
    (history positions first, then future positives) is a label for position s.
    """
    m = tf.shape(tl.hist_item)[1]
    ts_s = tl.hist_ts[:, :, None]  # [B, M, 1]
    newer = tf.range(m)[None, :] < tf.range(m)[:, None]  # [s, j]: j < s
    hist = tl.real[:, :, None] & newer[None] & tl.hist_label[:, None, :] & (tl.hist_ts[:, None, :] > ts_s)
    fut = tl.real[:, :, None] & tl.fut_label[:, None, :] & (tl.fut_ts[:, None, :] > ts_s)
    if window_s is not None:
        end = ts_s + tf.cast(window_s, tf.int64)
        hist &= tl.hist_ts[:, None, :] <= end
        fut &= tl.fut_ts[:, None, :] <= end
    mask = tf.concat([hist, fut], axis=-1)
    item = tf.concat([tl.hist_item, tl.fut_item], axis=-1)
    ts = tf.concat([tl.hist_ts, tl.fut_ts], axis=-1)
    return mask, item, ts


def _gumbel(shape, seed):
    u = tf.random.stateless_uniform(shape, seed=seed, minval=1e-12, maxval=1.0)
    return -tf.math.log(-tf.math.log(u))


def _first_true(mask):
    """Index of the first True along the last axis (0 when none) and whether there is one."""
    return tf.argmax(tf.cast(mask, tf.int32), axis=-1, output_type=tf.int32), tf.reduce_any(mask, -1)


def next_action_pairs(tl: Timeline):
    """e_1 (position 0) predicts the first future positive. S = 1."""
    first, has = _first_true(tl.fut_label)
    label = tf.gather(tl.fut_item, first, batch_dims=1)
    valid = has & (tl.seq_len > 0)
    b = tf.shape(tl.hist_item)[0]
    return (tf.zeros([b, 1], tf.int32), tf.where(valid, label, F.PAD_ITEM)[:, None], valid[:, None])


def sasrec_pairs(tl: Timeline):
    """Every real position predicts the next positive after it in the combined timeline (no window). S = M.

    "Next" = the chronologically nearest candidate: the oldest newer history positive (largest j < s with
    ts[j] > ts[s]), else the first future positive with fut_ts > ts[s].
    """
    mask, item, _ = candidates(tl, window_s=None)
    m = tf.shape(tl.hist_item)[1]
    f = tf.shape(tl.fut_item)[1]
    # Chronological rank of each candidate: history j -> -(j + 1) (older = smaller), future f -> f.
    rank = tf.concat([-(tf.range(m) + 1), tf.range(f)], axis=0)
    key = tf.where(mask, rank[None, None, :], _BIG)
    pick = tf.argmin(key, axis=-1, output_type=tf.int32)  # [B, M]
    valid = tf.reduce_any(mask, axis=-1)
    label = tf.gather(item, pick, batch_dims=1)
    b = tf.shape(tl.hist_item)[0]
    pos = tf.where(valid, tf.broadcast_to(tf.range(m)[None, :], [b, m]), 0)
    return pos, tf.where(valid, label, F.PAD_ITEM), valid


def all_action_pairs(tl: Timeline, window_s: float, max_labels: int, seed):
    """e_1 predicts all future positives with ts in (ts[0], ts[0] + K]; if more than `max_labels`, a uniform
    sample without replacement. S = max_labels."""
    ts0 = tl.hist_ts[:, :1]
    ok = (tl.fut_label & (tl.fut_ts > ts0) & (tl.fut_ts <= ts0 + tf.cast(window_s, tf.int64))
          & (tl.seq_len > 0)[:, None])
    f = tf.shape(tl.fut_item)[1]
    k = tf.minimum(f, max_labels)
    score = tf.where(ok, _gumbel(tf.shape(ok), seed), -float("inf"))
    _, idx = tf.math.top_k(score, k=k)  # [B, k]
    valid = tf.gather(ok, idx, batch_dims=1)
    label = tf.where(valid, tf.gather(tl.fut_item, idx, batch_dims=1), F.PAD_ITEM)
    pad = [[0, 0], [0, max_labels - k]]
    valid = tf.pad(valid, pad, constant_values=False)
    label = tf.pad(label, pad, constant_values=F.PAD_ITEM)
    b = tf.shape(tl.hist_item)[0]
    valid.set_shape([None, max_labels])
    label.set_shape([None, max_labels])
    return tf.zeros([b, max_labels], tf.int32), label, valid


def dense_all_action_pairs(tl: Timeline, window_s: float, num_positions: int, seed):
    """Samples up to `num_positions` positions uniformly without replacement among real positions with at
    least one candidate in (ts[s], ts[s] + K]; each predicts one candidate chosen uniformly at random.
    S = num_positions (slots beyond the eligible positions, or beyond M, are invalid)."""
    mask, item, _ = candidates(tl, window_s=window_s)
    eligible = tf.reduce_any(mask, axis=-1)  # [B, M]
    m = tf.shape(tl.hist_item)[1]
    k = tf.minimum(m, num_positions)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    pos_score = tf.where(eligible, _gumbel(tf.shape(eligible), seeds[0]), -float("inf"))
    _, pos = tf.math.top_k(pos_score, k=k)  # [B, k]
    valid = tf.gather(eligible, pos, batch_dims=1)
    cand = tf.gather(mask, pos, batch_dims=1)  # [B, k, M+F]
    lab_score = tf.where(cand, _gumbel(tf.shape(cand), seeds[1]), -float("inf"))
    pick = tf.argmax(lab_score, axis=-1, output_type=tf.int32)
    label = tf.where(valid, tf.gather(item, pick, batch_dims=1), F.PAD_ITEM)
    pad = [[0, 0], [0, num_positions - k]]
    pos = tf.pad(tf.where(valid, pos, 0), pad)
    label = tf.pad(label, pad, constant_values=F.PAD_ITEM)
    valid = tf.pad(valid, pad, constant_values=False)
    for t in (pos, label, valid):
        t.set_shape([None, num_positions])
    return pos, label, valid


def make_pairs(objective: str, tl: Timeline, cfg: PinnerFormerConfig, seed):
    """Dispatches on `objective` (one of pipeline.config.OBJECTIVES)."""
    window_s = cfg.label_window_days * DAY_S
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if objective == "next_action":
        return next_action_pairs(tl)
    if objective == "sasrec":
        return sasrec_pairs(tl)
    if objective == "all_action":
        return all_action_pairs(tl, window_s, cfg.max_labels, seed)
    if objective == "dense_all_action":
        return dense_all_action_pairs(tl, window_s, cfg.num_sampled_positions, seed)
    raise ValueError(f"unknown objective {objective!r}")
