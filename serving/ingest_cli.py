"""`ingest` sub-command (wired into the `pinrank` CLI via add_subcommands; serving/ingest.py
does the work and is imported only when the command runs, so building the parser stays fast).

  pinrank ingest --store sqlite:///runs/actions.db --file events.jsonl [--until TS] [--items DIR]
  pinrank ingest --store redis://127.0.0.1:6379/0 --redis-stream redis://127.0.0.1:6379/0 \
      --stream pinrank-events [--group G] [--consumer C] [--block-ms N] [--max-events N]

Prints one summary line (read, added, duplicate, stale, trimmed, skipped, invalid by problem);
--json prints the counts as JSON instead. Usage errors exit 2, an unreachable store or stream
and a missing or unreadable input file exit 1, an interrupt (Ctrl-C) prints the counts so far
and exits 130.
"""
from __future__ import annotations

import json
import sys

STREAM_ONLY = ("group", "consumer", "block_ms", "max_events")


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest", help="replay or consume events into the realtime action store",
        description="Validates canonical events (a JSON-lines/CSV/parquet file, stdin, or a "
                    "Redis Stream through a consumer group) with the batch reader's rules and "
                    "appends the valid ones to the action store; invalid events are counted "
                    "and logged, never fatal.")
    p.add_argument("--store", required=True, metavar="URL",
                   help="action store: sqlite:///PATH.db or redis://HOST:PORT/DB")
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


def cmd_ingest(args) -> int:
    import logging

    _check_args(args)
    from serving import action_store as S
    from serving import ingest as I

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
