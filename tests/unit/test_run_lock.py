"""One pipeline run per MLMD store (pipeline/runs.py `run_lock`): a second run is refused with one
line naming the holder, and the lock is free again after the first run, also after an error."""
import os
import subprocess
import sys

import pytest

from pinrank.pipeline import cli
from pinrank.pipeline.config import preset
from pinrank.pipeline.runs import RunBusyError, RunPaths, run_lock


def _paths(tmp_path):
    return RunPaths.for_config(preset("tiny", "synthetic"), str(tmp_path))


def test_second_run_on_the_same_store_is_refused(tmp_path):
    paths = _paths(tmp_path)
    with run_lock(paths):
        with pytest.raises(RunBusyError, match=f"pid {os.getpid()}.*{os.path.dirname(paths.metadata_path)}"):
            with run_lock(paths, grace_s=0.5):
                pass
    with run_lock(paths):  # released
        pass


def test_lock_released_after_an_error(tmp_path):
    paths = _paths(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with run_lock(paths):
            1 / 0
    with run_lock(paths):
        pass


def test_another_process_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    paths = _paths(tmp_path)
    lock = os.path.join(os.path.dirname(paths.metadata_path), ".run.lock")
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid())); f.flush(); "
         "print('held', flush=True); time.sleep(60)", lock],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError, match=f"pid {holder.pid}"):
            with run_lock(paths, grace_s=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(paths):  # the kernel dropped the dead process's lock
        pass


def test_busy_is_a_one_line_user_error():
    assert cli._user_error_code(RunBusyError("x")) == 1
