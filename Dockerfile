# The image every task of the compiled PipelineJob runs in (`pinrank compile --image`), and the
# Dataflow workers' SDK container (`--sdk_container_image`): the TFX 1.16 image, the exact pins of
# uv.lock (requirements.lock.txt, hash-checked) and this package. `make image` builds it (needs a
# docker engine); tests/unit/test_image.py checks the pins against uv.lock without one.
# At the repo root: the build context is the project (pyproject.toml and the packages).
FROM gcr.io/tfx-oss-public/tfx:1.16.0

# Where the base image's Python installs packages: `pinrank compile` names the schemas under it
# (pipeline/kubeflow_v2_runner.py IMAGE_SITE_PACKAGES); the last RUN fails if pip put them elsewhere.
ARG SITE_PACKAGES=/opt/conda/lib/python3.10/site-packages

# pipeline/bootstrap.py's process settings: the task entry point (tfx's kubeflow_v2_run_executor)
# imports TensorFlow before any of our code could set them. Keras 2 for TFX 1.16 and our models.
ENV TF_USE_LEGACY_KERAS=1 \
    TF_ENABLE_ONEDNN_OPTS=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# The lock first, so that a code change rebuilds only the last layers. --no-deps: the lock is the
# whole environment, pip resolves nothing; --require-hashes: the files uv locked, nothing else.
COPY requirements.lock.txt /tmp/pinrank/requirements.lock.txt
RUN python -m pip install --no-cache-dir --no-deps --require-hashes \
        -r /tmp/pinrank/requirements.lock.txt

# The project itself, not editable: code and package data (the curated schemas) in site-packages.
# No build isolation: setuptools comes from the lock, not from an unpinned download.
COPY . /tmp/pinrank/src
RUN python -m pip install --no-cache-dir --no-deps --no-build-isolation /tmp/pinrank/src \
    && rm -rf /tmp/pinrank && cd / \
    && installed="$(python -c 'import os, pinrank.pipeline as p; print(os.path.dirname(os.path.dirname(os.path.dirname(p.__file__))))')" \
    && { [ "$installed" = "$SITE_PACKAGES" ] \
         && [ -f "$SITE_PACKAGES/pinrank/pipeline/schema/pinnerformer_raw.pbtxt" ] \
         && [ -f "$SITE_PACKAGES/pinrank/pipeline/schema/ranker_raw.pbtxt" ] \
         || { echo "error: pinrank's schemas are not in $SITE_PACKAGES (installed in $installed)," \
                   "where compiled jobs name them: fix SITE_PACKAGES and IMAGE_SITE_PACKAGES" >&2; \
              exit 1; }; }

# Tasks run from /, so `import pinrank` finds the installed package, never a source tree.
WORKDIR /
