"""The embedding pipeline (pipeline/embedding_pipeline.py): its resolver queries the training
pipeline's PinnerFormer nodes, and it compiles offline for Kubeflow Pipelines v2 / Vertex AI with
gs:// paths (every path remote, `as_of` a runtime parameter unless fixed), through the same code
path as `pinrank compile`."""
import json
import os
import re

import pytest

# As tests/unit/test_kubeflow_compile.py: an absolute path anywhere in a string.
ABS_PATH = re.compile(r"(?<![\w.:/~-])/[\w.@+~-][^\s\"'<>|,;)}\]]*")
GEN = "UserEmbeddingGen"
BLESSING_RESOLVER = "latest_blessed_pinnerformer-model-blessing-resolver"
MODEL_RESOLVER = "latest_blessed_pinnerformer-model-resolver"


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _executor(spec, task):
    label = spec["components"][spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]][
        "executorLabel"]
    return spec["deploymentSpec"]["executors"][label]


def test_the_resolver_queries_the_training_pipelines_pinnerformer_nodes():
    from tfx.dsl.compiler import compiler

    from pinrank.pipeline.config import preset
    from pinrank.pipeline.embedding_pipeline import create_embedding_pipeline
    cfg = preset("tiny")
    ir = compiler.Compiler().compile(create_embedding_pipeline(
        cfg, pipeline_root="/tmp/r", dataset_dir="/tmp/d", dataset_fingerprint="f" * 64,
        snapshot_root="/tmp/s", as_of=1_700_000_000))
    assert ir.pipeline_info.id == cfg.name + "-embeddings"  # its own pipeline context
    nodes = {n.pipeline_node.node_info.id: n.pipeline_node for n in ir.nodes}
    assert set(nodes) == {"latest_blessed_pinnerformer", "events", GEN}
    assert list(nodes)[-1] == GEN
    queries = {}
    for channel_input in nodes["latest_blessed_pinnerformer"].inputs.inputs.values():
        if not channel_input.channels:  # the strategy's graph inputs, fed by these channels
            continue
        (ch,) = channel_input.channels
        contexts = {q.type.name: q.name.field_value.string_value for q in ch.context_queries}
        queries[(ch.artifact_query.type.name, ch.output_key)] = contexts
    # Another pipeline's nodes: the training pipeline's trainer and evaluator (not the ranker's).
    assert queries == {
        ("Model", "model"): {"pipeline": cfg.name, "node": f"{cfg.name}.ItemAwareTrainer"},
        ("ModelBlessing", "blessing"): {"pipeline": cfg.name,
                                        "node": f"{cfg.name}.RetrievalEvaluator"}}
    gen = nodes[GEN]
    assert set(gen.inputs.inputs) == {"model", "model_blessing", "events"}
    (events_channel,) = gen.inputs.inputs["events"].channels
    assert events_channel.producer_node_query.id == "events"
    assert events_channel.artifact_query.type.name == "pinrank.EventLog"
    params = {k: v.field_value for k, v in gen.parameters.parameters.items()}
    assert params["as_of"].int_value == 1_700_000_000
    assert params["snapshot_root"].string_value == "/tmp/s"
    assert "input_base" not in params and "input_fingerprint" not in params  # an artifact now
    # The data set is imported by URI and fingerprint; known data is not re-registered.
    importer = {k: v.field_value for k, v in nodes["events"].parameters.parameters.items()}
    assert importer["artifact_uri"].string_value == "/tmp/d"
    assert importer["reimport"].int_value == 0
    spec = nodes["events"].outputs.outputs["result"].artifact_spec
    assert spec.additional_custom_properties["fingerprint"].field_value.string_value == "f" * 64


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """`pinrank compile-embed-pipeline` as a user runs it for Vertex (no --as-of)."""
    from pinrank.pipeline import cli
    out = str(tmp_path_factory.mktemp("compile") / "embed.json")
    code = cli.main(["compile-embed-pipeline", "--preset", "tiny", "--pipeline-root",
                     "gs://b/root", "--data", "gs://b/data", "--snapshot-root",
                     "gs://b/snapshots", "--dataset-fingerprint", "e" * 64, "--out", out,
                     "--image", "example.com/pinrank:abc"])
    assert code == 0
    with open(out) as fh:
        return json.load(fh)


def test_compiled_job_resolves_then_embeds(job):
    spec = job["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {GEN, BLESSING_RESOLVER, MODEL_RESOLVER, "events"}
    inputs = tasks[GEN]["inputs"]
    assert inputs["artifacts"]["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model", "producerTask": MODEL_RESOLVER}
    assert inputs["artifacts"]["model_blessing"]["taskOutputArtifact"]["producerTask"] == \
        BLESSING_RESOLVER
    blessing_query = _executor(spec, BLESSING_RESOLVER)["resolver"]["outputArtifactQueries"]
    assert "metadata.blessed.number_value=1" in blessing_query["model_blessing"]["filter"]
    # only PinnerFormer's gate blessings (Vertex has no node context to tell them apart)
    assert blessing_query["model_blessing"]["filter"].endswith(
        ' AND metadata.gated_model.string_value="pinnerformer"')
    # as_of: a parameter of each run (a daily schedule passes it), not a constant.
    assert inputs["parameters"]["as_of"] == {"componentInputParameter": "as_of"}
    assert spec["root"]["inputDefinitions"]["parameters"]["as_of"]["type"] == "INT"
    const = {k: v["runtimeValue"]["constantValue"] for k, v in inputs["parameters"].items()
             if "runtimeValue" in v}
    assert const["snapshot_root"] == {"stringValue": "gs://b/snapshots"}
    assert inputs["artifacts"]["events"]["taskOutputArtifact"] == {
        "outputArtifactKey": "result", "producerTask": "events"}
    importer = _executor(spec, "events")["importer"]
    assert importer["artifactUri"] == {"constantValue": {"stringValue": "gs://b/data"}}
    assert importer["metadata"] == {"fingerprint": "e" * 64}
    assert importer["typeSchema"]["instanceSchema"].startswith("title: pinrank.EventLog")
    container = _executor(spec, GEN)["container"]
    assert container["image"] == "example.com/pinrank:abc"
    assert "pinrank.components.user_embedding_gen.Executor" in container["args"]
    # A Beam component: it gets the pipeline's Beam args (DirectRunner in the task's container).
    assert "--runner=DirectRunner" in container["args"]
    assert job["pipelineSpec"]["pipelineInfo"]["name"] == "pinrank-embeddings"


def test_every_path_in_the_job_is_remote(job):
    local = [p for s in _strings(job) for p in ABS_PATH.findall(s)] + \
        [s for s in _strings(job) if "file:" in s]
    assert not local, local
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://b/root"


def test_fixed_as_of_compiles_to_a_constant(tmp_path):
    from pinrank.pipeline.config import preset
    from pinrank.pipeline.kubeflow_v2_runner import compile_embedding_pipeline
    out = compile_embedding_pipeline(
        preset("tiny"), pipeline_root="gs://b/root", dataset_dir="gs://b/data",
        dataset_fingerprint="e" * 64, snapshot_root="gs://b/s", as_of=1_700_000_000,
        output_path=str(tmp_path / "j.json"), image="img:1")
    spec = json.load(open(out))["pipelineSpec"]
    param = spec["root"]["dag"]["tasks"][GEN]["inputs"]["parameters"]["as_of"]
    assert param["runtimeValue"]["constantValue"] == {"intValue": "1700000000"}
    assert "inputDefinitions" not in spec["root"]


def test_local_snapshot_root_is_refused_in_one_line(tmp_path, capsys):
    from pinrank.pipeline import cli
    code = cli.main(["compile-embed-pipeline", "--preset", "tiny", "--pipeline-root",
                     "gs://b/root", "--data", "gs://b/data", "--snapshot-root", str(tmp_path),
                     "--dataset-fingerprint", "e" * 64, "--out", str(tmp_path / "j.json"),
                     "--image", "img:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: --snapshot-root ") and "not remote" in err
    assert len(err.splitlines()) == 1


def test_local_path_reads_gcs_through_the_fuse_mount(tmp_path):
    from pinrank.components.user_embedding_gen import UserEmbeddingError, local_path
    assert local_path("/data/x") == "/data/x"
    assert local_path("file:///data/x") == "/data/x"
    (tmp_path / "bucket").mkdir()
    assert local_path("gs://bucket/a/b", fuse_root=str(tmp_path)) == str(tmp_path / "bucket/a/b")
    with pytest.raises(UserEmbeddingError, match="gs://other/a"):
        local_path("gs://other/a", fuse_root=str(tmp_path))
    with pytest.raises(UserEmbeddingError):
        local_path("s3://bucket/a", fuse_root=str(tmp_path))


def test_embed_pipeline_without_a_blessed_model_fails_in_one_line(tmp_path, capsys):
    """A home whose store holds no blessed PinnerFormer: the resolver finds nothing, no
    snapshot is written, and the command says so (exit 1)."""
    from tfx.orchestration import metadata

    from pinrank.components.data.sources import prepare_dataset
    from pinrank.components.types import EventLog
    from pinrank.pipeline import cli
    from pinrank.pipeline.config import preset
    from pinrank.pipeline.runs import RunPaths
    paths = RunPaths.for_config(preset("tiny"), str(tmp_path))
    events = EventLog()
    events.uri = prepare_dataset(preset("tiny").data,
                                 os.path.join(paths.pipeline_root, "DatasetGen", "events", "1"))
    with metadata.Metadata(metadata.sqlite_metadata_connection_config(paths.metadata_path)) as m:
        m.publish_artifacts([events])  # ingested data, but no model at all
    snapshots = tmp_path / "snapshots"
    code = cli.main(["embed-pipeline", "--preset", "tiny", "--home", str(tmp_path),
                     "--as-of", "1700000000", "--snapshot-root", str(snapshots)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: ") and "no blessed PinnerFormer" in err[-1], err[-3:]
    assert not snapshots.exists() or not os.listdir(snapshots)


def test_embed_pipeline_needs_a_run_first(tmp_path, capsys):
    from pinrank.pipeline import cli
    code = cli.main(["embed-pipeline", "--preset", "tiny", "--home", str(tmp_path),
                     "--as-of", "1700000000"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: ") and "run `pinrank run`" in err
    assert len(err.splitlines()) == 1
