"""Full-rank DCN v2 cross network (Wang et al. 2021; TransAct's Pinnability uses full-rank DCN v2)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class CrossLayer(keras.layers.Layer):
    """x_{l+1} = x0 * (W x_l + b) + x_l with a full-rank W [D, D] (stored as `kernel`, y = x @ kernel)."""

    def __init__(self, kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(dim, dim), initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, trainable=True)
        self.bias = self.add_weight(name="bias", shape=(dim,), initializer="zeros", trainable=True)
        super().build(input_shape)

    def call(self, x0, xl=None, projected=None):
        """xl defaults to x0 (first layer). `projected` = precomputed x_l @ kernel (see
        CrossNetwork.call_split); when given, xl is only used for the residual."""
        # x0 is autocast to the compute dtype (mixed precision); xl and `projected` are cast here.
        xl = x0 if xl is None else tf.cast(xl, self.compute_dtype)
        projected = tf.matmul(xl, self.kernel) if projected is None else tf.cast(projected, self.compute_dtype)
        return x0 * (projected + self.bias) + xl

    def get_config(self):
        cfg = super().get_config()
        cfg.update(kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                   kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer))
        return cfg


class CrossNetwork(keras.layers.Layer):
    """`num_layers` stacked CrossLayers on x0 (num_layers = 0 is the identity)."""

    def __init__(self, num_layers: int, kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = int(num_layers)
        self.cross_layers = [CrossLayer(kernel_regularizer=kernel_regularizer, name=f"cross_{i}")
                             for i in range(self.num_layers)]

    def call(self, x0):
        x = x0
        for layer in self.cross_layers:
            x = layer(x0, x)
        return x

    def call_split(self, shared, per_row):
        """Same result as `call(concat([broadcast(shared), per_row], -1))` for shared [1, Ds] and
        per_row [N, Dr], but the first layer's W x0 = W_s shared + W_r per_row computes the shared block's
        product once instead of N times. Later layers mix both blocks elementwise, so they run on [N, D]."""
        n = tf.shape(per_row)[0]
        shared = tf.convert_to_tensor(shared)
        x0 = tf.concat([tf.broadcast_to(shared, tf.stack([n, tf.shape(shared)[-1]])), per_row], axis=-1)
        if not self.cross_layers:
            return x0
        first = self.cross_layers[0]
        if not first.built:
            first.build(x0.shape)
        ds = tf.shape(shared)[-1]
        kernel = first.kernel
        projected = tf.matmul(shared, kernel[:ds]) + tf.matmul(per_row, kernel[ds:])  # [1, D] + [N, D]
        x = first(x0, x0, projected=projected)
        for layer in self.cross_layers[1:]:
            x = layer(x0, x)
        return x

    def get_config(self):
        cfg = super().get_config()
        cfg.update(num_layers=self.num_layers)
        return cfg
