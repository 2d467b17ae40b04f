"""Training fails loudly on a NaN/Inf loss (ML Test Score, Monitor 5): both trainers fit with
models/pinnerformer/train.py's callbacks, whose guard raises at the first non-finite training or
validation loss instead of letting run_fn export a broken model. Also the optimizer's weight
average (train.ema_momentum) against numpy."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pinrank.models.pinnerformer import train
from pinrank.pipeline.config import preset


def _model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.layers.Dense(1, input_shape=(3,))])
    m.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return m


def _data(n=32, bad_row=None, value=np.nan):
    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    if bad_row is not None:
        x[bad_row, 1] = value
    return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(8)


def test_finite_training_runs_to_the_end(tmp_path):
    hist = _model().fit(_data().repeat(), steps_per_epoch=4, epochs=2, verbose=0,
                        validation_data=_data(), callbacks=train.callbacks(str(tmp_path)))
    assert len(hist.history["loss"]) == 2 and np.isfinite(hist.history["val_loss"]).all()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_training_loss_fails_at_that_batch(tmp_path, value):
    with pytest.raises(train.NonFiniteLossError, match=r"loss is (nan|inf) at epoch 1, batch 3"):
        _model().fit(_data(bad_row=17, value=value), epochs=1, verbose=0,
                     callbacks=train.callbacks(str(tmp_path)))


def test_non_finite_validation_loss_fails_at_the_end_of_the_epoch(tmp_path):
    with pytest.raises(train.NonFiniteLossError, match="val_loss is nan at end of epoch 1"):
        _model().fit(_data(), epochs=2, verbose=0, validation_data=_data(bad_row=0),
                     callbacks=train.callbacks(str(tmp_path)))


def test_pinnerformer_fit_carries_the_guard(tmp_path):
    """train.fit (the PinnerFormer run_fn and the benchmarks) stops on a diverging loss."""
    cfg = preset("tiny").replace(train={"train_steps": 8, "steps_per_epoch": 4,
                                        "eval_steps": 1, "early_stopping_patience": 0})
    with pytest.raises(train.NonFiniteLossError):
        train.fit(_model(), cfg, _data(bad_row=30).repeat(), _data(), str(tmp_path), verbose=0)


def test_ema_writes_the_weights_moving_average_at_the_epoch_end():
    """train.ema_momentum: after one epoch the weights are the moving average of the weights
    after each step (numpy), starting from the initial weights."""
    from pinrank.pipeline.config import PipelineConfig, TrainConfig

    def cfg(ema):
        return PipelineConfig(train=TrainConfig(train_steps=4, steps_per_epoch=4, warmup_steps=0,
                                                learning_rate=0.05, ema_momentum=ema))

    data = _data().repeat()
    plain = _model()
    init = [w.copy() for w in plain.get_weights()]
    plain.compile(optimizer=train.make_optimizer(cfg(0.0)), loss="mse")
    steps = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: steps.append(plain.get_weights()))
    plain.fit(data, steps_per_epoch=4, epochs=1, verbose=0, callbacks=[record])
    avg = init
    for w in steps:
        avg = [0.6 * a + 0.4 * x for a, x in zip(avg, w)]

    averaged = _model()
    averaged.compile(optimizer=train.make_optimizer(cfg(0.6)), loss="mse")
    averaged.fit(data, steps_per_epoch=4, epochs=1, verbose=0)
    assert not np.allclose(steps[-1][0], avg[0], atol=1e-4)  # the average is not the last step
    for got, want in zip(averaged.get_weights(), avg):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
