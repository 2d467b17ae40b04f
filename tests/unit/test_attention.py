"""MatMulAttention: keras MultiHeadAttention's values, attention scores and gradients (inputs and
every weight), with the newest-first causal mask that PinnerFormer uses and a padded row."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from pinrank.models.attention import MatMulAttention
from pinrank.models.pinnerformer.layers import attention_mask


def test_matmul_attention_matches_keras_multi_head_attention():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 7, 12)).astype(np.float32)
    mask = attention_mask(tf.constant([7, 4, 1]), 7)
    out, weights = [], None
    for cls in (keras.layers.MultiHeadAttention, MatMulAttention):
        mha = cls(3, key_dim=4, dropout=0.0)
        xt = tf.constant(x)
        mha(xt, xt, attention_mask=mask)  # builds the weights
        if weights is None:
            weights = mha.get_weights()
        else:  # the stock layer's weights
            mha.set_weights(weights)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y, scores = mha(xt, xt, attention_mask=mask, return_attention_scores=True)
            loss = tf.reduce_sum(tf.reshape(y, [-1]) * tf.sin(tf.range(tf.size(y), dtype=tf.float32)))
        out.append([y.numpy(), scores.numpy()] + [g.numpy() for g in tape.gradient(loss, [xt] + mha.weights)])
    for r, g in zip(*out):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
