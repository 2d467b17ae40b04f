"""The pipeline compiles offline for Kubeflow Pipelines v2 / Vertex AI with gs:// paths, into a
PipelineJob whose every path is remote or inside the project's image, with the data's real
fingerprint, Dataflow settings from the config and the project's image."""
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Beam-based components: their executors get the pipeline's beam_pipeline_args.
BEAM_EXECUTORS = ("EventExampleGen", "StatisticsGen", "Transform", "ItemEmbeddingGen",
                  "RankingExampleGen", "StatisticsGenRanker", "TransformRanker", "RankerEvaluator")
# An absolute path anywhere in a string (JSON inside strings included), not the path part of a
# URI (gs://b/x: its slashes follow ':' , '/' or a name character).
ABS_PATH = re.compile(r"(?<![\w.:/~-])/[\w.@+~-][^\s\"'<>|,;)}\]]*")


def test_compile_offline_with_gcs_paths(tmp_path):
    from pinrank.pipeline.config import preset
    from pinrank.pipeline.kubeflow_v2_runner import compile_pipeline
    out = compile_pipeline(preset("cpu"), pipeline_root="gs://b/root", dataset_dir="gs://b/data",
                           dataset_fingerprint="f" * 64, serving_dir="gs://b/serving",
                           output_path=str(tmp_path / "p.json"), image="example.com/pinrank:abc",
                           schema_path="gs://b/schema.pbtxt")
    job = json.load(open(out))
    spec = job["pipelineSpec"]
    tasks = set(spec["root"]["dag"]["tasks"])
    assert {"EventExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
            "AnomaliesGate", "ItemEmbeddingGen", "Transform", "ItemAwareTrainer",
            "RetrievalEvaluator", "Pusher"} <= tasks
    assert any("resolver" in t for t in tasks)
    text = json.dumps(job)
    assert "pinrank.models.pinnerformer.run.run_fn" in text            # dotted path, no module_file wheel
    assert "pinrank.transform.pinnerformer.preprocessing_fn" in text
    assert "_wheels" not in text
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()
              if "container" in e}
    assert images == {"example.com/pinrank:abc"}
    assert "gs://b/serving/pinnerformer" in text
    assert _param(spec, "ImportSchemaGen", "schema_file") == "gs://b/schema.pbtxt"
    # Each latest-blessed resolver asks for its own model's gate blessing (not any blessed one).
    filters = {task: query["filter"] for task in tasks if task.endswith("-model-blessing-resolver")
               for query in _resolver(spec, task)["outputArtifactQueries"].values()}
    assert filters == {
        f"{resolver}-model-blessing-resolver":
            'schema_title="tfx.ModelBlessing" AND state=LIVE AND metadata.blessed.number_value=1'
            f' AND metadata.gated_model.string_value="{model}"'
        for resolver, model in (("latest_blessed_pinnerformer_resolver", "pinnerformer"),
                                ("latest_blessed_ranker_resolver", "ranker"))}
    # No project: Beam runs inside the task's container with the local runner's settings.
    args = _executor(spec, "StatisticsGen")["args"]
    assert "--runner=DirectRunner" in args and "--direct_running_mode=in_memory" in args
    assert not any(a.startswith("--project") for a in args)


def _walk(obj, where=""):
    """(where, string) of every string in a JSON tree, keys included."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{where}/{k}", k
            yield from _walk(v, f"{where}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{where}[{i}]")
    elif isinstance(obj, str):
        yield where, obj


def _param(spec, task, name):
    params = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
    return params[name]["runtimeValue"]["constantValue"]["stringValue"]


def _resolver(spec, task):
    label = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    return spec["deploymentSpec"]["executors"][spec["components"][label]["executorLabel"]]["resolver"]


def test_a_blessing_query_of_an_unknown_resolver_is_refused():
    from pinrank.pipeline.config import ConfigError
    from pinrank.pipeline.kubeflow_v2_runner import scope_blessing_queries
    query = {"filter": 'schema_title="tfx.ModelBlessing" AND state=LIVE'}
    job = {"pipelineSpec": {
        "root": {"dag": {"tasks": {"other-model-blessing-resolver": {"componentRef": {"name": "c"}}}}},
        "components": {"c": {"executorLabel": "e"}},
        "deploymentSpec": {"executors": {"e": {"resolver": {"outputArtifactQueries": {"b": query}}}}}}}
    with pytest.raises(ConfigError, match="'other' queries blessings"):
        scope_blessing_queries(job, {"latest_blessed_pinnerformer_resolver": "pinnerformer"})
    scope_blessing_queries(job, {"other": "ranker"})
    assert query["filter"].endswith(' AND metadata.gated_model.string_value="ranker"')


def _executor(spec, task):
    label = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    executor = spec["components"][label]["executorLabel"]
    return spec["deploymentSpec"]["executors"][executor]["container"]


@pytest.fixture(scope="module")
def vertex_job(tmp_path_factory):
    """`pinrank compile` as a user runs it for Vertex: gs:// everywhere, the default image, the
    fingerprint from the local copy of the uploaded dataset, Dataflow settings by --set."""
    from pinrank.components.data.sources import prepare_dataset
    from pinrank.pipeline import cli
    from pinrank.pipeline.config import preset
    tmp = tmp_path_factory.mktemp("compile")
    local_data = prepare_dataset(preset("tiny").data, str(tmp / "data"))  # what was uploaded
    out = str(tmp / "job.json")
    code = cli.main(["compile", "--preset", "tiny", "--pipeline-root", "gs://b/root",
                     "--data", "gs://b/data", "--serving-dir", "gs://b/serving",
                     "--dataset-fingerprint", local_data, "--out", out,
                     "--set", "vertex.project=proj", "--set", "vertex.region=europe-west4",
                     "--set", "vertex.machine_type=n1-highmem-8",
                     "--set", "vertex.max_num_workers=20",
                     "--set", "vertex.autoscaling_algorithm=NONE"])
    assert code == 0
    with open(out) as fh:
        return json.load(fh), local_data, str(tmp)


def test_every_path_in_the_job_is_remote_or_inside_the_image(vertex_job):
    from pinrank.pipeline.kubeflow_v2_runner import IMAGE_SITE_PACKAGES
    job, local_data, tmp = vertex_job
    local = []
    for where, s in _walk(job):
        for path in ABS_PATH.findall(s):
            if not path.startswith(IMAGE_SITE_PACKAGES + "/"):
                local.append(f"{where}: {path}")
        if "file:" in s:
            local.append(f"{where}: {s[:200]}")
    assert not local, "local paths in the compiled job:\n" + "\n".join(local)
    text = json.dumps(job)
    for machine_path in (ROOT, tmp, local_data):  # not even inside another string
        assert machine_path not in text
    uris = {m for m in re.findall(r"gs://[^\s\"'\\]+", text)}
    assert {"gs://b/data", "gs://b/serving/pinnerformer", "gs://b/serving/ranker",
            "gs://b/root/beam-temp"} <= uris
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://b/root"


def test_the_path_check_sees_local_paths_inside_any_string():
    found = [ABS_PATH.findall(s) for s in (
        "/work/main/pipeline/schema/pinnerformer_raw.pbtxt", '{"input_base": "/tmp/data"}',
        "--temp_location=/tmp/beam", "gs://b/root/x", "--temp_location=gs://b/t", "a/b", "{{$}}")]
    assert found == [["/work/main/pipeline/schema/pinnerformer_raw.pbtxt"], ["/tmp/data"],
                     ["/tmp/beam"], [], [], [], []]


def test_schemas_are_the_installed_package_files_inside_the_image(vertex_job):
    from pinrank.pipeline.kubeflow_v2_runner import IMAGE_SITE_PACKAGES
    spec = vertex_job[0]["pipelineSpec"]
    for task, name in (("ImportSchemaGen", "pinnerformer_raw.pbtxt"),
                       ("ImportSchemaGenRanker", "ranker_raw.pbtxt")):
        path = _param(spec, task, "schema_file")
        assert path == f"{IMAGE_SITE_PACKAGES}/pinrank/pipeline/schema/{name}"
        # the same file relative to the packages' root (test_image.py: the wheel ships it there)
        assert os.path.isfile(os.path.join(ROOT, "pipeline", "schema", name))


def test_the_fingerprint_is_the_datasets(vertex_job):
    from pinrank.components.data.events import read_dataset_manifest
    from pinrank.components.data.sources import dataset_fingerprint
    from pinrank.pipeline.config import preset
    job, local_data, _ = vertex_job
    real = dataset_fingerprint(preset("tiny").data)
    assert read_dataset_manifest(local_data)["fingerprint"] == real  # what the local runner passes
    spec = job["pipelineSpec"]
    # The uploaded dataset is the job's RawData, imported with its fingerprint (new data at the
    # same URI is a new artifact), ingested by DatasetGen, whose EventLog every reader consumes.
    label = spec["components"]["RawDataImporter"]["executorLabel"]
    importer = spec["deploymentSpec"]["executors"][label]["importer"]
    assert importer["artifactUri"]["constantValue"]["stringValue"] == "gs://b/data"
    assert importer["metadata"] == {"fingerprint": real, "format": "canonical"}
    assert "pinrank.RawData" in importer["typeSchema"]["instanceSchema"]
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["DatasetGen"]["inputs"]["artifacts"]["raw"]["taskOutputArtifact"] == {
        "outputArtifactKey": "result", "producerTask": "RawDataImporter"}
    for task in ("EventExampleGen", "RetrievalEvaluator", "RankingExampleGen",
                 "RankerBaselineCheck"):
        assert tasks[task]["inputs"]["artifacts"]["events"]["taskOutputArtifact"] == {
            "outputArtifactKey": "events", "producerTask": "DatasetGen"}
    assert "unversioned" not in json.dumps(job)


def test_beam_components_run_on_dataflow_in_the_projects_image(vertex_job):
    spec = vertex_job[0]["pipelineSpec"]
    with open(os.path.join(ROOT, "pyproject.toml")) as fh:
        version = re.search(r'(?m)^version = "(.+)"', fh.read()).group(1)
    image = f"pinrank:{version}"  # the Makefile's `image` tag
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()
              if "container" in e}
    assert images == {image}
    want = {"--runner=DataflowRunner", "--project=proj", "--region=europe-west4",
            "--temp_location=gs://b/root/beam-temp", "--machine_type=n1-highmem-8",
            "--max_num_workers=20", "--autoscaling_algorithm=NONE",
            f"--sdk_container_image={image}"}
    for task in BEAM_EXECUTORS:
        container = _executor(spec, task)
        assert want <= set(container["args"]), task
        # TFX's entrypoint behind the one that registers the artifact types (vertex_entrypoint)
        assert container["command"] == ["python", "-m", "pinrank.pipeline.vertex_entrypoint"]


def _compile_error(capsys, *argv):
    from pinrank.pipeline import cli
    code = cli.main(["compile", "--preset", "tiny", "--pipeline-root", "gs://b/root",
                     "--serving-dir", "gs://b/serving", "--out", "/nonexistent/job.json",
                     *argv])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return code, err


def test_a_remote_dataset_needs_its_fingerprint(capsys):
    code, err = _compile_error(capsys, "--data", "gs://b/data")
    assert code == 2 and "--dataset-fingerprint" in err and "gs://b/data" in err
    code, err = _compile_error(capsys, "--data", "gs://b/data",
                               "--dataset-fingerprint", "unversioned")
    assert code == 2 and "'unversioned'" in err


def test_a_local_dataset_gives_its_own_fingerprint(tmp_path, capsys):
    from pinrank.components.data.sources import prepare_dataset
    from pinrank.pipeline.config import preset
    from pinrank.pipeline.kubeflow_v2_runner import dataset_fingerprint_for
    d = prepare_dataset(preset("tiny").data, str(tmp_path / "data"))
    real = dataset_fingerprint_for(d)
    assert real == dataset_fingerprint_for(d, real)
    assert dataset_fingerprint_for("gs://b/data", d) == real
    assert dataset_fingerprint_for("gs://b/data", os.path.join(d, "DATASET.json")) == real
    code, err = _compile_error(capsys, "--data", d, "--dataset-fingerprint", "0" * 64)
    assert code == 2 and "differs" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _compile_error(capsys, "--data", str(empty))
    assert code == 1 and "DATASET.json" in err and "pinrank data" in err


def test_dataflow_needs_a_project_and_gcs_temp(capsys):
    code, err = _compile_error(capsys, "--data", "gs://b/data", "--dataset-fingerprint",
                               "f" * 64, "--set", "vertex.runner=DataflowRunner")
    assert code == 2 and "vertex.project" in err
    code, err = _compile_error(capsys, "--data", "gs://b/data", "--dataset-fingerprint",
                               "f" * 64, "--set", "vertex.temp_location=/tmp/beam")
    assert code == 2 and "gs://" in err
    code, err = _compile_error(capsys, "--data", "gs://b/data", "--dataset-fingerprint",
                               "f" * 64, "--set", "vertex.runner=FlinkRunner")
    assert code == 2 and "vertex.runner" in err
