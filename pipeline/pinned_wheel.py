"""Files taken at run time from a sha256-pinned wheel on PyPI (never committed, never installed).

Used where the project needs the contents of a PyPI package it must not install or redistribute:
MovieLens-100K inside `recbole` (licence: no redistribution) and TF Serving's BatchingParameters /
MonitoringConfig protos inside `min-tfs-client` (installing it would overwrite the `tensorflow`
and `tensorflow_serving` packages). The wheel is fetched with `python -m pip download` (so pip's
index configuration applies) or taken from a local copy named by an environment variable for
offline machines; either way its sha256 must match the pin.
"""
from __future__ import annotations

import os
import subprocess
import sys

from pinrank.pipeline.artifacts import sha256_file

CACHE_ENV = "PINRANK_CACHE"


class PinnedWheelError(RuntimeError):
    """The wheel could not be obtained or does not match its pinned sha256."""


def cache_root(cache_dir: str = "") -> str:
    """Where unpacked wheel contents are cached: `cache_dir`, else $PINRANK_CACHE, else
    ~/.cache/pinrank."""
    return os.path.abspath(os.path.expanduser(
        cache_dir or os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "pinrank")))


def obtain(requirement: str, filename: str, sha256: str, env_var: str, tmp_dir: str) -> str:
    """Path of the verified wheel `filename` (`requirement` is e.g. "recbole==1.2.1").

    `$env_var` names a local copy (offline use); otherwise the wheel is downloaded into
    `tmp_dir`. Raises PinnedWheelError naming the command, its output tail and the override."""
    local = os.environ.get(env_var)
    if local:
        if not os.path.isfile(local):
            raise PinnedWheelError(f"{env_var}={local}: no such file")
        wheel = local
    else:
        cmd = [sys.executable, "-m", "pip", "download", requirement, "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "--no-input", "-d", tmp_dir]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise PinnedWheelError(f"`{' '.join(cmd)}` timed out after 600 s") from None
        wheel = os.path.join(tmp_dir, filename)
        if proc.returncode != 0 or not os.path.isfile(wheel):
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
            raise PinnedWheelError(
                f"could not download {filename} with `{' '.join(cmd)}` (exit {proc.returncode}):"
                f"\n{tail}\nOffline? Set {env_var} to a downloaded copy of the wheel.")

    digest = sha256_file(wheel)
    if digest != sha256:
        raise PinnedWheelError(f"{wheel}: sha256 {digest} does not match the pinned {sha256} "
                               f"for {filename}; refusing to use it")
    return wheel
