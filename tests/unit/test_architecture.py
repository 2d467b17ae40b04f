"""The layer rules of docs/architecture.md: imports only point down, the contract layer imports
without TensorFlow, and the code imports itself as `pinrank.*`, never by the generic folder names."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("pipeline", "components", "models", "transform", "serving")
DIST = "pinrank"  # installed, the card's folders are pinrank.pipeline, pinrank.models, ...

# Keys are relative to `pinrank.`; the most specific prefix wins. 0 = contract, 1 = libraries
# (data format, model and metric code), 2 = TFX components and run_fn glue, 3 = serving runtime,
# 4 = assembly and entry points.
LAYERS = {
    "pipeline": 0, "pipeline.features": 0, "pipeline.config": 0, "pipeline.artifacts": 0,
    "pipeline.bootstrap": 0, "pipeline.pinned_wheel": 0, "serving.constants": 0,
    "components.data": 1, "components.item_embedding": 1, "components.types": 1,
    "components.retrieval_evaluator.baselines": 1, "components.retrieval_evaluator.metrics": 1,
    "components.retrieval_evaluator.stats": 1, "components.retrieval_evaluator.report": 1,
    "components.retrieval_evaluator.slices": 1,
    "components.ranker_eval.hit_at_k": 1, "components.ranker_eval.eval_config": 1,
    "models": 1, "transform": 1,
    "components": 2, "models.pinnerformer.run": 2, "models.realtime.run": 2,
    "serving": 3,
    "pipeline.pipeline": 4, "pipeline.runs": 4, "pipeline.cli": 4, "pipeline.local_runner": 4,
    "pipeline.kubeflow_v2_runner": 4, "pipeline.runners": 4, "pipeline.online_demo": 4,
    "pipeline.embedding_pipeline": 4, "pipeline.embedding_runner": 4,
    "pipeline.vertex_entrypoint": 4,
}
CONTRACT = sorted(m for m, layer in LAYERS.items() if layer == 0)


def layer_of(module: str) -> int:
    parts = module.removeprefix(DIST + ".").split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise KeyError(f"{module}: no layer in tests/unit/test_architecture.py LAYERS")


def modules():
    for top in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    yield f"{DIST}.{rel.removesuffix('.__init__')}", path


def imported(module: str, path: str, generic: bool = False):
    """Project modules imported anywhere in the file (function-level imports included); with
    `generic`, imports of the bare folder names (`import pipeline`, `from models import ...`)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import mod` imports pkg.mod when it is a module
            names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base
                     for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if generic and parts[0] in PACKAGES:
                yield node.lineno, name
            elif not generic and parts[0] == DIST and len(parts) > 1 and parts[1] in PACKAGES:
                yield node.lineno, name


def _is_module(name: str) -> bool:
    p = os.path.join(ROOT, *name.removeprefix(DIST + ".").split("."))
    return os.path.isfile(p + ".py") or os.path.isfile(os.path.join(p, "__init__.py"))


def test_every_module_has_a_layer():
    for module, _ in modules():
        layer_of(module)


def test_imports_only_point_down():
    upward = []
    for module, path in modules():
        mine = layer_of(module)
        for line, name in imported(module, path):
            if layer_of(name) > mine:
                upward.append(f"{os.path.relpath(path, ROOT)}:{line} (layer {mine}) imports "
                              f"{name} (layer {layer_of(name)})")
    assert not upward, "\n".join(upward)


def test_contract_layer_imports_without_tensorflow():
    code = ("import sys\n" + "".join(f"import {DIST}.{m}\n" for m in CONTRACT)
            + "heavy = [m for m in ('tensorflow', 'tfx', 'pandas', 'apache_beam') "
              "if m in sys.modules]\nassert not heavy, heavy\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # From outside the checkout: only the installed `pinrank` package can answer.
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(ROOT), env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_code_never_imports_the_generic_folder_names():
    """`from pipeline import x` works from a checkout's root by accident (the working directory
    is on sys.path) but not where the package is installed: in the image, tasks run from /."""
    files = [(m, p) for m, p in modules()]
    for top in ("tests", "benchmarks"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            files += [("", os.path.join(dirpath, f)) for f in sorted(names) if f.endswith(".py")]
    bare = [f"{os.path.relpath(path, ROOT)}:{line} imports {name}"
            for module, path in files for line, name in imported(module or "x", path, generic=True)]
    assert not bare, "\n".join(bare)
