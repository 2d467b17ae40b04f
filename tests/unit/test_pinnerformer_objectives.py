"""Pairs for the four objectives on a hand-built example.

User 0 (seq_len 5 of M = 6, newest first), times in days:
  position  0   1   2   3   4   5(pad)
  item     10  11  12  13  14  99
  ts       20  15   5   3   1   30
  positive  1   0   1   1   0   1
  future positives (oldest first): item 20 @ 22d, 21 @ 40d, 22 @ 60d; slot 3 (item 23 @ 21d) is padding.
User 1: seq_len 0 (no history), same future.

With a 14-day window the label candidates per position are
  s=0: {20 (fut, 22d)}    s=1: {10 (hist j=0), 20}    s=2: {} (10 @ 20d is 15 d later)
  s=3: {12}               s=4: {12, 13}               s=5: padding, never used.
"""
import numpy as np
import pytest
import tensorflow as tf

from pinrank.models.pinnerformer import objectives as O
from pinrank.pipeline import features as F
from pinrank.pipeline.config import PinnerFormerConfig

DAY = 86400
T0 = 1_600_000_000


def _features(rows=1, seq_len=(5, 0)):
    hist_ts = T0 + np.array([20, 15, 5, 3, 1, 30]) * DAY
    fut_ts = T0 + np.array([22, 40, 60, 21]) * DAY
    one = {
        F.xf(F.HIST_ITEM): [10, 11, 12, 13, 14, 99], F.xf(F.HIST_TS): hist_ts,
        F.xf(F.HIST_POS): [1, 0, 1, 1, 0, 1],
        F.xf(F.FUT_ITEM): [20, 21, 22, 23], F.xf(F.FUT_TS): fut_ts,
    }
    feats = {k: np.tile(np.asarray(v, np.int64), (rows * 2, 1)) for k, v in one.items()}
    feats[F.SEQ_LEN_XF] = np.tile(np.array(seq_len, np.int64), rows)[:, None]  # [B, 1] scalars
    feats[F.FUT_LEN_XF] = np.full([rows * 2], 3, np.int64)
    return {k: tf.constant(v) for k, v in feats.items()}


def _tl(**kw):
    return O.timeline_from_features(_features(**kw))


def test_candidates_window_and_causality():
    mask, item, ts = O.candidates(_tl(), window_s=14 * DAY)
    item = item.numpy()
    got = [sorted(item[0][mask[0, s].numpy()].tolist()) for s in range(6)]
    assert got == [[20], [10, 20], [], [12], [12, 13], []]
    assert not mask[1].numpy().any()  # seq_len 0: nothing
    # Every candidate is strictly later than its position and within the window.
    m = mask.numpy()
    dt = ts.numpy()[:, None, :] - _features()[F.xf(F.HIST_TS)].numpy()[:, :, None]
    assert np.all((dt[m] > 0) & (dt[m] <= 14 * DAY))


def test_window_boundaries():
    feats = _features()
    ts = feats[F.xf(F.HIST_TS)].numpy().copy()
    ts[:, 1] = ts[:, 0]  # position 1 at the same time as the positive at position 0: excluded (not later)
    fut = feats[F.xf(F.FUT_TS)].numpy().copy()
    fut[:, 0] = ts[:, 0] + 7 * DAY  # exactly ts[0] + K: included
    fut[:, 1] = ts[:, 0] + 7 * DAY + 1  # one second later: excluded
    feats = dict(feats, **{F.xf(F.HIST_TS): tf.constant(ts), F.xf(F.FUT_TS): tf.constant(fut)})
    mask, item, _ = O.candidates(O.timeline_from_features(feats), window_s=7 * DAY)
    assert item.numpy()[0][mask[0, 0].numpy()].tolist() == [20]
    assert item.numpy()[0][mask[0, 1].numpy()].tolist() == [20]  # hist 10 (same ts) not a label; fut 21 too late


def test_next_action():
    pos, label, valid = O.next_action_pairs(_tl())
    np.testing.assert_array_equal(pos.numpy(), [[0], [0]])
    np.testing.assert_array_equal(label.numpy(), [[20], [F.PAD_ITEM]])
    np.testing.assert_array_equal(valid.numpy(), [[True], [False]])


def test_next_action_skips_vetoed_labels():
    tl = O.timeline_from_features(_features(), label_ok=lambda ids: ids != 20)
    _, label, valid = O.next_action_pairs(tl)
    assert label.numpy()[0, 0] == 21 and valid.numpy()[0, 0]


def test_sasrec_next_positive_in_combined_timeline():
    pos, label, valid = O.sasrec_pairs(_tl())
    np.testing.assert_array_equal(valid.numpy(), [[1, 1, 1, 1, 1, 0], [0] * 6])
    np.testing.assert_array_equal(pos.numpy()[0], [0, 1, 2, 3, 4, 0])
    # s=0 -> first future; s=1, 2 -> the positive at position 0; s=3 -> position 2; s=4 -> position 3.
    np.testing.assert_array_equal(label.numpy()[0], [20, 10, 10, 12, 13, F.PAD_ITEM])
    assert np.all(label.numpy()[1] == F.PAD_ITEM)


def test_all_action_window_and_sampling():
    pos, label, valid = O.all_action_pairs(_tl(), 14 * DAY, max_labels=4, seed=tf.constant([1, 2]))
    assert pos.shape == (2, 4) and np.all(pos.numpy() == 0)
    assert label.numpy()[0][valid.numpy()[0]].tolist() == [20]  # only 22d is in (20d, 34d]
    assert not valid.numpy()[1].any()
    # 60-day window: all 3 future positives; max_labels 2 -> uniform 2 of 3 without replacement.
    tl = _tl(rows=300)
    _, label, valid = O.all_action_pairs(tl, 60 * DAY, max_labels=2, seed=tf.constant([3, 4]))
    lab, val = label.numpy()[::2], valid.numpy()[::2]
    assert val.all() and not valid.numpy()[1::2].any()
    assert all(a != b and {a, b} <= {20, 21, 22} for a, b in lab)
    freq = np.array([(lab == i).sum() for i in (20, 21, 22)]) / 300
    np.testing.assert_allclose(freq, 2 / 3, atol=0.1)
    _, label, valid = O.all_action_pairs(_tl(), 60 * DAY, max_labels=8, seed=tf.constant([0, 0]))
    assert valid.shape == (2, 8) and valid.numpy()[0].sum() == 3
    assert sorted(label.numpy()[0][valid.numpy()[0]]) == [20, 21, 22]
    assert np.all(label.numpy()[0][~valid.numpy()[0]] == F.PAD_ITEM)


def test_dense_all_action_samples_only_valid_candidates():
    rows = 400
    tl = _tl(rows=rows)
    pos, label, valid = O.dense_all_action_pairs(tl, 14 * DAY, num_positions=3, seed=tf.constant([5, 6]))
    pos, label, valid = pos.numpy(), label.numpy(), valid.numpy()
    assert not valid[1::2].any()  # seq_len 0 rows
    allowed = {0: {20}, 1: {10, 20}, 3: {12}, 4: {12, 13}}
    pos_count, lab_count = {}, {}
    for r in range(0, 2 * rows, 2):
        assert valid[r].all()  # 4 eligible positions >= 3 slots
        assert len(set(pos[r])) == 3  # without replacement
        for s, lab in zip(pos[r], label[r]):
            assert lab in allowed[s]  # never position 2 (no candidate) or 5 (padding)
            pos_count[s] = pos_count.get(s, 0) + 1
            lab_count[(s, lab)] = lab_count.get((s, lab), 0) + 1
    np.testing.assert_allclose([pos_count[s] / rows for s in (0, 1, 3, 4)], 0.75, atol=0.07)
    np.testing.assert_allclose(lab_count[(1, 10)] / pos_count[1], 0.5, atol=0.08)
    np.testing.assert_allclose(lab_count[(4, 13)] / pos_count[4], 0.5, atol=0.08)
    # More slots than positions: the 4 eligible positions once each, the rest invalid.
    pos, label, valid = O.dense_all_action_pairs(_tl(), 14 * DAY, num_positions=8, seed=tf.constant([0, 1]))
    assert valid.shape == (2, 8) and valid.numpy()[0].sum() == 4
    assert sorted(pos.numpy()[0][valid.numpy()[0]]) == [0, 1, 3, 4]


def test_dense_all_action_is_seeded():
    a = O.dense_all_action_pairs(_tl(rows=5), 14 * DAY, 2, seed=tf.constant([7, 7]))
    b = O.dense_all_action_pairs(_tl(rows=5), 14 * DAY, 2, seed=tf.constant([7, 7]))
    c = O.dense_all_action_pairs(_tl(rows=5), 14 * DAY, 2, seed=tf.constant([7, 8]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert any(not np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, c))


@pytest.mark.parametrize("objective,width", [("next_action", 1), ("sasrec", 6), ("all_action", 3),
                                             ("dense_all_action", 2)])
def test_make_pairs_dispatch(objective, width):
    cfg = PinnerFormerConfig(objective=objective, label_window_days=14, max_labels=3, num_sampled_positions=2)
    pos, label, valid = O.make_pairs(objective, _tl(), cfg, seed=[0, 0])
    assert pos.shape == label.shape == valid.shape == (2, width)
    assert pos.dtype == tf.int32 and label.dtype == tf.int64 and valid.dtype == tf.bool
    assert not valid.numpy()[1].any()
