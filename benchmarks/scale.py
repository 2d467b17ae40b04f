"""The whole pipeline at 1M and 10M synthetic events: wall, peak memory, per-component time,
and how each grows with the events (Beam's DirectRunner in multi-process mode).

  python benchmarks/scale.py run --events 1000000 10000000 --out runs/scale.json
  python benchmarks/scale.py run --events 20000 --preset tiny --workers 2 --out runs/scale-smoke.json
  python benchmarks/scale.py report runs/scale.json [more.json ...]   # re-print (and merge)

For each target event count the synthetic world gets `data.num_users = round(events /
data.events_per_user)` (events_per_user, items, interests and the rest as the preset and `--set`
leave them; `--source synthetic` whatever the preset's source). Events are the engagements, not
the bare impressions (components/data/synthetic.py): a user's activity is lognormal with mean
events_per_user, so the actual count is near the target, not on it, and impressions (every shown
candidate, ~2.5x the events) come on top. The table reports the counts DatasetGen recorded on its
EventLog artifact in MLMD (`events`, `impressions`, `users`, `items`).

Each size is one `pinrank run` in a subprocess with `--beam-arg=--direct_running_mode=MODE
--beam-arg=--direct_num_workers=N` (`--mode`, default multi_processing; `--workers`), in a
fresh home `<--home>/e<events>` (so nothing is cached; a home this script made before is
wiped, any other existing one is refused).
Measured:
  wall            the subprocess, start to exit (Python start-up and imports included)
  peak tree RSS   the peak over time of the summed RSS of the process and all its live
                  descendants (Beam workers included), sampled every --sample-s seconds; shared
                  pages count once per process, so this is an upper bound on the tree's footprint
  largest RSS     the largest RSS of one process at any sample
  <component> peak tree RSS
                  the largest summed RSS sampled while that component's execution ran (from
                  MLMD's times; components the DAG runs side by side share their samples)
  <component> s   each execution of the run's MLMD store (<home>/<name>/<data key>/
                  metadata.sqlite, pipeline/runs.py RunPaths), create_time -> last_update_time,
                  keyed by node id; an execution's create time is its registration by the
                  launcher, just before its executor starts
The exit code is recorded; a failed run keeps the last lines of its stderr (the whole output is
in <home>/e<events>/run.log) and the next size still runs. The last column of the table is the
last size over the first ("x smallest"): with 10x the events, 10x is linear.

Not a timed test: the JSON (written after every size) and the table, nothing asserted.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import psutil

MARKER = ".scale-bench"  # a home this script made (and may wipe)
COUNT_KEYS = ("events", "impressions", "users", "items")
EVENT_LOG_TYPE = "pinrank.EventLog"


# ------------------------------------------------------------------------------------ world size
def world_overrides(target_events: int, events_per_user: int) -> List[str]:
    """The `--set` overrides that give a synthetic world of about `target_events` events."""
    if target_events < 1 or events_per_user < 1:
        raise ValueError(f"events ({target_events}) and events_per_user ({events_per_user}) "
                         f"must be >= 1")
    return [f"data.num_users={max(1, round(target_events / events_per_user))}"]


def resolved_data(preset_name: str, sets: Sequence[str]):
    """The DataConfig the run will have (`--source synthetic` plus the user's --set)."""
    from pinrank.pipeline.config import apply_overrides, check_consistency, preset
    return check_consistency(apply_overrides(preset(preset_name, "synthetic"), list(sets))).data


def human(n: float) -> str:
    """20000 -> 20k, 1000000 -> 1M, 2500000 -> 2.5M."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


# ------------------------------------------------------------------------------------------ MLMD
def _store(path: str):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    conn = metadata_store_pb2.ConnectionConfig()
    conn.sqlite.filename_uri = path
    conn.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(conn)


def component_times(store) -> Dict[str, dict]:
    """{node id: {"s": seconds, "state": last state, "executions": n, "start_ms": first
    create time}} for the executions of the store's newest pipeline run (create_time ->
    last_update_time; several executions of one node are summed). Node ids come from each
    execution's `node` context, `<pipeline name>.<node id>`."""
    runs = store.get_contexts_by_type("pipeline_run")
    if runs:
        newest = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
        executions = store.get_executions_by_context(newest.id)
    else:
        executions = store.get_executions()
    node_of: Dict[int, str] = {}
    for ctx in store.get_contexts_by_type("node"):
        node = ctx.name.split(".", 1)[1] if "." in ctx.name else ctx.name
        for ex in store.get_executions_by_context(ctx.id):
            node_of[ex.id] = node
    out: Dict[str, dict] = {}
    for ex in sorted(executions, key=lambda e: (e.create_time_since_epoch, e.id)):
        node = node_of.get(ex.id) or ex.type or str(ex.type_id)
        row = out.setdefault(node, {"s": 0.0, "executions": 0,
                                    "start_ms": ex.create_time_since_epoch})
        row["s"] = round(row["s"] + (ex.last_update_time_since_epoch
                                     - ex.create_time_since_epoch) / 1e3, 3)
        row["executions"] += 1
        row["end_ms"] = ex.last_update_time_since_epoch
        row["state"] = ex.State.Name(ex.last_known_state)
    return out


def event_counts(store) -> Dict[str, int]:
    """The newest EventLog artifact's counts (DatasetGen's custom properties)."""
    arts = store.get_artifacts_by_type(EVENT_LOG_TYPE)  # [] before DatasetGen finished
    if not arts:
        return {}
    props = max(arts, key=lambda a: a.id).custom_properties
    return {k: int(props[k].int_value) for k in COUNT_KEYS if k in props}


def read_mlmd(path: Optional[str]) -> Tuple[Dict[str, dict], Dict[str, int]]:
    if not path or not os.path.exists(path):
        return {}, {}
    store = _store(path)
    return component_times(store), event_counts(store)


def component_peaks(components: Dict[str, dict], series: List[Tuple[float, int]]) -> None:
    """Add each component's `peak_tree_rss_mb`: the largest summed RSS sampled while its
    execution ran (create -> last update; a still-running one, to the last sample). Components
    overlap when the DAG runs them side by side, so a peak is the tree's, not the component's
    own; a component shorter than the sampling period may have no sample (None)."""
    end_of_run = series[-1][0] if series else 0
    for c in components.values():
        start = c.get("start_ms", 0)
        end = c.get("end_ms", end_of_run) if c.get("state") == "COMPLETE" else end_of_run
        inside = [rss for t, rss in series if start <= t <= end]
        c["peak_tree_rss_mb"] = round(max(inside) / 2**20, 1) if inside else None


def find_metadata(home: str, summary: Optional[dict]) -> Optional[str]:
    """The run's store: the summary's paths when the run finished, else the only one in home."""
    path = ((summary or {}).get("paths") or {}).get("metadata_path")
    if path and os.path.exists(path):
        return path
    found = sorted(glob.glob(os.path.join(home, "*", "*", "metadata.sqlite")))
    return found[-1] if found else None


# ----------------------------------------------------------------------------------- process tree
class TreeSampler:
    """Peak summed RSS of a process and its live descendants, and the largest single RSS."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak_tree = self.peak_single = 0
        self.max_procs = self.samples = 0
        self.series: List[Tuple[float, int]] = []  # (epoch ms, summed RSS), for component_peaks

    def sample(self) -> None:
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return
        rss = []
        for p in procs:
            try:
                rss.append(p.memory_info().rss)
            except psutil.Error:  # exited between listing and reading
                pass
        if rss:
            self.samples += 1
            self.peak_tree = max(self.peak_tree, sum(rss))
            self.peak_single = max(self.peak_single, max(rss))
            self.max_procs = max(self.max_procs, len(rss))
            self.series.append((time.time() * 1e3, sum(rss)))


def kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def prepare_home(home: str) -> None:
    if os.path.exists(home):
        if not os.path.exists(os.path.join(home, MARKER)):
            sys.exit(f"error: {home} exists and was not made by benchmarks/scale.py; "
                     f"move it away or choose another --home")
        shutil.rmtree(home)
    os.makedirs(home)
    open(os.path.join(home, MARKER), "w").close()


def run_size(target: int, args) -> dict:
    data = resolved_data(args.preset, args.set)
    sets = args.set + world_overrides(target, data.events_per_user)
    home = os.path.abspath(os.path.join(args.home, f"e{target}"))
    prepare_home(home)
    json_out = os.path.join(home, "summary.json")
    log = os.path.join(home, "run.log")
    cmd = [sys.executable, "-m", "pinrank.pipeline.cli", "run", "--preset", args.preset,
           "--source", "synthetic", "--home", home, "--json-out", json_out,
           f"--beam-arg=--direct_running_mode={args.mode}",
           f"--beam-arg=--direct_num_workers={args.workers}"]
    for s in sets:
        cmd += ["--set", s]
    print(f"[{time.strftime('%H:%M:%S')}] {human(target)} events: {' '.join(sets)} "
          f"(log {log})", flush=True)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    start = time.monotonic()
    with open(log, "wb") as out, open(log + ".stderr", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        sampler = TreeSampler(proc.pid)
        timed_out = False
        while proc.poll() is None:
            sampler.sample()
            if args.timeout and time.monotonic() - start > args.timeout:
                kill_tree(proc.pid)
                timed_out = True
                proc.wait()
                break
            time.sleep(args.sample_s)
    wall = time.monotonic() - start
    summary = None
    if os.path.exists(json_out):
        with open(json_out) as fh:
            summary = json.load(fh)
    mlmd_path = find_metadata(home, summary)
    components, counts = read_mlmd(mlmd_path)
    component_peaks(components, sampler.series)
    row = {"target_events": target, "preset": args.preset, "set": sets,
           "workers": args.workers, "mode": args.mode, "home": home, "metadata_path": mlmd_path,
           "started_at": started_at, "cpus": os.cpu_count(),
           "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
           "returncode": proc.returncode, "timed_out": timed_out, "wall_s": round(wall, 1),
           "peak_tree_rss_mb": round(sampler.peak_tree / 2**20, 1),
           "peak_process_rss_mb": round(sampler.peak_single / 2**20, 1),
           "max_processes": sampler.max_procs, "rss_samples": sampler.samples,
           "counts": counts, "components": components,
           "pipeline_wall_s": (summary or {}).get("wall_s")}
    if proc.returncode != 0:
        with open(log + ".stderr", errors="replace") as fh:
            row["stderr_tail"] = fh.read().splitlines()[-args.tail:]
    return row


def cmd_run(args) -> int:
    results: List[dict] = []
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for target in args.events:
        row = run_size(target, args)
        results.append(row)
        with open(args.out, "w") as fh:  # after every size: a stopped sweep keeps what it has
            json.dump(results, fh, indent=2)
        state = "ok" if row["returncode"] == 0 else f"FAILED (exit {row['returncode']})"
        print(f"  {state}, {row['wall_s']} s, peak tree RSS {row['peak_tree_rss_mb']} MB",
              flush=True)
        for line in row.get("stderr_tail", [])[-5:]:
            print(f"    {line}")
    print(render_table(results))
    return 0 if all(r["returncode"] == 0 for r in results) else 1


# ----------------------------------------------------------------------------------------- table
def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.1f}"


def _ratio(first, last) -> str:
    if first in (None, 0) or last is None:
        return "-"
    return f"{last / first:.2f}x"


def table_rows(results: List[dict]) -> List[Tuple[str, list, List[str]]]:
    """(label, one value per run, one mark per run) in table order: counts, wall, memory, then
    the components in the order they ran (first appearance over the runs). A component's mark
    is "!" when its execution did not end COMPLETE (a failed, killed or cached one)."""
    def plain(label, values):
        return (label, values, [""] * len(results))

    rows = [
        plain("exit code", [r["returncode"] for r in results]),
        *[plain(k, [r.get("counts", {}).get(k) for r in results]) for k in COUNT_KEYS],
        plain("wall s", [r["wall_s"] for r in results]),
        plain("peak tree RSS MB", [r["peak_tree_rss_mb"] for r in results]),
        plain("largest process RSS MB", [r["peak_process_rss_mb"] for r in results]),
        plain("processes (max)", [r.get("max_processes") for r in results]),
        plain("components, sum s", [round(sum(c["s"] for c in r["components"].values()), 1)
                                    if r.get("components") else None for r in results]),
    ]
    order: Dict[str, tuple] = {}
    for i, r in enumerate(results):
        for node, c in r.get("components", {}).items():
            order.setdefault(node, (i, c.get("start_ms", 0)))
    for node in sorted(order, key=lambda n: order[n]):
        cells = [r.get("components", {}).get(node, {}) for r in results]
        rows.append((f"{node} s", [c.get("s") for c in cells],
                     ["!" if c and c.get("state", "COMPLETE") != "COMPLETE" else ""
                      for c in cells]))
    for node in sorted(order, key=lambda n: order[n]):  # memory while each component ran
        values = [r.get("components", {}).get(node, {}).get("peak_tree_rss_mb") for r in results]
        if any(v is not None for v in values):
            rows.append(plain(f"{node} peak tree RSS MB", values))
    return rows


def column_names(results: List[dict]) -> List[str]:
    names: List[str] = []
    for r in results:
        name = human(r["target_events"])
        if r.get("preset") not in (None, "cpu"):
            name += f" {r['preset']}"
        while name in names:
            name += "'"
        names.append(name)
    return names


def render_table(results: List[dict]) -> str:
    if not results:
        return "(no runs)"
    names = column_names(results)
    ratio = len(results) > 1
    head = ["target events"] + names + ([f"x {names[0]}"] if ratio else [])
    body = []
    marked = False
    for label, values, marks in table_rows(results):
        cells = [label] + [_fmt(v) + m for v, m in zip(values, marks)]
        marked = marked or any(marks)
        if ratio:
            cells.append("" if label in ("exit code", "processes (max)")
                         else _ratio(values[0], values[-1]))
        body.append(cells)
    width0 = max(len(c[0]) for c in [head] + body)
    widths = [max(len(c[i]) for c in [head] + body) for i in range(1, len(head))]
    fmt_line = lambda cells: (f"{cells[0]:<{width0}}" + "".join(  # noqa: E731
        f"  {c:>{w}}" for c, w in zip(cells[1:], widths)))
    lines = [fmt_line(head), "-" * len(fmt_line(head))] + [fmt_line(c) for c in body]
    r0 = results[0]
    lines.append(f"\npreset {r0.get('preset')}, DirectRunner "
                 f"{r0.get('mode', 'multi_processing')} with "
                 f"{r0.get('workers')} workers, {r0.get('cpus', '?')} CPUs, "
                 f"{r0.get('memory_gb', '?')} GB; wall = the `pinrank run` subprocess; RSS summed "
                 f"over the process tree (shared pages once per process)")
    if marked:
        lines.append("!: the execution did not end COMPLETE (failed, killed while running, or "
                     "cached): its time is not the component's")
    if ratio:
        lines.append(f"x {names[0]}: the last column ({names[-1]}) over the first")
    for name, r in zip(names, results):
        if r["returncode"] != 0:
            lines.append(f"{name}: FAILED (exit {r['returncode']}"
                         f"{', timed out' if r.get('timed_out') else ''}): "
                         + " | ".join(r.get("stderr_tail", [])[-3:]))
    return "\n".join(lines)


def load(paths: Sequence[str]) -> List[dict]:
    results: List[dict] = []
    for p in paths:
        with open(p) as fh:
            data = json.load(fh)
        results += data if isinstance(data, list) else [data]
    return sorted(results, key=lambda r: r["target_events"])


def cmd_report(args) -> int:
    results = load(args.files)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)
    print(render_table(results))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="one pipeline run per event count, then the table")
    p.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000],
                   help="target event counts (default 1M 10M)")
    p.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "paper"])
    p.add_argument("--home", default="runs/scale", help="each size runs in <home>/e<events>")
    p.add_argument("--workers", type=int, default=2, help="--direct_num_workers")
    # in_memory with 1 worker is the pipeline's default (pipeline/runs.py DEFAULT_BEAM_ARGS).
    # At 1M events Beam 2.59's multi_processing runner handed RankingExampleGen's join
    # incomplete groups (docs/status.md, "Session 12: a runner fault at 1M events, eval days no
    # longer embedded"), so it is not the only mode measured.
    p.add_argument("--mode", default="multi_processing",
                   choices=["multi_processing", "multi_threading", "in_memory"],
                   help="--direct_running_mode")
    p.add_argument("--set", action="append", default=[], help="config override PATH=VALUE")
    p.add_argument("--out", default="runs/scale.json")
    p.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling period")
    p.add_argument("--timeout", type=float, default=0, help="kill a run after this many s (0: "
                                                            "never)")
    p.add_argument("--tail", type=int, default=20, help="stderr lines kept of a failed run")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="re-print the table from result files (merged)")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", help="also write the merged results here")
    p.set_defaults(func=cmd_report)
    args = ap.parse_args(argv)
    if args.command == "run":
        args.events = sorted(args.events)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
