"""TF Serving's own BatchingParameters and MonitoringConfig protos, which the
`tensorflow-serving-api` wheel does not ship.

Only `model_server_config_pb2` (models.config) is in tensorflow-serving-api 2.16.1.
`BatchingParameters` is defined in `tensorflow_serving/servables/tensorflow/
session_bundle_config.proto` and `MonitoringConfig` in `tensorflow_serving/config/
monitoring_config.proto`. The only Python build of those files on PyPI is the generated code in
`min-tfs-client==1.0.2`, compiled from TF Serving's protos as of TF Serving 2.1 (2020).
Installing that package would overwrite the `tensorflow` and `tensorflow_serving` packages, so it
is not installed. Instead:

1. the wheel is fetched once (sha256-pinned, see pipeline.pinned_wheel) into the cache
   (`$PINRANK_CACHE`, default `~/.cache/pinrank`);
2. the serialized FileDescriptorProto is read out of the two generated modules with `ast`, so no
   third-party code is executed;
3. the descriptors are built in a private DescriptorPool next to their dependencies (protobuf's
   wrappers, TensorFlow's config/named_tensor protos from the installed TensorFlow).

Text-format parsing against these descriptors is what `tensorflow_model_server` does with the
same files, for every field that existed in TF Serving 2.1. Fields added to BatchingParameters
since then (e.g. `enable_large_batch_splitting`, `max_execution_batch_size`) are rejected as
unknown here. If a later tensorflow-serving-api ships the modules, those are used instead.
"""
from __future__ import annotations

import ast
import functools
import importlib
import json
import os
import shutil
import tempfile
import zipfile
from typing import Dict, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool

from pinrank.pipeline import pinned_wheel

WHEEL_REQUIREMENT = "min-tfs-client==1.0.2"
WHEEL = "min_tfs_client-1.0.2-py3-none-any.whl"
WHEEL_SHA256 = "2e0bd3ea0d7fd96c22d043135171726f2fc6bb72c555f617ef9ebf4ab53c5a75"
WHEEL_ENV = "PINRANK_TFS_PROTOS_WHEEL"
CACHE_ENV = pinned_wheel.CACHE_ENV
CACHE_DIR = "tfs-protos-min-tfs-client-1.0.2"
MARKER = ".complete.json"

BATCHING_PARAMETERS = "tensorflow.serving.BatchingParameters"
MONITORING_CONFIG = "tensorflow.serving.MonitoringConfig"

# message full name -> (generated module inside the wheel, its module name in a newer
# tensorflow-serving-api that might ship it)
_SOURCES: Dict[str, Tuple[str, str]] = {
    BATCHING_PARAMETERS: ("tensorflow_serving/servables/tensorflow/session_bundle_config_pb2.py",
                          "tensorflow_serving.servables.tensorflow.session_bundle_config_pb2"),
    MONITORING_CONFIG: ("tensorflow_serving/config/monitoring_config_pb2.py",
                        "tensorflow_serving.config.monitoring_config_pb2"),
}
# Direct dependencies of those files -> module that registers them (and theirs) in protobuf's
# default pool.
_DEPENDENCY_MODULES = {
    "google/protobuf/wrappers.proto": "google.protobuf.wrappers_pb2",
    "tensorflow/core/protobuf/config.proto": "tensorflow.core.protobuf.config_pb2",
    "tensorflow/core/protobuf/named_tensor.proto": "tensorflow.core.protobuf.named_tensor_pb2",
}


class ProtosUnavailable(RuntimeError):
    """The pinned wheel could not be obtained (offline and no local copy)."""


def source(full_name: str) -> str:
    """Where `message_class(full_name)` takes its descriptor from (for reports and tests)."""
    module = _installed_module(full_name)
    if module is not None:
        return f"{module.__name__} (tensorflow-serving-api)"
    return f"{_SOURCES[full_name][0]} of {WHEEL} (TF Serving 2.1 protos, sha256-pinned)"


def message_class(full_name: str, fetch: bool = True):
    """The generated message class of `full_name` (BATCHING_PARAMETERS or MONITORING_CONFIG).

    Raises ProtosUnavailable if the wheel is not cached and `fetch` is False or the download
    fails."""
    if full_name not in _SOURCES:
        raise KeyError(f"unknown TF Serving message {full_name!r}; known: {sorted(_SOURCES)}")
    module = _installed_module(full_name)
    if module is not None:
        return getattr(module, full_name.rsplit(".", 1)[1])
    return _wheel_classes(fetch)[full_name]


def _installed_module(full_name: str):
    try:
        return importlib.import_module(_SOURCES[full_name][1])
    except ImportError:
        return None


@functools.lru_cache(maxsize=None)
def _wheel_classes(fetch: bool) -> Dict[str, type]:
    files = _cached_descriptor_files(fetch)
    for module in _DEPENDENCY_MODULES.values():  # registers them in protobuf's default pool
        importlib.import_module(module)
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(fdp: descriptor_pb2.FileDescriptorProto) -> None:
        for dep in fdp.dependency:
            if dep not in added:
                add(_dependency_proto(dep))
        if fdp.name not in added:
            pool.Add(fdp)
            added.add(fdp.name)

    classes = {}
    for full_name, fdp in files.items():
        add(fdp)
        classes[full_name] = _message_class(pool.FindMessageTypeByName(full_name))
    return classes


def _dependency_proto(name: str) -> descriptor_pb2.FileDescriptorProto:
    """A dependency as registered by the installed protobuf/TensorFlow (transitively)."""
    try:
        desc = descriptor_pool.Default().FindFileByName(name)
    except KeyError:
        raise ProtosUnavailable(f"TF Serving proto depends on {name}, which the installed "
                                "protobuf/TensorFlow does not provide") from None
    fdp = descriptor_pb2.FileDescriptorProto()
    desc.CopyToProto(fdp)
    return fdp


def _message_class(desc):
    from google.protobuf import message_factory

    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(desc.file.pool).GetPrototype(desc)


def _cached_descriptor_files(fetch: bool) -> Dict[str, descriptor_pb2.FileDescriptorProto]:
    """message full name -> FileDescriptorProto, from the cache (filled from the wheel once)."""
    dest = os.path.join(pinned_wheel.cache_root(), CACHE_DIR)
    marker = os.path.join(dest, MARKER)
    if not os.path.exists(marker):
        if not fetch:
            raise ProtosUnavailable(f"{dest} is empty and fetching is off")
        _fill_cache(dest)
    with open(marker) as f:
        names = json.load(f)["files"]
    out = {}
    for full_name, fname in names.items():
        with open(os.path.join(dest, fname), "rb") as f:
            out[full_name] = descriptor_pb2.FileDescriptorProto.FromString(f.read())
    return out


def _fill_cache(dest: str) -> None:
    root = os.path.dirname(dest)
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tfs-protos-", dir=root) as tmp:
        try:
            wheel = pinned_wheel.obtain(WHEEL_REQUIREMENT, WHEEL, WHEEL_SHA256, WHEEL_ENV, tmp)
        except pinned_wheel.PinnedWheelError as e:
            raise ProtosUnavailable(f"TF Serving's BatchingParameters/MonitoringConfig protos: "
                                    f"{e}") from None
        staging = os.path.join(tmp, "out")
        os.makedirs(staging)
        files = {}
        with zipfile.ZipFile(wheel) as zf:
            for full_name, (member, _) in _SOURCES.items():
                fdp = descriptor_from_generated_code(zf.read(member).decode("utf-8"), member)
                fname = fdp.name.replace("/", "__") + ".pb"
                with open(os.path.join(staging, fname), "wb") as f:
                    f.write(fdp.SerializeToString())
                files[full_name] = fname
        with open(os.path.join(staging, MARKER), "w") as f:
            json.dump({"wheel": WHEEL, "wheel_sha256": WHEEL_SHA256, "files": files}, f,
                      indent=1, sort_keys=True)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.replace(staging, dest)


def descriptor_from_generated_code(code: str, where: str) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto embedded in protoc-generated Python (`serialized_pb=_b('...')` of
    protobuf 3.x code, or `AddSerializedFile(b'...')` of newer code), read without executing it."""
    for node in ast.walk(ast.parse(code, filename=where)):
        if not isinstance(node, ast.Call):
            continue
        candidates = [kw.value for kw in node.keywords if kw.arg == "serialized_pb"]
        if getattr(node.func, "attr", None) == "AddSerializedFile" and node.args:
            candidates.append(node.args[0])
        for value in candidates:
            if isinstance(value, ast.Call) and value.args:  # _b('...') -> latin-1 bytes
                value = value.args[0]
            if isinstance(value, ast.Constant) and isinstance(value.value, (str, bytes)):
                raw = value.value if isinstance(value.value, bytes) else \
                    value.value.encode("latin1")
                return descriptor_pb2.FileDescriptorProto.FromString(raw)
    raise ProtosUnavailable(f"{where}: no serialized FileDescriptorProto found")
