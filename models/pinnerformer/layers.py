"""PinnerFormer building blocks: per-action features, PreNorm blocks, heads (docs/models.md,
"Inputs and per-action features" and "Transformer and output head").

Mixed precision (train.mixed_precision): every layer computes in its `compute_dtype` (bfloat16 or
float16 under a mixed policy, float32 otherwise) with float32 variables. ActionFeatures assembles
its input in float32 (the time encodings stay float32 layers) and casts once at the end; the heads
cast to float32 before the L2 normalisation, so embeddings are always float32 unit vectors. Under
float32 every added cast is a no-op.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from pinrank.models.attention import MatMulAttention

from .time_encoding import PeriodicTimeEncoding, abs_periods, rel_periods

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def _gelu(x):
    return tf.nn.gelu(x, approximate=False)


@tf.custom_gradient
def _gelu_hand_grad(x):
    """Exact GELU x * Phi(x) whose gradient reuses Phi(x): dy * (Phi(x) + x * phi(x)), a few
    elementwise passes fewer than autodiff through erf (same values within float rounding)."""
    cdf = 0.5 * (1.0 + tf.math.erf(x * _SQRT_HALF))

    def grad(dy):
        return dy * (cdf + x * (_INV_SQRT_2PI * tf.exp(-0.5 * tf.square(x))))

    return x * cdf, grad


def gelu_activation(hand_gradients: bool):
    return _gelu_hand_grad if hand_gradients else _gelu


@tf.custom_gradient
def _l2_normalize_hand_grad(x):
    """tf.math.l2_normalize(x, axis=-1) (the same forward ops, epsilon 1e-12) with the closed-form
    gradient dx = r * (dy - y * sum(dy * y)), r = 1 / max(|x|, 1e-6): autodiff of the broadcast
    product reduces through a slow broadcast-gradient Sum (~2x the time on [8k, 64])."""
    square_sum = tf.reduce_sum(tf.square(x), -1, keepdims=True)
    r = tf.math.rsqrt(tf.maximum(square_sum, 1e-12))
    y = x * r

    def grad(dy):
        # Below the epsilon clamp r is a constant: no projection term (as tf.maximum's gradient).
        proj = tf.where(square_sum >= 1e-12, tf.reduce_sum(dy * y, -1, keepdims=True), 0.0)
        return r * (dy - y * proj)

    return y, grad


def l2_normalize(x, hand_gradients: bool):
    """Unit rows over the last axis; with `hand_gradients` (float32 only) the closed-form gradient."""
    if hand_gradients and x.dtype == tf.float32:
        return _l2_normalize_hand_grad(x)
    return tf.math.l2_normalize(x, axis=-1)


def _layer_norm_hand_grad(x, gamma, beta, epsilon: float):
    """LayerNorm over the last axis with the closed-form gradient
    dx = r * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma, r = 1 / sqrt(var + eps):
    Keras' unfused path (taken because epsilon < 1e-5) differentiates moments and
    batch_normalization op by op, with several more broadcast passes over [B, M, H]."""

    @tf.custom_gradient
    def ln(x, gamma, beta):
        mean, var = tf.nn.moments(x, [-1], keepdims=True)
        r = tf.math.rsqrt(var + epsilon)
        xhat = (x - mean) * r

        def grad(dy):
            g = dy * gamma
            dx = r * (g - tf.reduce_mean(g, -1, keepdims=True)
                      - xhat * tf.reduce_mean(g * xhat, -1, keepdims=True))
            width = tf.shape(x)[-1]
            dgamma = tf.reduce_sum(tf.reshape(dy * xhat, [-1, width]), 0)
            dbeta = tf.reduce_sum(tf.reshape(dy, [-1, width]), 0)
            return dx, dgamma, dbeta

        return xhat * gamma + beta, grad

    return ln(x, gamma, beta)


class LayerNorm(keras.layers.LayerNormalization):
    """Keras LayerNormalization over the last axis (same weights and config), with the hand-written
    gradient of `_layer_norm_hand_grad` when `hand_gradients` (model.hand_gradients)."""

    def __init__(self, hand_gradients: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.hand_gradients = hand_gradients

    def call(self, inputs):
        if not self.hand_gradients or inputs.dtype != tf.float32 or self.axis != [inputs.shape.rank - 1]:
            return super().call(inputs)
        return _layer_norm_hand_grad(inputs, tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta),
                                     self.epsilon)

    def get_config(self):
        return {**super().get_config(), "hand_gradients": self.hand_gradients}


def attention_mask(seq_len, m):
    """[B, M, M] bool, True = query i may attend key j.

    Newest-first causal: j >= i (itself and older actions), and j must be a real action (j < seq_len).
    A padded query row (i >= seq_len) would have no key at all; it is allowed to attend to itself only, so its
    softmax is well defined (no NaN). Real rows never attend to padded keys, so padded rows cannot leak into
    real outputs.
    """
    seq_len = tf.cast(tf.reshape(seq_len, [-1]), tf.int32)
    i = tf.range(m)[:, None]
    j = tf.range(m)[None, :]
    real_key = tf.sequence_mask(seq_len, m)[:, None, :]
    return ((j >= i)[None] & real_key) | tf.equal(i, j)[None]


class ActionFeatures(keras.layers.Layer):
    """Per-action input a_i = [item_emb, action_emb, surface_emb, log1p(duration), abs-time enc(ts),
    rel enc(ts[0] - ts[i]) (time since the newest action), rel enc(ts[i] - ts[i+1]) (gap to the previous,
    older action; 0 for the oldest real action)]; padded positions are all zeros.

    Action / surface indices: 0 = padding, 1..V = vocabulary, V+1 = OOV (tables of size V+2). Padding and OOV
    contribute zero vectors ("out-of-vocabulary values are dropped").
    Deviation: log1p(duration) instead of log(duration), so zero durations stay finite
    (docs/models.md, "Deviations").
    """

    def __init__(self, num_actions: int, num_surfaces: int, action_dim: int, surface_dim: int, **kwargs):
        super().__init__(**kwargs)
        if num_actions < 3 or num_surfaces < 3:
            raise ValueError("num_actions / num_surfaces count padding + vocabulary + OOV (>= 3)")
        self.num_actions = num_actions
        self.num_surfaces = num_surfaces
        self.action_emb = keras.layers.Embedding(num_actions, action_dim, name="action_embedding")
        self.surface_emb = keras.layers.Embedding(num_surfaces, surface_dim, name="surface_embedding")
        # float32 whatever the policy: sin/cos of large timestamps (module docstring of time_encoding).
        self.abs_time = PeriodicTimeEncoding(abs_periods(), name="abs_time", dtype="float32")
        self.since_latest = PeriodicTimeEncoding(rel_periods(), name="time_since_latest", dtype="float32")
        self.gap = PeriodicTimeEncoding(rel_periods(), name="time_gap", dtype="float32")

    @staticmethod
    def _vocab_lookup(table, idx, size):
        idx = tf.cast(idx, tf.int32)
        in_vocab = (idx >= 1) & (idx <= size - 2)
        emb = tf.cast(table(tf.clip_by_value(idx, 0, size - 1)), tf.float32)
        return tf.where(in_vocab[..., None], emb, 0.0)

    def call(self, item_vec, action, surface, ts, duration, seq_len):
        m = tf.shape(ts)[1]
        seq_len = tf.cast(tf.reshape(seq_len, [-1]), tf.int32)
        real = tf.sequence_mask(seq_len, m)
        ts = tf.cast(ts, tf.int64)
        since = tf.maximum(ts[:, :1] - ts, 0)
        older = tf.concat([ts[:, 1:], ts[:, -1:]], axis=1)
        has_older = (tf.range(m)[None, :] + 1) < seq_len[:, None]
        gap = tf.where(has_older, tf.maximum(ts - older, 0), tf.zeros_like(ts))
        dur = tf.math.log1p(tf.maximum(tf.cast(duration, tf.float32), 0.0))[..., None]
        x = tf.concat([
            tf.cast(item_vec, tf.float32),
            self._vocab_lookup(self.action_emb, action, self.num_actions),
            self._vocab_lookup(self.surface_emb, surface, self.num_surfaces),
            dur,
            self.abs_time(ts),
            self.since_latest(since),
            self.gap(gap),
        ], axis=-1)
        return tf.cast(tf.where(real[..., None], x, 0.0), self.compute_dtype)


class TransformerBlock(keras.layers.Layer):
    """PreNorm block: x += Dropout(MHA(LN(x))); x += Dropout(FFN(LN(x))), FFN = Dense(mult*H, GELU) -> Dense(H)."""

    def __init__(self, hidden: int, num_heads: int, ffn_mult: int, dropout: float,
                 hand_gradients: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.ln_attn = LayerNorm(hand_gradients, epsilon=1e-6, name="ln_attn")
        self.attn = MatMulAttention(num_heads, key_dim=hidden // num_heads, dropout=dropout, name="mha")
        self.drop_attn = keras.layers.Dropout(dropout)
        self.ln_ffn = LayerNorm(hand_gradients, epsilon=1e-6, name="ln_ffn")
        self.ffn_in = keras.layers.Dense(ffn_mult * hidden, activation=gelu_activation(hand_gradients),
                                         name="ffn_in")
        self.ffn_out = keras.layers.Dense(hidden, name="ffn_out")
        self.drop_ffn = keras.layers.Dropout(dropout)

    def call(self, x, mask, training=None):
        h = self.ln_attn(x)
        x = x + self.drop_attn(self.attn(h, h, attention_mask=mask, training=training), training=training)
        h = self.ln_ffn(x)
        return x + self.drop_ffn(self.ffn_out(self.ffn_in(h)), training=training)


class OutputHead(keras.layers.Layer):
    """Per-position head: LN -> Dense(mult*H) -> GELU -> Dense(D) -> L2 normalisation."""

    def __init__(self, hidden: int, ffn_mult: int, output_dim: int, hand_gradients: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.ln = LayerNorm(hand_gradients, epsilon=1e-6, name="ln_out")
        self.fc1 = keras.layers.Dense(ffn_mult * hidden, activation=gelu_activation(hand_gradients), name="fc1")
        self.fc2 = keras.layers.Dense(output_dim, name="fc2")
        self.hand_gradients = hand_gradients

    def call(self, x, skip=None):
        """`skip` (same shape as the output, optional) is added before the normalisation."""
        y = tf.cast(self.fc2(self.fc1(self.ln(x))), tf.float32)  # float32 output under any policy
        return l2_normalize(y if skip is None else y + tf.cast(skip, tf.float32), self.hand_gradients)


class ItemTower(keras.layers.Layer):
    """Pin tower on the frozen content embedding: Dense(mult*H) -> GELU -> Dense(D) -> L2 normalisation.
    The paper leaves the depth open; we mirror the output head, without its LayerNorm
    (docs/models.md, "Transformer and output head")."""

    def __init__(self, hidden: int, ffn_mult: int, output_dim: int, hand_gradients: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = keras.layers.Dense(ffn_mult * hidden, activation=gelu_activation(hand_gradients), name="fc1")
        self.fc2 = keras.layers.Dense(output_dim, name="fc2")
        self.hand_gradients = hand_gradients

    def call(self, x, skip=None):
        """`skip` (same shape as the output, optional) is added before the normalisation."""
        y = tf.cast(self.fc2(self.fc1(x)), tf.float32)  # float32 output under any policy
        return l2_normalize(y if skip is None else y + tf.cast(skip, tf.float32), self.hand_gradients)


def history_mean(item_vec, weight):
    """Per newest-first position s, the weighted mean of the item vectors at positions >= s
    (s itself and every older action): [B, M, Din], [B, M] -> [B, M, Din] (0 where no weight)."""
    # Suffix sums as a product with the upper-triangular ones matrix: a batched matmul is ~2x
    # faster forward + backward than tf.cumsum on CPU (same sums, in another order).
    b, m = tf.shape(weight)[0], tf.shape(weight)[1]
    upper = tf.linalg.band_part(tf.ones([m, m], weight.dtype), 0, -1)  # [s, t] = 1 where t >= s
    num = tf.matmul(tf.broadcast_to(upper, [b, m, m]), weight[..., None] * item_vec)
    den = tf.linalg.matvec(upper, weight)[..., None]
    return tf.math.divide_no_nan(num, den)
