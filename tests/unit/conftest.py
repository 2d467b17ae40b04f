"""A real redis-server for the tests that claim Redis (never a mock): each server runs on a free
loopback port in a temporary directory, without persistence, and is stopped afterwards.

Without the `redis-server` binary those tests skip with the reason, unless
PINRANK_REQUIRE_REDIS=1 (set by .ci/run), where they fail."""
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

REDIS_BINARY = "redis-server"


class RedisServer:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pinrank-redis-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [shutil.which(REDIS_BINARY), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _require_binary() -> None:
    if shutil.which(REDIS_BINARY) is None:
        msg = (f"{REDIS_BINARY} not on PATH (apt-get install redis-server, or `make redis` "
               f"for the project's script)")
        if os.environ.get("PINRANK_REQUIRE_REDIS") == "1":
            pytest.fail(msg + "; PINRANK_REQUIRE_REDIS=1 makes this an error")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def redis_server():
    """One server for the session; use `redis_url` for a flushed database per test."""
    _require_binary()
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def own_redis_server():
    """A server of the test's own, which the test may stop."""
    _require_binary()
    server = RedisServer().start()
    yield server
    server.cleanup()
