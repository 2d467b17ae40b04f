"""`pinrank` command line: run the pipeline, prepare data, compile for Vertex, serve, query."""
from __future__ import annotations

import os

from pipeline import bootstrap  # noqa: E402,F401  (environment before TensorFlow)


import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402


def _config(args):
    from pipeline.config import apply_overrides, preset
    cfg = preset(args.preset, args.source)
    if getattr(args, "data_path", None):
        cfg = cfg.replace(data={"path": args.data_path})
    return apply_overrides(cfg, args.set)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "paper"])
    p.add_argument("--source", choices=["movielens", "synthetic", "path"],
                   help="data source (default: the preset's; cpu/paper use movielens)")
    p.add_argument("--data-path", help="directory with ratings.csv + movies.csv (--source path)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set model.objective=next_action")


def cmd_run(args) -> int:
    from pipeline import local_runner
    from pipeline.runs import DEFAULT_BEAM_ARGS
    cfg = _config(args)
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
    _print_fallbacks(summary.get("fallbacks", {}))
    print(f"{'wall time':>22}: {summary['wall_s']} s")
    print(f"{'peak memory':>22}: {summary['peak_rss_mb']} MB")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
    return 0


def _print_fallbacks(fallbacks: dict, file=None) -> None:
    """One line per feature that fell back to "unknown" for some items (DATASET.json)."""
    for name, fb in fallbacks.items():
        if fb.get("count"):
            print(f"{'fallbacks':>22}: {name} {fb['count']:,} of {fb['of']:,} items", file=file)


def cmd_data(args) -> int:
    from components.data.events import read_dataset_manifest
    from components.data.sources import prepare_dataset
    path = prepare_dataset(_config(args).data, args.out)
    _print_fallbacks(read_dataset_manifest(path).get("fallbacks", {}), file=sys.stderr)
    print(path)
    return 0


def cmd_compile(args) -> int:
    from pipeline.kubeflow_v2_runner import compile_pipeline
    out = compile_pipeline(_config(args), pipeline_root=args.pipeline_root,
                           dataset_dir=args.dataset_dir, serving_dir=args.serving_dir,
                           output_path=args.output, image=args.image,
                           schema_path=args.schema_path)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pinrank", description=__doc__)
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

    p = sub.add_parser("compile", help="compile for Kubeflow Pipelines v2 / Vertex AI")
    _add_config_args(p)
    p.add_argument("--pipeline-root", required=True)
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--serving-dir", required=True)
    p.add_argument("--output", default="build/pinrank_pipeline.json")
    p.add_argument("--image", default="gcr.io/tfx-oss-public/tfx:1.16.0")
    p.add_argument("--schema-path", help="curated schema as the image/GCS sees it")
    p.set_defaults(func=cmd_compile)

    from serving import batch_cli, cli as serving_cli
    serving_cli.add_subcommands(sub)
    batch_cli.add_subcommands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.data.events import DatasetFormatError, EventValidationError
    try:
        return args.func(args)
    except (DatasetFormatError, EventValidationError) as e:
        # Bad input data is for the user to fix: their message, without a traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
