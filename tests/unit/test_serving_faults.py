"""Faults between the pipeline and the server (issue 11, item 3), with the real local server,
the real AtomicPusher run by LocalDagRunner, real tmpfs mounts and a real SIGKILL:

* a corrupted pushed version (variables/ removed, saved_model.pb truncated) is refused and the
  previous version keeps answering;
* a push into a read-only or full serving dir fails with one line naming the dir, leaves no
  partial version and the previous version keeps answering;
* a push killed with SIGKILL mid-copy leaves no numeric (loadable) directory, and the next push
  removes its leftovers.

The tmpfs tests need mount(2) (root with CAP_SYS_ADMIN); elsewhere they skip. Root ignores
permission bits, so chmod cannot make a read-only dir for them: a read-only mount can."""
import multiprocessing
import os
import signal
import subprocess
import time

import grpc
import numpy as np
import pytest

from pinrank.components.atomic_pusher import TMP_PREFIX, PushError, publish
from pinrank.serving import constants as C
from pinrank.serving import local_server as LS
from pinrank.serving import testing as T
from pinrank.serving.client import ServingClient, ServingError

V1, V2, V3 = 1_700_000_000, 1_700_000_100, 1_700_000_200
pytestmark = pytest.mark.timeout(180)
ITEMS = {C.ITEM_ID: np.array([1, 2], np.int64)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return {"pf1": T.save_toy_pinnerformer(str(root / "pf1"), 1.0),
            "pf2": T.save_toy_pinnerformer(str(root / "pf2"), 2.0)}


def _served_version(client) -> int:
    return client.predict_versioned(C.PINNERFORMER, C.ITEM_EMBEDDING, ITEMS)[1]


def _wait_state(client, version, state, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            states = {s.version: s for s in client.status(C.PINNERFORMER)}
        except ServingError:
            states = {}
        if version in states and states[version].state == state:
            return states
        assert time.monotonic() < deadline, {v: s.state for v, s in states.items()}
        time.sleep(0.05)


def _complete(path) -> bool:
    return (os.path.isfile(os.path.join(path, "saved_model.pb"))
            and os.path.isfile(os.path.join(path, "variables", "variables.index")))


# ----------------------------------------------------------------------------- corrupted version


def _no_variables(path):
    import shutil
    shutil.rmtree(os.path.join(path, "variables"))


def _truncated_pb(path):
    pb = os.path.join(path, "saved_model.pb")
    with open(pb, "rb") as fh:
        data = fh.read()
    with open(pb, "wb") as fh:
        fh.write(data[:len(data) // 2])


@pytest.mark.parametrize("num_versions", [1, 2])
@pytest.mark.parametrize("corrupt", [_no_variables, _truncated_pb], ids=["no-variables",
                                                                          "truncated-pb"])
def test_corrupted_version_is_refused_and_the_previous_keeps_serving(tmp_path, store, corrupt,
                                                                     num_versions):
    """Real TF Serving does the same: a version whose SavedModel fails to load ends in state END
    with the load error as its status (after its load retries), and the availability-preserving
    policy (tensorflow_serving/core/availability_preserving_policy.cc, the default) unloads an
    older version only once an aspired one is ready, so with latest-1 (the default) or latest-2
    the previous version keeps serving. A later good push is served as usual."""
    base = tmp_path / "serving" / C.PINNERFORMER
    T.push_version(store["pf1"], str(base), V1)
    h = LS.serve(model_base_path=str(tmp_path / "serving"), port=0,
                 file_system_poll_wait_seconds=0.05, num_versions=num_versions,
                 max_load_retries=2)
    try:
        client = ServingClient(h.target, retries=0)
        assert _served_version(client) == V1
        bad = T.push_version(store["pf2"], str(base), V2)
        corrupt(bad)
        states = _wait_state(client, V2, "END")
        assert states[V2].error_code != 0 and "load failed" in states[V2].error_message
        assert states[V1].state == "AVAILABLE"
        for _ in range(20):  # across polls (and the bounded load retries)
            assert _served_version(client) == V1
            time.sleep(0.02)
        with pytest.raises(ServingError) as e:
            client.predict(C.PINNERFORMER, C.ITEM_EMBEDDING, ITEMS, version=V2)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        T.push_version(store["pf2"], str(base), V3)
        assert client.wait_until_available(C.PINNERFORMER, V3, timeout_s=30) == V3
        assert _served_version(client) == V3
    finally:
        h.stop(grace=None)


# ----------------------------------------------------------------------------- push faults


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs; `remount_ro()` makes it read-only (EROFS, which binds root too)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {r.stderr.strip()}")

    class Mount:
        path = mnt

        @staticmethod
        def remount_ro():
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)

    yield Mount
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _push_pipeline(tmp_path, model_dir, serving_base):
    """Importer(Model) -> AtomicPusher, the pipeline's Pusher with its executor, no blessing."""
    from tfx import v1 as tfx

    from pinrank.components.atomic_pusher import AtomicPusher
    importer = tfx.dsl.Importer(source_uri=str(model_dir),
                                artifact_type=tfx.types.standard_artifacts.Model,
                                reimport=True).with_id("import_model")
    pusher = AtomicPusher(
        model=importer.outputs["result"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=str(serving_base))),
    ).with_id("Pusher")
    return tfx.dsl.Pipeline(
        pipeline_name="push-faults", pipeline_root=str(tmp_path / "root"),
        components=[importer, pusher], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(tmp_path / "metadata.sqlite")))


def _model_artifact(tmp_path, name, src, extra_bytes=0):
    """A Trainer-like Model artifact dir (<uri>/Format-Serving/<SavedModel>), optionally with
    an extra asset making it bigger than the tmpfs."""
    import shutil
    uri = tmp_path / name
    shutil.copytree(src, uri / "Format-Serving")
    if extra_bytes:
        (uri / "Format-Serving" / "assets").mkdir(exist_ok=True)
        (uri / "Format-Serving" / "assets" / "big.bin").write_bytes(os.urandom(extra_bytes))
    return uri


def _run(pipeline):
    from tfx import v1 as tfx
    tfx.orchestration.LocalDagRunner().run(pipeline)


@pytest.mark.parametrize("fault", ["read-only", "disk-full"])
def test_push_into_a_read_only_or_full_serving_dir(tmp_path, store, tmpfs, fault):
    from pinrank.pipeline import cli

    serving = tmpfs.path / "serving"
    base = serving / C.PINNERFORMER
    _run(_push_pipeline(tmp_path, _model_artifact(tmp_path, "m1", store["pf1"]), base))
    (v1,) = os.listdir(base)
    assert _complete(base / v1)
    h = LS.serve(model_base_path=str(serving), port=0, file_system_poll_wait_seconds=0.05)
    try:
        client = ServingClient(h.target, retries=0)
        assert _served_version(client) == int(v1)
        while int(time.time()) <= int(v1):  # the next push gets a new version number
            time.sleep(0.05)
        if fault == "read-only":
            tmpfs.remount_ro()
            model2, reason = _model_artifact(tmp_path, "m2", store["pf2"]), "Read-only file system"
        else:
            model2 = _model_artifact(tmp_path, "m2", store["pf2"], extra_bytes=2 << 20)
            reason = "No space left on device"
        with pytest.raises(PushError) as e:
            _run(_push_pipeline(tmp_path, model2, base))
        # what `pinrank run` prints: one line naming the serving dir, exit 1
        assert cli._user_error_code(e.value) == 1
        assert cli._one_line(e.value) == f"cannot push the model to serving dir {base}: {reason}"
        assert os.listdir(base) == [v1]  # no partial version, no temporary dir left
        assert _complete(base / v1)
        time.sleep(0.3)  # a few polls
        assert {s.version: s.state for s in client.status(C.PINNERFORMER)} == {
            int(v1): "AVAILABLE"}
        assert _served_version(client) == int(v1)
    finally:
        h.stop(grace=None)


def _slow_publish(src, base, version):
    publish(src, base, version)
    os._exit(0)


def test_push_killed_mid_copy_leaves_no_version(tmp_path, store):
    """SIGKILL a push while it copies (a forked process; a model with many files so the copy
    takes a while): only a `.tmp-*` dir exists, which servers ignore; the next push removes it
    and publishes a complete version."""
    src = tmp_path / "big"
    import shutil
    shutil.copytree(store["pf2"], src)
    (src / "assets").mkdir(exist_ok=True)
    for i in range(3000):
        (src / "assets" / f"f{i:04d}").write_bytes(b"x" * 4096)
    base = tmp_path / "serving" / C.PINNERFORMER
    T.push_version(store["pf1"], str(base), V1)
    proc = multiprocessing.get_context("fork").Process(target=_slow_publish,
                                                       args=(str(src), str(base), str(V2)))
    proc.start()
    deadline = time.monotonic() + 60
    while True:
        tmps = [n for n in os.listdir(base) if n.startswith(TMP_PREFIX)]
        if tmps and os.path.isdir(base / tmps[0] / "assets"):
            os.kill(proc.pid, signal.SIGKILL)
            break
        assert proc.is_alive() and time.monotonic() < deadline, "the push ended before the kill"
        time.sleep(0.001)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    names = sorted(os.listdir(base))
    assert str(V2) not in names, "the copy finished before the kill: make the model bigger"
    assert names == sorted([str(V1), tmps[0]])
    assert len(os.listdir(base / tmps[0] / "assets")) < 3000  # it was killed mid-copy
    assert LS._versions_on_disk(str(base)) == [V1]  # what a server would load
    publish(str(store["pf2"]), str(base), str(V3))
    assert sorted(os.listdir(base)) == [str(V1), str(V3)]
    assert all(_complete(base / v) for v in (str(V1), str(V3)))
