"""create_pipeline(cfg, ...) -> tfx.dsl.Pipeline: pure, no I/O, no runner (runners are thin files).

raw files ─► RawDataImporter ─► DatasetGen ─► events (synthetic: DatasetGen generates them)
events ─► EventExampleGen ─► StatisticsGen ─► ExampleValidator ─► AnomaliesGate
              │  └► ItemCatalog     ImportSchemaGen ┘                     │ (must pass)
              ├─► ItemEmbeddingGen (train users only)                      ▼
              └─► Transform(M most recent) ─► Trainer(PinnerFormer) ─► RetrievalEvaluator ─► Pusher
                                                   latest blessed model ┘ (baseline)
blessed PinnerFormer + events ─► RankingExampleGen (requests, P actions before each request,
   embedding as of the previous day) ─► Statistics/Schema/Validator/Gate ─► Transform(P most recent)
   ─► Trainer(TransAct + DCNv2 ranker) ─► Evaluator(TFMA: AUC, HIT@3, NDCG per request)
   ─► RankerBaselineCheck (beats popularity and the PinnerFormer dot product) ─► Pusher
"""
from __future__ import annotations

import os
from typing import List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from pinrank.components.anomalies_gate import AnomaliesGate
from pinrank.components.atomic_pusher import AtomicPusher
from pinrank.components.data.sources import RawInput
from pinrank.components.dataset_gen import DatasetGen
from pinrank.components.event_example_gen import EventExampleGen
from pinrank.components.item_embedding_gen import ItemEmbeddingGen
from pinrank.components.ranker_eval.baseline_check import RankerBaselineCheck
from pinrank.components.ranker_eval.eval_config import pipeline_eval_config
from pinrank.components.ranker_eval.evaluator import RankerEvaluator
from pinrank.components.ranking_example_gen import RankingExampleGen
from pinrank.components.retrieval_evaluator.component import RetrievalEvaluator
from pinrank.components.trainer import ItemAwareTrainer
from pinrank.components.types import RawData
from pinrank.pipeline import features as F
from pinrank.pipeline.config import PipelineConfig, check_consistency
from pinrank.transform import pinnerformer as pinnerformer_transform
from pinrank.transform import ranker as ranker_transform

PINNERFORMER_SCHEMA = os.path.join(os.path.dirname(__file__), "schema", "pinnerformer_raw.pbtxt")
PREPROCESSING_FN = "pinrank.transform.pinnerformer.preprocessing_fn"
RUN_FN = "pinrank.models.pinnerformer.run.run_fn"
PINNERFORMER_MODEL_NAME = "pinnerformer"
RANKER_SCHEMA = os.path.join(os.path.dirname(__file__), "schema", "ranker_raw.pbtxt")
RANKER_PREPROCESSING_FN = "pinrank.transform.ranker.preprocessing_fn"
RANKER_RUN_FN = "pinrank.models.realtime.run.run_fn"
RANKER_MODEL_NAME = "ranker"
# The latest-blessed resolvers (each model's baseline for its gate).
PINNERFORMER_RESOLVER_ID = "latest_blessed_pinnerformer_resolver"
RANKER_RESOLVER_ID = "latest_blessed_ranker_resolver"


def _validated(examples, schema_file: str, suffix: str):
    """StatisticsGen + curated schema + ExampleValidator + the gate that stops on anomalies."""
    stats = tfx.components.StatisticsGen(examples=examples).with_id(f"StatisticsGen{suffix}")
    schema = tfx.components.ImportSchemaGen(schema_file=schema_file).with_id(f"ImportSchemaGen{suffix}")
    validator = tfx.components.ExampleValidator(
        statistics=stats.outputs["statistics"], schema=schema.outputs["schema"]
    ).with_id(f"ExampleValidator{suffix}")
    gate = AnomaliesGate(anomalies=validator.outputs["anomalies"]).with_id(f"AnomaliesGate{suffix}")
    return [stats, schema, validator, gate], schema, gate


def _latest_blessed(trainer_id: str, evaluator_id: str, name: str):
    """Baseline = the last blessed model of *this* trainer (two trainers share the pipeline)."""
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model,
                              producer_component_id=trainer_id, output_key="model"),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing,
                                       producer_component_id=evaluator_id, output_key="blessing"),
    ).with_id(name)


def _ingestion(cfg: PipelineConfig, raw: Optional[RawInput], suppression_fingerprint: str) -> list:
    """[RawDataImporter,] DatasetGen: the raw files become an MLMD artifact upstream of every
    model; their content fingerprint makes new files at the same path a cache miss."""
    nodes: list = []
    inputs = {}
    if raw is not None:
        importer = tfx.dsl.Importer(
            source_uri=raw.uri, artifact_type=RawData, reimport=False,
            custom_properties={"format": raw.format, "fingerprint": raw.fingerprint},
        ).with_id("RawDataImporter")
        nodes.append(importer)
        inputs["raw"] = importer.outputs["result"]
    nodes.append(DatasetGen(config_json=cfg.sections_json("data"),
                            drop_invalid_events=int(cfg.examples.drop_invalid_events),
                            suppression_fingerprint=suppression_fingerprint, **inputs))
    return nodes


def create_pipeline(
    cfg: PipelineConfig,
    *,
    pipeline_root: str,
    raw_data: Optional[RawInput],
    serving_dir: str,
    suppression_fingerprint: str = "",
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
    schema_path: str = PINNERFORMER_SCHEMA,
    ranker_schema_path: str = RANKER_SCHEMA,
) -> tfx.dsl.Pipeline:
    """raw_data: the input files (sources.raw_input; None for synthetic data);
    suppression_fingerprint: sources.suppression_fingerprint (the list's contents). schema
    paths: the curated raw schemas; on Vertex pass where the image (or GCS) has them."""
    check_consistency(cfg)
    ingestion = _ingestion(cfg, raw_data, suppression_fingerprint)
    events = ingestion[-1].outputs["events"]
    example_gen = EventExampleGen(events=events, config_json=cfg.sections_json("examples"))
    validation, schema_gen, anomalies_gate = _validated(example_gen.outputs["examples"],
                                                        schema_path, "")

    item_embedding_gen = ItemEmbeddingGen(examples=example_gen.outputs["examples"],
                                          items=example_gen.outputs["items"],
                                          config_json=cfg.sections_json("items"))
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        # The values it reads, by their place in the config (the Trainer reads the same ones).
        custom_config={"config_json": cfg.sections_json(*pinnerformer_transform.CONFIG_PATHS)},
        splits_config=tfx.proto.SplitsConfig(analyze=["train"],
                                             transform=["train", "valid", "eval"]))
    transform.add_upstream_node(anomalies_gate)

    trainer = ItemAwareTrainer(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        item_embeddings=item_embedding_gen.outputs["item_embeddings"],
        run_fn=RUN_FN,
        train_args=tfx.proto.TrainArgs(splits=["train"], num_steps=cfg.train.train_steps),
        # Validation loss on held-out *training* users, never on the evaluated ones.
        eval_args=tfx.proto.EvalArgs(splits=["valid"], num_steps=cfg.train.eval_steps),
        custom_config={"config_json": cfg.sections_json("model", "train")})

    baseline_resolver = _latest_blessed("ItemAwareTrainer", "RetrievalEvaluator",
                                        PINNERFORMER_RESOLVER_ID)
    evaluator = RetrievalEvaluator(
        model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
        item_embeddings=item_embedding_gen.outputs["item_embeddings"],
        baseline_model=baseline_resolver.outputs["model"], config_json=cfg.sections_json("eval"),
        events=events)
    # AtomicPusher: a version dir appears complete or not at all (kill -9, full disk), and only
    # after a canary on eval users, which also become its TF Serving warmup requests.
    pusher = AtomicPusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        examples=example_gen.outputs["examples"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(serving_dir, PINNERFORMER_MODEL_NAME))),
    ).with_id("Pusher")

    components = [*ingestion, example_gen, *validation, item_embedding_gen, transform, trainer,
                  baseline_resolver, evaluator, pusher]
    if cfg.ranker_train.enabled:
        components += _ranker_branch(cfg, events, serving_dir, trainer,
                                     evaluator, item_embedding_gen, ranker_schema_path)
    return tfx.dsl.Pipeline(
        pipeline_name=cfg.name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )


def _ranker_branch(cfg: PipelineConfig, events, serving_dir: str, pf_trainer, pf_evaluator,
                   item_embedding_gen, schema_path: str) -> list:
    ranking_gen = RankingExampleGen(
        model=pf_trainer.outputs["model"], model_blessing=pf_evaluator.outputs["blessing"],
        events=events, config_json=cfg.sections_json("ranking", "examples"))
    validation, schema_gen, gate = _validated(ranking_gen.outputs["examples"], schema_path, "Ranker")
    transform = tfx.components.Transform(
        examples=ranking_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=RANKER_PREPROCESSING_FN,
        custom_config={"config_json": cfg.sections_json(*ranker_transform.CONFIG_PATHS)},
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=["train", "eval"]),
    ).with_id("TransformRanker")
    transform.add_upstream_node(gate)
    trainer = ItemAwareTrainer(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        item_embeddings=item_embedding_gen.outputs["item_embeddings"],
        # use_pf_dot: the pin tower of the PinnerFormer that built the examples (blessed: the
        # RankingExampleGen above refuses any other)
        pinnerformer_model=pf_trainer.outputs["model"] if cfg.ranker.use_pf_dot else None,
        run_fn=RANKER_RUN_FN,
        train_args=tfx.proto.TrainArgs(num_steps=cfg.ranker_train.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=cfg.ranker_train.eval_steps),
        custom_config={"config_json": cfg.sections_json("ranker", "model"),
                       "shuffle_labels": cfg.ranker_train.shuffle_labels},
    ).with_id("RankerTrainer")
    # The ranker's last blessed model is the last one that passed the whole gate (TFMA and the
    # non-learned rankers), i.e. the one RankerBaselineCheck blessed.
    resolver = _latest_blessed("RankerTrainer", "RankerBaselineCheck",
                               RANKER_RESOLVER_ID)
    # TFMA gates on value thresholds, overall and per slice (surface, pf_present), and reports
    # the diffs to the last blessed ranker; the change decision itself is RankerBaselineCheck's
    # paired test (point diffs are noise).
    evaluator = RankerEvaluator(  # the stock Evaluator with reproducible batches
        examples=ranking_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=resolver.outputs["model"],
        eval_config=pipeline_eval_config(cfg.ranker_eval, F.HEADS),
        example_splits=["eval"],
    ).with_id("RankerEvaluator")
    check = RankerBaselineCheck(
        examples=ranking_gen.outputs["examples"], model=trainer.outputs["model"],
        pinnerformer=pf_trainer.outputs["model"], tfma_blessing=evaluator.outputs["blessing"],
        item_embeddings=item_embedding_gen.outputs["item_embeddings"], events=events,
        config_json=cfg.sections_json("ranker_eval"),
        baseline_model=resolver.outputs["model"])
    pusher = AtomicPusher(
        model=trainer.outputs["model"], model_blessing=check.outputs["blessing"],
        examples=ranking_gen.outputs["examples"],  # canary / warmup: eval requests
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(serving_dir, RANKER_MODEL_NAME))),
    ).with_id("RankerPusher")
    return [ranking_gen, *validation, transform, trainer, resolver, evaluator, check, pusher]
