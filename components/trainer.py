"""Trainer with side input channels: the frozen item embeddings, and optionally a PinnerFormer.

The stock Trainer has no slot for side inputs, and passing a URI through custom_config breaks
lineage and caching. This subclass adds `item_embeddings` to the spec (so MLMD records it and the
cache keys on it) and hands its URI to run_fn as `fn_args.custom_config["item_embeddings_uri"]`.
The optional `pinnerformer_model` (the ranker's, with ranker.use_pf_dot: the PinnerFormer that
built its examples) reaches run_fn as `custom_config["pinnerformer_dir"]`, its serving SavedModel.
Everything else (run_fn by dotted path, TrainArgs/EvalArgs, outputs) is the stock Trainer's.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.components.trainer.component import Trainer
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils, path_utils

from pinrank.components.types import ItemEmbeddings
from pinrank.pipeline.artifacts import ITEM_EMBEDDINGS_URI, PINNERFORMER_DIR

ITEM_EMBEDDINGS_KEY = "item_embeddings"
PINNERFORMER_KEY = "pinnerformer_model"


class ItemAwareTrainerSpec(standard_component_specs.TrainerSpec):
    INPUTS = {**standard_component_specs.TrainerSpec.INPUTS,
              ITEM_EMBEDDINGS_KEY: ChannelParameter(type=ItemEmbeddings),
              PINNERFORMER_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True)}


class ItemAwareExecutor(trainer_executor.GenericExecutor):
    def _GetFnArgs(self, input_dict, output_dict, exec_properties):
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        fn_args.custom_config = dict(fn_args.custom_config or {})
        fn_args.custom_config[ITEM_EMBEDDINGS_URI] = artifact_utils.get_single_uri(
            input_dict[ITEM_EMBEDDINGS_KEY])
        if input_dict.get(PINNERFORMER_KEY):
            fn_args.custom_config[PINNERFORMER_DIR] = path_utils.serving_model_path(
                artifact_utils.get_single_uri(input_dict[PINNERFORMER_KEY]))
        return fn_args


class ItemAwareTrainer(Trainer):
    """`Trainer(examples, transform_graph, item_embeddings, run_fn=..., [pinnerformer_model], ...)`."""
    SPEC_CLASS = ItemAwareTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ItemAwareExecutor)

    def __init__(self, *, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 item_embeddings: types.BaseChannel, run_fn: str,
                 train_args: trainer_pb2.TrainArgs, eval_args: trainer_pb2.EvalArgs,
                 custom_config: Optional[Dict[str, Any]] = None,
                 base_model: Optional[types.BaseChannel] = None,
                 pinnerformer_model: Optional[types.BaseChannel] = None):
        spec = ItemAwareTrainerSpec(
            examples=examples, transform_graph=transform_graph, schema=None,
            base_model=base_model, hyperparameters=None, item_embeddings=item_embeddings,
            pinnerformer_model=pinnerformer_model,
            train_args=train_args, eval_args=eval_args, module_file=None, run_fn=run_fn,
            custom_config=json_utils.dumps(custom_config or {}),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun))
        base_component.BaseComponent.__init__(self, spec=spec)
