# Two entry points (README): `make demo` runs the whole pipeline on MovieLens-100K,
# `make test` runs the test suite. Both create/update the locked environment first.
PY310 := $(shell pyenv prefix 3.10.13 2>/dev/null || echo $(HOME)/.pyenv/versions/3.10.13)/bin/python3.10
VENV := .venv
UV_VERSION := 0.13.9
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: env demo test test-fast e2e lint bench bench-train bench-scale presets clean

# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on our machines) nothing else writes
# .pyc files, and every process would recompile TensorFlow's sources (~5 s CPU per import).
$(VENV)/.synced: pyproject.toml uv.lock
	$(PY310) -m uv --version >/dev/null 2>&1 || $(PY310) -m pip install -q "uv==$(UV_VERSION)"
	$(PY310) -m uv sync --frozen --extra dev --compile-bytecode --python $(PY310)
	touch $@

env: $(VENV)/.synced

# The pipeline, then one request through the online path on the pushed models (top 10 titles).
demo: env
	$(VENV)/bin/pinrank run --preset cpu --source movielens $(ARGS)
	$(VENV)/bin/pinrank online-demo --preset cpu --source movielens

# unit tests and two groups of e2e tests side by side (tests/run.sh)
test: env
	PYTHON=$(VENV)/bin/python tests/run.sh $(ARGS)

# ruff (pycodestyle, pyflakes, import order, no stale noqa) and mypy, configured in pyproject.toml
lint: env
	$(VENV)/bin/ruff check .
	rm -rf build/typecheck && mkdir -p build/typecheck/pinrank
	for d in pipeline components models transform serving; do ln -s ../../../$$d build/typecheck/pinrank/$$d; done
	$(VENV)/bin/mypy

test-fast: env
	$(VENV)/bin/python -m pytest -q -m "not e2e" $(ARGS)

e2e: env
	$(VENV)/bin/python -m pytest -q -m e2e $(ARGS)

# Quality benchmark: PinnerFormer vs the non-learned baselines on ML-100K validation users,
# three seeds, then the HTML report (benchmarks/quality.py; ~40 min on 2 cores).
bench: env
	$(VENV)/bin/python benchmarks/quality.py run --source movielens --protocol validation --seeds 0 1 2
	$(VENV)/bin/python benchmarks/quality.py report runs/quality/movielens-validation.json \
		--out runs/quality/index.html

# Training throughput: tokens/s, model GFLOP/s and % of the honest fp32 peak (benchmarks/peak.py)
# at the two comparison dims, synthetic inputs (benchmarks/train_throughput.py; ~5 min on 2 cores).
bench-train: env
	$(VENV)/bin/python benchmarks/train_throughput.py $(ARGS)

# Scale: the whole pipeline on 1M and 10M synthetic events: wall, peak RSS of the process tree,
# per-component time from MLMD, ratio to the 1M run (benchmarks/scale.py; hours on 2 cores).
# ARGS="--events 20000 --preset tiny" for a smoke run. The in-memory runner (the pipeline's
# default): at 1M events the multi-process one handed RankingExampleGen's join incomplete groups
# (docs/status.md, "Session 12: a runner fault at 1M events, eval days no longer embedded").
# The ranker's evaluation on a 10 % sample of eval requests (ranking.eval_sample_percent): at 1M
# events its TFMA pass over every eval impression alone ran past 27 minutes (docs/status.md).
bench-scale: env
	$(VENV)/bin/python benchmarks/scale.py run --out runs/scale.json --mode in_memory --workers 1 \
	    --set ranking.eval_sample_percent=10 $(ARGS)

# A local Redis for the action store (redis://127.0.0.1:6379/0), loopback only, no persistence;
# idempotent (serving/deploy/redis-local.sh). Tests start their own servers.
.PHONY: redis
redis:
	serving/deploy/redis-local.sh

# The pipeline's image (Dockerfile), tagged pinrank:<version> as `pinrank compile` expects by
# default; IMAGE=REGION-docker.pkg.dev/PROJ/repo/pinrank:TAG for a registry. Needs a docker
# engine, so CI never builds it: tests/unit/test_image.py checks its pins against uv.lock.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= pinrank:$(VERSION)
.PHONY: image requirements
image: requirements
	docker build -t $(IMAGE) .

# uv.lock's runtime pins with their hashes, for the image (a test fails when this is stale).
requirements: env
	$(PY310) -m uv export --frozen --no-dev --no-emit-project --no-annotate > requirements.lock.txt

# The presets' resolved configs, committed so that a spec change is a reviewed diff
# (tests/unit/test_presets.py fails until they are rewritten).
presets: env
	for p in tiny cpu paper; do $(VENV)/bin/pinrank config show --preset $$p > docs/presets/$$p.json; done

clean:
	rm -rf runs build .pytest_cache
