"""A local stand-in for Vertex AI Pipelines: runs a compiled PipelineJob JSON (KubeflowV2DagRunner's
output) task by task, each container task through the command the job names, i.e. TFX's
Kubeflow-V2 entrypoint (`python -m tfx.orchestration.kubeflow.v2.container.
kubeflow_v2_run_executor`) with an ExecutorInput JSON in place of `{{$}}`, as Vertex's launcher
does. This process's Python and environment stand in for the image.

Metadata: every task's outputs are recorded in an MLMD (SQLite) store at `<root>/metadata.sqlite`,
standing in for Vertex ML Metadata, and resolver tasks answer the compiled filter (Vertex's
syntax: `schema_title=... AND state=LIVE AND metadata.k.number_value=1 AND name="{{...}}"`)
translated to an MLMD filter query, newest artifact first (`ArtifactStore`). So the first run on a
root resolves nothing, and a later run on the same root finds the earlier runs' artifacts.

What it does not do (a test double of the orchestrator, not a product runner): no cache;
parameters must be constants (all of this project's are).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Dict, Iterable, List, Mapping, Optional

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


def schema_title(artifact_type: dict) -> str:
    """`tfx.Model` from an IR artifactType ({"schemaTitle": ...} or {"instanceSchema": "title: ...})."""
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    match = re.search(r"^title: (\S+)$", artifact_type.get("instanceSchema", ""), re.M)
    if not match:
        raise ValueError(f"artifact type without a schema title: {artifact_type}")
    return match.group(1)


# Vertex filter terms (the KFP v2 compiler's resolver queries) -> MLMD filter_query terms.
_TERMS = (
    (re.compile(r'schema_title="([^"\']+)"'), "type = '{0}'"),
    (re.compile(r"state=(LIVE)"), "state = {0}"),
    (re.compile(r"metadata\.(\w+)\.number_value=([-+0-9.eE]+)"), "custom_properties.{0}.double_value = {1}"),
    (re.compile(r'metadata\.(\w+)\.string_value="([^"\']*)"'), "custom_properties.{0}.string_value = '{1}'"),
    (re.compile(r'name="([^"\']+)"'), "name = '{0}'"),
)


def mlmd_filter(vertex_filter: str) -> str:
    """`schema_title="tfx.Model" AND state=LIVE AND metadata.blessed.number_value=1` ->
    `type = 'tfx.Model' AND state = LIVE AND custom_properties.blessed.double_value = 1`."""
    out = []
    for term in vertex_filter.split(" AND "):
        for pattern, template in _TERMS:
            match = pattern.fullmatch(term.strip())
            if match:
                out.append(template.format(*match.groups()))
                break
        else:
            raise ValueError(f"filter term {term!r} of {vertex_filter!r} is not one this runner knows")
    return " AND ".join(out)


class ArtifactStore:
    """The runs' output artifacts in an MLMD SQLite store: type = the schema title, name = the
    runtime name, state LIVE, the metadata as custom properties (numbers as doubles, as Vertex's
    Struct holds them; strings as strings; anything else as its JSON text)."""

    def __init__(self, path: str):
        from ml_metadata.metadata_store import metadata_store
        from ml_metadata.proto import metadata_store_pb2
        self._pb = metadata_store_pb2
        self._list_options = metadata_store.ListOptions
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = path
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        self.store = metadata_store.MetadataStore(config)

    def record(self, artifacts: Iterable[dict]) -> None:
        rows = []
        for a in artifacts:
            type_id = self.store.put_artifact_type(self._pb.ArtifactType(name=schema_title(a["type"])))
            row = self._pb.Artifact(type_id=type_id, uri=a["uri"], name=a["name"],
                                    state=self._pb.Artifact.LIVE)
            for key, value in (a.get("metadata") or {}).items():
                prop = row.custom_properties[key]
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    prop.double_value = float(value)
                elif isinstance(value, str):
                    prop.string_value = value
                else:
                    prop.string_value = json.dumps(value, sort_keys=True)
            rows.append(row)
        if rows:
            self.store.put_artifacts(rows)

    def latest(self, vertex_filter: str) -> List[dict]:
        """The newest artifact matching the filter, as [artifact dict], or []."""
        found = self.store.get_artifacts(list_options=self._list_options(filter_query=mlmd_filter(vertex_filter)))
        if not found:
            return []
        a = max(found, key=lambda x: (x.create_time_since_epoch, x.id))
        metadata = {k: getattr(v, v.WhichOneof("value")) for k, v in a.custom_properties.items()}
        return [{"name": a.name, "uri": a.uri, "metadata": metadata}]


# `{{$.inputs.artifacts['input'].metadata['current_model_id']}}` in a resolver's filter
_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.artifacts\['(\w+)'\]\.metadata\['(\w+)'\]\}\}")


class IRRunner:
    """`IRRunner(job_json_path, root).run()` -> {task: {output_key: [RuntimeArtifact dict]}}.
    root: the pipeline root; one run's output artifacts go to `<root>/<run_id>/<task>/<output_key>`
    with each task's `executor_output.json` (the ExecutorOutput the entrypoint writes, read back so
    that its artifacts' metadata, e.g. a blessing's `blessed`, reaches the downstream tasks), and
    the metadata store of all runs on the root is `<root>/metadata.sqlite`. A runtime artifact's
    name is `<run_id>/<task>/<output_key>`, unique as Vertex's resource names are."""

    def __init__(self, job_path: str, root: str, *, python: str = sys.executable,
                 env: Optional[Mapping[str, str]] = None, timeout_s: float = 1800,
                 parallelism: int = 1, log=print, run_id: Optional[str] = None):
        self.job_path = job_path
        with open(job_path) as fh:
            self.job = json.load(fh)
        self.spec = self.job["pipelineSpec"]
        self.root = os.path.abspath(root)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.run_dir = os.path.join(self.root, self.run_id)
        os.makedirs(self.root, exist_ok=True)
        self.store = ArtifactStore(os.path.join(self.root, "metadata.sqlite"))
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

    def run(self, only: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, List[dict]]]:
        """Every task (or the tasks `only` names, which must include their upstream tasks) once
        its upstream tasks are done, up to `parallelism` at a time (Vertex runs independent tasks
        concurrently too); the first failure stops the run once the tasks already started have
        ended. Each task's new artifacts are recorded in the store as it ends."""
        order = task_order(self.tasks)  # also checks: known dependencies, no cycle
        if only is not None:
            only = set(only)
            order = [name for name in order if name in only]
        deps = {name: set(_upstream(self.tasks[name])) for name in order}
        missing = {d for ds in deps.values() for d in ds} - set(order)
        if missing:
            raise ValueError(f"tasks {sorted(missing)} are upstream of the selected ones")
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
                        continue
                    if "resolver" not in self.executor(name):  # a resolver's answer is not new
                        self.store.record(a for arts in self.outputs[name].values() for a in arts)
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
        task_dir = os.path.join(self.run_dir, name)
        output_file = os.path.join(task_dir, "executor_output.json")
        out_defs = self.component(name).get("outputDefinitions", {}).get("artifacts", {})
        outputs = {}
        for key, definition in sorted(out_defs.items()):
            uri = os.path.join(task_dir, key)
            os.makedirs(uri, exist_ok=True)  # as Vertex's launcher prepares local output paths
            outputs[key] = {"artifacts": [{"name": f"{self.run_id}/{name}/{key}",
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
        return {key: [{"name": f"{self.run_id}/{name}/{key}", "type": importer["typeSchema"], "uri": uri,
                       "metadata": dict(importer.get("metadata", {}))}]}

    def _resolve(self, name: str) -> Dict[str, List[dict]]:
        """Each output's query against the store: the newest match, or nothing (a fresh root).
        A placeholder naming an absent input (nothing resolved upstream) resolves to nothing."""
        inputs = self._artifacts(name)
        out_defs = self.component(name).get("outputDefinitions", {}).get("artifacts", {})
        result = {}
        for key, query in self.executor(name)["resolver"]["outputArtifactQueries"].items():
            values = []

            def fill(match):
                arts = inputs.get(match.group(1), {}).get("artifacts", [])
                value = arts[0].get("metadata", {}).get(match.group(2)) if arts else None
                values.append(value)
                return "" if value is None else str(value)

            vertex_filter = _PLACEHOLDER.sub(fill, query["filter"])
            found = [] if None in values else self.store.latest(vertex_filter)
            result[key] = [{**a, "type": out_defs[key]["artifactType"]} for a in found]
        return result

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
