"""TFX Trainer entry point (`run_fn="pinrank.models.pinnerformer.run.run_fn"`): glue only."""
from __future__ import annotations

import os

assert os.environ.get("TF_USE_LEGACY_KERAS") == "1", "export TF_USE_LEGACY_KERAS=1 (Keras 2 only)"

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402
from absl import logging  # noqa: E402
from tfx import v1 as tfx  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from pinrank.models import distribute  # noqa: E402
from pinrank.models.pinnerformer import export, train  # noqa: E402
from pinrank.models.pinnerformer.model import PinnerFormer  # noqa: E402
from pinrank.pipeline import features as F  # noqa: E402
from pinrank.pipeline.artifacts import ITEM_EMBEDDINGS_URI, load_item_embeddings  # noqa: E402
from pinrank.pipeline.config import PipelineConfig  # noqa: E402


def make_dataset(fn_args: tfx.components.FnArgs, files, tf_transform_output, batch_size: int,
                 seed: int, shuffle: bool, once: bool = False) -> tf.data.Dataset:
    """Repeated batches of equal size for fit, or with `once` one pass with a short last batch."""
    return fn_args.data_accessor.tf_dataset_factory(
        files,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle=shuffle, shuffle_seed=seed,
                                       num_epochs=1 if once else None, drop_final_batch=not once),
        tf_transform_output.transformed_metadata.schema)


def build_model(cfg: PipelineConfig, tf_transform_output, item_embeddings_uri: str) -> PinnerFormer:
    item_ids, item_emb, _ = load_item_embeddings(item_embeddings_uri)
    return PinnerFormer(
        cfg.model, item_ids=item_ids, item_embeddings=item_emb,
        num_actions=tf_transform_output.vocabulary_size_by_name(F.ACTION_VOCAB) + 2,
        num_surfaces=tf_transform_output.vocabulary_size_by_name(F.SURFACE_VOCAB) + 2,
        seed=cfg.train.seed)


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    cfg = PipelineConfig.from_json(fn_args.custom_config["config_json"])
    keras.utils.set_random_seed(cfg.train.seed)
    tft_out = tft.TFTransformOutput(fn_args.transform_output)
    train_ds = make_dataset(fn_args, fn_args.train_files, tft_out, cfg.train.batch_size,
                            cfg.train.seed, shuffle=True)
    eval_ds = make_dataset(fn_args, fn_args.eval_files, tft_out, cfg.train.batch_size,
                           cfg.train.seed, shuffle=False)
    strategy = distribute.strategy()  # several workers when TF_CONFIG names them
    with train.precision_policy(cfg.train.mixed_precision), strategy.scope():
        model = build_model(cfg, tft_out, fn_args.custom_config[ITEM_EMBEDDINGS_URI])
        model.compile(optimizer=train.make_optimizer(cfg))
    logging.info("PinnerFormer objective=%s, %d steps, %d replica(s), precision %s",
                 cfg.model.objective, cfg.train.train_steps, strategy.num_replicas_in_sync,
                 cfg.train.mixed_precision or "float32")
    valid_once = None
    if cfg.train.early_stopping_metric == "recall":
        valid_once = make_dataset(fn_args, fn_args.eval_files, tft_out, 256, cfg.train.seed,
                                  shuffle=False, once=True)
    train.fit(model, cfg, train_ds, eval_ds, log_dir=fn_args.model_run_dir, valid_once=valid_once)
    export.export(model, tft_out, distribute.save_dir(fn_args.serving_model_dir))
