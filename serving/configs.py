"""Load and validate the TF Serving config files in serving/deploy before they reach a server.

A typo in a text-proto config makes `tensorflow_model_server` refuse to start (or, for a value
that parses but is wrong, misbehave at load time), which we would only see after a rollout.
These loaders fail at test time instead.

What can be checked depends on what `tensorflow-serving-api` ships:

* `models.config`: `tensorflow_serving.config.model_server_config_pb2` ships, so the file is
  parsed into TF Serving's own `ModelServerConfig` (full schema validation).
* `batching_parameters.config`: `BatchingParameters` lives in
  `tensorflow_serving/servables/tensorflow/session_bundle_config.proto`, which the 2.16.1 pip
  package does NOT ship. We do not vendor a copy. Instead: the text is tokenized with protobuf's
  own text-format tokenizer (syntax), every field name is checked against the attributes of
  TensorFlow's `BatchFunction` op (the same SharedBatchScheduler knobs under the same names, read
  from TF's op registry), scalar knobs must use the `google.protobuf.Int64Value` wrapper form TF
  Serving requires (`max_batch_size { value: 128 }`, range-checked with the real wrapper proto),
  and TF Serving's documented value rules are enforced. Fields with no counterpart in that op
  (e.g. `pad_variable_length_inputs`, `thread_pool_name`) are rejected as unverifiable.
* `monitoring.config`: `monitoring_config_pb2` is not shipped either. The text is tokenized
  (syntax), and the deployment's requirements are enforced (Prometheus enabled at
  constants.PROMETHEUS_PATH); keys other than those cannot be verified here and are rejected.

If a later tensorflow-serving-api ships the missing modules, they are used automatically
(`schema_sources()` says which path is active).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

from google.protobuf import text_format, wrappers_pb2

from serving import constants as C

_BATCHING_MODULE = "tensorflow_serving.servables.tensorflow.session_bundle_config_pb2"
_MONITORING_MODULE = "tensorflow_serving.config.monitoring_config_pb2"


class ConfigError(ValueError):
    """A config file that TF Serving would reject (or that breaks our deployment contract)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


def _optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def schema_sources() -> Dict[str, str]:
    """Which schema each loader validates against in this environment (for reports/tests)."""
    return {
        C.MODELS_CONFIG: "tensorflow_serving.config.model_server_config_pb2.ModelServerConfig",
        C.BATCHING_CONFIG: (f"{_BATCHING_MODULE}.BatchingParameters"
                            if _optional_module(_BATCHING_MODULE) else
                            "not shipped: protobuf tokenizer + tf BatchFunction OpDef attrs"),
        C.MONITORING_CONFIG: (f"{_MONITORING_MODULE}.MonitoringConfig"
                              if _optional_module(_MONITORING_MODULE) else
                              "not shipped: protobuf tokenizer + deployment requirements"),
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


# ---------------------------------------------------------------- generic text-proto reading


class _Enum(str):
    """An identifier value (enum name) in a text proto, kept apart from quoted strings."""


TextProto = Dict[str, List[Any]]  # field name -> values; message values are TextProto too


def parse_text_proto(text: str, path: str = "<text>") -> TextProto:
    """Schema-less text-format parse with protobuf's own tokenizer: catches syntax errors (a
    missing brace, a stray token) for messages whose descriptor is not available."""
    tok = text_format.Tokenizer(text.splitlines())
    try:
        return _read_fields(tok, closing=None)
    except text_format.ParseError as e:
        raise ConfigError(path, f"text proto syntax error: {e}") from e


def _read_fields(tok, closing: Optional[str]) -> TextProto:
    fields: TextProto = {}
    while True:
        if closing is None and tok.AtEnd():
            return fields
        if closing is not None:
            if tok.AtEnd():
                raise tok.ParseError(f'expected "{closing}"')
            if tok.TryConsume(closing):
                return fields
        name = tok.ConsumeIdentifier()
        has_colon = tok.TryConsume(":")
        if tok.LookingAt("{") or tok.LookingAt("<"):
            values = [_read_message(tok)]
        elif not has_colon:
            raise tok.ParseError(f'expected ":" or "{{" after field "{name}"')
        elif tok.TryConsume("["):
            values = []
            if not tok.TryConsume("]"):
                while True:
                    values.append(_read_message(tok) if tok.LookingAt("{") else _read_scalar(tok))
                    if tok.TryConsume("]"):
                        break
                    tok.Consume(",")
        else:
            values = [_read_scalar(tok)]
        fields.setdefault(name, []).extend(values)
        if not tok.TryConsume(","):
            tok.TryConsume(";")


def _read_message(tok) -> TextProto:
    if tok.TryConsume("{"):
        return _read_fields(tok, "}")
    tok.Consume("<")
    return _read_fields(tok, ">")


def _read_scalar(tok) -> Any:
    if tok.token[:1] in ("'", '"'):
        return tok.ConsumeString()
    try:
        return tok.ConsumeInteger()
    except text_format.ParseError:
        pass
    try:
        return tok.ConsumeFloat()
    except text_format.ParseError:
        pass
    ident = tok.ConsumeIdentifier()
    if ident in ("true", "True", "t"):
        return True
    if ident in ("false", "False", "f"):
        return False
    return _Enum(ident)


# --------------------------------------------------------------- batching_parameters.config


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """The SharedBatchScheduler knobs of TF Serving's BatchingParameters (None = TF Serving's
    default). `other` holds further verified integer knobs (e.g. low_priority_*) unchanged."""
    max_batch_size: Optional[int] = None
    batch_timeout_micros: Optional[int] = None
    max_enqueued_batches: Optional[int] = None
    num_batch_threads: Optional[int] = None
    allowed_batch_sizes: Tuple[int, ...] = ()
    other: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_CORE_KNOBS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
               "num_batch_threads")


@functools.lru_cache(maxsize=1)
def _batch_op_int_attrs() -> Dict[str, str]:
    """Integer attrs of TF's BatchFunction op (name -> 'int' | 'list(int)'), from the op registry
    of the installed TensorFlow: the independent source for BatchingParameters field names."""
    import tensorflow  # noqa: F401  (registers the ops)
    from tensorflow.python.framework import op_def_registry

    op = op_def_registry.get("BatchFunction")
    if op is None:
        raise RuntimeError("TensorFlow has no BatchFunction op registered")
    return {a.name: a.type for a in op.attr if a.type in ("int", "list(int)")}


def parse_batching_parameters(text: str, path: str = "<text>") -> BatchingParameters:
    """Parses and validates a BatchingParameters text proto (see the module docstring)."""
    module = _optional_module(_BATCHING_MODULE)
    if module is not None:  # full schema available: let protobuf validate every field
        msg = module.BatchingParameters()
        try:
            text_format.Parse(text, msg)
        except text_format.ParseError as e:
            raise ConfigError(path, f"not a valid BatchingParameters: {e}") from e
        values: Dict[str, Any] = {k: getattr(msg, k).value for k in _CORE_KNOBS
                                  if msg.HasField(k)}
        values["allowed_batch_sizes"] = tuple(msg.allowed_batch_sizes)
        return _check_batching(BatchingParameters(**values), path)

    fields = parse_text_proto(text, path)
    known = _batch_op_int_attrs()
    values, other = {}, {}
    for name, vals in fields.items():
        kind = known.get(name)
        if kind is None:
            raise ConfigError(path, f"unknown or unverifiable BatchingParameters field {name!r}: "
                                    "BatchingParameters is not shipped in tensorflow-serving-api, "
                                    "so only fields matching TensorFlow's BatchFunction scheduler "
                                    f"attrs can be verified ({sorted(known)})")
        if kind == "list(int)":
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                raise ConfigError(path, f"{name}: expected repeated int64 scalars, got {vals}")
            value: Any = tuple(vals)
        else:
            if len(vals) != 1:
                raise ConfigError(path, f"{name}: set {len(vals)} times")
            value = _int64_wrapper(vals[0], name, path)
        (values if name in _CORE_KNOBS or name == "allowed_batch_sizes" else other)[name] = value
    return _check_batching(BatchingParameters(**values, other=other), path)


def _int64_wrapper(v: Any, name: str, path: str) -> int:
    if not isinstance(v, dict) or set(v) != {"value"} or len(v["value"]) != 1:
        raise ConfigError(path, f"{name}: TF Serving expects the google.protobuf.Int64Value form "
                                f"'{name} {{ value: N }}', got {v!r}")
    raw = v["value"][0]
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise ConfigError(path, f"{name}: value must be an integer, got {raw!r}")
    try:
        return wrappers_pb2.Int64Value(value=raw).value
    except ValueError as e:
        raise ConfigError(path, f"{name}: {e}") from e


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
    """Parses a MonitoringConfig text proto; requires Prometheus at constants.PROMETHEUS_PATH
    because the k8s scrape annotations and dashboards point there."""
    module = _optional_module(_MONITORING_MODULE)
    if module is not None:
        msg = module.MonitoringConfig()
        try:
            text_format.Parse(text, msg)
        except text_format.ParseError as e:
            raise ConfigError(path, f"not a valid MonitoringConfig: {e}") from e
        cfg = MonitoringConfig(msg.prometheus_config.enable, msg.prometheus_config.path)
    else:
        fields = parse_text_proto(text, path)
        extra = set(fields) - {"prometheus_config"}
        if extra or len(fields.get("prometheus_config", [])) != 1:
            raise ConfigError(path, f"expected exactly one prometheus_config block and nothing "
                                    f"else (unverifiable keys: {sorted(extra)}); "
                                    "MonitoringConfig is not shipped in tensorflow-serving-api")
        prom = fields["prometheus_config"][0]
        if not isinstance(prom, dict) or set(prom) - {"enable", "path"}:
            raise ConfigError(path, f"prometheus_config may only set enable/path here, got "
                                    f"{sorted(prom) if isinstance(prom, dict) else prom!r}")
        enable = prom.get("enable", [False])[-1]
        prom_path = prom.get("path", [""])[-1]
        if not isinstance(enable, bool) or not isinstance(prom_path, str):
            raise ConfigError(path, "prometheus_config: enable must be a bool, path a string")
        cfg = MonitoringConfig(enable, prom_path)
    if not cfg.prometheus_enable:
        raise ConfigError(path, "prometheus_config.enable must be true")
    if cfg.prometheus_path != C.PROMETHEUS_PATH:
        raise ConfigError(path, f"prometheus_config.path must be {C.PROMETHEUS_PATH!r} "
                                f"(scrape annotations use it), got {cfg.prometheus_path!r}")
    return cfg


def load_monitoring_config(path: str) -> MonitoringConfig:
    """`monitoring.config` -> MonitoringConfig (raises ConfigError)."""
    return parse_monitoring_config(_read(path), path)
