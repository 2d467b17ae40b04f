"""Staleness monitor (ML Test Score, Monitor 4): `pinrank query status --max-age-hours H` exits 1
with one error line unless the newest AVAILABLE version was pushed within H hours, against the
real local server and a toy SavedModel pushed like the Pusher does (version = unix seconds)."""
import contextlib
import io
import json
import shutil
import time

import pytest

from pinrank.serving import cli
from pinrank.serving import constants as C
from pinrank.serving import local_server as LS
from pinrank.serving import testing as T
from pinrank.serving.client import VersionStatus

pytestmark = pytest.mark.timeout(120)


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_staleness_error_reads_the_version_as_push_time():
    now = 1_700_000_000 + 30 * 3600
    st = [VersionStatus(1_700_000_000, "AVAILABLE", 0, ""), VersionStatus(now, "END", 1, "x")]
    assert cli.staleness_error("m", st, 31, now) is None
    assert cli.staleness_error("m", st, 29, now) == (
        "model m: newest AVAILABLE version 1700000000 was pushed 30.0 h ago "
        "(> --max-age-hours 29)")  # the newer version never loaded: it does not count
    assert cli.staleness_error("m", st[1:], 99, now) == "model m has no AVAILABLE version"


def test_query_status_max_age_flags_a_stale_model(tmp_path):
    src = T.save_toy_pinnerformer(str(tmp_path / "pf"), 1.0)
    base = tmp_path / "serving" / C.PINNERFORMER
    old = int(time.time()) - 50 * 3600
    T.push_version(src, str(base), old)
    h = LS.serve(model_base_path=str(tmp_path / "serving"), port=0,
                 file_system_poll_wait_seconds=0.05)
    try:
        status = ["query", "status", "--target", h.target, "--model", C.PINNERFORMER]
        rc, out, err = _cli([*status, "--max-age-hours", "48"])
        assert rc == 1 and json.loads(out)[0]["version"] == old
        assert err.startswith("error: model pinnerformer: newest AVAILABLE version") and \
            err.count("\n") == 1
        fresh = int(time.time()) - 3600
        T.push_version(src, str(base), fresh)
        T.wait_for_versions(h.target, C.PINNERFORMER, [fresh])
        assert _cli([*status, "--max-age-hours", "48"])[0] == 0
        shutil.rmtree(base / str(fresh))  # rolled back to the stale version: flagged again
        T.wait_for_versions(h.target, C.PINNERFORMER, [old], gone=[fresh])
        assert _cli([*status, "--max-age-hours", "48"])[0] == 1
    finally:
        h.stop(grace=None)
