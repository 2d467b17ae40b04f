"""TFX Trainer entry point for the realtime ranker (`run_fn="models.realtime.run.run_fn"`): glue."""
import dataclasses
import os

assert os.environ.get("TF_USE_LEGACY_KERAS") == "1", "export TF_USE_LEGACY_KERAS=1 (Keras 2 only)"

import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402
from absl import logging  # noqa: E402
from tfx import v1 as tfx  # noqa: E402

from components.trainer import ITEM_EMBEDDINGS_URI  # noqa: E402
from models.pinnerformer.run import make_dataset  # noqa: E402
from models.pinnerformer.train import load_item_embeddings  # noqa: E402
from models.realtime import ranker as R  # noqa: E402
from models.realtime import serving_model as S  # noqa: E402
from models.realtime.config import RankerConfig  # noqa: E402
from pipeline import features as F  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402


def ranker_config(cfg: PipelineConfig, tft_out: tft.TFTransformOutput, item_dim: int,
                  num_interests: int) -> RankerConfig:
    """The configured ranker with the sizes the data decides (vocabularies, embedding widths)."""
    r = cfg.ranker
    realtime = dataclasses.replace(
        r.realtime, item_emb_dim=item_dim,
        num_action_types=tft_out.vocabulary_size_by_name(F.ACTION_VOCAB))
    surfaces = tft_out.vocabulary_size_by_name(F.SURFACE_VOCAB) + 2  # + padding + OOV
    return dataclasses.replace(
        r, realtime=realtime, pinnerformer_dim=cfg.model.output_dim,
        context_categorical=(("surface", surfaces, 8), ("hour_of_day", 24, 8)),
        candidate_categorical=(("candidate_interest", num_interests + 1, 8),))


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    cfg = PipelineConfig.from_json(fn_args.custom_config["config_json"])
    keras.utils.set_random_seed(cfg.ranker.seed)
    tft_out = tft.TFTransformOutput(fn_args.transform_output)
    item_ids, item_emb, interests = load_item_embeddings(fn_args.custom_config[ITEM_EMBEDDINGS_URI])
    featurizer = S.Featurizer(item_ids, item_emb, interests)
    rcfg = ranker_config(cfg, tft_out, item_emb.shape[1], featurizer.num_interests)
    shuffle = bool(fn_args.custom_config.get("shuffle_labels", False))
    if shuffle:
        logging.warning("Training the ranker on label-shuffled data (randomisation test).")
    train_ds = S.featurized_dataset(
        make_dataset(fn_args, fn_args.train_files, tft_out, rcfg.batch_size, rcfg.seed, True),
        featurizer, shuffle_labels=shuffle, seed=rcfg.seed)
    eval_ds = S.featurized_dataset(
        make_dataset(fn_args, fn_args.eval_files, tft_out, rcfg.batch_size, rcfg.seed, False),
        featurizer)
    model = R.Ranker(rcfg, seed=rcfg.seed)
    model.compile(optimizer=R.make_optimizer(rcfg))
    steps = fn_args.train_steps
    per_epoch = max(1, min(100, steps))
    logging.info("Ranker: realtime=%s pinnerformer=%s, %d steps", rcfg.use_realtime,
                 rcfg.use_pinnerformer, steps)
    model.fit(train_ds, steps_per_epoch=per_epoch, epochs=max(1, steps // per_epoch),
              validation_data=eval_ds, validation_steps=fn_args.eval_steps, verbose=2,
              callbacks=[keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir)])
    model.save(fn_args.serving_model_dir, save_format="tf",
               signatures=S.signatures(model, featurizer, tft_out))
