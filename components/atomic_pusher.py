"""AtomicPusher: the stock TFX Pusher, but a pushed version directory appears complete or not
at all.

The stock executor copies the model straight into `<base>/<version>/` (saved_model.pb last). A
kill -9, a full disk or an I/O error mid-copy leaves that numeric directory behind half-written,
and TF Serving's file-system source loads every numeric directory it finds. This executor copies
into `<base>/.tmp-<version>-<pid>/` (not a number: TF Serving's
file_system_storage_path_source.cc skips such children, as does serving/local_server.py) and
renames it to `<base>/<version>` (atomic within one local file system). A failed copy removes
its temporary directory and raises PushError, one line naming the serving dir; a killed push
leaves only a `.tmp-*` directory, removed by the next push. What serves before a failed push
keeps serving: nothing under `<base>/<number>` is touched.

Before the rename, the copy is canaried by `python -m pinrank.serving.canary` in a fresh process (a
serving-runtime module, run, not imported, from this layer): loaded as a server would, every
serving signature run on requests built from the `examples` input's eval split, which are then
written as the version's TF Serving warmup file (`assets.extra/tf_serving_warmup_requests`). A
version that does not load, fails a request or answers NaN/inf is refused with CanaryError (a
PushError) and never appears in the serving dir.

Object stores (gs://, s3://) have no atomic directory rename: there the stock executor runs,
without canary.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import io_utils, json_utils, proto_utils
from tfx.v1.components import Pusher

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
EXAMPLES_KEY = "examples"  # the eval examples the canary builds its requests from
EVAL_SPLIT = "eval"
CANARY_MODULE = "pinrank.serving.canary"
CANARY_TIMEOUT_S = 900  # a load + a few dozen requests; a hung load must not hang the pipeline
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PushError(Exception):
    """The model could not be written to the serving dir (read-only, full, not a directory).
    `errno`: the OS error's."""

    def __init__(self, message: str, errno: int = 0):
        super().__init__(message)
        self.errno = errno


class CanaryError(PushError):
    """The candidate failed its canary: it did not load, a request failed or gave NaN/inf."""


def canary(version_dir: str, example_files: Sequence[str] = (),
           requests_per_signature: Optional[int] = None,
           timeout_s: float = CANARY_TIMEOUT_S) -> int:
    """Canaries `version_dir` in a fresh process, which also writes its warmup file (see the
    module doc); returns the number of requests replayed. Raises CanaryError, one line."""
    with tempfile.TemporaryDirectory(prefix="pinrank-canary-") as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", CANARY_MODULE, "--model-dir", version_dir,
               "--result", result, *[a for f in example_files for a in ("--examples", f)]]
        if requests_per_signature is not None:
            cmd += ["--requests", str(requests_per_signature)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [_REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        try:
            proc = subprocess.run(cmd, env=env, cwd=_REPO, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise CanaryError(f"canary of {version_dir}: no answer after {timeout_s:.0f} s"
                              ) from None
        if os.path.exists(result):
            with open(result) as f:
                outcome = json.load(f)
            if outcome.get("error"):
                raise CanaryError(f"canary refused {version_dir}: {outcome['error']}")
            if proc.returncode == 0:
                return int(outcome["requests"])
        tail = " ".join((proc.stderr or "").strip().splitlines()[-1:])
        raise CanaryError(f"canary of {version_dir} exited with code {proc.returncode}"
                          + (f": {tail}" if tail else ""))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale(base_dir: str) -> None:
    """Temporary dirs of killed pushes (their pid is gone); a live concurrent push keeps its."""
    for name in os.listdir(base_dir):
        if not name.startswith(TMP_PREFIX):
            continue
        pid = name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and _alive(int(pid))):
            log.info("removing %s, left by an interrupted push", os.path.join(base_dir, name))
            shutil.rmtree(os.path.join(base_dir, name), ignore_errors=True)


def _copy_tree(src: str, dst: str) -> None:
    """Like shutil.copytree, but the first error is raised as is (copytree collects them)."""
    for root, dirs, files in os.walk(src):
        out = os.path.join(dst, os.path.relpath(root, src))
        os.makedirs(out, exist_ok=True)
        for f in files:
            shutil.copyfile(os.path.join(root, f), os.path.join(out, f))


def publish(model_path: str, base_dir: str, version: str,
            check: Optional[Callable[[str], Any]] = None) -> str:
    """Copies the SavedModel dir `model_path` to `<base_dir>/<version>` atomically and returns
    that path. An existing version dir is kept as it is (the stock Pusher skips it too).
    `check(copy)` runs on the complete copy before the rename (the canary); what it raises
    propagates, and the copy is removed."""
    final = os.path.join(base_dir, version)
    tmp = os.path.join(base_dir, f"{TMP_PREFIX}{version}-{os.getpid()}")
    try:
        os.makedirs(base_dir, exist_ok=True)
        _remove_stale(base_dir)
        if os.path.exists(final):
            log.info("%s already exists, skipping the push", final)
            return final
        _copy_tree(model_path, tmp)
        if check is not None:
            check(tmp)
        os.rename(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PushError(f"cannot push the model to serving dir {base_dir}: {e.strerror or e}",
                        e.errno or 0) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def eval_example_files(examples: List[types.Artifact]) -> List[str]:
    """The files of the eval split of an Examples channel (empty without one)."""
    if not examples:
        return []
    uri = artifact_utils.get_split_uri(examples, EVAL_SPLIT)
    return sorted(f for f in (os.path.join(uri, n) for n in os.listdir(uri))
                  if os.path.isfile(f))


class Executor(pusher_executor.Executor):
    """The stock Pusher's Do with `publish` as the copy into the serving dir."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        dest = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                                  dest)
        base = dest.filesystem.base_directory if dest.WhichOneof("destination") == "filesystem" \
            else ""
        if not base or "://" in base:
            return super().Do(input_dict, output_dict, exec_properties)
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return None
        model_path = self.GetModelPath(input_dict)
        version = str(int(time.time()))  # the stock Pusher's versioning (UNIX_TIMESTAMP)
        files = eval_example_files(input_dict.get(EXAMPLES_KEY, []))
        if not files:
            log.warning("no eval examples wired to the Pusher: the canary only loads the model "
                        "and no warmup file is written")

        def check(copy: str) -> None:
            n = canary(copy, files)
            log.info("canary passed: %d requests on every signature, written as the warmup file",
                     n)

        serving_path = publish(model_path, base, version, check)
        log.info("model written to serving path %s", serving_path)
        io_utils.copy_dir(model_path, model_push.uri)  # the Pusher's archive copy
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)
        return None


class AtomicPusherSpec(standard_component_specs.PusherSpec):
    """PusherSpec plus the eval examples the canary builds its requests from."""

    INPUTS = {**standard_component_specs.PusherSpec.INPUTS,
              EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True)}


class AtomicPusher(Pusher):
    """tfx Pusher whose filesystem push is canaried and never shows a partial version (see
    module doc). `examples`: the Examples channel whose eval split the canary's requests (and
    the warmup file) are built from."""

    SPEC_CLASS = AtomicPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, *, model: types.BaseChannel,
                 push_destination: pusher_pb2.PushDestination,
                 model_blessing: Optional[types.BaseChannel] = None,
                 examples: Optional[types.BaseChannel] = None,
                 custom_config: Optional[Dict[str, Any]] = None):
        # Pusher.__init__ would build a plain PusherSpec; the rest of its checks do not apply
        # (model and push_destination are required here).
        spec = AtomicPusherSpec(
            model=model, model_blessing=model_blessing, examples=examples,
            push_destination=push_destination, custom_config=json_utils.dumps(custom_config),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel))
        base_component.BaseComponent.__init__(self, spec=spec)
