"""Serving under load across a version swap: C client threads x N Predict requests each over
loopback gRPC against the local TF-Serving stand-in, alternating embed (pinnerformer embed_raw,
8 users) and rank (ranker rank, 1 request x 50 candidates), while a new version of both models is
pushed (a third of the way) and the old one removed (two thirds of the way).

  python benchmarks/serving_load.py [--clients 8] [--requests 500] [--in-process]

Models: the toy SavedModels of serving/testing.py (real SavedModels with the serving contract,
small, so the figures measure the server and the swap, not the model). The server runs in its
own process (`python -m pinrank.serving.local_server`, as `pinrank serve` does) unless --in-process, so
clients and server do not share a GIL. Clients do not retry: every non-OK status is a failure.
Prints requests, failures and p50/p99 latency per kind, and the versions served around the
swap; exits 1 on any failed request or a request started after the swap that the old version
answered. tests/unit/test_serving_load.py runs the same load, smaller, in the test suite.
"""
from __future__ import annotations

import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Optional

from pinrank.serving import constants as C
from pinrank.serving import testing as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V1, V2 = 1_700_000_000, 1_700_000_100


class _Server:
    def __init__(self, model_base_path: str, in_process: bool):
        self.proc: Optional[subprocess.Popen] = None
        self.handle = None
        if in_process:
            from pinrank.serving import local_server as LS
            self.handle = LS.serve(model_base_path=model_base_path, port=0,
                                   file_system_poll_wait_seconds=0.1)
            self.target = self.handle.target
            return
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pinrank.serving.local_server", "--model_base_path", model_base_path,
             "--port", "0", "--file_system_poll_wait_seconds", "0.1"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines: "queue.Queue[str]" = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout],  # type: ignore
                         daemon=True).start()
        line = lines.get(timeout=120)
        print(line.strip())
        self.target = line.split("listening on ")[1].split()[0]

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop(grace=None)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=500, help="per client")
    p.add_argument("--in-process", action="store_true",
                   help="run the server in this process (shares the GIL with the clients)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pinrank-load-") as tmp:
        store = {k: os.path.join(tmp, "store", k) for k in ("pf1", "pf2", "rk1", "rk2")}
        T.save_toy_pinnerformer(store["pf1"], 1.0)
        T.save_toy_pinnerformer(store["pf2"], 2.0)
        T.save_toy_ranker(store["rk1"], 1.0)
        T.save_toy_ranker(store["rk2"], 2.0)
        base = os.path.join(tmp, "serving")
        T.push_version(store["pf1"], os.path.join(base, C.PINNERFORMER), V1)
        T.push_version(store["rk1"], os.path.join(base, C.RANKER), V1)
        server = _Server(base, args.in_process)
        try:
            def push_v2():
                T.push_version(store["pf2"], os.path.join(base, C.PINNERFORMER), V2)
                T.push_version(store["rk2"], os.path.join(base, C.RANKER), V2)
                for m in C.MODEL_NAMES:
                    T.wait_for_versions(server.target, m, [V2])

            def remove_v1():
                for m in C.MODEL_NAMES:
                    shutil.rmtree(os.path.join(base, m, str(V1)))
                for m in C.MODEL_NAMES:
                    T.wait_for_versions(server.target, m, [V2], gone=[V1])

            result = T.run_load(server.target, args.clients, args.requests,
                                events=[(1 / 3, push_v2), (2 / 3, remove_v1)])
        finally:
            server.stop()
    swapped, removed = result.event_done_s
    print(f"{args.clients} clients x {args.requests} requests "
          f"({'in-process' if args.in_process else 'separate'} server, no retries); "
          f"v2 live at {swapped:.1f} s, v1 removed at {removed:.1f} s")
    print(result.summary())
    stale = 0
    for kind in ("embed", "rank"):
        before = result.versions_started_after(0.0, kind)
        after = [v for v in result.versions_started_after(swapped, kind) if v is not None]
        stale += sum(v != V2 for v in after)
        print(f"{kind:>6}: v1 answered {before.count(V1)}, v2 answered {before.count(V2)}; "
              f"started after the swap: {len(after)}, answered by v1: "
              f"{sum(v != V2 for v in after)}")
    for f in result.failures[:5]:
        print("failed:", f)
    return 1 if result.failures or stale else 0


if __name__ == "__main__":
    sys.exit(main())
