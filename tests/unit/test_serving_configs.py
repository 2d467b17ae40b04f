"""The deploy configs parse with TF Serving's own protos, typos fail, and docker-compose / k8s /
kustomize / models.config agree with each other."""
import http.server
import json
import os
import re
import shutil
import subprocess
import threading

import pytest
import yaml

from pinrank.serving import configs, tfs_protos
from pinrank.serving import constants as C

DEPLOY = C.DEPLOY_DIR


def _path(name):
    return os.path.join(DEPLOY, name)


def _text(name):
    with open(_path(name)) as fh:
        return fh.read()


def test_models_config_parses_with_tf_serving_proto():
    cfg = configs.load_model_server_config(_path(C.MODELS_CONFIG))
    assert type(cfg).DESCRIPTOR.full_name == "tensorflow.serving.ModelServerConfig"
    models = {m.name: m for m in cfg.model_config_list.config}
    assert tuple(models) == C.MODEL_NAMES
    for name, m in models.items():
        assert m.base_path == f"{C.CONTAINER_MODEL_ROOT}/{name}"
        assert m.model_platform == "tensorflow"
        assert m.model_version_policy.latest.num_versions == C.NUM_VERSIONS == 2


def test_global_batching_parameters_only_size_the_shared_thread_pool():
    # With --enable_per_model_batching_parameters TF Serving ignores every other knob here.
    p = configs.load_batching_parameters(_path(C.BATCHING_CONFIG))
    assert p == configs.BatchingParameters(num_batch_threads=4)


def test_pinnerformer_batching_parameters_follow_tf_serving_rules():
    p = configs.load_batching_parameters(_path(C.PINNERFORMER_BATCHING))
    assert p.max_batch_size == 512 and p.batch_timeout_micros == 1000
    assert p.num_batch_threads is None and p.max_enqueued_batches == 8
    assert p.allowed_batch_sizes == (32, 64, 128, 256, 512)
    assert p.other == {}


def test_monitoring_config_parses():
    m = configs.load_monitoring_config(_path(C.MONITORING_CONFIG))
    assert m.prometheus_enable and m.prometheus_path == C.PROMETHEUS_PATH


def test_every_config_is_checked_against_tf_serving_protos():
    src = configs.schema_sources()
    assert "model_server_config_pb2" in src[C.MODELS_CONFIG]
    for name in (C.BATCHING_CONFIG, C.PER_MODEL_BATCHING_FILE, C.MONITORING_CONFIG):
        assert "session_bundle_config" in src[name] or "monitoring_config" in src[name]
    for full_name in (tfs_protos.BATCHING_PARAMETERS, tfs_protos.MONITORING_CONFIG):
        assert tfs_protos.message_class(full_name).DESCRIPTOR.full_name == full_name
    fields = tfs_protos.message_class(tfs_protos.BATCHING_PARAMETERS).DESCRIPTOR.fields_by_name
    assert fields["max_batch_size"].message_type.full_name == "google.protobuf.Int64Value"
    assert fields["allowed_batch_sizes"].label == fields["allowed_batch_sizes"].LABEL_REPEATED


def test_descriptor_is_read_from_generated_code_without_running_it():
    from google.protobuf import descriptor_pb2

    fdp = descriptor_pb2.FileDescriptorProto(name="x/y.proto", package="p")
    fdp.message_type.add(name="M").field.add(name="f", number=1, type=9, label=1)
    raw = fdp.SerializeToString()
    old_style = ("import sys\n_b=lambda x: x.encode('latin1')\nraise SystemExit('executed')\n"
                 f"DESCRIPTOR = _descriptor.FileDescriptor(name='x/y.proto', "
                 f"serialized_pb=_b({raw.decode('latin1')!r}))\n")
    new_style = f"DESCRIPTOR = _pool.Default().AddSerializedFile({raw!r})\n"
    for code in (old_style, new_style):
        assert tfs_protos.descriptor_from_generated_code(code, "gen.py") == fdp
    with pytest.raises(tfs_protos.ProtosUnavailable, match="gen.py"):
        tfs_protos.descriptor_from_generated_code("x = 1\n", "gen.py")


def test_missing_or_tampered_proto_wheel_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(tfs_protos.CACHE_ENV, str(tmp_path / "cache"))
    tfs_protos._wheel_classes.cache_clear()
    try:
        monkeypatch.setenv(tfs_protos.WHEEL_ENV, str(tmp_path / "missing.whl"))
        with pytest.raises(configs.ConfigError, match="missing.whl: no such file"):
            configs.load_batching_parameters(_path(C.BATCHING_CONFIG))
        (tmp_path / "fake.whl").write_bytes(b"not the pinned wheel")
        monkeypatch.setenv(tfs_protos.WHEEL_ENV, str(tmp_path / "fake.whl"))
        with pytest.raises(configs.ConfigError, match="does not match the pinned"):
            configs.load_monitoring_config(_path(C.MONITORING_CONFIG))
        with pytest.raises(tfs_protos.ProtosUnavailable, match="fetching is off"):
            tfs_protos.message_class(tfs_protos.MONITORING_CONFIG, fetch=False)
        assert not (tmp_path / "cache" / tfs_protos.CACHE_DIR).exists()
    finally:
        tfs_protos._wheel_classes.cache_clear()


BROKEN = {
    C.MODELS_CONFIG: [
        ("model_platform:", "model_platfrom:"),  # unknown field
        ('name: "ranker"', 'name: "pinnerformer"'),  # duplicate model
        ("num_versions: 2", "num_versions: two"),  # wrong type
        ("model_config_list {", "model_config_list"),  # syntax
    ],
    C.BATCHING_CONFIG: [
        ("num_batch_threads {", "num_batch_thread {"),  # typo in a field name
        ("num_batch_threads { value: 4 }", "num_batch_threads { value: 0 }"),
        ("num_batch_threads { value: 4 }", "num_batch_threads: 4"),  # not the Int64Value form
        ("num_batch_threads { value: 4 }", "num_batch_threads { value: 4 "),  # syntax
    ],
    C.PINNERFORMER_BATCHING: [
        ("max_batch_size {", "max_batch_sise {"),  # typo in a field name
        ("max_batch_size { value: 512 }", "max_batch_size: 512"),  # not the Int64Value form
        ("max_batch_size { value: 512 }", "max_batch_size { value: 384 }"),  # last bucket != max
        ("allowed_batch_sizes: 64\n", "allowed_batch_sizes: 16\n"),  # not increasing
        ("batch_timeout_micros { value: 1000 }", "batch_timeout_micros { value: -1 }"),
        ("batch_timeout_micros { value: 1000 }", "batch_timeout_micros { value: 1000 "),
        ("max_enqueued_batches { value: 8 }",
         "max_enqueued_batches { value: 8 }\npad_variable_length_inputs: true"),  # contract
        ("max_enqueued_batches { value: 8 }", "max_enqueued_batches { value: 8 valeu: 1 }"),
        ("allowed_batch_sizes: 32\n", "allowed_batch_sizes: 32.5\n"),  # wrong type
    ],
    C.MONITORING_CONFIG: [
        ("prometheus_config {", "prometheus_confg {"),
        ("enable: true", "enable: ture"),
        ("enable: true", "enable: false"),
        ('path: "/monitoring/prometheus/metrics"', 'path: "/metrics"'),
        ("path:", "pth:"),
        ("}", ""),  # syntax
    ],
}
LOADERS = {C.MODELS_CONFIG: configs.load_model_server_config,
           C.BATCHING_CONFIG: configs.load_batching_parameters,
           C.PINNERFORMER_BATCHING: configs.load_batching_parameters,
           C.MONITORING_CONFIG: configs.load_monitoring_config}


@pytest.mark.parametrize("name,old,new", [(n, o, w) for n, cases in BROKEN.items()
                                          for o, w in cases])
def test_broken_copy_fails(tmp_path, name, old, new):
    text = _text(name)
    assert old in text, f"mutation {old!r} does not apply to {name}"
    broken = tmp_path / name
    broken.write_text(text.replace(old, new))  # every occurrence: comments may quote it
    with pytest.raises(configs.ConfigError) as e:
        LOADERS[name](str(broken))
    assert str(broken) in str(e.value)


def test_unmodified_copy_still_parses(tmp_path):
    """Guards the mutation test: the copy mechanism itself does not break files."""
    for name, load in LOADERS.items():
        shutil.copy(_path(name), tmp_path / name)
        load(str(tmp_path / name))


# ------------------------------------------------------------------ compose / k8s consistency

EXPECTED_FLAGS = {
    "--port": str(C.GRPC_PORT),
    "--rest_api_port": str(C.REST_PORT),
    "--model_config_file": f"{C.CONTAINER_CONFIG_DIR}/{C.MODELS_CONFIG}",
    "--batching_parameters_file": f"{C.CONTAINER_CONFIG_DIR}/{C.BATCHING_CONFIG}",
    "--monitoring_config_file": f"{C.CONTAINER_CONFIG_DIR}/{C.MONITORING_CONFIG}",
    "--enable_batching": "true",
    "--enable_per_model_batching_parameters": "true",
    "--enable_model_warmup": "true",
}


def _flags(args):
    out = {}
    for a in args:
        k, _, v = a.partition("=")
        out[k] = v
    return out


def _compose():
    with open(_path("docker-compose.yml")) as fh:
        return yaml.safe_load(fh)["services"]["tfserving"]


def _k8s():
    with open(_path("k8s.yaml")) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    return by_kind


def test_compose_and_k8s_run_the_same_server_command():
    svc = _compose()
    dep = _k8s()["Deployment"][0]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert svc["image"] == container["image"] == C.SERVING_IMAGE
    assert svc["entrypoint"] == container["command"] == ["tensorflow_model_server"]
    assert svc["command"] == container["args"]
    flags = _flags(container["args"])
    for k, v in EXPECTED_FLAGS.items():
        assert flags.get(k) == v, k
    assert int(flags["--model_config_file_poll_wait_seconds"]) > 0
    assert int(flags["--file_system_poll_wait_seconds"]) > 0


def test_compose_ports_volumes_gpu():
    svc = _compose()
    assert set(svc["ports"]) == {f"{C.GRPC_PORT}:{C.GRPC_PORT}", f"{C.REST_PORT}:{C.REST_PORT}"}
    vols = {v["target"]: v for v in svc["volumes"]}
    assert set(vols) == {C.CONTAINER_MODEL_ROOT, C.CONTAINER_CONFIG_DIR}
    assert all(v["type"] == "bind" and v["read_only"] for v in vols.values())
    assert "PINRANK_SERVING_DIR" in vols[C.CONTAINER_MODEL_ROOT]["source"]
    assert os.path.samefile(os.path.join(DEPLOY, vols[C.CONTAINER_CONFIG_DIR]["source"]), DEPLOY)
    dev = svc["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and dev["count"] == 1 and "gpu" in dev["capabilities"]
    assert "/config/ready.sh" in svc["healthcheck"]["test"]


def test_k8s_deployment_probes_gpu_volumes_service():
    kinds = _k8s()
    dep = kinds["Deployment"][0]
    pod = dep["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": C.GRPC_PORT, "http": C.REST_PORT}
    ready = container["readinessProbe"]["exec"]["command"]
    assert ready == ["bash", "/config/ready.sh", f"/config/{C.MODELS_CONFIG}"]
    assert container["livenessProbe"]["tcpSocket"]["port"] == C.GRPC_PORT
    assert container["startupProbe"]["tcpSocket"]["port"] == C.GRPC_PORT
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {C.CONTAINER_MODEL_ROOT, C.CONTAINER_CONFIG_DIR}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    claim = volumes[mounts[C.CONTAINER_MODEL_ROOT]]["persistentVolumeClaim"]["claimName"]
    assert claim in {p["metadata"]["name"] for p in kinds["PersistentVolumeClaim"]}
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/path"] == configs.load_monitoring_config(
        _path(C.MONITORING_CONFIG)).prometheus_path
    assert ann["prometheus.io/port"] == str(C.REST_PORT)
    labels = pod["metadata"]["labels"]
    for svc in kinds["Service"]:
        assert svc["spec"]["selector"].items() <= labels.items()
        assert {p["port"] for p in svc["spec"]["ports"]} <= {C.GRPC_PORT, C.REST_PORT}
    assert any(p["port"] == C.GRPC_PORT for s in kinds["Service"] for p in s["spec"]["ports"])


def test_k8s_network_policy_admits_only_the_recommender_the_monitor_and_prometheus():
    kinds = _k8s()
    (policy,) = kinds["NetworkPolicy"]
    labels = kinds["Deployment"][0]["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert spec["policyTypes"] == ["Ingress"]  # selecting the pods denies everything else
    rules = {tuple(p["port"] for p in r["ports"]): r["from"] for r in spec["ingress"]}
    assert set(rules) == {(C.GRPC_PORT,), (C.REST_PORT,)}
    assert rules[(C.GRPC_PORT,)] == [{"podSelector": {"matchLabels": {"app": app}}}
                                     for app in ("pinrank-recommend", "pinrank-monitor")]
    (prometheus,) = rules[(C.REST_PORT,)]
    assert set(prometheus) == {"namespaceSelector", "podSelector"}  # both: one peer, not two
    # nothing reachable from outside the cluster
    assert all(svc["spec"].get("type", "ClusterIP") == "ClusterIP" for svc in kinds["Service"])


def test_kustomize_configmap_carries_every_referenced_config():
    with open(_path("kustomization.yaml")) as fh:
        kust = yaml.safe_load(fh)
    assert kust["resources"] == ["k8s.yaml", "online.yaml"]
    gen = kust["configMapGenerator"][0]
    dep = _k8s()["Deployment"][0]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == gen["name"]
    files = set(gen["files"])
    referenced = {v.split("/config/")[1] for v in
                  _flags(dep["spec"]["template"]["spec"]["containers"][0]["args"]).values()
                  if v.startswith("/config/")} | {"ready.sh"}
    assert referenced == files == set(C.CONFIG_FILES) | {"ready.sh"}
    for f in files:
        assert os.path.isfile(_path(f)), f


# ------------------------------------------------------------------ the online path


def _online():
    with open(_path("online.yaml")) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def _pinrank_argv(container):
    """The pinrank command line a container runs (sh -c 'exec pinrank ...' unwrapped)."""
    import shlex

    if container["command"] == ["pinrank"]:
        return container["args"]
    assert container["command"] == ["sh", "-c"], container["command"]
    words = shlex.split(container["args"][0].split(";")[-1])  # after the variable set-up
    assert words[:2] == ["exec", "pinrank"], words
    return [w if not w.startswith("$") else "0" for w in words[2:]]


def test_online_commands_parse_with_the_pinrank_cli():
    """Every pinrank command in online.yaml and docker-compose.yml is accepted by the real
    parser, and the stores and targets agree with the services that exist."""
    from pinrank.pipeline import cli as pinrank_cli

    parser = pinrank_cli.build_parser()
    docs = _online()
    containers = {}
    for d in docs:
        spec = d["spec"]
        pod = (spec.get("jobTemplate", {}).get("spec", spec) if d["kind"] == "CronJob"
               else spec).get("template", {}).get("spec", {})
        cs = pod.get("containers", [])
        for c in cs:  # a pod of several containers (the monitor): one entry per container
            name = d["metadata"]["name"]
            containers[name if len(cs) == 1 else f"{name}/{c['name']}"] = (d, c)
    with open(_path("docker-compose.yml")) as fh:
        compose = yaml.safe_load(fh)["services"]
    argvs = {name: _pinrank_argv(c) for name, (_, c) in containers.items()
             if c["image"] == "pinrank"}
    argvs.update({f"compose:{n}": svc["command"][1:] for n, svc in compose.items()
                  if svc["command"][:1] == ["pinrank"]})
    assert {"pinrank-ingest", "pinrank-embed-users", "pinrank-recommend", "pinrank-purge",
            "compose:ingest", "compose:recommend"} <= set(argvs)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name, argv in argvs.items():
        args = parser.parse_args(argv)  # SystemExit on an unknown flag
        for url in [getattr(args, "store", None), getattr(args, "redis_stream", None)] + [
                v.split("=", 1)[1] for v in getattr(args, "set", []) if v.startswith("online.store=")]:
            if url:
                host = url.split("//")[1].split(":")[0]
                assert host in (services if not name.startswith("compose:") else compose), (name, url)
    rec = parser.parse_args(argvs["pinrank-recommend"])
    assert rec.target == f"pinrank-serving:{C.GRPC_PORT}" and rec.host == "0.0.0.0"
    # The staleness monitor checks every served model and the daily snapshot, each with a limit.
    checks = [parser.parse_args(v) for k, v in argvs.items() if k.startswith("pinrank-monitor/")]
    models = [a for a in checks if a.func.__name__ == "cmd_query_status"]
    assert sorted(a.model for a in models) == sorted(C.MODEL_NAMES)
    assert all(a.target == rec.target and a.max_age_hours > 0 for a in models)
    (snap,) = [a for a in checks if a.func.__name__ == "cmd_query_snapshot"]
    embed = parser.parse_args(argvs["pinrank-embed-users"])
    assert snap.store == embed.store and 24 < snap.max_age_hours < 48  # daily job + run time
    purge = parser.parse_args(argvs["pinrank-purge"])
    assert purge.store == embed.store and any(
        v.startswith("online.retention_days=") for v in purge.set)


def test_online_pods_match_the_network_policies():
    docs = _online()
    labels = {d["metadata"]["name"]: d["spec"].get("template", d["spec"].get("jobTemplate", {})
                                                  .get("spec", {}).get("template", {}))
              .get("metadata", {}).get("labels") for d in docs
              if d["kind"] in ("Deployment", "StatefulSet", "CronJob")}
    # k8s.yaml admits the recommendation service's pods to TF Serving's gRPC port.
    (serving_policy,) = _k8s()["NetworkPolicy"]
    admitted = serving_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert admitted.items() <= labels["pinrank-recommend"].items()
    monitor = serving_policy["spec"]["ingress"][0]["from"][1]["podSelector"]["matchLabels"]
    assert monitor.items() <= labels["pinrank-monitor"].items()
    (redis_policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    allowed = [p["podSelector"]["matchLabels"] for p in redis_policy["spec"]["ingress"][0]["from"]]
    for client in ("pinrank-ingest", "pinrank-embed-users", "pinrank-recommend",
                   "pinrank-monitor", "pinrank-purge"):
        assert any(a.items() <= labels[client].items() for a in allowed), client
    assert all(d["spec"].get("type", "ClusterIP") == "ClusterIP" for d in docs
               if d["kind"] == "Service")
    claims = {d["metadata"]["name"] for d in docs + _k8s()["PersistentVolumeClaim"]
              if d["kind"] == "PersistentVolumeClaim"}
    for d in docs:
        text = yaml.safe_dump(d)
        for claim in re.findall(r"claimName: (\S+)", text):
            assert claim in claims, (d["metadata"]["name"], claim)


# ------------------------------------------------------------------ readiness probe script


class _FakeRest(http.server.BaseHTTPRequestHandler):
    states = {}

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        state = self.states.get(name)
        if state is None:
            body, code = {"error": f"Could not find any versions of model {name}"}, 404
        else:
            body, code = {"model_version_status": [
                {"version": "1700000000", "state": state,
                 "status": {"error_code": "OK", "error_message": ""}}]}, 200
        data = json.dumps(body, indent=1).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils timeout")
def test_ready_script_requires_every_model_available():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeRest)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ, REST_PORT=str(server.server_address[1]), PROBE_TIMEOUT_S="2")

    def probe():
        return subprocess.run(["bash", _path("ready.sh"), _path(C.MODELS_CONFIG)], env=env,
                              capture_output=True, text=True, timeout=20)

    try:
        _FakeRest.states = {m: "AVAILABLE" for m in C.MODEL_NAMES}
        assert probe().returncode == 0
        _FakeRest.states = {C.PINNERFORMER: "AVAILABLE", C.RANKER: "LOADING"}
        r = probe()
        assert r.returncode == 1 and C.RANKER in r.stderr
        _FakeRest.states = {C.PINNERFORMER: "AVAILABLE"}  # ranker never pushed: 404
        assert probe().returncode == 1
    finally:
        server.shutdown()
        server.server_close()
