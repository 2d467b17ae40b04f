"""Compile the pipeline for Kubeflow Pipelines v2 / Vertex AI (offline: user code is referenced
by dotted path inside the installed package, so nothing is uploaded at compile time).

The image must be built FROM gcr.io/tfx-oss-public/tfx:1.16.0 with this package installed
(`pip install .`) and TF_USE_LEGACY_KERAS=1 in its environment.
"""
from __future__ import annotations

import os
from typing import Optional

from tfx import v1 as tfx

from pipeline.config import PipelineConfig
from pipeline.pipeline import PINNERFORMER_SCHEMA, create_pipeline

DEFAULT_IMAGE = "gcr.io/tfx-oss-public/tfx:1.16.0"


def compile_pipeline(cfg: PipelineConfig, *, pipeline_root: str, dataset_dir: str,
                     serving_dir: str, output_path: str, image: str = DEFAULT_IMAGE,
                     dataset_fingerprint: Optional[str] = None,
                     schema_path: Optional[str] = None) -> str:
    """Writes the PipelineJob JSON; dataset_dir/serving_dir are gs:// paths on Vertex.
    schema_path defaults to this checkout's schema file: build the image with the project at the
    same path, or pass a gs:// copy."""
    pipeline = create_pipeline(cfg, pipeline_root=pipeline_root, dataset_dir=dataset_dir,
                               dataset_fingerprint=dataset_fingerprint or "unversioned",
                               serving_dir=serving_dir, beam_pipeline_args=[],
                               schema_path=schema_path or PINNERFORMER_SCHEMA)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_path)),
        output_filename=os.path.basename(output_path))
    runner.run(pipeline, write_out=True)
    return output_path
