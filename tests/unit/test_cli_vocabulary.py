"""One flag per concept across every `pinrank` sub-command (the vocabulary in pipeline/cli.py's
docstring), and the old spellings of renamed flags still accepted."""
import argparse

import pytest

from pinrank.pipeline import cli


def _parsers(parser, path=("pinrank",)):
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def _options(parser):
    return {s: a for a in parser._actions for s in a.option_strings}


PARSERS = dict(_parsers(cli.build_parser()))


def test_the_walk_sees_every_command():
    assert {"pinrank query embed", "pinrank query rank", "pinrank recommend", "pinrank ingest",
            "pinrank embed-users", "pinrank serve-recs", "pinrank run", "pinrank query snapshot",
            "pinrank forget-user", "pinrank purge"} <= set(PARSERS)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_one_spelling_per_concept(name):
    opts = _options(PARSERS[name])
    for old in ("--user-id", "--user-ids", "--users", "--events", "--dataset", "--data-dir",
                "--dataset-dir", "--output", "--json-file", "--output-json", "--request-ts",
                "--now", "--server", "--addr"):
        assert old not in opts, f"{name}: {old} (use the vocabulary of pipeline/cli.py)"
    if "--json" in opts:  # JSON on stdout: a switch
        assert opts["--json"].nargs == 0, name
    if "--json-out" in opts:  # JSON into a file
        assert opts["--json-out"].nargs is None, name
    if "--user" in opts:
        assert opts["--user"].nargs is None, name  # one id per flag; repeat for several
    for flag in ("--now-ts", "--as-of"):
        if flag in opts:
            assert opts[flag].type is int, (name, flag)  # unix seconds


@pytest.mark.parametrize("command", sorted(" ".join(c) for c in cli.RENAMED_FLAGS))
def test_old_spellings_parse_like_the_new_ones(command, capsys):
    words = command.split()
    renames = cli.RENAMED_FLAGS[tuple(words)]
    opts = _options(PARSERS["pinrank " + command])
    assert all(new in opts and old not in opts for old, new in renames.items())
    old_argv, new_argv = list(words), list(words)
    for old, new in renames.items():
        old_argv += [old, "x"] if old != "--user-id" else [old, "u1", f"{old}=u2"]
        new_argv += [new, "x"] if new != "--user" else [new, "u1", f"{new}=u2"]
    rewritten = cli.renamed_flags(old_argv)
    assert rewritten == new_argv
    err = capsys.readouterr().err
    assert all(f"{old} is deprecated, use {new}" in err for old, new in renames.items())
    assert err.count("--user-id is deprecated") <= 1  # one note per flag
    parser = cli.build_parser()
    new_argv += {"query rank": ["--candidates", "1"],
                 "compile": ["--pipeline-root", "r", "--serving-dir", "s"]}.get(command, [])
    args = vars(parser.parse_args(new_argv))
    assert args["data"] == "x"
    if "query" in command:
        assert args["user_ids"] == ["u1", "u2"]


def test_renames_apply_only_to_their_command():
    argv = ["recommend", "--user", "u", "--data", "d", "--events", "x"]
    assert cli.renamed_flags(argv) == argv
