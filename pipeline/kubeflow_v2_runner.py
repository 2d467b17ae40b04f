"""Compile the pipeline for Kubeflow Pipelines v2 / Vertex AI, offline: user code is referenced
by dotted path inside the installed package, so nothing is uploaded at compile time.

Every task runs the project's image (`Dockerfile`: the TFX 1.16 image, uv.lock's pins, this
package, TF_USE_LEGACY_KERAS=1). Every path in the compiled job is remote (gs://) or inside that
image: the curated schemas are package data, named by where `pip install .` put them in the image
(`IMAGE_SITE_PACKAGES`, which the Dockerfile's build checks). The dataset's fingerprint is
DATASET.json's, as in the local runner, so the cache sees new data.

TensorFlow/TFX are imported by `compile_pipeline` only: the CLI checks its inputs before that.
"""
from __future__ import annotations

import os
import posixpath
import re
from importlib import metadata
from typing import List, Mapping, Optional

from pinrank.pipeline.artifacts import GATED_MODEL, PINNERFORMER, RANKER, is_remote
from pinrank.pipeline.config import ConfigError, PipelineConfig, VertexConfig

DIST_NAME = "pinrank"  # [project] name in pyproject.toml; also the image's name
# site-packages of the TFX 1.16 image's Python (/opt/conda, a Deep Learning VM base); the
# Dockerfile's SITE_PACKAGES must be the same, and its build fails if pip installs elsewhere.
IMAGE_SITE_PACKAGES = "/opt/conda/lib/python3.10/site-packages"
# Where this checkout's folders (or the installed `pinrank` package's) live: the wheel puts a
# package file at pinrank/<its path relative to it> (pyproject.toml, [tool.setuptools]).
_PACKAGES_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Every task's command: TFX's Kubeflow-V2 entrypoint behind pipeline/vertex_entrypoint.py, which
# makes the custom artifact types importable by their schema titles (`pinrank.RawData`) first.
CONTAINER_COMMAND = ["python", "-m", "pinrank.pipeline.vertex_entrypoint"]


def project_image() -> str:
    """`pinrank:<version>`, the tag `make image` builds (push it to a registry and pass that name
    as --image for Vertex)."""
    try:
        return f"{DIST_NAME}:{metadata.version(DIST_NAME)}"
    except metadata.PackageNotFoundError:
        raise ConfigError("pinrank is not installed (pip install -e .), so the default image "
                          "pinrank:<version> is unknown: pass --image") from None


def image_path(package_file: str, site_packages: str = IMAGE_SITE_PACKAGES) -> str:
    """Where a file of this project's packages lies inside the image."""
    rel = os.path.relpath(os.path.abspath(package_file), _PACKAGES_ROOT)
    if rel.startswith(os.pardir) or not os.path.isfile(package_file):
        raise ConfigError(f"{package_file} is not a file of the pinrank packages, so it is not "
                          f"in the image")
    return posixpath.join(site_packages, "pinrank", *rel.split(os.sep))


def _manifest_fingerprint(path: str) -> str:
    from pinrank.components.data.events import MANIFEST_FILE, read_dataset_manifest
    d = os.path.dirname(path) if os.path.basename(path) == MANIFEST_FILE else path
    manifest = read_dataset_manifest(d)
    if not manifest or not manifest.get("fingerprint"):
        raise FileNotFoundError(f"{os.path.join(d, MANIFEST_FILE)} is missing or has no "
                                f"fingerprint (write the dataset with `pinrank data --out {d}`)")
    return manifest["fingerprint"]


def dataset_fingerprint_for(dataset_dir: str, given: Optional[str] = None) -> str:
    """The fingerprint the local runner passes (DATASET.json's), so that new data invalidates the
    cache. A remote dataset_dir cannot be read offline: `given` is then required, either the
    fingerprint itself or the local dataset dir (or its DATASET.json) that was uploaded there."""
    if given:
        if os.path.exists(given):
            given = _manifest_fingerprint(given)
        elif not _SHA256_HEX.fullmatch(given):
            raise ConfigError(f"--dataset-fingerprint {given!r} is neither a sha256 hex digest "
                              f"nor a local dataset dir with DATASET.json")
    if is_remote(dataset_dir):
        if not given:
            raise ConfigError(f"--data {dataset_dir} is remote and cannot be read offline: "
                              f"pass --dataset-fingerprint (DATASET.json's fingerprint, or the "
                              f"local dataset dir it was uploaded from)")
        return given
    own = _manifest_fingerprint(dataset_dir)
    if given and given != own:
        raise ConfigError(f"--dataset-fingerprint {given} differs from {dataset_dir}'s DATASET.json "
                          f"fingerprint {own}")
    return own


def beam_args(vertex: VertexConfig, *, pipeline_root: str, image: str) -> List[str]:
    """The compiled job's Beam args: Dataflow from the `vertex` section, or the local runner's
    DirectRunner settings inside the task's container."""
    runner = vertex.runner or ("DataflowRunner" if vertex.project else "DirectRunner")
    if runner == "DirectRunner":
        from pinrank.pipeline.runs import DEFAULT_BEAM_ARGS
        return ["--runner=DirectRunner", *DEFAULT_BEAM_ARGS, *vertex.extra_args]
    if not vertex.project or not vertex.region:
        raise ConfigError("vertex.runner=DataflowRunner needs vertex.project and vertex.region "
                          "(--set vertex.project=PROJECT)")
    temp = vertex.temp_location or posixpath.join(pipeline_root, "beam-temp")
    if not temp.startswith("gs://"):
        raise ConfigError(f"Dataflow needs a gs:// temp location: set vertex.temp_location or use "
                          f"a gs:// --pipeline-root (got {temp})")
    return ["--runner=DataflowRunner", f"--project={vertex.project}", f"--region={vertex.region}",
            f"--temp_location={temp}", f"--machine_type={vertex.machine_type}",
            f"--max_num_workers={vertex.max_num_workers}",
            f"--autoscaling_algorithm={vertex.autoscaling_algorithm}",
            # The workers import transform/model code by dotted path: they run our image.
            f"--sdk_container_image={image}", *vertex.extra_args]


def compile_pipeline(cfg: PipelineConfig, *, pipeline_root: str, dataset_dir: str,
                     dataset_fingerprint: str, serving_dir: str, output_path: str,
                     image: Optional[str] = None, schema_path: Optional[str] = None,
                     ranker_schema_path: Optional[str] = None,
                     site_packages: str = IMAGE_SITE_PACKAGES) -> str:
    """Writes the PipelineJob JSON; dataset_dir/serving_dir are gs:// paths on Vertex.
    dataset_dir: a canonical dataset (`pinrank data --out`, uploaded), the job's RawData: its
    DatasetGen copies it, so MLMD links each model to it. dataset_fingerprint: from
    `dataset_fingerprint_for`. Schema paths default to the package's
    files inside the image (site_packages: the image's); pass gs:// copies to override."""
    if not dataset_fingerprint:
        raise ConfigError("compile needs the dataset's fingerprint (dataset_fingerprint_for)")
    image = image or project_image()
    args = beam_args(cfg.vertex, pipeline_root=pipeline_root, image=image)

    from pinrank.components.data.sources import RawInput, suppression_fingerprint
    from pinrank.pipeline.pipeline import PINNERFORMER_SCHEMA, RANKER_SCHEMA, create_pipeline
    pipeline = create_pipeline(
        cfg, pipeline_root=pipeline_root,
        raw_data=RawInput(dataset_dir, "canonical", dataset_fingerprint),
        suppression_fingerprint=suppression_fingerprint(cfg.data),
        serving_dir=serving_dir, beam_pipeline_args=args,
        schema_path=schema_path or image_path(PINNERFORMER_SCHEMA, site_packages),
        ranker_schema_path=ranker_schema_path or image_path(RANKER_SCHEMA, site_packages))
    return _write_job(pipeline, image, output_path)


def _write_job(pipeline, image: str, output_path: str) -> str:
    """The one KubeflowV2DagRunner call of both pipelines: every task runs `image`, and the
    blessing queries are scoped to their model (`scope_blessing_queries`) before the job is
    written."""
    from tfx import v1 as tfx
    from tfx import version
    from tfx.dsl.io import fileio
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    from pinrank.pipeline import embedding_pipeline
    from pinrank.pipeline import pipeline as training
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image,
                                                                default_commands=CONTAINER_COMMAND))
    job = runner.run(pipeline, write_out=False)
    scope_blessing_queries(job, {training.PINNERFORMER_RESOLVER_ID: PINNERFORMER,
                                 training.RANKER_RESOLVER_ID: RANKER,
                                 embedding_pipeline.RESOLVER_ID: PINNERFORMER})
    out_dir = os.path.dirname(output_path)
    if out_dir and not fileio.exists(out_dir):
        fileio.makedirs(out_dir)
    # The writer `run(write_out=True)` calls (JSON, or YAML for a .yaml path; gs:// too), from the
    # pinned TFX 1.16; the compile tests write through it.
    kubeflow_v2_dag_runner._write_pipeline_spec_to_file(
        job, f"This is converted from TFX pipeline from tfx-{version.__version__}.", output_path)
    return output_path


BLESSING_RESOLVER_SUFFIX = "-model-blessing-resolver"  # the compiler's first task of a resolver


def scope_blessing_queries(job: dict, gated_models: Mapping[str, str]) -> None:
    """Adds `metadata.gated_model.string_value="<model>"` to each latest-blessed resolver's
    blessing query. The compiler keeps only the artifact type and `blessed` of a resolver's
    channels (not their producer node), so on Vertex every such query matched every blessed
    blessing: PinnerFormer's baseline could be the newest *ranker* (or the TFMA Evaluator's
    intermediate blessing). gated_models: resolver node id -> the model its gate blesses
    (pipeline/artifacts.py GATED_MODEL); a blessing query of another resolver is an error."""
    spec = job["pipelineSpec"]
    for task_name, task in spec["root"]["dag"]["tasks"].items():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        queries = spec["deploymentSpec"]["executors"][label].get("resolver", {}).get(
            "outputArtifactQueries", {})
        for query in queries.values():
            if 'schema_title="tfx.ModelBlessing"' not in query["filter"]:
                continue
            resolver_id = task_name.removesuffix(BLESSING_RESOLVER_SUFFIX)
            if resolver_id not in gated_models:
                raise ConfigError(f"compile: resolver {resolver_id!r} queries blessings, but no "
                                  f"gated model is known for it")
            query["filter"] += f' AND metadata.{GATED_MODEL}.string_value="{gated_models[resolver_id]}"'


AS_OF_PARAMETER = "as_of"  # the embedding job's runtime parameter when compiled without --as-of


def compile_embedding_pipeline(cfg: PipelineConfig, *, pipeline_root: str, dataset_dir: str,
                               dataset_fingerprint: str, snapshot_root: str, output_path: str,
                               as_of: Optional[int] = None, image: Optional[str] = None) -> str:
    """Writes the embedding pipeline's PipelineJob JSON (pipeline/embedding_pipeline.py).
    as_of: a fixed cut-off, or None for a runtime parameter `as_of` (INT) that each run (a daily
    schedule) passes. snapshot_root must be remote: the online path reads the snapshots from it,
    not from a task's disk."""
    if not dataset_fingerprint:
        raise ConfigError("compile needs the dataset's fingerprint (dataset_fingerprint_for)")
    for flag, path in (("--snapshot-root", snapshot_root), ("--pipeline-root", pipeline_root),
                       ("--data", dataset_dir)):
        if not is_remote(path):
            raise ConfigError(f"{flag} {path} is not remote (gs://...): a Vertex task cannot "
                              f"see this machine's disk")
    image = image or project_image()
    args = beam_args(cfg.vertex, pipeline_root=pipeline_root, image=image)

    from tfx import v1 as tfx

    from pinrank.pipeline.embedding_pipeline import create_embedding_pipeline
    pipeline = create_embedding_pipeline(
        cfg, pipeline_root=pipeline_root, dataset_dir=dataset_dir,
        dataset_fingerprint=dataset_fingerprint, snapshot_root=snapshot_root,
        as_of=as_of if as_of is not None else tfx.dsl.experimental.RuntimeParameter(
            name=AS_OF_PARAMETER, ptype=int),
        beam_pipeline_args=args)
    return _write_job(pipeline, image, output_path)
