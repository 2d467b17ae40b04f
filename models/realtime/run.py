"""TFX Trainer entry point for the realtime ranker (`run_fn="pinrank.models.realtime.run.run_fn"`): glue."""
import os

assert os.environ.get("TF_USE_LEGACY_KERAS") == "1", "export TF_USE_LEGACY_KERAS=1 (Keras 2 only)"

import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402
from absl import logging  # noqa: E402
from tfx import v1 as tfx  # noqa: E402

from pinrank.models import distribute  # noqa: E402
from pinrank.models.pinnerformer import train  # noqa: E402
from pinrank.models.pinnerformer.run import make_dataset  # noqa: E402
from pinrank.models.realtime import ranker as R  # noqa: E402
from pinrank.models.realtime import serving_model as S  # noqa: E402
from pinrank.pipeline import features as F  # noqa: E402
from pinrank.pipeline.artifacts import (  # noqa: E402
    ITEM_EMBEDDINGS_URI,
    PINNERFORMER_DIR,
    load_item_embeddings,
)
from pinrank.pipeline.config import ConfigError, PipelineConfig, RankerConfig  # noqa: E402


def ranker_config(cfg: PipelineConfig, tft_out: tft.TFTransformOutput, item_dim: int,
                  num_interests: int, num_items: int) -> RankerConfig:
    """The configured ranker, checked against the data, with only the sizes documented as derived
    (RankerConfig's docstring) filled in: `realtime.num_action_types` and the categoricals'
    vocabulary sizes. A configured value the data contradicts stops the run, naming the field."""
    r = cfg.ranker
    problems = []
    if r.realtime.item_emb_dim != item_dim:
        problems.append(f"ranker.realtime.item_emb_dim={r.realtime.item_emb_dim} but the item "
                        f"embeddings are {item_dim}-d (set it to items.dim)")
    if r.pinnerformer_dim != cfg.model.output_dim:
        problems.append(f"ranker.pinnerformer_dim={r.pinnerformer_dim} but model.output_dim="
                        f"{cfg.model.output_dim}")
    spec = tft_out.transformed_feature_spec().get(F.xf(F.HIST_ITEM))
    width = list(getattr(spec, "shape", None) or [None])[-1]
    if width is not None and width != r.realtime.seq_len:
        problems.append(f"ranker.realtime.seq_len={r.realtime.seq_len} but Transform kept {width} "
                        f"actions (its custom_config must carry the same config)")
    if r.context_numeric:
        problems.append(f"ranker.context_numeric={list(r.context_numeric)}: the pipeline provides "
                        f"no numeric context")
    vocab = {"surface": tft_out.vocabulary_size_by_name(F.SURFACE_VOCAB) + 2,  # + padding + OOV
             "hour_of_day": 24, "day_of_week": 7,
             "candidate_interest": num_interests + 1, "candidate_id": num_items + 1}
    for field in ("context_categorical", "candidate_categorical"):
        unknown = [s[0] for s in getattr(r, field) if s[0] not in vocab]
        if unknown:
            problems.append(f"ranker.{field}: the pipeline provides no feature(s) {unknown}")
    if problems:
        raise ConfigError("; ".join(problems))
    return r.replace(
        realtime={"num_action_types": tft_out.vocabulary_size_by_name(F.ACTION_VOCAB)},
        context_categorical=tuple((n, vocab[n], d) for n, _, d in r.context_categorical),
        candidate_categorical=tuple((n, vocab[n], d) for n, _, d in r.candidate_categorical))


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    cfg = PipelineConfig.from_json(fn_args.custom_config["config_json"])
    keras.utils.set_random_seed(cfg.ranker.seed)
    tft_out = tft.TFTransformOutput(fn_args.transform_output)
    item_ids, item_emb, interests = load_item_embeddings(fn_args.custom_config[ITEM_EMBEDDINGS_URI])
    pf_items = None
    if cfg.ranker.use_pf_dot:
        if PINNERFORMER_DIR not in fn_args.custom_config:
            raise ConfigError("ranker.use_pf_dot=true needs the PinnerFormer that built the "
                              "examples: pass pinnerformer_model= to the ranker's Trainer")
        pf_items = S.pinnerformer_item_table(fn_args.custom_config[PINNERFORMER_DIR], item_ids)
    featurizer = S.Featurizer(item_ids, item_emb, interests, pf_items)
    rcfg = ranker_config(cfg, tft_out, item_emb.shape[1], featurizer.num_interests,
                         featurizer.num_items)
    shuffle = bool(fn_args.custom_config.get("shuffle_labels", False))
    if shuffle:
        logging.warning("Training the ranker on label-shuffled data (randomisation test).")
    train_ds = S.featurized_dataset(
        make_dataset(fn_args, fn_args.train_files, tft_out, rcfg.batch_size, rcfg.seed, True),
        featurizer, shuffle_labels=shuffle, seed=rcfg.seed)
    eval_ds = S.featurized_dataset(
        make_dataset(fn_args, fn_args.eval_files, tft_out, rcfg.batch_size, rcfg.seed, False),
        featurizer)
    strategy = distribute.strategy()  # several workers when TF_CONFIG names them
    precision = cfg.ranker_train.mixed_precision
    with train.precision_policy(precision), strategy.scope():
        model = R.Ranker(rcfg, seed=rcfg.seed)
        model.compile(optimizer=train.loss_scaled(R.make_optimizer(rcfg), precision))
    steps = fn_args.train_steps
    per_epoch = max(1, min(100, steps))
    logging.info("Ranker: realtime=%s pinnerformer=%s, %d steps, precision %s", rcfg.use_realtime,
                 rcfg.use_pinnerformer, steps, precision or "float32")
    model.fit(train_ds, steps_per_epoch=per_epoch, epochs=max(1, steps // per_epoch),
              validation_data=eval_ds, validation_steps=fn_args.eval_steps, verbose=2,
              callbacks=train.callbacks(fn_args.model_run_dir))
    model.save(distribute.save_dir(fn_args.serving_model_dir), save_format="tf",
               signatures=S.signatures(model, featurizer, tft_out))
