"""The config flags every `pinrank` command that reads the config shares (--preset, --source,
--data-path, --set), and their resolution: one home, so that `run`, `config show`,
`serve-recs` and `recommend` resolve the same config the same way. argparse only (layer 0)."""
from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "paper"])
    p.add_argument("--source", choices=["movielens", "synthetic", "path"],
                   help="data source (default: the preset's; cpu/paper use movielens)")
    p.add_argument("--data-path", help="directory with ratings.csv + movies.csv (--source path)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override any config field by its dotted path, e.g. "
                        "--set model.objective=next_action --set ranker.realtime.seq_len=20 "
                        "--set ranker.mlp_dims='[256,128]' (lists/dicts as JSON; bools "
                        "true/false); `pinrank config show` prints every path")


def config_from_args(args):
    """--preset, --source, --data-path and every --set, resolved and checked (ConfigError)."""
    from pinrank.pipeline.config import apply_overrides, check_consistency, preset
    cfg = preset(args.preset, args.source)
    if getattr(args, "data_path", None):
        cfg = cfg.replace(data={"path": args.data_path})
    return check_consistency(apply_overrides(cfg, args.set))
