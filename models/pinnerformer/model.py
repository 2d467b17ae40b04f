"""PinnerFormer user tower + pin tower with the configured objective and loss (docs/models.md, "PinnerFormer").

Inputs are the Transform outputs described in pipeline/features.py (newest first, padded at the old end).
`call` needs only the history features and SEQ_LEN_XF; `train_step` / `test_step` also read the future
positives (FUT_ITEM / FUT_TS / FUT_LEN_XF).

Deviations from the paper, or choices it leaves open (all listed in docs/models.md, "Deviations"):
  * label items with no frozen embedding (not in `item_ids`) are never used as labels: their pin-tower input
    would be the all-zero "unknown" row, a constant that would only teach the model about missing data;
  * under a multi-replica strategy (models/distribute.py) the in-batch negatives are every replica's labels,
    gathered as in the paper (`cross_replica_negatives`), and every replica's count-min sketch counts them
    all, so each replica sees the pool and log Q a single replica would see with the global batch;
  * the loss is divided by the number of replicas so `fit` under a strategy sums gradients correctly.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pinrank.pipeline import features as F
from pinrank.pipeline.config import PinnerFormerConfig

from . import inputs, losses, objectives
from .layers import ActionFeatures, ItemTower, OutputHead, TransformerBlock, attention_mask, history_mean
from .sketch import CountMinSketch

# The model has no tensor-dependent Python control flow; skipping AutoGraph's source conversion of this code
# (and of everything it calls, Keras internals included) cuts train/test-step tracing from ~20 s to ~2 s.
_no_autograph = tf.autograph.experimental.do_not_convert


def embed_distinct(embed, *row_sets):
    """`embed(rows)` of each 1-D row set, from one call on their distinct rows. The pin tower is
    row-wise, so this gives the same embeddings (and gradients, summed in another order) while
    the in-batch negatives, which are the labels again, and repeated popular items run once."""
    sizes = tf.stack([tf.size(r) for r in row_sets])
    rows, row_of = tf.unique(tf.concat(row_sets, 0), out_idx=tf.int32)
    return tf.split(tf.gather(embed(rows), row_of), sizes)


class PinnerFormer(keras.Model):
    """`model(features) -> [B, D]` user embeddings (e_1, the most recent position), unit norm.

    item_ids int64 [N] (unique catalog ids) and item_embeddings float32 [N, Din] are the frozen PinSage
    analogue; id -> row goes through a StaticHashTable (row 0 = unknown / padding = zeros). num_actions /
    num_surfaces are table sizes including padding (0) and OOV (last index). `seed` drives pair sampling
    and random negatives (stateless: step `i` of training uses seed (seed, i)).
    """

    def __init__(self, cfg: PinnerFormerConfig, item_ids, item_embeddings, num_actions: int,
                 num_surfaces: int, seed: int = 0, name: str = "pinnerformer", **kwargs):
        # The model itself stays float32 under a mixed global policy (train.mixed_precision): its own
        # variables (frozen table, positions, temperature) read as float32 and the input features are
        # not cast; its layers compute in the policy's dtype and the heads return float32.
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        item_ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        item_embeddings = np.asarray(item_embeddings, dtype=np.float32)
        if item_embeddings.ndim != 2 or item_embeddings.shape[0] != item_ids.size:
            raise ValueError(f"item_embeddings must be [N={item_ids.size}, Din], got {item_embeddings.shape}")
        if item_ids.size == 0:
            raise ValueError("empty item catalog")
        if np.unique(item_ids).size != item_ids.size:
            raise ValueError("item_ids must be unique")
        self.cfg = cfg
        self.num_items = int(item_ids.size)
        self.num_actions = int(num_actions)
        self.item_input_dim = int(item_embeddings.shape[1])
        self._seed = int(seed)
        self.item_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(item_ids), tf.range(1, self.num_items + 1, dtype=tf.int64)),
            default_value=0, name="item_id_to_row")
        table = np.concatenate([np.zeros([1, self.item_input_dim], np.float32), item_embeddings], 0)
        self.frozen_item_embeddings = self.add_weight(
            name="frozen_item_embeddings", shape=table.shape, dtype=tf.float32,
            initializer=keras.initializers.Constant(table), trainable=False)
        # Optional learned id embedding next to the frozen vector (deviation, off in the paper):
        # lets a small catalogue's model learn what frozen co-engagement vectors blur, popularity
        # included. Row 0 (unknown / padding) stays zero.
        self.item_id_embedding = None
        if cfg.item_id_embedding_dim > 0:
            self.item_id_embedding = self.add_weight(
                name="item_id_embedding", shape=(self.num_items + 1, cfg.item_id_embedding_dim),
                dtype=tf.float32, initializer=keras.initializers.RandomNormal(stddev=0.02),
                trainable=True)
        self.action_features = ActionFeatures(num_actions, num_surfaces, cfg.action_emb_dim,
                                              cfg.surface_emb_dim, name="action_features")
        self.input_projection = keras.layers.Dense(cfg.hidden, name="input_projection")
        self.positional_embedding = self.add_weight(
            name="positional_embedding", shape=(cfg.seq_len, cfg.hidden), dtype=tf.float32,
            initializer=keras.initializers.TruncatedNormal(stddev=0.02), trainable=True)
        hand = cfg.hand_gradients
        self.blocks = [TransformerBlock(cfg.hidden, cfg.num_heads, cfg.ffn_mult, cfg.dropout, hand, name=f"block_{i}")
                       for i in range(cfg.num_layers)]
        self.output_head = OutputHead(cfg.hidden, cfg.ffn_mult, cfg.output_dim, hand, name="output_head")
        self.item_tower = ItemTower(cfg.hidden, cfg.ffn_mult, cfg.output_dim, hand, name="item_tower")
        # Optional skip from the frozen inputs to both outputs (deviation, off in the paper): the
        # user side adds a learned-action-weighted mean of its history's item vectors, the item
        # side its own vector, through one shared projection (identity at init). At init the
        # dot product is the no-training "mean of the history" retriever, and training learns
        # corrections to it; on small data the towers alone fall below that retriever.
        self.skip_projection = None
        if cfg.history_mean_skip:
            self.skip_projection = keras.layers.Dense(
                cfg.output_dim, use_bias=False, kernel_initializer=keras.initializers.Identity(),
                name="skip_projection")
            self.skip_action_weight = self.add_weight(  # softplus -> 1.0 for every action at init
                name="skip_action_weight", shape=(num_actions,), dtype=tf.float32,
                initializer=keras.initializers.Constant(math.log(math.e - 1.0)), trainable=True)
        self.log_temperature = self.add_weight(
            name="log_temperature", shape=(), dtype=tf.float32,
            initializer=keras.initializers.Constant(math.log(cfg.init_temperature)), trainable=True)
        self.sketch = CountMinSketch(cfg.sketch_width, cfg.sketch_depth, seed=seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    # ----------------------------------------------------------------------------------- towers
    @property
    def temperature(self):
        """tau = max(exp(log_tau), min_temperature)."""
        return tf.maximum(tf.exp(self.log_temperature), self.cfg.min_temperature)

    def item_rows(self, item_ids):
        """Row of each item id in the frozen table (0 = unknown), int64, same shape."""
        return self.item_table.lookup(tf.cast(item_ids, tf.int64))

    def item_inputs(self, rows):
        """Input vector of each item row: the frozen embedding (+ the learned id embedding)."""
        x = tf.gather(self.frozen_item_embeddings, rows)
        if self.item_id_embedding is None:
            return x
        known = tf.cast(rows > 0, tf.float32)[..., None]
        return tf.concat([x, tf.gather(self.item_id_embedding, rows) * known], axis=-1)

    def item_embedding_from_rows(self, rows):
        x = self.item_inputs(rows)
        return self.item_tower(x, None if self.skip_projection is None else self.skip_projection(x))

    def item_embedding(self, item_ids):
        """Pin tower: item ids [N] -> [N, D] unit vectors (unknown ids share the zero-input embedding)."""
        return self.item_embedding_from_rows(self.item_rows(item_ids))

    # ----------------------------------------------------------------------------------- user tower
    @_no_autograph
    def call(self, features, training=False, return_sequence=False):
        """User embedding [B, D] (position 0), or [B, M, D] for every position with return_sequence."""
        x, skip_input = self._trunk(features, training)
        if not return_sequence:
            x = x[:, 0, :]
            skip_input = None if skip_input is None else skip_input[:, 0, :]
        return self._head(x, skip_input)

    def _trunk(self, features, training):
        """Transformer output [B, M, H] and the history-mean skip's input [B, M, Din] (None when off):
        everything before the per-position output head."""
        hist_item = inputs.sequence(features, F.HIST_ITEM)
        m = inputs.width(hist_item)
        if isinstance(m, int) and m > self.cfg.seq_len:
            raise ValueError(f"history width {m} exceeds seq_len {self.cfg.seq_len}")
        seq_len = inputs.length(features, F.SEQ_LEN_XF, m)
        item_vec = self.item_inputs(self.item_rows(hist_item))
        action = inputs.sequence(features, F.HIST_ACTION, tf.int32)
        x = self.action_features(
            item_vec,
            action,
            inputs.sequence(features, F.HIST_SURFACE, tf.int32),
            inputs.sequence(features, F.HIST_TS, tf.int64),
            inputs.sequence(features, F.HIST_DURATION, tf.float32),
            seq_len)
        x = self.input_projection(x)  # the layers' compute dtype (float32 unless mixed precision)
        x += tf.cast(self.positional_embedding[:tf.shape(hist_item)[1]], x.dtype)
        mask = attention_mask(seq_len, tf.shape(hist_item)[1])
        for block in self.blocks:
            x = block(x, mask, training=training)
        skip_input = None
        if self.skip_projection is not None:
            real = tf.cast(tf.sequence_mask(seq_len, tf.shape(hist_item)[1]), tf.float32)
            weight = tf.nn.softplus(tf.gather(self.skip_action_weight,
                                              tf.clip_by_value(action, 0, self.num_actions - 1)))
            weight *= real * tf.cast(action > 0, tf.float32)  # padding (index 0) weighs nothing
            skip_input = history_mean(item_vec, weight)
        return x, skip_input

    def _head(self, x, skip_input):
        """Output head (+ skip) on trunk rows [B, S, H] or [N, H] -> unit vectors [.., D]; position-wise.
        Rows [N, H] run as [N, 1, H]: Keras' LayerNormalization keeps the rank it was built with."""
        if x.shape.rank == 2:
            return self._head(x[:, None], None if skip_input is None else skip_input[:, None])[:, 0]
        skip = None if skip_input is None else self.skip_projection(skip_input)
        return self.output_head(x, skip)

    def encode(self, features, training=False):
        """Per-position embeddings [B, M, D] (e_1 .. e_M), unit norm."""
        return self(features, training=training, return_sequence=True)

    # ----------------------------------------------------------------------------------- training
    @_no_autograph
    def pair_loss(self, features, training: bool, seed, update_sketch: bool):
        """Loss of the configured objective on one batch. Returns (loss, number of pairs)."""
        cfg = self.cfg
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
        tl = objectives.timeline_from_features(features, label_ok=lambda ids: self.item_rows(ids) > 0)
        position, label_item, valid = objectives.make_pairs(cfg.objective, tl, cfg, seeds[0])
        # The head is position-wise, so it runs on the P sampled positions only, not on all B x M
        # (dense all action: 16 of M): the same embeddings as encode() at those positions.
        x, skip_input = self._trunk(features, training)  # [B, M, H], [B, M, Din]
        b = tf.shape(x)[0]
        users = tf.broadcast_to(tf.range(b)[:, None], tf.shape(position))

        def at_pairs(t):
            return None if t is None else tf.boolean_mask(tf.gather(t, position, batch_dims=1), valid)

        user_emb = self._head(at_pairs(x), at_pairs(skip_input))  # [P, D]
        pair_user = tf.boolean_mask(users, valid)
        label = tf.boolean_mask(label_item, valid)
        n_labels = tf.size(label)
        # The in-batch pool: this replica's labels, or every replica's (the paper's gather; the
        # batch shapes are equal on all replicas, so the padded [B, S] labels can be gathered).
        pool = label
        ctx = tf.distribute.get_replica_context()
        gathered = cfg.cross_replica_negatives and ctx is not None and ctx.num_replicas_in_sync > 1
        if gathered:
            pool = tf.boolean_mask(ctx.all_gather(tf.where(valid, label_item, tf.zeros_like(label_item)), 0),
                                   ctx.all_gather(tf.cast(valid, tf.int32), 0) > 0)
        n_pool = tf.size(pool)

        if update_sketch:
            self.sketch.update(pool)
        label_log_q = losses.in_batch_log_q(self.sketch.estimate(label), self.sketch.total, n_pool)

        label_rows = self.item_rows(label)
        pool_rows, pool_log_q = label_rows, label_log_q
        if gathered:
            pool_rows = self.item_rows(pool)
            pool_log_q = losses.in_batch_log_q(self.sketch.estimate(pool), self.sketch.total, n_pool)
        user_pos_rows = tf.concat([self.item_rows(tl.hist_item), self.item_rows(tl.fut_item)], axis=1)
        user_pos_valid = tf.concat([tl.hist_label, tl.fut_label], axis=1)
        n_rand = cfg.num_random_negatives
        rand_rows = tf.random.stateless_uniform([n_rand], seed=seeds[1], minval=1, maxval=self.num_items + 1,
                                                dtype=tf.int64)
        rand_log_q = math.log(n_rand / self.num_items) if n_rand > 0 else 0.0
        neg = losses.assemble_negatives(pool_rows, pool_log_q, pair_user, user_pos_rows, user_pos_valid,
                                        rand_rows, rand_log_q, cfg.max_in_batch_negatives, seeds[2])
        label_emb, neg_emb = embed_distinct(self.item_embedding_from_rows, label_rows, neg.item)
        loss, _ = losses.sampled_softmax_loss(
            user_emb, label_emb, label_log_q, neg_emb, neg.log_q, neg.valid, pair_user,
            self.temperature, cfg.logq_correction, num_users=b)
        return loss, n_labels

    @_no_autograph
    def train_step(self, data):
        features, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        seed = tf.stack([tf.constant(self._seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss, _ = self.pair_loss(features, training=True, seed=seed, update_sketch=True)
            total = loss / replicas
            if self.losses:
                total += tf.add_n(self.losses)
        # As Keras' own train_step: a LossScaleOptimizer (mixed_float16) scales the loss and
        # unscales the gradients here; any other optimizer is tape.gradient + apply_gradients.
        self.optimizer.minimize(total, self.trainable_variables, tape=tape)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result(), "temperature": self.temperature}

    @_no_autograph
    def test_step(self, data):
        """Same loss with a fixed sampling seed; the sketch is read but not updated."""
        features, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        seed = tf.constant([self._seed, -1], tf.int64)
        loss, _ = self.pair_loss(features, training=False, seed=seed, update_sketch=False)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result(), "temperature": self.temperature}

    @property
    def metrics(self):
        return [self.loss_tracker]
