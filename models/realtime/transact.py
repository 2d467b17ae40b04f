"""TransAct realtime-sequence module in tf_keras (docs/models.md, "Realtime sequence and early fusion",
"Encoder and output compression", "Random time window").

Inputs (newest first, P = cfg.seq_len; wider sequences are truncated to their first P entries, narrower
ones are padded at the old end):
    action_type   int   [B, P]      0 (or < 0) = padding, 1..V real action types, > V -> one OOV row
    item_emb_seq  float [B, P, De]  frozen item embeddings (the caller does the id -> embedding lookup)
    action_ts     int64 [B, P]      seconds
    request_ts    int64 [B] / [B, 1] seconds
    candidate_emb float [B, De]     the candidate's frozen embedding (unused with fusion "none")

Key mask ("valid" = True = may be attended; keys only, as in the official code):
    masked = padding  OR  (request_ts - action_ts) < T
    * training: T ~ U{0, ..., W} (integer seconds, both ends inclusive, W = cfg.time_window_s), drawn ONCE
      per forward pass for the whole batch (official code: `random.randint(0, time_window_ms)`);
    * evaluation / serving: T = 0;
    so an action exactly T seconds old stays visible, and future actions (action_ts > request_ts, age < 0
    <= T) are always masked. An action logged in the same second as the request (age 0) is kept at
    inference (decision, same as the official `< 0` eval mask; a logging race, not leakage).
    Position 0 is always unmasked, so no row is ever fully masked; MHA's additive mask is finite (-1e9) in
    any case, so even an all-padding row gives finite outputs.
    Padded positions get zero action and item vectors (PyTorch `padding_idx=0` zeroes the action part; we
    also zero the item part so junk in padded slots cannot leak in).

Encoder: no positional encoding; cfg.num_layers blocks, Post-LN as the official PyTorch defaults
(x = LN(x + Drop(MHA(x))); x = LN(x + Drop(W2 Drop(ReLU(W1 x)))), LN eps 1e-5, attention dropout);
cfg.post_ln=False gives Pre-LN blocks plus a final LayerNorm (ablation).

Early fusion:
    concat: row i = [action_emb_i, item_emb_i, candidate_emb]                    d = A + 2 De (paper)
    append: rows [action_emb_i, item_emb_i] plus one extra token [emb(candidate id), candidate_emb] at the
            END (index P, after the oldest action), never masked; the first-K rows stay the K newest
            actions, the max-pool includes the candidate token. Its action id (V + 2) is dedicated.
    none:   rows [action_emb_i, item_emb_i]; the module output is then candidate independent.

Output: concat(Dense(d)(max-pool over rows), flatten(first K rows)) -> [B, d + K d] (1056 for d = 96,
K = 10). With cfg.exclude_masked_from_output=False (official code) masked rows still enter both; True
drops them from the max-pool and zeroes them in the first-K block (the paper's wording; ablation).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf
import tf_keras as keras

from pinrank.models.attention import MatMulAttention

from .config import RealtimeConfig

ACTION_TYPE = "action_type"
ITEM_EMB_SEQ = "item_emb_seq"
ACTION_TS = "action_ts"
REQUEST_TS = "request_ts"
CANDIDATE_EMB = "candidate_emb"
INPUT_KEYS = (ACTION_TYPE, ITEM_EMB_SEQ, ACTION_TS, REQUEST_TS, CANDIDATE_EMB)

_no_autograph = tf.autograph.experimental.do_not_convert


class EncoderBlock(keras.layers.Layer):
    """One PyTorch-style TransformerEncoderLayer (ReLU FFN, dropout 0.1 everywhere PyTorch puts it)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, post_ln: bool = True,
                 epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.post_ln = post_ln
        self.attn = MatMulAttention(num_heads, key_dim=dim // num_heads, dropout=dropout, name="mha")
        self.drop_attn = keras.layers.Dropout(dropout)
        self.ffn_in = keras.layers.Dense(ffn_dim, activation="relu", name="ffn_in")
        self.drop_ffn_hidden = keras.layers.Dropout(dropout)
        self.ffn_out = keras.layers.Dense(dim, name="ffn_out")
        self.drop_ffn = keras.layers.Dropout(dropout)
        self.ln_attn = keras.layers.LayerNormalization(epsilon=epsilon, name="ln_attn")
        self.ln_ffn = keras.layers.LayerNormalization(epsilon=epsilon, name="ln_ffn")

    def _ffn(self, x, training):
        return self.ffn_out(self.drop_ffn_hidden(self.ffn_in(x), training=training))

    def call(self, x, mask, training=None):
        """x [B, L, d]; mask bool [B, 1, L] or [B, L, L], True = attend."""
        if self.post_ln:
            x = self.ln_attn(x + self.drop_attn(self.attn(x, x, attention_mask=mask, training=training),
                                                training=training))
            return self.ln_ffn(x + self.drop_ffn(self._ffn(x, training), training=training))
        h = self.ln_attn(x)
        x = x + self.drop_attn(self.attn(h, h, attention_mask=mask, training=training), training=training)
        return x + self.drop_ffn(self._ffn(self.ln_ffn(x), training), training=training)


def _fit_width(x, width: int):
    """First `width` entries along axis 1, zero-padded at the end when narrower."""
    x = x[:, :width]
    pad = tf.maximum(width - tf.shape(x)[1], 0)
    rank = x.shape.rank
    x = tf.pad(x, [[0, 0], [0, pad]] + [[0, 0]] * (rank - 2))
    x.set_shape([x.shape[0], width] + x.shape.as_list()[2:])
    return x


def _broadcast_batch(x, n):
    """Broadcast the leading dim of x ([1 or n, ...]) to n, keeping the static inner dims."""
    out = tf.broadcast_to(x, tf.concat([tf.reshape(n, [1]), tf.shape(x)[1:]], axis=0))
    out.set_shape([None] + x.shape.as_list()[1:])
    return out


class TransAct(keras.layers.Layer):
    """`TransAct(cfg)(inputs, training=...)` -> [B, cfg.output_dim]; inputs is a dict with INPUT_KEYS
    (or a list/tuple in that order). See the module docstring for shapes and semantics.

    seed: None -> the training window T comes from `tf.random.uniform` (global seed); an int -> stateless
    draws seeded by (seed, k) for the k-th training call (reproducible; the counter is a layer variable).
    """

    def __init__(self, cfg: RealtimeConfig, seed: Optional[int] = None, **kwargs):
        kwargs.setdefault("name", "transact")
        super().__init__(**kwargs)
        if isinstance(cfg, dict):
            cfg = RealtimeConfig(**cfg)
        self.cfg = cfg
        self.seed = seed
        v = cfg.num_action_types
        self.oov_id = v + 1
        self.candidate_action_id = v + 2  # append fusion only
        self.action_embedding = keras.layers.Embedding(v + 3, cfg.action_emb_dim, name="action_embedding")
        d = cfg.model_dim
        self.blocks = [EncoderBlock(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.post_ln, cfg.ln_epsilon,
                                    name=f"encoder_{i}") for i in range(cfg.num_layers)]
        self.final_ln = (None if cfg.post_ln or cfg.num_layers == 0
                         else keras.layers.LayerNormalization(epsilon=cfg.ln_epsilon, name="final_ln"))
        self.out_linear = keras.layers.Dense(d, name="out_linear") if cfg.max_pool else None
        self._draws = None
        if seed is not None:
            self._draws = self.add_weight(name="window_draws", shape=(), dtype=tf.int64, initializer="zeros",
                                          trainable=False,
                                          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    # ------------------------------------------------------------------------------------ inputs
    @staticmethod
    def _unpack(inputs):
        if isinstance(inputs, dict):
            return {k: inputs.get(k) for k in INPUT_KEYS}
        return dict(zip(INPUT_KEYS, list(inputs) + [None] * (len(INPUT_KEYS) - len(inputs))))

    def _action_ids(self, action_type):
        a = tf.cast(_fit_width(tf.convert_to_tensor(action_type), self.cfg.seq_len), tf.int32)
        pad = a <= 0
        idx = tf.where(pad, 0, tf.where(a > self.cfg.num_action_types, self.oov_id, a))
        return idx, pad

    def sequence_rows(self, action_type, item_emb_seq):
        """User-side rows [B, P, A + De] = [action_emb, item_emb] (zero at padding) and padding [B, P]."""
        idx, pad = self._action_ids(action_type)
        item = tf.cast(_fit_width(tf.convert_to_tensor(item_emb_seq), self.cfg.seq_len), tf.float32)
        item.set_shape([None, self.cfg.seq_len, self.cfg.item_emb_dim])
        # float32 rows under any policy (mixed precision); run_encoder casts them to the compute dtype.
        rows = tf.concat([tf.cast(self.action_embedding(idx), tf.float32), item], axis=-1)
        return tf.where(pad[..., None], tf.zeros_like(rows), rows), pad

    def draw_time_window(self):
        """T ~ U{0..W} int64 scalar (one draw; advances the stateless counter when seeded)."""
        w = self.cfg.time_window_s
        if w == 0:
            return tf.constant(0, tf.int64)
        if self._draws is None:
            return tf.random.uniform([], 0, w + 1, dtype=tf.int64)
        k = self._draws.assign_add(1)
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(k, tf.int64)])
        return tf.random.stateless_uniform([], seed=seed, minval=0, maxval=w + 1, dtype=tf.int64)

    def key_mask(self, action_type, action_ts, request_ts, training=False, time_window=None):
        """(valid [B, P] bool, True = attend, and the window T int64 scalar actually used).

        time_window: explicit T (seconds) overriding the training draw / the eval 0 (tests, ablations)."""
        _, pad = self._action_ids(action_type)
        ts = tf.cast(_fit_width(tf.convert_to_tensor(action_ts), self.cfg.seq_len), tf.int64)
        req = tf.reshape(tf.cast(request_ts, tf.int64), [-1, 1])
        if time_window is not None:
            t = tf.maximum(tf.cast(time_window, tf.int64), 0)  # never unmask future actions
        elif training:
            t = self.draw_time_window()
        else:
            t = tf.constant(0, tf.int64)
        masked = pad | ((req - ts) < t)  # t >= 0, so future actions (age < 0) are always masked
        first = tf.equal(tf.range(self.cfg.seq_len), 0)[None, :]
        return ~masked | first, t

    # ------------------------------------------------------------------------------------ encoder
    def fuse(self, rows, valid, candidate_emb):
        """Early fusion. rows [B or 1, P, A+De], valid [B or 1, P], candidate_emb [N, De] (N = B, or any N
        when the user side has batch 1: it is broadcast) -> (x [N, L, d], valid [N, L])."""
        fusion = self.cfg.fusion
        if fusion == "none":
            return rows, valid
        cand = tf.cast(candidate_emb, tf.float32)
        cand.set_shape([None, self.cfg.item_emb_dim])
        n = tf.shape(cand)[0]
        rows = _broadcast_batch(rows, n)
        valid = _broadcast_batch(valid, n)
        if fusion == "concat":
            tiled = tf.tile(cand[:, None, :], [1, self.cfg.seq_len, 1])
            return tf.concat([rows, tiled], axis=-1), valid
        token_action = tf.cast(self.action_embedding(tf.fill(tf.reshape(n, [1]), self.candidate_action_id)),
                               tf.float32)
        token = tf.concat([token_action, cand], axis=-1)[:, None, :]
        return tf.concat([rows, token], axis=1), tf.concat([valid, tf.ones(tf.stack([n, 1]), tf.bool)], 1)

    def run_encoder(self, x, valid, training=None):
        mask = valid[:, None, :]
        x = tf.cast(x, self.compute_dtype)  # bfloat16 / float16 under a mixed policy, else a no-op
        for block in self.blocks:
            x = block(x, mask, training=training)
        if self.final_ln is not None:
            x = self.final_ln(x)
        return x

    def encode(self, inputs, training=None, time_window=None):
        """(O [B, L, d] encoder output, valid [B, L]); L = P (+1 with append fusion)."""
        f = self._unpack(inputs)
        rows, _ = self.sequence_rows(f[ACTION_TYPE], f[ITEM_EMB_SEQ])
        valid, _ = self.key_mask(f[ACTION_TYPE], f[ACTION_TS], f[REQUEST_TS], training=training,
                                 time_window=time_window)
        x, valid = self.fuse(rows, valid, f[CANDIDATE_EMB])
        return self.run_encoder(x, valid, training=training), valid

    def compress(self, out, valid):
        """[B, L, d] -> [B, (d if max_pool) + K d]: Dense(d)(max-pool) first, then the first K rows."""
        cfg = self.cfg
        d = cfg.model_dim
        parts = []
        if cfg.exclude_masked_from_output:
            keep = valid[..., None]
        if cfg.max_pool:
            pooled_in = out
            if cfg.exclude_masked_from_output:  # position 0 is always valid: never an empty max
                pooled_in = tf.where(keep, out, tf.fill(tf.shape(out), out.dtype.min))
            parts.append(self.out_linear(tf.reduce_max(pooled_in, axis=1)))
        if cfg.latest_k:
            first = out[:, :cfg.latest_k]
            if cfg.exclude_masked_from_output:
                first = tf.where(keep[:, :cfg.latest_k], first, tf.zeros_like(first))
            parts.append(tf.reshape(first, [-1, cfg.latest_k * d]))
        return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]

    @_no_autograph
    def call(self, inputs, training=None, time_window=None):
        out, valid = self.encode(inputs, training=training, time_window=time_window)
        return self.compress(out, valid)

    @_no_autograph
    def call_request(self, action_type, item_emb_seq, action_ts, request_ts, candidate_emb=None):
        """Inference for ONE user and N candidates: user tensors [P] / [1, P], [P, De] / [1, P, De],
        [P] / [1, P], scalar / [1]; candidate_emb [N, De] -> [N, output_dim]. Equal to `call` on the user
        inputs tiled N times (training=False). With fusion "none", candidate_emb=None returns the single
        candidate-independent row [1, output_dim].

        Shared (computed once): action-type lookup, padding/zeroing, the key mask, the [action, item] rows.
        With fusion "none" the whole encoder and compression run once and the result is broadcast.
        Not shared: with "concat" / "append" every encoder row depends on the candidate (fused before
        attention), so the encoder runs on N x L rows; only the first layer's Q/K/V projections of the
        user block could in principle be split off (W [u; c] = W_u u + W_c c), which would need a custom
        attention layer instead of keras MultiHeadAttention (not done).
        """
        def batch1(x, rank):
            x = tf.convert_to_tensor(x)
            return x if x.shape.rank == rank else x[None]

        action_type = batch1(action_type, 2)
        rows, _ = self.sequence_rows(action_type, batch1(item_emb_seq, 3))
        valid, _ = self.key_mask(action_type, batch1(action_ts, 2), tf.reshape(request_ts, [1]),
                                 training=False)
        if self.cfg.fusion == "none":
            z = self.compress(self.run_encoder(rows, valid, training=False), valid)  # [1, out]
            return z if candidate_emb is None else _broadcast_batch(z, tf.shape(candidate_emb)[0])
        if candidate_emb is None:
            raise ValueError(f"fusion {self.cfg.fusion!r} needs candidate_emb")
        x, valid = self.fuse(rows, valid, candidate_emb)
        return self.compress(self.run_encoder(x, valid, training=False), valid)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([None, self.cfg.output_dim])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(cfg=dataclasses.asdict(self.cfg), seed=self.seed)
        return cfg
