"""Run the pipeline in-process with LocalDagRunner (the default main job)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import warnings  # noqa: E402

# google-cloud libraries warn on every import that Python 3.10 is old; TFX 1.16 needs 3.10.
warnings.filterwarnings("ignore", category=FutureWarning)

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
