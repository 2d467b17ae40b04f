"""One config tree, one machinery: every field by its dotted path (--set), strict parsing, JSON
round trips with tuples, clear errors, and CLI config errors as one line before TensorFlow."""
import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

from pinrank.pipeline.config import (
    CPU_HIDE_WEIGHT,
    ConfigError,
    PipelineConfig,
    RankerConfig,
    RealtimeConfig,
    apply_overrides,
    check_consistency,
    config_values,
    default_label_weights,
    leaf_paths,
    preset,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _walk(obj, prefix=""):
    """(dotted path, value) of every leaf field, found with dataclasses alone."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _walk(value, path + ".")
        else:
            yield path, value


def _get(cfg, path):
    for name in path.split("."):
        cfg = getattr(cfg, name)
    return cfg


def _cli_text(value) -> str:
    """A value as one writes it after `--set path=`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value)  # tuples, nested tuples, None


CPU_LEAVES = list(_walk(preset("cpu")))


def test_the_walk_sees_every_section_and_nested_leaf():
    paths = dict(CPU_LEAVES)
    assert "ranker.realtime.seq_len" in paths and "ranker.label_weights" in paths
    for section in ("data", "examples", "items", "model", "train", "eval", "ranking", "ranker",
                    "ranker_train", "ranker_eval", "vertex"):
        assert any(p.startswith(section + ".") for p in paths), section
    assert leaf_paths(preset("cpu")) == paths


@pytest.mark.parametrize("path,value", CPU_LEAVES, ids=[p for p, _ in CPU_LEAVES])
def test_every_leaf_round_trips_through_set_and_json(path, value):
    cfg = preset("cpu")
    back = apply_overrides(cfg, [f"{path}={_cli_text(value)}"])
    assert back == cfg  # tuples stay tuples: (1, 2) != [1, 2]
    assert _same_type(_get(back, path), value)
    again = PipelineConfig.from_json(back.to_json())
    assert again == cfg and _same_type(_get(again, path), value)


def _same_type(got, want) -> bool:
    """Same type (True is no 1); an int default of a float field comes back as a float."""
    return type(got) is type(want) or (type(want) is int and type(got) is float)


@pytest.mark.parametrize("name", ["tiny", "cpu", "paper"])
def test_presets_round_trip_through_json_with_tuples(name):
    cfg = preset(name)
    back = PipelineConfig.from_json(json.dumps(json.loads(cfg.to_json())))
    assert back == cfg
    assert isinstance(back.ranker.realtime, RealtimeConfig)
    assert isinstance(back.ranker.label_weights, tuple)
    assert all(isinstance(row, tuple) for row in back.ranker.label_weights)
    assert isinstance(back.ranker.context_categorical[0], tuple)
    check_consistency(cfg)


def test_nested_overrides_change_values():
    cfg = apply_overrides(preset("cpu"), [
        "ranker.realtime.seq_len=20", "ranker.mlp_dims=[256, 128]",
        "ranker.label_weights=[[1,2,3,4],[1,1,1,1],[1,1,1,1],[0,0,0,0.5]]",
        "ranker.context_categorical=[[\"surface\", 9, 4]]", "data.temporal_dynamics=no",
        "train.learning_rate=1e-4", "model.objective=next_action", "name=other",
        "ranker_train.enabled=0", "eval.min_lift_over_popularity=-5"])
    assert cfg.ranker.realtime.seq_len == 20 and cfg.ranker.mlp_dims == (256, 128)
    assert cfg.ranker.label_weights[0] == (1.0, 2.0, 3.0, 4.0)
    assert cfg.ranker.label_weights[3] == (0.0, 0.0, 0.0, 0.5)
    assert cfg.ranker.context_categorical == (("surface", 9, 4),)
    assert cfg.data.temporal_dynamics is False and cfg.ranker_train.enabled is False
    assert cfg.train.learning_rate == 1e-4 and cfg.model.objective == "next_action"
    assert cfg.name == "other" and cfg.eval.min_lift_over_popularity == -5.0
    # Untouched fields stay; null derives the paper's default weights (hide 100), which the cpu
    # preset lowers to CPU_HIDE_WEIGHT.
    assert cfg.ranker.realtime.latest_k == preset("cpu").ranker.realtime.latest_k
    reset = apply_overrides(cfg, ["ranker.label_weights=null"])
    assert reset.ranker.label_weights == default_label_weights(cfg.ranker.heads)
    assert preset("cpu").ranker.label_weights == default_label_weights(cfg.ranker.heads,
                                                                        CPU_HIDE_WEIGHT)
    assert preset("paper").ranker.label_weights == default_label_weights(cfg.ranker.heads)
    # New heads re-derive the default label weights (RankerConfig.replace).
    two = apply_overrides(preset("cpu"), ['ranker.heads=["click", "hide"]'])
    assert two.ranker.label_weights == ((1.0, 100.0), (1.0, 1.0))
    assert PipelineConfig.from_json(cfg.to_json()) == cfg


def test_replace_updates_nested_sections():
    cfg = preset("cpu").replace(ranker={"realtime": {"seq_len": 30}}, train={"seed": 4})
    assert cfg.ranker.realtime.seq_len == 30 and cfg.train.seed == 4
    assert cfg.ranker.realtime.item_emb_dim == preset("cpu").ranker.realtime.item_emb_dim
    with pytest.raises(ConfigError, match="unknown RankerConfig field 'nope'"):
        preset("cpu").replace(ranker={"nope": 1})


@pytest.mark.parametrize("item,match", [
    ("data.temporal_dynamics=ture", "data.temporal_dynamics must be a bool"),
    ("ranker_train.enabled=2", "must be a bool"),
    ("ranker_train.enabled=", "must be a bool"),
    ("train.seed=1.5", "train.seed must be an integer, got '1.5'"),
    ("train.seed=1e3", "must be an integer"),
    ("train.seed=true", "must be an integer"),
    ("train.learning_rate=fast", "train.learning_rate must be a number"),
    ("train.learning_rate=nan", "finite"),
    ("ranker.mlp_dims=[1.5, 2]", r"ranker.mlp_dims\[0\] must be an integer"),
    ("ranker.mlp_dims=256,128", "not valid JSON"),
    ("ranker.mlp_dims=[true]", "must be an integer"),
    ('ranker.context_categorical=[["surface", 7]]', "must have 3 entries"),
    ("ranker.label_weights=[[1]]", "4x4"),
    ("ranker.realtime.seq_len=0", "seq_len must be a positive int"),
    ("model.objective=bogus", "objective must be one of"),
    ("online.retention_days=0", "online.retention_days must be >= 1, got 0"),
    ("model.seq_len", "expected PATH=VALUE"),
    ("=3", "expected PATH=VALUE"),
])
def test_strict_parsing_errors(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(preset("cpu"), [item])


@pytest.mark.parametrize("item", ["ranker.realtime=x", "ranker.realtime={\"seq_len\": 3}",
                                  "ranker=1", "model=next_action"])
def test_setting_a_section_is_a_clear_error(item):
    path = item.partition("=")[0]
    with pytest.raises(ConfigError) as e:
        apply_overrides(preset("cpu"), [item])
    assert str(e.value).startswith(f"{path} is a section")
    assert "set one of its fields" in str(e.value)


def test_unknown_fields_name_the_known_ones():
    with pytest.raises(ConfigError) as e:
        apply_overrides(preset("cpu"), ["ranker.realtime.nope=1"])
    msg = str(e.value)
    assert "'nope'" in msg and "ranker.realtime" in msg
    assert all(f.name in msg for f in dataclasses.fields(RealtimeConfig))
    with pytest.raises(ConfigError, match="known: name, preset, data, examples"):
        apply_overrides(preset("cpu"), ["nope.x=1"])
    with pytest.raises(ConfigError, match="model.seq_len is a value"):
        apply_overrides(preset("cpu"), ["model.seq_len.x=1"])
    with pytest.raises(ConfigError, match=r"unknown RealtimeConfig field\(s\) \['nope'\] in "
                                          r"ranker.realtime; known: seq_len"):
        PipelineConfig.from_dict({"ranker": {"realtime": {"nope": 1}}})


def test_from_dict_is_strict_about_types():
    with pytest.raises(ConfigError, match="train.seed must be an integer"):
        PipelineConfig.from_dict({"train": {"seed": 1.5}})
    with pytest.raises(ConfigError, match="ranker.realtime is a section"):
        PipelineConfig.from_dict({"ranker": {"realtime": 5}})
    with pytest.raises(ConfigError, match="must be true or false"):
        PipelineConfig.from_dict({"data": {"temporal_dynamics": "yes"}})
    with pytest.raises(ConfigError, match="data.max_fallback_share must be in"):
        PipelineConfig.from_dict({"data": {"max_fallback_share": 2}})
    # ints are fine where floats are declared, and come back as floats
    assert PipelineConfig.from_dict({"train": {"learning_rate": 1}}).train.learning_rate == 1.0
    assert RankerConfig.from_json(RankerConfig().to_json()) == RankerConfig()


def test_sections_json_and_config_values():
    cfg = apply_overrides(preset("tiny"), ["ranker.realtime.seq_len=7"])
    text = cfg.sections_json("ranker.realtime.seq_len", "model.output_dim")
    assert json.loads(text) == {"ranker": {"realtime": {"seq_len": 7}}, "model": {"output_dim": 32}}
    assert config_values(text, "ranker.realtime.seq_len", "model.output_dim") == (7, 32)
    # Whole sections too, read back by the full tree.
    full = cfg.sections_json("ranker", "model")
    assert PipelineConfig.from_json(full).ranker == cfg.ranker
    assert config_values(full, "ranker.realtime.seq_len") == (7,)
    with pytest.raises(ConfigError, match="examples.max_future is missing"):
        config_values(text, "examples.max_future")


def test_transforms_read_their_values_from_the_config():
    import ast
    for mod, paths in (("transform/ranker.py", ("ranker.realtime.seq_len", "model.output_dim")),
                       ("transform/pinnerformer.py", ("model.seq_len", "examples.max_future"))):
        tree = ast.parse(open(os.path.join(ROOT, mod)).read())
        consts = [n for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", "") == "CONFIG_PATHS" for t in n.targets)]
        assert consts and ast.literal_eval(consts[0].value) == paths, mod
        assert "DEFAULT_SEQ_LEN" not in open(os.path.join(ROOT, mod)).read()


def test_cross_section_consistency():
    cfg = preset("cpu")
    with pytest.raises(ConfigError, match="ranker.realtime.item_emb_dim=64 must equal items.dim=32"):
        check_consistency(apply_overrides(cfg, ["items.dim=32", "items.cf_dim=16"]))
    with pytest.raises(ConfigError, match="ranker.pinnerformer_dim=64 must equal model.output_dim"):
        check_consistency(apply_overrides(cfg, ["model.output_dim=32"]))
    with pytest.raises(ConfigError, match="no feature"):
        check_consistency(apply_overrides(cfg, ['ranker.context_categorical=[["city", 9, 4]]']))
    # Without the ranker, its sizes do not matter.
    check_consistency(apply_overrides(cfg, ["model.output_dim=32", "ranker_train.enabled=false"]))
    with pytest.raises(ConfigError, match="needs data.path"):
        check_consistency(cfg.replace(data={"source": "path"}))


def test_config_module_imports_no_tensorflow():
    out = subprocess.run(
        [sys.executable, "-c", "import pinrank.pipeline.config, sys; print('tensorflow' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _pinrank(*argv, importtime=False):
    cmd = [sys.executable] + (["-X", "importtime"] if importtime else []) + \
        ["-m", "pinrank.pipeline.cli", *argv]
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return out, time.monotonic() - start


def test_cli_config_error_is_one_line_fast_and_before_tensorflow():
    out, seconds = _pinrank("run", "--set", "model.objective=bogus")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and "model.objective" in lines[0]
    assert "Traceback" not in out.stderr
    assert seconds < 5, seconds  # < 2 s on an idle machine; this one is shared
    traced, _ = _pinrank("run", "--set", "model.objective=bogus", importtime=True)
    assert traced.returncode == 2
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in traced.stderr.splitlines()
                if ln.startswith("import time:")]
    assert "pinrank.pipeline.config" in imported
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "tfx", "tf_keras")]


def test_cli_debug_shows_the_traceback():
    out, _ = _pinrank("--debug", "run", "--set", "ranker.realtime=x")
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "ConfigError" in out.stderr
    out, _ = _pinrank("run", "--set", "ranker.realtime=x", "--debug")
    assert "Traceback" in out.stderr


def test_cli_user_errors_in_process(tmp_path, capsys):
    from pinrank.pipeline import cli
    assert cli.main(["run", "--set", "train.seed=1.5"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: train.seed must be an integer, got '1.5'"]
    # A missing input directory is bad data: exit 1, one line naming the path.
    missing = str(tmp_path / "nowhere")
    assert cli.main(["data", "--source", "path", "--data-path", missing,
                     "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and missing in err[0]
    # Usage errors: one line, exit 2.
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--preset", "huge"])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: pinrank run: argument --preset")


def test_cli_config_show_and_version(capsys):
    from importlib import metadata

    from pinrank.pipeline import cli
    assert cli.main(["config", "show", "--preset", "tiny", "--source", "synthetic",
                     "--set", "ranker.realtime.seq_len=9", "--set", "ranker.mlp_dims=[8]"]) == 0
    shown = PipelineConfig.from_json(capsys.readouterr().out)
    assert shown == apply_overrides(preset("tiny", "synthetic"),
                                    ["ranker.realtime.seq_len=9", "ranker.mlp_dims=[8]"])
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"pinrank {metadata.version('pinrank')}"


def test_ranker_eval_slices_parse_and_bad_entries_name_the_field():
    e = preset("cpu").ranker_eval
    assert e.slice_features == ("surface", "pf_present")
    assert e.gate_slices == ("overall", "surface", "pf_present")
    e = apply_overrides(preset("cpu"), ['ranker_eval.gate_slices=["overall", "pf_present=0"]',
                                        "ranker_eval.slice_min_hit_repin=0.4"]).ranker_eval
    assert e.gate_slices == ("overall", "pf_present=0") and e.slice_min_hit_repin == 0.4
    for item, match in (
            ('ranker_eval.gate_slices=["user_id"]', "ranker_eval.gate_slices entry 'user_id'"),
            ('ranker_eval.gate_slices=["surface="]', "ranker_eval.gate_slices entry 'surface='"),
            ('ranker_eval.gate_slices="overall"', "ranker_eval.gate_slices must be a JSON list"),
            ('ranker_eval.slice_features=["user_id"]', "ranker_eval.slice_features must be"),
            ('ranker_eval.slice_features=["surface", "surface"]', "must be distinct"),
            ("ranker_eval.slice_min_auc=inf", "finite")):
        with pytest.raises(ConfigError, match=match):
            apply_overrides(preset("cpu"), [item])
    # A gated feature must be sliced: dropping pf_present from the slices needs the gate to go.
    with pytest.raises(ConfigError, match="entry 'pf_present'"):
        apply_overrides(preset("cpu"), ['ranker_eval.slice_features=["surface"]'])
    ok = apply_overrides(preset("cpu"), ['ranker_eval.gate_slices=["overall"]',
                                         'ranker_eval.slice_features=[]'])
    assert ok.ranker_eval.slice_features == ()
