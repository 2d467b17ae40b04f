"""Sampled softmax with mixed negatives and logQ correction (PinnerFormer Eq. 1-2; docs/models.md,
"Sampled softmax, negatives and logQ correction").

For pair i (user embedding u_i, positive p_i) with a shared negative pool n_1..n_N:

    s(u, v) = <u, v> / tau
    z_i = e^{s(u_i,p_i) - log Q(p_i)}
    L_i = -log  z_i / ( z_i + sum_{j valid for i} e^{s(u_i,n_j) - log Q(n_j)} )

(the logQ terms are dropped when `logq_correction` is False). The batch loss gives every user equal weight:
average each user's pair losses, then average over the users that have at least one pair.

Negative pool ("mixed" = one pool, one softmax):
  * in-batch: the distinct label items of all pairs in the batch, capped at `max_in_batch` by a uniform
    random subset. Q(v) = P(v is in the batch) ~= min(1, n_labels * count(v) / total) from the count-min
    sketch; when the cap subsamples k of n distinct items, Q is multiplied by k / n (inclusion probability
    of the subset). Decision: distinct items (not one entry per pair), because Q is defined as the
    probability that the item is *in* the batch, not its expected multiplicity.
  * random: `num_random` uniform catalog samples (with replacement), Q = num_random / |catalog|.
  * masking (decision): a negative is dropped for pair i when it equals any positive item of pair i's user,
    i.e. any real history positive or valid future positive of that row. This covers the pair's own label
    (accidental hit) and every other label the user can have. The same rule is applied to random
    negatives: a random draw that is one of the user's positives is a false negative just like an
    in-batch one (the paper does not say; this is the conservative choice). An item drawn both in-batch
    and at random stays twice, each copy with its own Q.
  * Deviation: no cross-replica all-gather of negatives; under a multi-replica strategy the in-batch pool
    is per replica (the paper gathers across GPUs; docs/models.md, "Deviations").
"""
from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

_MASKED = -1e9


def sampled_softmax_loss(user_emb, pos_emb, pos_logq, neg_emb, neg_logq, neg_valid, pair_user,
                         temperature, logq_correction: bool = True, num_users=None):
    """Returns (loss scalar, per_pair_loss [P]).

    user_emb [P, D], pos_emb [P, D], pos_logq [P], neg_emb [N, D], neg_logq [N], neg_valid [P, N] bool,
    pair_user [P] int32 (row/user id of each pair), temperature scalar. With no pairs the loss is 0.
    """
    # float32 whatever the embeddings' dtype (mixed precision): logits, logQ and the loss stay float32.
    user_emb = tf.cast(user_emb, tf.float32)
    pos_emb = tf.cast(pos_emb, tf.float32)
    neg_emb = tf.cast(neg_emb, tf.float32)
    # 1/tau scales the [P, D] user side, not the [P, N] logits: the same values, but one pass
    # over the large logits (and its gradient, a [P, N] reduction for tau) fewer per step.
    scaled_user = user_emb / tf.cast(temperature, tf.float32)
    pos_shift = tf.cast(pos_logq, tf.float32) if logq_correction else tf.zeros_like(scaled_user[:, 0])
    neg_shift = tf.cast(neg_logq, tf.float32) if logq_correction else tf.zeros_like(neg_emb[:, 0])
    per_pair = _softmax_pair_loss(scaled_user, pos_emb, neg_emb, pos_shift, neg_shift,
                                  tf.convert_to_tensor(neg_valid, tf.bool))
    return per_user_mean(per_pair, pair_user, num_users), per_pair


@tf.custom_gradient
def _softmax_pair_loss(user, pos, neg, pos_shift, neg_shift, valid):
    """Per pair: logsumexp([s_pos, valid s_neg]) - s_pos with s_pos = <user, pos> - pos_shift and
    s_neg = user @ neg^T - neg_shift ([P, N]); masked negatives count as exp(-inf) = 0.

    Written out with its gradient (softmax minus the positive's one-hot) so that the [P, N] logits
    are passed over a few times instead of once per autodiff op: the shift rides in the matmul as
    an extra column, and the forward's exponentials are the backward's softmax (docs/status.md,
    "Session 13: a faster training step, Vertex baselines per model"). Gradients flow to user,
    pos and neg only."""
    pos_logit = tf.reduce_sum(user * pos, axis=-1) - pos_shift  # [P]
    ones = tf.ones_like(user[:, :1])
    neg_logit = tf.matmul(tf.concat([user, ones], 1), tf.concat([neg, -neg_shift[:, None]], 1),
                          transpose_b=True)  # [P, N]
    neg_logit = tf.where(valid, neg_logit, _MASKED)
    top = tf.maximum(tf.reduce_max(neg_logit, axis=1), pos_logit)  # [P]; an empty pool gives pos_logit
    neg_exp = tf.exp(neg_logit - top[:, None])  # [P, N]; 0 where masked
    pos_exp = tf.exp(pos_logit - top)
    total = tf.reduce_sum(neg_exp, axis=1) + pos_exp
    per_pair = top + tf.math.log(total) - pos_logit

    def grad(upstream):
        scale = upstream / total  # [P]
        d_neg = neg_exp * scale[:, None]  # [P, N]: upstream x softmax over the negatives
        d_pos = upstream * (pos_exp / total - 1.0)  # [P]
        d_user = tf.matmul(d_neg, neg) + d_pos[:, None] * pos
        return d_user, d_pos[:, None] * user, tf.matmul(d_neg, user, transpose_a=True), None, None, None

    return per_pair, grad


def per_user_mean(per_pair, pair_user, num_users=None):
    """Mean over users of each user's mean pair value; users without pairs do not count."""
    pair_user = tf.cast(pair_user, tf.int32)
    if num_users is None:
        num_users = tf.reduce_max(tf.concat([pair_user, [-1]], 0)) + 1
    total = tf.math.unsorted_segment_sum(per_pair, pair_user, num_users)
    count = tf.math.unsorted_segment_sum(tf.ones_like(per_pair), pair_user, num_users)
    user_mean = tf.math.divide_no_nan(total, count)
    n_users = tf.reduce_sum(tf.cast(count > 0, per_pair.dtype))
    return tf.math.divide_no_nan(tf.reduce_sum(user_mean), n_users)


def in_batch_log_q(counts, total, n_labels):
    """log Q(v) = log min(1, n_labels * count(v) / total); counts floored at 1 (unseen items, eval)."""
    counts = tf.maximum(tf.cast(counts, tf.float32), 1.0)
    total = tf.maximum(tf.cast(total, tf.float32), 1.0)
    q = tf.minimum(1.0, tf.cast(n_labels, tf.float32) * counts / total)
    return tf.math.log(q)


class Negatives(NamedTuple):
    item: tf.Tensor  # [N] int64
    log_q: tf.Tensor  # [N] float32
    valid: tf.Tensor  # [P, N] bool
    is_random: tf.Tensor  # [N] bool


def user_positive_mask(items, pair_user, user_pos_item, user_pos_valid):
    """[P, N] bool: items[n] is one of the valid positives of pair p's user (row pair_user[p]).

    Ids are compacted with tf.unique to U columns; each row's valid positives are scattered into a
    [B, U] table whose columns are then gathered at the items: O(B * (N + U)), a few times faster
    than a sorted search per (row, item) and far smaller than a [B, K, N] comparison.
    """
    items = tf.cast(tf.reshape(items, [-1]), tf.int64)
    user_pos_item = tf.cast(user_pos_item, tf.int64)
    b = tf.shape(user_pos_item)[0]
    n = tf.size(items)
    uniq, idx = tf.unique(tf.concat([items, tf.reshape(user_pos_item, [-1])], 0), out_idx=tf.int32)
    pos_idx = tf.reshape(idx[n:], tf.shape(user_pos_item))  # [B, K]
    rows = tf.broadcast_to(tf.range(b)[:, None], tf.shape(pos_idx))
    at = tf.boolean_mask(tf.stack([rows, pos_idx], -1), tf.cast(user_pos_valid, tf.bool))  # [Q, 2]
    # int32 counts (a positive repeated in a row adds up); > 0 = "is one of the row's positives".
    table = tf.scatter_nd(at, tf.ones(tf.shape(at)[:1], tf.int32), tf.stack([b, tf.size(uniq)]))
    found = tf.gather(table, idx[:n], axis=1) > 0  # [B, N]
    return tf.gather(found, tf.cast(pair_user, tf.int32))


def assemble_negatives(label_item, label_log_q, pair_user, user_pos_item, user_pos_valid,
                       random_item, random_log_q, max_in_batch: int, seed) -> Negatives:
    """The mixed negative pool and its per-pair validity (see the module docstring).

    label_item [P] int64 / label_log_q [P]: the pairs' positives and their in-batch log Q;
    pair_user [P] int32; user_pos_item / user_pos_valid [B, K]: every positive of each row (for masking);
    random_item [R] int64 uniform catalog draws with scalar `random_log_q`; seed: int [2] (cap subsample).
    """
    label_item = tf.cast(label_item, tf.int64)
    uniq, idx = tf.unique(label_item, out_idx=tf.int32)
    n_uniq = tf.size(uniq)
    uniq_log_q = tf.math.unsorted_segment_max(tf.cast(label_log_q, tf.float32), idx, n_uniq)
    k = tf.minimum(n_uniq, max_in_batch)
    noise = tf.random.stateless_uniform([n_uniq], seed=tf.cast(seed, tf.int64))
    _, keep = tf.math.top_k(noise, k=k)  # uniform subset of size k (all of them when n_uniq <= cap)
    inb_item = tf.gather(uniq, keep)
    subsample = tf.math.log(tf.cast(k, tf.float32)) - tf.math.log(tf.cast(tf.maximum(n_uniq, 1), tf.float32))
    inb_log_q = tf.gather(uniq_log_q, keep) + subsample
    random_item = tf.cast(tf.reshape(random_item, [-1]), tf.int64)
    r = tf.size(random_item)
    item = tf.concat([inb_item, random_item], 0)
    log_q = tf.concat([inb_log_q, tf.fill([r], tf.cast(random_log_q, tf.float32))], 0)
    is_random = tf.concat([tf.zeros([k], tf.bool), tf.ones([r], tf.bool)], 0)
    valid = ~user_positive_mask(item, pair_user, user_pos_item, user_pos_valid)
    return Negatives(item, log_q, valid, is_random)
