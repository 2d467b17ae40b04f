"""Run the pipeline in-process with LocalDagRunner (the default main job)."""
from __future__ import annotations

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import time
from typing import Dict, List, Optional

from tfx import v1 as tfx

from pinrank.pipeline.config import PipelineConfig
from pinrank.pipeline.runs import RunPaths, build, link_dataset, run_lock, summarize


def run(cfg: PipelineConfig, home: str, beam_args: Optional[List[str]] = None,
        enable_cache: bool = True) -> Dict:
    paths = RunPaths.for_config(cfg, home)
    start = time.time()
    with run_lock(paths):
        tfx.orchestration.LocalDagRunner().run(build(cfg, paths, beam_args, enable_cache))
        link_dataset(paths)
        summary = summarize(paths)
    summary["wall_s"] = round(time.time() - start, 1)
    summary["paths"] = paths.__dict__
    return summary
