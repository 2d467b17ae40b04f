"""create_embedding_pipeline(cfg, ...) -> tfx.dsl.Pipeline: the daily user-embedding job as a
second, small pipeline (pure, no I/O, no runner; pipeline/embedding_runner.py runs it locally,
pipeline/kubeflow_v2_runner.py compiles it for Vertex).

    training pipeline's ItemAwareTrainer.model ┐
    training pipeline's RetrievalEvaluator.blessing ┴► latest_blessed_pinnerformer (Resolver) ┐
    the data set (EventLog at dataset_dir, fingerprint) ─► events (Importer) ─────────────────┤
        ─► UserEmbeddingGen(as_of, snapshot root) ─► <snapshot_root>/<as_of>/
                                                     + UserEmbeddingSnapshot in MLMD

The data set is an input artifact, not a path parameter, so MLMD links each snapshot to the data
it read. The importer does not re-register data it already knows (`reimport=False`): when
`dataset_dir` is the URI of the training pipeline's DatasetGen output (as `pinrank
embed-pipeline` passes it) with the same fingerprint, it returns that very artifact, and a
snapshot's lineage runs on through DatasetGen to the raw files. Other data (a newer day's
events, gs:// on Vertex) becomes a new external EventLog with its fingerprint, which is also what
makes the cache see new data.

Cross-pipeline resolution: the resolver's inputs are `ExternalPipelineChannel`s
(`channel_utils.external_pipeline_artifact_query`), queries for the outputs of another pipeline's
nodes: the training pipeline's name (`cfg.name`), node id and output key compile into MLMD
context queries (pipeline context `cfg.name`, node context `cfg.name.ItemAwareTrainer`), so only
the PinnerFormer trainer's models and the RetrievalEvaluator's blessings are candidates (not the
ranker's, which the same store holds). The LatestBlessedModelStrategy then picks the newest model
with a blessed blessing. This pipeline has its own name (`<cfg.name>-embeddings`) and so its own
pipeline and node contexts and its own pipeline root; only the MLMD store is shared with the
training pipeline (RunPaths.metadata_path), which is what LocalDagRunner resolves against. TFX
1.16's LocalDagRunner resolves these channels in its own (primary) store: the owner/MLMD service
the compiler attaches to an external channel is ignored there.

On Kubeflow V2 / Vertex the compiler turns the LatestBlessedModelStrategy resolver into its own
two resolver tasks (a filter on the latest blessed ModelBlessing, then the Model it names), which
look in Vertex ML Metadata rather than in a pipeline's contexts.
"""
from __future__ import annotations

from typing import List, Optional, Union

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.types import channel_utils

from pinrank.components.types import EventLog
from pinrank.components.user_embedding_gen import UserEmbeddingGen
from pinrank.pipeline.config import PipelineConfig

PIPELINE_SUFFIX = "-embeddings"
OWNER = "pinrank"  # the external channels' owner (an MLMD service name on a platform that has one)
TRAINER_ID = "ItemAwareTrainer"  # the training pipeline's PinnerFormer nodes (pipeline/pipeline.py)
EVALUATOR_ID = "RetrievalEvaluator"
RESOLVER_ID = "latest_blessed_pinnerformer"
EVENTS_ID = "events"
COMPONENT_ID = "UserEmbeddingGen"


def embedding_pipeline_name(cfg: PipelineConfig) -> str:
    return cfg.name + PIPELINE_SUFFIX


def latest_blessed_pinnerformer(training_pipeline_name: str):
    """Resolver over the training pipeline's PinnerFormer models and blessings."""
    query = channel_utils.external_pipeline_artifact_query
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=query(tfx.types.standard_artifacts.Model, owner=OWNER,
                    pipeline_name=training_pipeline_name, producer_component_id=TRAINER_ID,
                    output_key="model"),
        model_blessing=query(tfx.types.standard_artifacts.ModelBlessing, owner=OWNER,
                             pipeline_name=training_pipeline_name,
                             producer_component_id=EVALUATOR_ID, output_key="blessing"),
    ).with_id(RESOLVER_ID)


def create_embedding_pipeline(
    cfg: PipelineConfig,
    *,
    pipeline_root: str,
    dataset_dir: str,
    dataset_fingerprint: str,
    snapshot_root: str,
    as_of: Union[int, "tfx.dsl.experimental.RuntimeParameter"],
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
    overwrite: bool = False,
) -> tfx.dsl.Pipeline:
    """metadata_connection_config: the training pipeline's store (the resolver reads it).
    as_of: unix seconds, or a RuntimeParameter for a compiled job run daily."""
    resolver = latest_blessed_pinnerformer(cfg.name)
    events = tfx.dsl.Importer(source_uri=dataset_dir, artifact_type=EventLog, reimport=False,
                              custom_properties={"fingerprint": dataset_fingerprint}
                              ).with_id(EVENTS_ID)
    gen = UserEmbeddingGen(model=resolver.outputs["model"],
                           model_blessing=resolver.outputs["model_blessing"],
                           events=events.outputs["result"], as_of=as_of,
                           snapshot_root=snapshot_root, overwrite=overwrite).with_id(COMPONENT_ID)
    return tfx.dsl.Pipeline(
        pipeline_name=embedding_pipeline_name(cfg),
        pipeline_root=pipeline_root,
        components=[resolver, events, gen],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )
