"""The compiled Kubeflow-V2 / Vertex PipelineJob, run: `pinrank compile` with local paths, then
every task of the job's DAG in dependency order, each container task through the command the job
names (TFX's Kubeflow-V2 entrypoint, behind pipeline/vertex_entrypoint.py) with an ExecutorInput
built from the IR, this environment standing in for the image (tests/e2e/vertex_ir.py). What
test_kubeflow_compile.py inspects, run: a compiled job whose commands have actually run."""
import glob
import importlib.util
import json
import os
import time

import pytest

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _vertex_ir():
    # --import-mode=importlib: a helper next to the test is loaded by path
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vertex_ir.py")
    spec = importlib.util.spec_from_file_location("pinrank_tests_vertex_ir", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vertex_run(tmp_path_factory):
    from pinrank.pipeline import cli
    tmp = tmp_path_factory.mktemp("vertex_ir")
    data, job = str(tmp / "data"), str(tmp / "job.json")
    root, serving = str(tmp / "root"), str(tmp / "serving")
    assert cli.main(["data", "--preset", "tiny", "--source", "synthetic", "--out", data]) == 0
    assert cli.main(["compile", "--preset", "tiny", "--source", "synthetic",
                     "--pipeline-root", root, "--data", data, "--serving-dir", serving,
                     "--out", job, "--image", "pinrank:local-stand-in",
                     "--schema-path", os.path.join(ROOT, "pipeline", "schema",
                                                   "pinnerformer_raw.pbtxt"),
                     "--ranker-schema-path", os.path.join(ROOT, "pipeline", "schema",
                                                          "ranker_raw.pbtxt")]) == 0
    runner = _vertex_ir().IRRunner(job, root, parallelism=2)  # a 2-core machine
    start = time.monotonic()
    outputs = runner.run()
    print(f"[vertex-ir] whole job: {time.monotonic() - start:.0f} s; per task: "
          f"{ {k: round(v) for k, v in runner.seconds.items()} }")
    return runner, outputs, {"data": data, "root": root, "serving": serving}


def _uri(outputs, task, key):
    (artifact,) = outputs[task][key]
    return artifact["uri"]


def test_every_task_of_the_compiled_job_ran(vertex_run):
    runner, outputs, paths = vertex_run
    spec = runner.spec
    assert set(outputs) == set(spec["root"]["dag"]["tasks"])
    kinds = {}
    for task in outputs:
        kinds.setdefault(next(iter(runner.executor(task))), []).append(task)
    assert sorted(kinds) == ["container", "importer", "resolver"]
    assert kinds["importer"] == ["RawDataImporter"]
    # a fresh root: the latest-blessed-model resolvers find nothing
    assert all(v == [] for t in kinds["resolver"] for v in outputs[t].values())
    for task in kinds["container"]:
        container = runner.executor(task)["container"]
        assert container["command"] == ["python", "-m", "pinrank.pipeline.vertex_entrypoint"]
        assert os.path.isfile(os.path.join(runner.run_dir, task, "executor_output.json")), task
        for key, arts in outputs[task].items():
            assert len(arts) == 1 and os.path.isdir(arts[0]["uri"]), (task, key)
    assert {"Pusher", "RankerPusher", "RankerTrainer", "RankerBaselineCheck"} <= set(outputs)


def test_dataset_gen_ingested_the_imported_dataset(vertex_run):
    from pinrank.components.data.events import MANIFEST_FILE, read_dataset_manifest
    _, outputs, paths = vertex_run
    (raw,) = outputs["RawDataImporter"]["result"]
    assert raw["uri"] == paths["data"]
    log = _uri(outputs, "DatasetGen", "events")
    assert os.path.isfile(os.path.join(log, MANIFEST_FILE))
    assert read_dataset_manifest(log)["fingerprint"] == \
        read_dataset_manifest(paths["data"])["fingerprint"] == raw["metadata"]["fingerprint"]
    assert glob.glob(os.path.join(log, "events", "*"))


def test_trainers_wrote_saved_models_and_the_pushers_pushed_them(vertex_run):
    _, outputs, paths = vertex_run
    for trainer, evaluator, pusher, name in (
            ("ItemAwareTrainer", "RetrievalEvaluator", "Pusher", "pinnerformer"),
            ("RankerTrainer", "RankerBaselineCheck", "RankerPusher", "ranker")):
        model = _uri(outputs, trainer, "model")
        assert os.path.isfile(os.path.join(model, "Format-Serving", "saved_model.pb")), trainer
        # the blessing's metadata came back through the ExecutorOutput, as Vertex records it
        (blessing,) = outputs[evaluator]["blessing"]
        assert blessing["metadata"]["blessed"] == 1, (evaluator, blessing)
        # ... naming its model by the runtime artifact name, what the compiled latest-blessed
        # resolvers match on Vertex (pipeline/vertex_entrypoint.py), not a hashed int id
        (trained,) = outputs[trainer]["model"]
        assert blessing["metadata"]["current_model_id"] == trained["name"], (evaluator, blessing)
        assert os.path.isfile(os.path.join(blessing["uri"], "BLESSED")), evaluator
        (pushed,) = outputs[pusher]["pushed_model"]
        assert pushed["metadata"]["pushed"] == 1, (pusher, pushed)
        destination = pushed["metadata"]["pushed_destination"]
        assert destination.startswith(os.path.join(paths["serving"], name) + os.sep)
        assert os.path.isfile(os.path.join(destination, "saved_model.pb"))
        assert glob.glob(os.path.join(paths["serving"], name, "*", "saved_model.pb")) == \
            [os.path.join(destination, "saved_model.pb")]


def test_the_executor_input_is_what_vertex_would_send(vertex_run):
    """Spot check of the runner's side of the contract: the Pusher got the blessing with the
    metadata RetrievalEvaluator wrote, and the evaluator got no baseline (nothing resolved)."""
    runner, outputs, _ = vertex_run
    with open(os.path.join(runner.run_dir, "Pusher", "executor_input.json")) as fh:
        sent = json.load(fh)["inputs"]["artifacts"]
    assert sent["model_blessing"]["artifacts"] == outputs["RetrievalEvaluator"]["blessing"]
    with open(os.path.join(runner.run_dir, "RetrievalEvaluator", "executor_input.json")) as fh:
        assert "baseline_model" not in json.load(fh)["inputs"]["artifacts"]


def test_a_second_run_resolves_each_models_own_last_blessed_model(vertex_run):
    """A second run on the same root: its resolver tasks query the metadata store the first run
    filled (tests/e2e/vertex_ir.py, ArtifactStore) with the compiled filters. Each finds its own
    model's gate blessing and the model it names. Without the compiled `gated_model` term the
    PinnerFormer query would match the newest blessed blessing of any model, which is not
    PinnerFormer's (pipeline/kubeflow_v2_runner.py, scope_blessing_queries)."""
    runner, outputs, paths = vertex_run
    resolvers = [t for t in runner.tasks if "resolver" in runner.executor(t)]
    second = _vertex_ir().IRRunner(runner.job_path, paths["root"], log=lambda *_: None)
    got = second.run(only=resolvers)
    for prefix, trainer, gate in (("latest_blessed_pinnerformer_resolver", "ItemAwareTrainer",
                                   "RetrievalEvaluator"),
                                  ("latest_blessed_ranker_resolver", "RankerTrainer",
                                   "RankerBaselineCheck")):
        (blessing,) = got[f"{prefix}-model-blessing-resolver"]["model_blessing"]
        (model,) = got[f"{prefix}-model-resolver"]["model"]
        assert blessing["name"] == outputs[gate]["blessing"][0]["name"], prefix
        assert model["name"] == outputs[trainer]["model"][0]["name"], prefix
        assert model["uri"] == outputs[trainer]["model"][0]["uri"], prefix
    pf_query = second.executor("latest_blessed_pinnerformer_resolver-model-blessing-resolver")
    stock = pf_query["resolver"]["outputArtifactQueries"]["model_blessing"]["filter"]
    stock = stock.split(" AND metadata.gated_model")[0]
    (newest,) = second.store.latest(stock)
    assert newest["name"] != outputs["RetrievalEvaluator"]["blessing"][0]["name"]
