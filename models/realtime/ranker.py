"""Pinnability-style multi-task ranker with the TransAct realtime module (docs/models.md, "DCNv2 and heads").

Input dict (B = number of (user, candidate) examples):
    user / request side
      <context categorical name>  int   [B] / [B, 1]   ids in [0, vocab); others -> one OOV row
      <context numeric name>      float [B] / [B, 1]   -> BatchNormalization (all numerics together)
      PINNERFORMER_EMB            float [B, Dp]        precomputed batch user embedding (if use_pinnerformer)
      RT_ACTION_TYPE              int   [B, P]         realtime sequence, newest first (if use_realtime)
      RT_ITEM_EMB                 float [B, P, De]     frozen item embeddings of the sequence
      RT_ACTION_TS                int64 [B, P]         seconds
      REQUEST_TS                  int64 [B] / [B, 1]   seconds
    candidate side
      CANDIDATE_EMB               float [B, De]        frozen item embedding of the candidate
      <candidate categorical name> int  [B] / [B, 1]
      PF_CANDIDATE_EMB            float [B, Dp]        PinnerFormer pin-tower embedding of the
                                                       candidate (if use_pf_dot)

x0 = concat([user block (context embeddings, BN(numerics), PinnerFormer) | TransAct output | candidate block
(candidate embedding, candidate categorical embeddings) | with use_pf_dot, the dot product
<PINNERFORMER_EMB, PF_CANDIDATE_EMB>, the score PinnerFormer retrieves by (0 without an embedding)])
-> full-rank DCNv2 (num_cross_layers) -> MLP (ReLU + dropout) -> Dense(H) -> one sigmoid per head.
`model(features)` -> {head: prob [B]}.

Training (`fit`): labels = {head: [B]} or [B, H] 0/1 in `cfg.heads` order; optional sample_weight [B] = w_u;
loss = losses.weighted_bce_from_logits with losses.head_weights(labels, cfg.label_weights,
cfg.no_action_weight) (rule in losses.py).

Mixed precision (ranker_train.mixed_precision): the model itself stays float32 (its inputs are not
cast), its layers compute in the policy's dtype; the blocks are concatenated in float32 and the
logits, probabilities and loss are float32, so the exported scores keep their dtype.

Serving: `rank_request(user_features, candidate_features)` scores one request (one user, N candidates) and
computes the user-only work once: context embeddings, numeric BN, PinnerFormer input, realtime action
lookups and key mask (and with fusion "none" the whole TransAct output), plus the user block's share of the
first cross layer (W x0 = W_u u + W_c c). The TransAct encoder (concat/append fusion), the later cross
layers, the MLP and the heads depend on the candidate and run per candidate.
"""
from __future__ import annotations

from typing import Dict, Optional

import tensorflow as tf
import tf_keras as keras

from pinrank.models.schedules import WarmupCosine

from . import losses
from .config import RankerConfig
from .dcn import CrossNetwork
from .transact import TransAct

PINNERFORMER_EMB = "pinnerformer_emb"
CANDIDATE_EMB = "candidate_emb"
PF_CANDIDATE_EMB = "pf_candidate_emb"
RT_ACTION_TYPE = "rt_action_type"
RT_ITEM_EMB = "rt_item_emb"
RT_ACTION_TS = "rt_action_ts"
REQUEST_TS = "request_ts"

_no_autograph = tf.autograph.experimental.do_not_convert


def user_feature_keys(cfg: RankerConfig):
    """Keys that are per request (one value per user), in no particular order."""
    keys = [s[0] for s in cfg.context_categorical] + list(cfg.context_numeric)
    if cfg.use_pinnerformer:
        keys.append(PINNERFORMER_EMB)
    if cfg.use_realtime:
        keys += [RT_ACTION_TYPE, RT_ITEM_EMB, RT_ACTION_TS, REQUEST_TS]
    return tuple(keys)


def candidate_feature_keys(cfg: RankerConfig):
    return ((CANDIDATE_EMB,) + tuple(s[0] for s in cfg.candidate_categorical)
            + ((PF_CANDIDATE_EMB,) if cfg.use_pf_dot else ()))


def make_optimizer(cfg: RankerConfig):
    """Adam with the warmup + cosine schedule of the config."""
    return keras.optimizers.Adam(WarmupCosine(cfg.learning_rate, cfg.warmup_steps, cfg.decay_steps,
                                              cfg.min_lr_ratio))


def _column(x, dtype):
    return tf.reshape(tf.cast(x, dtype), [-1])


class Ranker(keras.Model):
    """See the module docstring. `seed` seeds TransAct's time-window draws (None = global RNG)."""

    def __init__(self, cfg: RankerConfig, seed: Optional[int] = None, name: str = "ranker", **kwargs):
        kwargs.setdefault("dtype", "float32")  # float32 model, mixed layers (module docstring)
        super().__init__(name=name, **kwargs)
        self.cfg = cfg
        self.heads = cfg.heads
        self.context_embeddings = [keras.layers.Embedding(v + 1, d, name=f"ctx_{n}")
                                   for n, v, d in cfg.context_categorical]
        self.candidate_embeddings = [keras.layers.Embedding(v + 1, d, name=f"cand_{n}")
                                     for n, v, d in cfg.candidate_categorical]
        self.numeric_norm = (keras.layers.BatchNormalization(name="numeric_bn")
                             if cfg.context_numeric else None)
        self.transact = TransAct(cfg.realtime, seed=seed, name="transact") if cfg.use_realtime else None
        self.cross = CrossNetwork(cfg.num_cross_layers, name="dcn")
        self.mlp = [keras.layers.Dense(w, activation="relu", name=f"mlp_{i}") for i, w in enumerate(cfg.mlp_dims)]
        self.mlp_dropout = [keras.layers.Dropout(cfg.dropout) for _ in cfg.mlp_dims]
        self.head_layer = keras.layers.Dense(len(cfg.heads), name="heads")  # column h = logit of head h
        self.label_weights = tf.constant(cfg.label_weights, tf.float32)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    # ------------------------------------------------------------------------------------ blocks
    @staticmethod
    def _lookup(layer, vocab, ids):
        ids = _column(ids, tf.int32)
        return tf.cast(layer(tf.where((ids < 0) | (ids >= vocab), vocab, ids)), tf.float32)

    def user_block(self, features, training=None):
        """[B, Du]: context embeddings, BN(numerics), PinnerFormer embedding (Du may be 0)."""
        cfg = self.cfg
        parts = [self._lookup(layer, v, features[n])
                 for layer, (n, v, _) in zip(self.context_embeddings, cfg.context_categorical)]
        if self.numeric_norm is not None:
            num = tf.stack([_column(features[n], tf.float32) for n in cfg.context_numeric], axis=-1)
            parts.append(tf.cast(self.numeric_norm(num, training=training), tf.float32))
        if cfg.use_pinnerformer:
            pf = tf.cast(features[PINNERFORMER_EMB], tf.float32)
            pf = tf.reshape(pf, [-1, cfg.pinnerformer_dim])
            parts.append(pf)
        if not parts:
            return tf.zeros([self._batch_size(features), 0])
        return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]

    def _batch_size(self, features):
        return tf.shape(features[CANDIDATE_EMB])[0]

    def candidate_block(self, features):
        """[N, Dc]: candidate embedding and candidate categorical embeddings."""
        cand = tf.reshape(tf.cast(features[CANDIDATE_EMB], tf.float32), [-1, self.cfg.item_emb_dim])
        parts = [cand] + [self._lookup(layer, v, features[n])
                          for layer, (n, v, _) in zip(self.candidate_embeddings, self.cfg.candidate_categorical)]
        return tf.concat(parts, axis=-1) if len(parts) > 1 else cand

    def pf_dot(self, user_pf, candidate_features):
        """[N, 1]: <user PinnerFormer embedding [1 or N, Dp], candidate's pin tower [N, Dp]>."""
        dp = self.cfg.pinnerformer_dim
        cand = tf.reshape(tf.cast(candidate_features[PF_CANDIDATE_EMB], tf.float32), [-1, dp])
        user = tf.reshape(tf.cast(user_pf, tf.float32), [-1, dp])
        return tf.reduce_sum(user * cand, axis=-1, keepdims=True)

    def _realtime_inputs(self, features):
        return {"action_type": features[RT_ACTION_TYPE], "item_emb_seq": features[RT_ITEM_EMB],
                "action_ts": features[RT_ACTION_TS], "request_ts": features[REQUEST_TS],
                "candidate_emb": features[CANDIDATE_EMB]}

    def top(self, x, training=None):
        """MLP + heads on the cross-network output -> logits [N, H]."""
        for dense, drop in zip(self.mlp, self.mlp_dropout):
            x = drop(dense(x), training=training)
        return tf.cast(self.head_layer(x), tf.float32)

    # ------------------------------------------------------------------------------------ forward
    @_no_autograph
    def logits(self, features, training=None):
        """[B, H] logits in `cfg.heads` order."""
        parts = [self.user_block(features, training=training)]
        if self.transact is not None:
            parts.append(tf.cast(self.transact(self._realtime_inputs(features), training=training), tf.float32))
        parts.append(self.candidate_block(features))
        if self.cfg.use_pf_dot:
            parts.append(self.pf_dot(features[PINNERFORMER_EMB], features))
        return self.top(self.cross(tf.concat(parts, axis=-1)), training=training)

    @_no_autograph
    def call(self, features, training=None, return_logits=False):
        z = self.logits(features, training=training)
        if not return_logits:
            z = tf.sigmoid(z)
        return {h: z[:, i] for i, h in enumerate(self.heads)}

    @_no_autograph
    def rank_request(self, user_features, candidate_features) -> Dict[str, tf.Tensor]:
        """One request: user_features (keys of `user_feature_keys`, each for ONE user: scalars or [1],
        PinnerFormer [Dp] / [1, Dp], sequences [P] / [1, P], [P, De] / [1, P, De]) and candidate_features
        (CANDIDATE_EMB [N, De] + candidate categoricals [N]) -> {head: prob [N]} (inference mode).
        Equals `model(tiled features)` up to float rounding."""
        cfg = self.cfg
        cand_emb = tf.reshape(tf.cast(candidate_features[CANDIDATE_EMB], tf.float32), [-1, cfg.item_emb_dim])
        user = dict(user_features)
        if cfg.use_pinnerformer:
            user[PINNERFORMER_EMB] = tf.reshape(user[PINNERFORMER_EMB], [1, cfg.pinnerformer_dim])
        user[CANDIDATE_EMB] = cand_emb[:1]  # only for the batch size of an empty user block
        shared = [self.user_block(user, training=False)]  # [1, Du]
        per_row = []
        if self.transact is not None:
            seq = (user[RT_ACTION_TYPE], user[RT_ITEM_EMB], user[RT_ACTION_TS], user[REQUEST_TS])
            if cfg.realtime.fusion == "none":
                shared.append(tf.cast(self.transact.call_request(*seq, candidate_emb=None), tf.float32))  # [1, R]
            else:
                per_row.append(tf.cast(self.transact.call_request(*seq, candidate_emb=cand_emb), tf.float32))
        per_row.append(self.candidate_block(dict(candidate_features, **{CANDIDATE_EMB: cand_emb})))
        if cfg.use_pf_dot:
            per_row.append(self.pf_dot(user[PINNERFORMER_EMB], candidate_features))
        shared = tf.concat(shared, axis=-1) if len(shared) > 1 else shared[0]
        per_row = tf.concat(per_row, axis=-1) if len(per_row) > 1 else per_row[0]
        z = tf.sigmoid(self.top(self.cross.call_split(shared, per_row), training=False))
        return {h: z[:, i] for i, h in enumerate(self.heads)}

    # ------------------------------------------------------------------------------------ training
    def label_matrix(self, labels):
        """{head: [B]} or [B, H] -> float [B, H] in `cfg.heads` order."""
        if isinstance(labels, dict):
            missing = [h for h in self.heads if h not in labels]
            if missing:
                raise ValueError(f"labels missing heads {missing}")
            return tf.stack([_column(labels[h], tf.float32) for h in self.heads], axis=-1)
        return tf.reshape(tf.cast(labels, tf.float32), [-1, len(self.heads)])

    def compute_weighted_loss(self, labels, logits, sample_weight=None):
        y = self.label_matrix(labels)
        w = losses.head_weights(y, self.label_weights, self.cfg.no_action_weight)
        return losses.weighted_bce_from_logits(y, logits, w, sample_weight)

    @_no_autograph
    def train_step(self, data):
        features, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            out = self(features, training=True, return_logits=True)
            logits = tf.stack([out[h] for h in self.heads], axis=-1)
            loss = self.compute_weighted_loss(labels, logits, sample_weight)
            total = loss / replicas
            if self.losses:
                total += tf.add_n(self.losses)
        # As Keras' own train_step: a LossScaleOptimizer (mixed_float16) scales the loss and
        # unscales the gradients here; any other optimizer is tape.gradient + apply_gradients.
        self.optimizer.minimize(total, self.trainable_variables, tape=tape)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    @_no_autograph
    def test_step(self, data):
        features, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        out = self(features, training=False, return_logits=True)
        logits = tf.stack([out[h] for h in self.heads], axis=-1)
        loss = self.compute_weighted_loss(labels, logits, sample_weight)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]
