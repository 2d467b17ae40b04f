"""A local stand-in for Vertex AI Pipelines: runs a compiled PipelineJob JSON (KubeflowV2DagRunner's
output) task by task, each container task through the command the job names, i.e. TFX's
Kubeflow-V2 entrypoint (`python -m tfx.orchestration.kubeflow.v2.container.
kubeflow_v2_run_executor`) with an ExecutorInput JSON in place of `{{$}}`, as Vertex's launcher
does. This process's Python and environment stand in for the image.

What it does not do (a test double of the orchestrator, not a product runner): no MLMD and no
cache; resolver tasks resolve to nothing (the state of a fresh pipeline root, see `_resolve`);
parameters must be constants (all of this project's are).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Dict, List, Mapping, Optional

ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
# The commands a task may have: TFX's entrypoint, or the project's, which runs it after
# registering the custom artifact types (pipeline/vertex_entrypoint.py).
ENTRYPOINTS = (ENTRYPOINT, "pinrank.pipeline.vertex_entrypoint")
# What the image sets (Dockerfile ENV): a task's process gets these before it imports TensorFlow.
IMAGE_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


class TaskFailed(RuntimeError):
    pass


def task_order(tasks: Mapping[str, dict]) -> List[str]:
    """Tasks in dependency order (dependentTasks and the producers of their input artifacts and
    parameters); ties by name, so the order is deterministic."""
    deps = {name: set(_upstream(t)) for name, t in tasks.items()}
    for name, d in deps.items():
        unknown = d - set(tasks)
        if unknown:
            raise ValueError(f"task {name} depends on unknown tasks {sorted(unknown)}")
    order: List[str] = []
    done: set = set()
    while len(order) < len(tasks):
        ready = sorted(n for n in tasks if n not in done and deps[n] <= done)
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(set(tasks) - done)}")
        order.append(ready[0])
        done.add(ready[0])
    return order


def _upstream(task: dict):
    yield from task.get("dependentTasks", [])
    inputs = task.get("inputs", {})
    for spec in inputs.get("artifacts", {}).values():
        if "taskOutputArtifact" in spec:
            yield spec["taskOutputArtifact"]["producerTask"]
    for spec in inputs.get("parameters", {}).values():
        if "taskOutputParameter" in spec:
            yield spec["taskOutputParameter"]["producerTask"]


class IRRunner:
    """`IRRunner(job_json_path, root).run()` -> {task: {output_key: [RuntimeArtifact dict]}}.
    root: where output artifacts go, `<root>/<task>/<output_key>`, and each task's
    `executor_output.json` (the ExecutorOutput the entrypoint writes, read back so that its
    artifacts' metadata, e.g. a blessing's `blessed`, reaches the downstream tasks)."""

    def __init__(self, job_path: str, root: str, *, python: str = sys.executable,
                 env: Optional[Mapping[str, str]] = None, timeout_s: float = 1800,
                 parallelism: int = 1, log=print):
        with open(job_path) as fh:
            self.job = json.load(fh)
        self.spec = self.job["pipelineSpec"]
        self.root = os.path.abspath(root)
        self.python = python
        self.env = {**os.environ, **IMAGE_ENV, **(env or {})}
        self.timeout_s = timeout_s
        self.parallelism = max(1, parallelism)
        self.log = log
        self.outputs: Dict[str, Dict[str, List[dict]]] = {}
        self.seconds: Dict[str, float] = {}

    @property
    def tasks(self) -> Dict[str, dict]:
        return self.spec["root"]["dag"]["tasks"]

    def component(self, task: str) -> dict:
        return self.spec["components"][self.tasks[task]["componentRef"]["name"]]

    def executor(self, task: str) -> dict:
        label = self.component(task)["executorLabel"]
        return self.spec["deploymentSpec"]["executors"][label]

    def run(self) -> Dict[str, Dict[str, List[dict]]]:
        """Every task once its upstream tasks are done, up to `parallelism` at a time (Vertex
        runs independent tasks concurrently too); the first failure stops the run once the
        tasks already started have ended."""
        order = task_order(self.tasks)  # also checks: known dependencies, no cycle
        deps = {name: set(_upstream(self.tasks[name])) for name in order}
        pending, running, failures = list(order), {}, []
        with ThreadPoolExecutor(self.parallelism) as pool:
            while (pending and not failures) or running:
                ready = [n for n in pending if deps[n] <= set(self.outputs)] if not failures else []
                for name in ready[:self.parallelism - len(running)]:
                    pending.remove(name)
                    running[pool.submit(self._run_task, name)] = name
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    try:
                        self.outputs[name] = future.result()
                    except Exception as e:  # raised below, once the running tasks have ended
                        failures.append(e)
        if failures:
            raise failures[0]
        return self.outputs

    def _run_task(self, name: str) -> Dict[str, List[dict]]:
        start = time.monotonic()
        executor = self.executor(name)
        if "container" in executor:
            kind, out = "container", self._run_container(name, executor["container"])
        elif "importer" in executor:
            kind, out = "importer", self._import(name, executor["importer"])
        elif "resolver" in executor:
            kind, out = "resolver", self._resolve(name)
        else:
            raise ValueError(f"task {name}: unsupported executor {sorted(executor)}")
        self.seconds[name] = time.monotonic() - start
        self.log(f"[vertex-ir] {name} ({kind}) done in {self.seconds[name]:.1f} s: "
                 f"{ {k: [a['uri'] for a in v] for k, v in out.items()} }")
        return out

    # -- task kinds ------------------------------------------------------------------------

    def _run_container(self, name: str, container: dict) -> Dict[str, List[dict]]:
        task_dir = os.path.join(self.root, name)
        output_file = os.path.join(task_dir, "executor_output.json")
        out_defs = self.component(name).get("outputDefinitions", {}).get("artifacts", {})
        outputs = {}
        for key, definition in sorted(out_defs.items()):
            uri = os.path.join(task_dir, key)
            os.makedirs(uri, exist_ok=True)  # as Vertex's launcher prepares local output paths
            outputs[key] = {"artifacts": [{"name": f"{name}/{key}",
                                           "type": definition["artifactType"],
                                           "uri": uri, "metadata": {}}]}
        executor_input = {
            "inputs": {"parameters": self._parameters(name), "artifacts": self._artifacts(name)},
            "outputs": {"artifacts": outputs, "outputFile": output_file},
        }
        os.makedirs(task_dir, exist_ok=True)
        with open(os.path.join(task_dir, "executor_input.json"), "w") as fh:
            json.dump(executor_input, fh, indent=1)
        payload = json.dumps(executor_input)
        argv = [*container.get("command", []),
                *(a.replace("{{$}}", payload) for a in container.get("args", []))]
        if argv[:1] == ["python"]:  # the image's python: this environment's
            argv[0] = self.python
        if not any(e in argv for e in ENTRYPOINTS):
            raise ValueError(f"task {name}: not the TFX Kubeflow-V2 entrypoint: {argv[:3]}")
        log_path = os.path.join(task_dir, "task.log")
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=self.timeout_s, cwd=task_dir)
            except subprocess.TimeoutExpired:
                raise TaskFailed(f"task {name} ran over {self.timeout_s} s; log {log_path}\n"
                                 f"{_tail(log_path)}") from None
        if proc.returncode != 0:
            raise TaskFailed(f"task {name} exited {proc.returncode}; log {log_path}\n"
                             f"{_tail(log_path)}")
        if not os.path.isfile(output_file):
            raise TaskFailed(f"task {name} wrote no ExecutorOutput {output_file}")
        with open(output_file) as fh:
            written = json.load(fh).get("artifacts", {})
        result = {}
        for key, definition in out_defs.items():
            arts = written.get(key, {}).get("artifacts") or outputs[key]["artifacts"]
            # The ExecutorOutput carries uri, name and metadata; the type is the output's.
            result[key] = [{**a, "type": definition["artifactType"]} for a in arts]
        return result

    def _import(self, name: str, importer: dict) -> Dict[str, List[dict]]:
        uri = importer["artifactUri"]["constantValue"]["stringValue"]
        key = self.component(name)["outputDefinitions"]["artifacts"]
        (key,) = key  # an importer has one output, `result`
        return {key: [{"name": f"{name}/{key}", "type": importer["typeSchema"], "uri": uri,
                       "metadata": dict(importer.get("metadata", {}))}]}

    def _resolve(self, name: str) -> Dict[str, List[dict]]:
        # The "latest blessed model" resolvers query the metadata store for earlier blessed
        # models. This runner keeps no store, so it answers as on a fresh pipeline root: no
        # artifacts, and the optional `baseline_model` inputs are absent downstream. (A resolver
        # backed by MLMD, for a second run on the same root, is out of scope.)
        keys = self.component(name).get("outputDefinitions", {}).get("artifacts", {})
        return {key: [] for key in keys}

    # -- inputs ----------------------------------------------------------------------------

    def _parameters(self, name: str) -> dict:
        params = {}
        for key, spec in self.tasks[name].get("inputs", {}).get("parameters", {}).items():
            value = spec.get("runtimeValue", {}).get("constantValue")
            if value is None:
                raise ValueError(f"task {name}: parameter {key} is not a constant: {spec}")
            params[key] = value  # pipeline_spec Value JSON: stringValue / intValue / doubleValue
        return params

    def _artifacts(self, name: str) -> dict:
        arts = {}
        for key, spec in self.tasks[name].get("inputs", {}).get("artifacts", {}).items():
            ref = spec.get("taskOutputArtifact")
            if ref is None:
                raise ValueError(f"task {name}: input {key} is not a task output: {spec}")
            produced = self.outputs[ref["producerTask"]].get(ref["outputArtifactKey"])
            if produced is None:
                raise ValueError(f"task {name}: {ref} was not produced")
            if produced:  # a resolver's empty answer: the (optional) input is absent
                arts[key] = {"artifacts": produced}
        return arts


def _tail(path: str, lines: int = 40) -> str:
    with open(path, errors="replace") as fh:
        return "".join(fh.readlines()[-lines:])
