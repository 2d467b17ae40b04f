"""Load and validate the TF Serving config files in serving/deploy before they reach a server.

A typo in a text-proto config makes `tensorflow_model_server` refuse to start (or, for a value
that parses but is wrong, misbehave at load time), which we would only see after a rollout.
These loaders fail at test time instead: each file is parsed into TF Serving's own message, then
the value rules TF Serving applies at load time and our deployment contract are checked.

* `models.config` -> `ModelServerConfig` from tensorflow-serving-api
  (`tensorflow_serving.config.model_server_config_pb2`).
* `batching_parameters.config` and the per-model `batching_params.pbtxt` -> `BatchingParameters`,
  `monitoring.config` -> `MonitoringConfig`. tensorflow-serving-api does not ship those two
  protos; serving.tfs_protos builds them from TF Serving's generated code in a sha256-pinned
  wheel (fetched once into the cache; see that module for what this covers).

`schema_sources()` says which schema each file is checked against.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from google.protobuf import text_format

from pinrank.serving import constants as C
from pinrank.serving import tfs_protos


class ConfigError(ValueError):
    """A config file that TF Serving would reject (or that breaks our deployment contract)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


def schema_sources() -> Dict[str, str]:
    """Which schema each loader validates against in this environment (for reports/tests)."""
    return {
        C.MODELS_CONFIG: "tensorflow_serving.config.model_server_config_pb2.ModelServerConfig",
        C.BATCHING_CONFIG: tfs_protos.source(tfs_protos.BATCHING_PARAMETERS),
        C.PER_MODEL_BATCHING_FILE: tfs_protos.source(tfs_protos.BATCHING_PARAMETERS),
        C.MONITORING_CONFIG: tfs_protos.source(tfs_protos.MONITORING_CONFIG),
    }


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e}") from e


# ----------------------------------------------------------------------------- models.config


def parse_model_server_config(text: str, path: str = "<text>"):
    """Parses a ModelServerConfig text proto and checks what TF Serving checks at load."""
    from tensorflow_serving.config import model_server_config_pb2

    cfg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise ConfigError(path, f"not a valid ModelServerConfig: {e}") from e
    if cfg.WhichOneof("config") != "model_config_list":
        raise ConfigError(path, "expected a model_config_list (custom_model_config is unsupported)")
    if not cfg.model_config_list.config:
        raise ConfigError(path, "model_config_list has no models")
    seen = set()
    for m in cfg.model_config_list.config:
        if not m.name:
            raise ConfigError(path, "a model config has no name")
        if m.name in seen:
            raise ConfigError(path, f"model {m.name!r} is listed twice")
        seen.add(m.name)
        if not m.base_path:
            raise ConfigError(path, f"model {m.name!r} has no base_path")
        if m.model_platform not in ("", "tensorflow"):
            raise ConfigError(path, f"model {m.name!r}: model_platform must be 'tensorflow', "
                                    f"got {m.model_platform!r}")
        policy = m.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 1:
            raise ConfigError(path, f"model {m.name!r}: latest.num_versions must be >= 1")
        for label, version in m.version_labels.items():
            if version <= 0:
                raise ConfigError(path, f"model {m.name!r}: label {label!r} -> {version}")
    return cfg


def load_model_server_config(path: str):
    """`models.config` -> tensorflow.serving.ModelServerConfig (raises ConfigError)."""
    return parse_model_server_config(_read(path), path)


# --------------------------------------------------------------- batching_parameters.config


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """The SharedBatchScheduler knobs of TF Serving's BatchingParameters (None = TF Serving's
    default). `other` holds the remaining fields that are set (e.g. thread_pool_name)."""
    max_batch_size: Optional[int] = None
    batch_timeout_micros: Optional[int] = None
    max_enqueued_batches: Optional[int] = None
    num_batch_threads: Optional[int] = None
    allowed_batch_sizes: Tuple[int, ...] = ()
    other: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_CORE_KNOBS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
               "num_batch_threads")


def _parse_tfs(text: str, path: str, full_name: str):
    try:
        cls = tfs_protos.message_class(full_name)
    except tfs_protos.ProtosUnavailable as e:
        raise ConfigError(path, f"cannot validate: {e}") from None
    msg = cls()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise ConfigError(path, f"not a valid {full_name.rsplit('.', 1)[1]} "
                                f"({tfs_protos.source(full_name)}): {e}") from None
    return msg


def parse_batching_parameters(text: str, path: str = "<text>") -> BatchingParameters:
    """Parses a BatchingParameters text proto with TF Serving's proto and checks the value rules
    TF Serving applies when it builds the scheduler."""
    msg = _parse_tfs(text, path, tfs_protos.BATCHING_PARAMETERS)
    values: Dict[str, Any] = {k: getattr(msg, k).value for k in _CORE_KNOBS if msg.HasField(k)}
    other = {f.name: v for f, v in msg.ListFields()
             if f.name not in _CORE_KNOBS and f.name != "allowed_batch_sizes"}
    if other.get("pad_variable_length_inputs"):
        raise ConfigError(path, "pad_variable_length_inputs is not supported by this deployment: "
                                "clients send sequences padded to the model's fixed length")
    return _check_batching(BatchingParameters(**values,
                                              allowed_batch_sizes=tuple(msg.allowed_batch_sizes),
                                              other=other), path)


def _check_batching(p: BatchingParameters, path: str) -> BatchingParameters:
    """Rules TF Serving enforces when it builds the scheduler (session_bundle_config.proto)."""
    if p.max_batch_size is not None and p.max_batch_size <= 0:
        raise ConfigError(path, "max_batch_size must be > 0")
    if p.batch_timeout_micros is not None and p.batch_timeout_micros < 0:
        raise ConfigError(path, "batch_timeout_micros must be >= 0")
    if p.num_batch_threads is not None and p.num_batch_threads < 1:
        raise ConfigError(path, "num_batch_threads must be >= 1")
    if p.max_enqueued_batches is not None and p.max_enqueued_batches < 1:
        raise ConfigError(path, "max_enqueued_batches must be >= 1")
    sizes = p.allowed_batch_sizes
    if sizes:
        if any(s <= 0 for s in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ConfigError(path, f"allowed_batch_sizes must be positive and increasing: "
                                    f"{list(sizes)}")
        if p.max_batch_size is not None and sizes[-1] != p.max_batch_size:
            raise ConfigError(path, f"the last allowed_batch_sizes entry ({sizes[-1]}) must "
                                    f"equal max_batch_size ({p.max_batch_size})")
    return p


def load_batching_parameters(path: str) -> BatchingParameters:
    """`batching_parameters.config` -> BatchingParameters (raises ConfigError)."""
    return parse_batching_parameters(_read(path), path)


# -------------------------------------------------------------------------- monitoring.config


@dataclasses.dataclass(frozen=True)
class MonitoringConfig:
    """MonitoringConfig.prometheus_config (metrics are served on the REST port)."""
    prometheus_enable: bool
    prometheus_path: str


def parse_monitoring_config(text: str, path: str = "<text>") -> MonitoringConfig:
    """Parses a MonitoringConfig text proto with TF Serving's proto; requires Prometheus at
    constants.PROMETHEUS_PATH because the k8s scrape annotations and dashboards point there."""
    msg = _parse_tfs(text, path, tfs_protos.MONITORING_CONFIG)
    cfg = MonitoringConfig(msg.prometheus_config.enable, msg.prometheus_config.path)
    if not cfg.prometheus_enable:
        raise ConfigError(path, "prometheus_config.enable must be true")
    if cfg.prometheus_path != C.PROMETHEUS_PATH:
        raise ConfigError(path, f"prometheus_config.path must be {C.PROMETHEUS_PATH!r} "
                                f"(scrape annotations use it), got {cfg.prometheus_path!r}")
    return cfg


def load_monitoring_config(path: str) -> MonitoringConfig:
    """`monitoring.config` -> MonitoringConfig (raises ConfigError)."""
    return parse_monitoring_config(_read(path), path)
