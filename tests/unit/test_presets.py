"""The presets' resolved configs are committed (docs/presets/*.json), so a change to any model
spec, preset or default shows up as a reviewed diff of those files (docs/ml-test-score.md,
Model 1). `make presets` rewrites them."""
import json
import pathlib

import pytest

from pinrank.pipeline.config import preset

PRESETS_DIR = pathlib.Path(__file__).resolve().parents[2] / "docs" / "presets"


def _differences(committed, resolved, path=""):
    if isinstance(committed, dict) and isinstance(resolved, dict):
        for key in sorted(set(committed) | set(resolved)):
            where = f"{path}.{key}" if path else key
            if key not in committed or key not in resolved:
                yield f"{where} ({'added' if key in resolved else 'removed'})"
            else:
                yield from _differences(committed[key], resolved[key], where)
    elif committed != resolved:
        yield f"{path} (file {committed!r}, code {resolved!r})"


@pytest.mark.parametrize("name", ["tiny", "cpu", "paper"])
def test_committed_preset_equals_the_code(name):
    path = PRESETS_DIR / f"{name}.json"
    resolved = json.loads(json.dumps(preset(name).to_dict()))  # tuples -> lists, as on disk
    committed = json.loads(path.read_text())
    diff = list(_differences(committed, resolved))
    assert not diff, (f"{path.name} differs from the {name} preset at {', '.join(diff[:5])}: run "
                      f"`make presets` and explain the diff in the PR (.github/pull_request_template.md)")


def test_differences_names_the_changed_paths():
    a = {"model": {"seq_len": 64, "hidden": 32}, "train": {"lr": 1}}
    b = {"model": {"seq_len": 128, "hidden": 32}, "eval": {}}
    assert list(_differences(a, b)) == ["eval (added)", "model.seq_len (file 64, code 128)",
                                        "train (removed)"]
