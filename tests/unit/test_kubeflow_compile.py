"""The pipeline compiles offline for Kubeflow Pipelines v2 / Vertex AI with gs:// paths."""
import json


def test_compile_offline_with_gcs_paths(tmp_path):
    from pipeline.config import preset
    from pipeline.kubeflow_v2_runner import compile_pipeline
    out = compile_pipeline(preset("cpu"), pipeline_root="gs://b/root", dataset_dir="gs://b/data",
                           serving_dir="gs://b/serving", output_path=str(tmp_path / "p.json"),
                           image="example.com/pinrank:abc", schema_path="gs://b/schema.pbtxt")
    job = json.load(open(out))
    spec = job["pipelineSpec"]
    tasks = set(spec["root"]["dag"]["tasks"])
    assert {"EventExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
            "AnomaliesGate", "ItemEmbeddingGen", "Transform", "ItemAwareTrainer",
            "RetrievalEvaluator", "Pusher"} <= tasks
    assert any("resolver" in t for t in tasks)
    text = json.dumps(job)
    assert "models.pinnerformer.run.run_fn" in text            # dotted path, no module_file wheel
    assert "transform.pinnerformer.preprocessing_fn" in text
    assert "_wheels" not in text
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()
              if "container" in e}
    assert images == {"example.com/pinrank:abc"}
    assert "gs://b/serving/pinnerformer" in text
