"""`pinrank` command line: run the pipeline, prepare data, compile for Vertex, serve, query,
run the daily user-embedding pipeline.

User errors are one line on stderr, `error: <what and where>`, without a traceback: a bad config
or usage exits 2 (before TensorFlow is imported), bad data or a missing input file exits 1.
`pinrank --debug ...` re-raises them with the traceback.

One flag per concept in every command: --user (repeatable where several are allowed), --data
(canonical dataset dir; --data-path is the raw MovieLens-format input of --source path),
--target (TF Serving host:port), --json (JSON on stdout), --json-out FILE, --out (what the
command writes), --now-ts (the request's time: history strictly before it) and --as-of (the
daily snapshot's cut-off, which also names it)."""
from __future__ import annotations

import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import json
import sys
from typing import Dict, List, Optional, Tuple

from pinrank.pipeline import config_args

DIST_NAME = "pinrank"  # [project] name in pyproject.toml
# Commands that need nothing from serving/: their parser is built without it (no grpc/numpy
# import), so a config error is reported in well under 2 s.
CORE_COMMANDS = ("run", "data", "compile", "config", "embed-pipeline", "compile-embed-pipeline")


# Renamed flags: the old spelling still works, with a note on stderr, and is not in --help.
# Rewritten before parsing, not a hidden second argparse option: argparse would then report a
# required flag given by its old name as missing.
RENAMED_FLAGS: Dict[Tuple[str, ...], Dict[str, str]] = {
    ("query", "embed"): {"--events": "--data", "--user-id": "--user"},
    ("query", "rank"): {"--events": "--data", "--user-id": "--user"},
    ("compile",): {"--dataset-dir": "--data", "--output": "--out"}}


def renamed_flags(argv: List[str]) -> List[str]:
    """argv with the old spellings of RENAMED_FLAGS (`--old v`, `--old=v`) replaced."""
    words: List[str] = []  # the sub-command path: the words before its first option
    for a in argv:
        if a.startswith("-"):
            if words:
                break
        else:
            words.append(a)
    renames = RENAMED_FLAGS.get(tuple(words[:2]), RENAMED_FLAGS.get(tuple(words[:1]), {}))
    out, noted = [], set()
    for a in argv:
        old, eq, value = a.partition("=")
        if old in renames:
            if old not in noted:
                print(f"pinrank: {old} is deprecated, use {renames[old]}", file=sys.stderr)
                noted.add(old)
            a = renames[old] + eq + value
        out.append(a)
    return out


_config = config_args.config_from_args
_add_config_args = config_args.add_config_args


def _check_inputs(cfg) -> None:
    """Missing input files fail here, in a second, not after the TensorFlow import."""
    if cfg.data.source == "path":
        from pinrank.components.data.sources import path_inputs
        path_inputs(cfg.data)


def cmd_run(args) -> int:
    cfg = _config(args)  # first: a config error must not wait for TensorFlow
    _check_inputs(cfg)
    from pinrank.pipeline import local_runner
    from pinrank.pipeline.runs import DEFAULT_BEAM_ARGS
    summary = local_runner.run(cfg, args.home, args.beam_arg or list(DEFAULT_BEAM_ARGS),
                               enable_cache=not args.no_cache)
    ev = summary.get("evaluation", {})
    m = ev.get("candidate", {})
    k, ek = cfg.eval.k, cfg.eval.entropy_k
    print("\n== pinrank run summary ==")
    print(f"preset={cfg.preset} source={cfg.data.source} objective={cfg.model.objective}")
    for key in (f"recall@{k}", f"p90_coverage@{k}", f"interest_entropy@{ek}"):
        if key in m:
            print(f"{key:>22}: {m[key]:.4f}")
    for name, row in (ev.get("comparison") or {}).items():
        if name != "candidate" and row.get("lift") is not None:
            lo, hi = row["lift_interval"]
            print(f"{'vs ' + name:>22}: recall@{k} {row['mean']:.4f}, candidate's lift "
                  f"{row['lift']:+.1%} [{lo:+.1%}, {hi:+.1%}]")
    gate = ev.get("gate", {})
    print(f"{'blessed':>22}: {gate.get('blessed')}  {'; '.join(gate.get('reasons', []))}")
    print(f"{'pushed':>22}: {summary.get('pushed')} -> {summary.get('pushed_destination', '-')}")
    print(f"{'report':>22}: {summary.get('evaluation_uri', '-')}/summary.html")
    ranker = summary.get("ranker")
    if ranker:
        print("-- ranker (TFMA, eval split, per head) --")
        for head, vals in ranker["overall"].items():
            print(f"{head:>22}: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(vals.items())))
        check = ranker.get("baseline_check")
        if check:
            for name, vals in check["methods"].items():
                if name != "candidate":
                    print(f"{name:>22}: " + "  ".join(f"{k}/repin={v:.4f}"
                                                      for k, v in sorted(vals.items())))
            print(f"{'TFMA thresholds pass':>22}: {ranker['validation_ok']}")
            print(f"{'blessed':>22}: {check['gate']['blessed']}  "
                  f"{'; '.join(check['gate']['reasons'])}")
        else:
            print(f"{'blessed':>22}: {ranker['validation_ok']}")
        print(f"{'pushed':>22}: {ranker['pushed']} -> {ranker.get('pushed_destination', '-')}")
    _print_data_counts(summary.get("fallbacks", {}), dropped=summary.get("dropped"),
                       suppressed=summary.get("suppressed"))
    print(f"{'wall time':>22}: {summary['wall_s']} s")
    print(f"{'peak memory':>22}: {summary['peak_rss_mb']} MB")
    _write_json(args.json_out, summary)
    return 0


def _write_json(path: Optional[str], summary: dict) -> None:
    """--json-out: the summary as JSON, for scripts."""
    if path:
        with open(path, "w") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)


def _print_data_counts(fallbacks: dict, file=None, dropped: Optional[dict] = None,
                       suppressed: Optional[dict] = None) -> None:
    """One line per feature that fell back to "unknown" for some items, per kind of bad row
    dropped at ingestion, and the rows of data.suppressed_users removed (DATASET.json)."""
    for name, fb in fallbacks.items():
        if fb.get("count"):
            print(f"{'fallbacks':>22}: {name} {fb['count']:,} of {fb['of']:,} items", file=file)
    for name, n in (dropped or {}).items():
        print(f"{'dropped rows':>22}: {n:,} ({name})", file=file)
    if suppressed:
        print(f"{'suppressed users':>22}: {suppressed['users']:,} ({suppressed['events']:,} "
              f"events, {suppressed['impressions']:,} impressions removed)", file=file)


def cmd_data(args) -> int:
    cfg = _config(args)  # prepare_dataset checks the input files itself (no TensorFlow here)
    from pinrank.components.data.events import read_dataset_manifest
    from pinrank.components.data.sources import prepare_dataset
    path = prepare_dataset(cfg.data, args.out, drop_invalid=cfg.examples.drop_invalid_events)
    manifest = read_dataset_manifest(path)
    _print_data_counts(manifest.get("fallbacks", {}), file=sys.stderr,
                     dropped=manifest.get("counts", {}).get("dropped"),
                     suppressed=manifest.get("counts", {}).get("suppressed"))
    print(path)
    return 0


def cmd_online_demo(args) -> int:
    cfg = _config(args)
    import logging

    from pinrank.pipeline import online_demo
    from pinrank.serving.recs_cli import format_recommendations
    from pinrank.serving.service import Recommendations

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = online_demo.run(cfg, args.home, user=args.user, k=args.k)
    print("\n== online: store -> snapshot -> retrieve -> rank ==")
    print(format_recommendations(Recommendations(**out["recommendations"])))
    return 0


def cmd_compile(args) -> int:
    cfg = _config(args)
    from pinrank.pipeline import kubeflow_v2_runner as kfv2  # TensorFlow only inside compile_pipeline
    fingerprint = kfv2.dataset_fingerprint_for(args.data, args.dataset_fingerprint)
    out = kfv2.compile_pipeline(cfg, pipeline_root=args.pipeline_root,
                                dataset_dir=args.data, dataset_fingerprint=fingerprint,
                                serving_dir=args.serving_dir, output_path=args.out,
                                image=args.image, schema_path=args.schema_path,
                                ranker_schema_path=args.ranker_schema_path,
                                site_packages=args.image_site_packages or kfv2.IMAGE_SITE_PACKAGES)
    print(out)
    return 0


def cmd_embed_pipeline(args) -> int:
    cfg = _config(args)
    from pinrank.pipeline import embedding_runner
    from pinrank.pipeline.runs import DEFAULT_BEAM_ARGS
    summary = embedding_runner.run(cfg, args.home, args.as_of, snapshot_root=args.snapshot_root,
                                   beam_args=args.beam_arg or list(DEFAULT_BEAM_ARGS),
                                   enable_cache=not args.no_cache, overwrite=args.overwrite)
    print("\n== pinrank embed-pipeline summary ==")
    print(f"{'snapshot':>22}: {summary['snapshot']}")
    print(f"{'as of':>22}: {summary['as_of']}")
    counts = summary["counts"]
    print(f"{'users':>22}: {counts['total']} ({counts['embedded']} embedded, "
          f"{counts['carried']} carried{', full refresh' if summary['full_refresh'] else ''})")
    print(f"{'model':>22}: {summary['model_uri']} (MLMD artifact {summary['model_artifact_id']}, "
          f"fingerprint {summary['model_fingerprint']})")
    print(f"{'execution':>22}: {summary['execution_id']} {summary['execution_state']}")
    print(f"{'wall time':>22}: {summary['wall_s']} s")
    _write_json(args.json_out, summary)
    return 0


def cmd_compile_embed_pipeline(args) -> int:
    cfg = _config(args)
    from pinrank.pipeline import kubeflow_v2_runner as kfv2  # TensorFlow only inside compile
    fingerprint = kfv2.dataset_fingerprint_for(args.data, args.dataset_fingerprint)
    print(kfv2.compile_embedding_pipeline(
        cfg, pipeline_root=args.pipeline_root, dataset_dir=args.data,
        dataset_fingerprint=fingerprint, snapshot_root=args.snapshot_root, output_path=args.out,
        as_of=args.as_of, image=args.image))
    return 0


def cmd_config_show(args) -> int:
    cfg = _config(args)
    json.dump(cfg.to_dict(), sys.stdout, indent=2)  # declaration order: sections as in the tree
    sys.stdout.write("\n")
    return 0


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, `error: <prog>: <message>`, exit 2 (not the usage block)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


class _VersionAction(argparse.Action):
    """--version: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib import metadata
        try:
            version = metadata.version(DIST_NAME)
        except metadata.PackageNotFoundError:
            version = "unknown (not installed: pip install -e .)"
        print(f"{parser.prog} {version}")
        parser.exit(0)


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """--debug before or after the sub-command (pinrank --debug run ... / pinrank run ... --debug)."""
    parser.add_argument("--debug", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="show the traceback of a user error instead of one line")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in {id(p): p for p in action.choices.values()}.values():
                _add_debug_flag(sp, top=False)


def build_parser(serving: bool = True) -> argparse.ArgumentParser:
    """serving=False leaves out the serve/query/embed-users/recommend/ingest sub-commands
    (faster)."""
    parser = _Parser(prog="pinrank", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the whole pipeline with LocalDagRunner")
    _add_config_args(p)
    p.add_argument("--home", default=os.environ.get("PINRANK_HOME", "runs"),
                   help="where data, pipeline root, MLMD and the serving dir live")
    p.add_argument("--beam-arg", action="append", default=[], help="extra Beam pipeline arg")
    p.add_argument("--no-cache", action="store_true", help="re-run every component")
    p.add_argument("--json-out", help="also write the summary as JSON here")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("data", help="fetch/generate and validate a data set, print its path")
    _add_config_args(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("online-demo", help="one request through the online path on the run's "
                                           "pushed models (the end of `make demo`)")
    _add_config_args(p)
    p.add_argument("--home", default=os.environ.get("PINRANK_HOME", "runs"),
                   help="the `pinrank run` home whose pushed models and data to use")
    p.add_argument("--user", help="user id (default: the first user of the data)")
    p.add_argument("--k", type=int, default=10, help="items to print")
    p.set_defaults(func=cmd_online_demo)

    p = sub.add_parser("compile", help="compile for Kubeflow Pipelines v2 / Vertex AI")
    _add_config_args(p)
    p.add_argument("--pipeline-root", required=True)
    p.add_argument("--data", required=True, help="the canonical dataset dir as the job sees it "
                                                 "(gs://...)")
    p.add_argument("--serving-dir", required=True)
    p.add_argument("--out", default="build/pinrank_pipeline.json", help="PipelineJob JSON")
    p.add_argument("--dataset-fingerprint",
                   help="DATASET.json's fingerprint, or the local dataset dir a remote "
                        "--data was uploaded from (required when it is remote)")
    p.add_argument("--image", help="every task's image (default pinrank:<version>, what "
                                   "`make image` builds; pass its registry name for Vertex)")
    p.add_argument("--image-site-packages", help="site-packages of the image's Python, where "
                                                 "the schemas are (default: the TFX image's)")
    p.add_argument("--schema-path", help="PinnerFormer raw schema (default: the package's, "
                                         "inside the image)")
    p.add_argument("--ranker-schema-path", help="ranker raw schema (default: the package's, "
                                                "inside the image)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("embed-pipeline", help="the daily user-embedding snapshot as a TFX "
                                              "pipeline (LocalDagRunner) on a `pinrank run` home",
                       description="Resolves the latest blessed PinnerFormer of the run's training "
                                   "pipeline in its MLMD store and writes the snapshot as of "
                                   "--as-of under <run>/online/snapshots/ (lineage in MLMD).")
    _add_config_args(p)
    p.add_argument("--home", default=os.environ.get("PINRANK_HOME", "runs"),
                   help="the `pinrank run` home whose MLMD store, data and snapshots to use")
    p.add_argument("--as-of", type=int, required=True, dest="as_of",
                   help="cut-off (unix s): only actions strictly before it count")
    p.add_argument("--snapshot-root", help="snapshot root (default <run>/online/snapshots)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild a snapshot that already exists for --as-of")
    p.add_argument("--beam-arg", action="append", default=[], help="extra Beam pipeline arg")
    p.add_argument("--no-cache", action="store_true", help="re-run even if cached")
    p.add_argument("--json-out", help="also write the summary as JSON here")
    p.set_defaults(func=cmd_embed_pipeline)

    p = sub.add_parser("compile-embed-pipeline",
                       help="compile the user-embedding pipeline for Kubeflow Pipelines v2 / "
                            "Vertex AI")
    _add_config_args(p)
    p.add_argument("--pipeline-root", required=True)
    p.add_argument("--data", required=True, help="the canonical dataset dir as the job sees it "
                                                 "(gs://...)")
    p.add_argument("--snapshot-root", required=True, help="where the snapshots go (gs://...)")
    p.add_argument("--as-of", type=int, dest="as_of",
                   help="fixed cut-off (unix s); default: a runtime parameter `as_of` each run "
                        "passes")
    p.add_argument("--out", default="build/pinrank_embedding_pipeline.json",
                   help="PipelineJob JSON")
    p.add_argument("--dataset-fingerprint",
                   help="DATASET.json's fingerprint, or the local dataset dir a remote "
                        "--data was uploaded from (required when it is remote)")
    p.add_argument("--image", help="every task's image (default pinrank:<version>)")
    p.set_defaults(func=cmd_compile_embed_pipeline)

    p = sub.add_parser("config", help="inspect the configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    sp = csub.add_parser("show", help="print the resolved config (preset, --source, --set) as "
                                      "JSON")
    _add_config_args(sp)
    sp.set_defaults(func=cmd_config_show)

    if serving:
        from pinrank.serving import batch_cli, ingest_cli, recs_cli
        from pinrank.serving import cli as serving_cli
        serving_cli.add_subcommands(sub)
        batch_cli.add_subcommands(sub)
        ingest_cli.add_subcommands(sub)
        recs_cli.add_subcommands(sub)
    _add_debug_flag(parser)
    return parser


def _user_error_code(e: BaseException):
    """2 for a config/usage error, 1 for bad data or a missing input, None for a bug."""
    from pinrank.pipeline.config import ConfigError
    if isinstance(e, ConfigError):
        return 2
    events = sys.modules.get("pinrank.components.data.events")  # loaded if it can have raised
    if events is not None and isinstance(e, (events.DatasetFormatError,
                                             events.EventValidationError)):
        return 1
    store = sys.modules.get("pinrank.serving.action_store")  # an unreachable or unusable store
    if store is not None and isinstance(e, store.StoreError):
        return 1
    service = sys.modules.get("pinrank.serving.service")  # a request the service cannot answer
    if service is not None and isinstance(e, service.ServiceError):
        return 2 if e.status == 400 else 1
    gen = sys.modules.get("pinrank.components.user_embedding_gen")  # the daily job refused
    if gen is not None and isinstance(e, gen.UserEmbeddingError):
        return 1
    pusher = sys.modules.get("pinrank.components.atomic_pusher")  # a serving dir it cannot write
    if pusher is not None and isinstance(e, pusher.PushError):
        return 1
    runs = sys.modules.get("pinrank.pipeline.runs")  # another run holds the same store
    if runs is not None and isinstance(e, runs.RunBusyError):
        return 1
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return 1
    return None


def _one_line(text: object) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv=None) -> int:
    argv = renamed_flags(list(sys.argv[1:] if argv is None else argv))
    command = next((a for a in argv if not a.startswith("-")), None)
    serving = (command not in CORE_COMMANDS if command is not None
               else any(a in ("-h", "--help") for a in argv))  # else: --version or an error
    args = build_parser(serving=serving).parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `pinrank config show | head`: the reader left, not an error
        # https://docs.python.org/3/library/signal.html#note-on-sigpipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit as e:  # raise SystemExit("message") in a command: a usage error
        if isinstance(e.code, str) and not args.debug:
            print(f"error: {_one_line(e.code)}", file=sys.stderr)
            return 2
        raise
    except Exception as e:
        code = None if args.debug else _user_error_code(e)
        if code is None:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
