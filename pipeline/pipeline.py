"""create_pipeline(cfg, ...) -> tfx.dsl.Pipeline: pure, no I/O, no runner (runners are thin files).

events ─► EventExampleGen ─► StatisticsGen ─► ExampleValidator ─► AnomaliesGate
              │  └► ItemCatalog     ImportSchemaGen ┘                     │ (must pass)
              ├─► ItemEmbeddingGen (train users only)                      ▼
              └─► Transform(M most recent) ─► Trainer(PinnerFormer) ─► RetrievalEvaluator ─► Pusher
                                                   latest blessed model ┘ (baseline)
"""
from __future__ import annotations

import os
from typing import List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components.anomalies_gate import AnomaliesGate
from components.event_example_gen import EventExampleGen
from components.item_embedding_gen import ItemEmbeddingGen
from components.retrieval_evaluator.component import RetrievalEvaluator
from components.trainer import ItemAwareTrainer
from pipeline.config import PipelineConfig

PINNERFORMER_SCHEMA = os.path.join(os.path.dirname(__file__), "schema", "pinnerformer_raw.pbtxt")
PREPROCESSING_FN = "transform.pinnerformer.preprocessing_fn"
RUN_FN = "models.pinnerformer.run.run_fn"
PINNERFORMER_MODEL_NAME = "pinnerformer"


def create_pipeline(
    cfg: PipelineConfig,
    *,
    pipeline_root: str,
    dataset_dir: str,
    dataset_fingerprint: str,
    serving_dir: str,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
    schema_path: str = PINNERFORMER_SCHEMA,
) -> tfx.dsl.Pipeline:
    """schema_path: the curated raw schema; on Vertex pass where the image (or GCS) has it."""
    example_gen = EventExampleGen(input_base=dataset_dir, input_fingerprint=dataset_fingerprint,
                                  config_json=cfg.sections_json("examples"))
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])

    item_embedding_gen = ItemEmbeddingGen(examples=example_gen.outputs["examples"],
                                          items=example_gen.outputs["items"],
                                          config_json=cfg.sections_json("items"))
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={"seq_len": cfg.model.seq_len, "max_future": cfg.examples.max_future},
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=["train", "eval"]))
    transform.add_upstream_node(anomalies_gate)

    trainer = ItemAwareTrainer(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        item_embeddings=item_embedding_gen.outputs["item_embeddings"],
        run_fn=RUN_FN,
        train_args=tfx.proto.TrainArgs(num_steps=cfg.train.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=cfg.train.eval_steps),
        custom_config={"config_json": cfg.sections_json("model", "train")})

    baseline_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_pinnerformer_resolver")
    evaluator = RetrievalEvaluator(
        model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
        item_embeddings=item_embedding_gen.outputs["item_embeddings"],
        baseline_model=baseline_resolver.outputs["model"], config_json=cfg.sections_json("eval"))
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(serving_dir, PINNERFORMER_MODEL_NAME))))

    return tfx.dsl.Pipeline(
        pipeline_name=cfg.name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, anomalies_gate,
                    item_embedding_gen, transform, trainer, baseline_resolver, evaluator, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )
