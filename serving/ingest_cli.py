"""Sub-commands that write the action store (wired into the `pinrank` CLI via add_subcommands;
serving/ingest.py and serving/action_store.py do the work and are imported only when a command
runs, so building the parser stays fast): `ingest`, and the privacy commands `forget-user` and
`purge` (docs/privacy.md).

  pinrank ingest --store sqlite:///runs/actions.db --file events.jsonl [--until TS] [--items DIR]
  pinrank ingest --store redis://127.0.0.1:6379/0 --redis-stream redis://127.0.0.1:6379/0 \
      --stream pinrank-events [--group G] [--consumer C] [--block-ms N] [--max-events N]

  pinrank forget-user --store URL --user ID     # every action, seen item and snapshot row
  pinrank purge --store URL [--set online.retention_days=N] [--now-ts TS]   # retention

Each prints one summary line (ingest: read, added, duplicate, stale, trimmed, skipped, invalid
by problem; forget-user and purge: what was removed); --json prints the counts as JSON instead.
Usage errors exit 2, an unreachable store or stream and a missing or unreadable input file exit
1, an interrupt of ingest (Ctrl-C) prints the counts so far and exits 130.
"""
from __future__ import annotations

import json
import sys

STREAM_ONLY = ("group", "consumer", "block_ms", "max_events")


def _store_arg(p) -> None:
    p.add_argument("--store", required=True, metavar="URL",
                   help="action store: sqlite:///PATH.db or redis://HOST:PORT/DB")


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest", help="replay or consume events into the realtime action store",
        description="Validates canonical events (a JSON-lines/CSV/parquet file, stdin, or a "
                    "Redis Stream through a consumer group) with the batch reader's rules and "
                    "appends the valid ones to the action store; invalid events are counted "
                    "and logged, never fatal.")
    _store_arg(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", metavar="PATH", help="event file (.jsonl/.csv/.parquet) or - "
                                                    "for JSON lines on stdin")
    src.add_argument("--redis-stream", metavar="URL", help="Redis holding the event stream")
    p.add_argument("--format", choices=["auto", "jsonl", "csv", "parquet"], default="auto",
                   help="file format (default: from the extension; stdin: jsonl)")
    p.add_argument("--stream", help="stream key (with --redis-stream)")
    p.add_argument("--group", help="consumer group (default: pinrank-ingest)")
    p.add_argument("--consumer", help="consumer name in the group (default: ingest-1)")
    p.add_argument("--block-ms", type=int, dest="block_ms",
                   help="stop after a read that waited this long for nothing (default: wait "
                        "for events until interrupted)")
    p.add_argument("--max-events", type=int, dest="max_events",
                   help="stop after reading this many stream entries")
    p.add_argument("--until", type=int, metavar="TS",
                   help="skip events at or after this time (unix s)")
    p.add_argument("--items", metavar="DIR_OR_ITEMS_PARQUET",
                   help="check item ids against this dataset's item table")
    p.add_argument("--capacity", type=int,
                   help="actions kept per user (default: max of PinnerFormer's M, the "
                        "ranker's P and ranking.max_history in the default config)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=cmd_ingest)

    p = subparsers.add_parser(
        "forget-user", help="delete one user's data from the action store (actions, seen "
                            "items, every snapshot version)",
        description="Deletes everything the action store holds under one user id, atomically, "
                    "and prints what was removed; running it again removes nothing. The batch "
                    "data is data.suppressed_users' job (docs/privacy.md).")
    _store_arg(p)
    p.add_argument("--user", required=True, help="the user id")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=cmd_forget_user)

    from pinrank.pipeline.config_args import add_config_args

    p = subparsers.add_parser(
        "purge", help="retention: delete actions older than online.retention_days",
        description="Deletes from the action store every action older than "
                    "online.retention_days before --now-ts (default: now); a user left with "
                    "nothing is removed whole, and expired events sent again are not stored "
                    "(ActionStore.purge_before).")
    _store_arg(p)
    p.add_argument("--now-ts", type=int, help="the time the retention counts back from "
                                              "(default: now)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    add_config_args(p)
    p.set_defaults(func=cmd_purge)


def _check_args(args) -> None:
    if args.redis_stream and not args.stream:
        raise SystemExit("pinrank ingest: --redis-stream needs --stream NAME")
    if args.file is not None:
        given = [f"--{n.replace('_', '-')}" for n in STREAM_ONLY + ("stream",)
                 if getattr(args, n) is not None]
        if given:
            raise SystemExit(f"pinrank ingest: {', '.join(given)} only apply to --redis-stream")
    for name in ("block_ms", "max_events", "capacity"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise SystemExit(f"pinrank ingest: --{name.replace('_', '-')} must be >= 1, got {v}")


def _stop_on_sigterm():
    """SIGTERM (docker stop, Kubernetes) ends the consumer like Ctrl-C: counts, then exit.
    Returns the function that restores the previous handler."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, old)


def _open(url: str):
    """The store, or exit 1 (unreachable, one line) / 2 (a malformed URL: usage)."""
    from pinrank.serving import action_store as S

    try:
        return S.open_store(url)
    except S.StoreUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except S.StoreError as e:
        raise SystemExit(str(e)) from None


def _report(args, counts: dict, line: str) -> None:
    if args.json:
        json.dump(counts, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(line)


def cmd_forget_user(args) -> int:
    from pinrank.serving.action_store import StoreUnavailableError, mask_url

    if not args.user.strip():
        raise SystemExit("pinrank forget-user: --user must not be empty")
    store = _open(args.store)
    try:
        counts = store.forget_user(args.user)
    except StoreUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    _report(args, {"user": args.user, **counts},
            f"forget-user {args.user} in {mask_url(args.store)}: removed {counts['actions']} "
            f"actions, {counts['seen']} seen items, {counts['snapshot_rows']} snapshot rows")
    return 0


def cmd_purge(args) -> int:
    import datetime
    import time

    from pinrank.pipeline.config import DAY_S
    from pinrank.pipeline.config_args import config_from_args
    from pinrank.serving.action_store import StoreUnavailableError, mask_url

    days = config_from_args(args).online.retention_days  # a config error: exit 2, store untouched
    now = int(time.time()) if args.now_ts is None else args.now_ts
    cutoff = now - days * DAY_S
    store = _open(args.store)
    try:
        counts = store.purge_before(cutoff)
    except StoreUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    when = datetime.datetime.fromtimestamp(cutoff, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    _report(args, {"retention_days": days, "cutoff_ts": cutoff, **counts},
            f"purge {mask_url(args.store)}: actions before {when} ({days} days): removed "
            f"{counts['actions']} actions, {counts['seen']} seen items, {counts['users']} users")
    return 0


def cmd_ingest(args) -> int:
    import logging

    _check_args(args)
    from pinrank.serving import action_store as S
    from pinrank.serving import ingest as I

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    known = I.known_item_ids(args.items)  # a bad item table: exit 1 before anything is read
    try:
        store = S.open_store(args.store, capacity=args.capacity)
    except S.StoreUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except S.StoreError as e:
        raise SystemExit(str(e)) from None
    restore = _stop_on_sigterm()
    try:
        if args.file is not None:
            try:
                stats = I.ingest_file(args.file, store, fmt=args.format, known_items=known,
                                      until=args.until)
            except I.IngestUsageError as e:
                raise SystemExit(f"pinrank ingest: {e}") from None
        else:
            stats = I.ingest_redis_stream(
                args.redis_stream, args.stream, store, group=args.group or I.DEFAULT_GROUP,
                consumer=args.consumer or I.DEFAULT_CONSUMER, block_ms=args.block_ms,
                max_events=args.max_events, known_items=known, until=args.until)
    except S.StoreError as e:  # store or stream down, the stream key not a stream
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        restore()
        store.close()
    if args.json:
        json.dump(stats.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(stats.summary())
    return 130 if stats.interrupted else 0
