"""Run the pipeline in-process with LocalDagRunner (the default main job)."""
from __future__ import annotations

import os

from pipeline import bootstrap  # noqa: E402,F401  (environment before TensorFlow)


import time  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

from tfx import v1 as tfx  # noqa: E402

from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.runs import RunPaths, build, summarize  # noqa: E402


def run(cfg: PipelineConfig, home: str, beam_args: Optional[List[str]] = None,
        enable_cache: bool = True) -> Dict:
    paths = RunPaths.for_config(cfg, home)
    start = time.time()
    tfx.orchestration.LocalDagRunner().run(build(cfg, paths, beam_args, enable_cache))
    summary = summarize(paths)
    summary["wall_s"] = round(time.time() - start, 1)
    summary["paths"] = paths.__dict__
    return summary
