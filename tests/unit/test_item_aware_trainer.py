"""ItemAwareTrainer: its side inputs reach run_fn, and the pipeline wires the PinnerFormer in only
for ranker.use_pf_dot."""
import json
import os

import pytest
from tfx.types import standard_artifacts, standard_component_specs

from pinrank.components.trainer import ITEM_EMBEDDINGS_KEY, PINNERFORMER_KEY, ItemAwareExecutor
from pinrank.components.types import ItemEmbeddings
from pinrank.pipeline.artifacts import ITEM_EMBEDDINGS_URI, PINNERFORMER_DIR


def _artifact(cls, uri, **props):
    a = cls()
    a.uri = uri
    for k, v in props.items():
        setattr(a, k, v)
    return a


@pytest.mark.parametrize("with_pf", [False, True])
def test_executor_hands_the_side_inputs_to_run_fn(tmp_path, with_pf):
    examples = _artifact(standard_artifacts.Examples, str(tmp_path / "examples"),
                         split_names=json.dumps(["train", "eval"]))
    for split in ("train", "eval"):
        os.makedirs(tmp_path / "examples" / f"Split-{split}")
    inputs = {
        standard_component_specs.EXAMPLES_KEY: [examples],
        standard_component_specs.TRANSFORM_GRAPH_KEY: [
            _artifact(standard_artifacts.TransformGraph, str(tmp_path / "graph"))],
        ITEM_EMBEDDINGS_KEY: [_artifact(ItemEmbeddings, str(tmp_path / "items"))],
    }
    if with_pf:
        inputs[PINNERFORMER_KEY] = [_artifact(standard_artifacts.Model, str(tmp_path / "pf"))]
    outputs = {standard_component_specs.MODEL_KEY: [
        _artifact(standard_artifacts.Model, str(tmp_path / "model"))],
        standard_component_specs.MODEL_RUN_KEY: [
        _artifact(standard_artifacts.ModelRun, str(tmp_path / "run"))]}
    props = {standard_component_specs.TRAIN_ARGS_KEY: json.dumps({"num_steps": 1}),
             standard_component_specs.EVAL_ARGS_KEY: json.dumps({"num_steps": 1}),
             standard_component_specs.CUSTOM_CONFIG_KEY: json.dumps({"config_json": "{}"})}
    fn_args = ItemAwareExecutor()._GetFnArgs(inputs, outputs, props)
    assert fn_args.custom_config[ITEM_EMBEDDINGS_URI] == str(tmp_path / "items")
    if with_pf:  # the serving SavedModel inside the Model artifact (Format-Serving)
        assert fn_args.custom_config[PINNERFORMER_DIR] == str(tmp_path / "pf" / "Format-Serving")
    else:
        assert PINNERFORMER_DIR not in fn_args.custom_config


@pytest.mark.parametrize("use_pf_dot", [False, True])
def test_pipeline_gives_the_ranker_the_pinnerformer_only_for_the_dot_feature(use_pf_dot):
    from pinrank.pipeline.config import apply_overrides, preset
    from pinrank.pipeline.pipeline import create_pipeline

    cfg = apply_overrides(preset("tiny"), [f"ranker.use_pf_dot={str(use_pf_dot).lower()}"])
    p = create_pipeline(cfg, pipeline_root="/tmp/r", raw_data=None, serving_dir="/tmp/s")
    (node,) = [c for c in p.components if c.id == "RankerTrainer"]
    channel = node.inputs.get(PINNERFORMER_KEY)
    if use_pf_dot:
        assert channel.producer_component_id == "ItemAwareTrainer" and channel.output_key == "model"
    else:
        assert channel is None
