"""BeamDagRunner entry point for the tfx CLI (the file must call BeamDagRunner().run()).

  tfx pipeline create --engine=beam --pipeline_path=$PWD/pipeline/runners/beam_runner.py
  tfx run create --engine=beam --pipeline_name=pinrank

The CLI runs this file as a plain script, so settings come from the environment:
PINRANK_PRESET (tiny|cpu|paper, default cpu), PINRANK_SOURCE (movielens|synthetic|path),
PINRANK_DATA_PATH (for source=path), PINRANK_HOME (default ./runs), PINRANK_SET (comma-separated
section.field=value overrides).

The CLI runs it as a script, so Python puts the script's folder first on sys.path; it lives in a
folder of its own, where that adds no module names, and imports the installed `pinrank` package.
"""
import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

from pinrank.pipeline.config import apply_overrides, preset
from pinrank.pipeline.runs import DEFAULT_HOME, RunPaths, build, run_lock


def config_from_env():
    cfg = preset(os.environ.get("PINRANK_PRESET", "cpu"), os.environ.get("PINRANK_SOURCE"))
    if os.environ.get("PINRANK_DATA_PATH"):
        cfg = cfg.replace(data={"path": os.environ["PINRANK_DATA_PATH"]})
    overrides = [o for o in os.environ.get("PINRANK_SET", "").split(",") if o]
    return apply_overrides(cfg, overrides)


if __name__ == "__main__":
    cfg = config_from_env()
    # BeamDagRunner() without arguments is the IR-based runner
    # (docs/tfx-notes.md, "Runners: LocalDagRunner, BeamDagRunner, Kubeflow V2").
    paths = RunPaths.for_config(cfg, os.environ.get("PINRANK_HOME", DEFAULT_HOME))
    with run_lock(paths):
        BeamDagRunner().run(build(cfg, paths))
