"""End to end on tiny synthetic data with LocalDagRunner: artifacts, blessing, push, serving
signatures, and caching on a second run."""
import glob
import os

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

NODES = ["EventExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
         "AnomaliesGate", "ItemEmbeddingGen", "Transform", "ItemAwareTrainer",
         "RetrievalEvaluator", "Pusher"]


def _executions_by_node(metadata_path, pipeline_name):
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration import metadata
    from tfx.v1.orchestration.metadata import sqlite_metadata_connection_config
    out = {}
    with metadata.Metadata(sqlite_metadata_connection_config(metadata_path)) as m:
        for ctx in m.store.get_contexts_by_type("node"):
            node = ctx.name.split(".", 1)[1] if ctx.name.startswith(pipeline_name + ".") else None
            if node:
                states = [metadata_store_pb2.Execution.State.Name(e.last_known_state)
                          for e in sorted(m.store.get_executions_by_context(ctx.id),
                                          key=lambda e: e.id)]
                out[node] = states
    return out


def _pad(lists, dtype, pad):
    n = max(len(x) for x in lists)
    out = np.full((len(lists), n), pad, dtype=dtype)
    for i, x in enumerate(lists):
        out[i, :len(x)] = x
    return out


def test_every_component_ran_once_and_model_was_pushed(tiny_run):
    cfg, first, _ = tiny_run
    paths = first["paths"]
    states = _executions_by_node(paths["metadata_path"], cfg.name)
    for node in NODES:
        assert states.get(node), f"{node} never executed: {sorted(states)}"
        assert states[node][0] == "COMPLETE", (node, states[node])
    ev = first["evaluation"]
    assert ev["gate"]["blessed"] is True, ev["gate"]
    assert 0.0 <= ev["candidate"]["recall@10"] <= 1.0
    assert first["pushed"] is True
    versions = glob.glob(os.path.join(paths["serving_dir"], "pinnerformer", "*", "saved_model.pb"))
    assert len(versions) >= 1
    assert first["pushed_destination"].startswith(os.path.join(paths["serving_dir"], "pinnerformer"))


def test_second_run_hits_the_cache(tiny_run):
    cfg, first, _ = tiny_run
    states = _executions_by_node(first["paths"]["metadata_path"], cfg.name)
    # Everything up to the Trainer is reused; the evaluator re-runs because it now has a
    # baseline (the first run's blessed model) as a new input.
    for node in ["EventExampleGen", "StatisticsGen", "ItemEmbeddingGen", "Transform",
                 "ItemAwareTrainer"]:
        assert states[node] == ["COMPLETE", "CACHED"], (node, states[node])
    assert states["RetrievalEvaluator"] == ["COMPLETE", "COMPLETE"]
    # ... and compared the candidate with the first run's blessed model on the same users.
    _, _, second = tiny_run
    baseline = second["evaluation"]["baseline"]
    assert baseline is not None
    assert baseline["recall@10"] == pytest.approx(second["evaluation"]["candidate"]["recall@10"])


def test_pushed_model_matches_trained_model(tiny_run):
    import tensorflow as tf
    from pipeline import features as F
    cfg, first, second = tiny_run
    pushed = tf.saved_model.load(first["pushed_destination"])
    trainer_models = glob.glob(os.path.join(first["paths"]["pipeline_root"], "ItemAwareTrainer",
                                            "model", "*", "Format-Serving"))
    trained = tf.saved_model.load(trainer_models[0])
    examples_dir = glob.glob(os.path.join(first["paths"]["pipeline_root"], "EventExampleGen",
                                          "examples", "*", "Split-eval"))[0]
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(
        glob.glob(os.path.join(examples_dir, "*")), compression_type="GZIP").take(16)]
    via_examples = pushed.signatures["serving_default"](examples=tf.constant(serialized))["embedding"]

    parsed = [tf.train.Example.FromString(s).features.feature for s in serialized]
    ints = lambda n: [list(f[n].int64_list.value) for f in parsed]  # noqa: E731
    strs = lambda n: [list(f[n].bytes_list.value) for f in parsed]  # noqa: E731
    raw = dict(
        hist_item=_pad(ints(F.HIST_ITEM), np.int64, -1),
        hist_action=_pad(strs(F.HIST_ACTION), object, b""),
        hist_surface=_pad(strs(F.HIST_SURFACE), object, b""),
        hist_ts=_pad(ints(F.HIST_TS), np.int64, 0),
        hist_duration=_pad([list(f[F.HIST_DURATION].float_list.value) for f in parsed],
                           np.float32, 0.0),
        hist_len=np.array([len(f[F.HIST_ITEM].int64_list.value) for f in parsed], np.int64))
    via_raw = trained.signatures["embed_raw"](**{k: tf.constant(v) for k, v in raw.items()})
    np.testing.assert_allclose(via_examples.numpy(), via_raw["embedding"].numpy(), atol=1e-5)
    norms = np.linalg.norm(via_examples.numpy(), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    items = pushed.signatures["item_embedding"](item_id=tf.constant([1, 2, 3], tf.int64))
    assert items["embedding"].shape == (3, cfg.model.output_dim)
