"""The image (Dockerfile) builds the environment of uv.lock, without a docker engine: its
requirements file is today's export of the lock, every pin is the lock's version, the base image
is the locked TFX, the process settings are bootstrap.py's, and the package data the compiled job
names (the schemas) is in the wheel at the path the job uses."""
import ast
import os
import re
import subprocess
import sys
import zipfile

import pytest
import tomli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIREMENTS = os.path.join(ROOT, "requirements.lock.txt")
# The Makefile's `requirements` target (it records the command in the file's header too).
EXPORT = ["export", "--frozen", "--no-dev", "--no-emit-project", "--no-annotate"]


def _read(name: str) -> str:
    with open(os.path.join(ROOT, name)) as fh:
        return fh.read()


def _lock() -> dict:
    with open(os.path.join(ROOT, "uv.lock"), "rb") as fh:
        return tomli.load(fh)


def _pins() -> dict:
    """{normalized name: version} of requirements.lock.txt (every requirement must be ==)."""
    pins = {}
    for line in _read("requirements.lock.txt").splitlines():
        if not line.strip() or line.startswith(("#", " ")):
            continue  # comments and `--hash` continuation lines
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^ ;]+)( ;.*)?( \\)?", line)
        assert m, f"requirements.lock.txt: not an exact pin: {line!r}"
        pins[_norm(m.group(1))] = m.group(2)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dockerfile() -> list:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in _read("Dockerfile").splitlines() if not line.lstrip().startswith("#")))
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for parts in (line.strip().split(None, 1) for line in text.splitlines() if line.strip())]


def _uv() -> list:
    """The uv the Makefile installs (`$(PY310) -m uv`): the venv's base interpreter's."""
    for python in (os.path.join(sys.base_prefix, "bin", "python3.10"),
                   os.path.join(sys.base_prefix, "bin", "python3")):
        if os.path.exists(python) and subprocess.run([python, "-m", "uv", "--version"],
                                                     capture_output=True).returncode == 0:
            return [python, "-m", "uv"]
    pytest.fail(f"no uv next to {sys.base_prefix} (make env installs it there)")


def test_requirements_are_todays_export_of_uv_lock():
    got = subprocess.run([*_uv(), *EXPORT], cwd=ROOT, capture_output=True, text=True, check=True)
    assert got.stdout == _read("requirements.lock.txt"), \
        "requirements.lock.txt is stale: run `make requirements` and commit it"
    assert f"$(PY310) -m uv {' '.join(EXPORT)} > requirements.lock.txt" in _read("Makefile")


def test_every_pin_is_the_locked_version_and_hashed():
    lock = {_norm(p["name"]): p["version"] for p in _lock()["package"] if "version" in p}
    pins = _pins()
    assert len(pins) > 200
    wrong = {n: (v, lock.get(n)) for n, v in pins.items() if lock.get(n) != v}
    assert not wrong, f"pins that are not uv.lock's version (pin, lock): {wrong}"
    # Every direct runtime dependency is there, at the version pyproject asks for.
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        deps = tomli.load(fh)["project"]["dependencies"]
    for dep in deps:
        name = _norm(re.match(r"[A-Za-z0-9._-]+", dep).group(0))
        assert name in pins, dep
        exact = re.search(r"==([^,;\s]+)", dep)
        if exact:
            assert pins[name] == exact.group(1), dep
    assert not {"pytest", "ruff", "mypy", "pinrank"} & set(pins)  # dev extras, the project
    text = _read("requirements.lock.txt")
    assert text.count("--hash=sha256:") >= len(pins)  # pip --require-hashes needs them all


def test_dockerfile_installs_the_lock_and_the_package_on_the_locked_tfx():
    from pinrank.pipeline.kubeflow_v2_runner import IMAGE_SITE_PACKAGES
    steps = _dockerfile()
    tfx = _pins()["tfx"]
    assert steps[0] == ("FROM", f"gcr.io/tfx-oss-public/tfx:{tfx}")
    runs = [args for op, args in steps if op == "RUN"]
    copies = [args for op, args in steps if op == "COPY"]
    lock_install = next(r for r in runs if "-r /tmp/pinrank/requirements.lock.txt" in r)
    assert {"--no-deps", "--require-hashes"} <= set(lock_install.split())
    assert "requirements.lock.txt /tmp/pinrank/requirements.lock.txt" in copies
    project_install = next(r for r in runs if "/tmp/pinrank/src" in r.split("&&")[0])
    assert {"--no-deps", "--no-build-isolation"} <= set(project_install.split("&&")[0].split())
    assert "-e" not in project_install.split()  # installed into site-packages, not editable
    assert runs.index(lock_install) < runs.index(project_install)
    # The compiled job names the schemas under this root; the build checks it is pip's.
    assert ("ARG", f"SITE_PACKAGES={IMAGE_SITE_PACKAGES}") in steps
    assert '[ "$installed" = "$SITE_PACKAGES" ]' in project_install
    for name in ("pinnerformer_raw.pbtxt", "ranker_raw.pbtxt"):
        assert f"$SITE_PACKAGES/pinrank/pipeline/schema/{name}" in project_install
    python = re.search(r"python(\d+\.\d+)", IMAGE_SITE_PACKAGES).group(1)
    assert _lock()["requires-python"] == f"=={python}.*"
    assert steps[-1] == ("WORKDIR", "/")


def test_dockerfile_sets_bootstraps_process_settings():
    """Every os.environ.setdefault of pipeline/bootstrap.py, as ENV (the executor entry point
    imports TensorFlow before any of our modules)."""
    settings = {}
    for node in ast.walk(ast.parse(_read("pipeline/bootstrap.py"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setdefault":
            key, value = (a.value for a in node.args)
            settings[key] = value
    assert settings["TF_USE_LEGACY_KERAS"] == "1"
    env = {}
    for op, args in _dockerfile():
        if op == "ENV":
            env.update(kv.split("=", 1) for kv in args.split())
    assert env == settings


def test_dockerignore_sends_only_what_the_image_installs():
    lines = [ln for ln in _read(".dockerignore").splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"  # everything out (.venv, runs, .git, tests), then the image's inputs
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert kept == {"requirements.lock.txt", "pyproject.toml", "README.md", "pipeline",
                    "components", "models", "transform", "serving"}
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        package_dir = tomli.load(fh)["tool"]["setuptools"]["package-dir"]
    assert set(package_dir.values()) <= kept


def test_default_image_is_the_makefiles_tag():
    from pinrank.pipeline.kubeflow_v2_runner import project_image
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        version = tomli.load(fh)["project"]["version"]
    assert project_image() == f"pinrank:{version}"
    make = _read("Makefile")
    assert "IMAGE ?= pinrank:$(VERSION)" in make and "docker build -t $(IMAGE) ." in make
    version_line = re.search(r"(?m)^VERSION := .*$", make).group(0)
    got = subprocess.run(["make", "-s", "-f", "-", "v"], cwd=ROOT,
                         input=f"{version_line}\nv:\n\t@echo $(VERSION)\n",
                         capture_output=True, text=True, check=True)
    assert got.stdout.strip() == version


def test_the_wheel_ships_the_schemas_where_the_compiled_job_names_them(tmp_path):
    """`pip install .` in the image: the files land in site-packages at the paths image_path
    gives (built from a copy, so the checkout's build/ is left alone). The wheel claims one name,
    `pinrank`: every tracked module and data file of the card's folders under it, nothing else."""
    from pinrank.pipeline.kubeflow_v2_runner import IMAGE_SITE_PACKAGES, image_path
    from pinrank.pipeline.pipeline import PINNERFORMER_SCHEMA, RANKER_SCHEMA
    files = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "pipeline",
                            "components", "models", "transform", "serving"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes(open(os.path.join(ROOT, f), "rb").read())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("pinrank-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"pinrank", "pinrank-0.1.0.dist-info"}
    assert not any(n.endswith("__init__.py") for n in names if n.count("/") == 1)  # namespace
    assert {f"pinrank/{f}" for f in files if "/" in f} - names == set()
    for schema in (PINNERFORMER_SCHEMA, RANKER_SCHEMA):
        in_image = image_path(schema)
        assert in_image.startswith(IMAGE_SITE_PACKAGES + "/")
        assert in_image[len(IMAGE_SITE_PACKAGES) + 1:] in names
