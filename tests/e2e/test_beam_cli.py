"""The tfx CLI with the Beam engine: `tfx pipeline create` + `tfx run create` on tiny data."""
import glob
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tfx_cli_beam_engine_runs_and_pushes(tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PINRANK_PRESET="tiny",
               PINRANK_SOURCE="synthetic", PINRANK_HOME=str(tmp_path / "home"),
               BEAM_HOME=str(tmp_path / "beam"), PATH=bin_dir + os.pathsep + os.environ["PATH"])
    tfx = os.path.join(bin_dir, "tfx")
    create = subprocess.run(
        [tfx, "pipeline", "create", "--engine=beam",
         f"--pipeline_path={os.path.join(ROOT, 'pipeline', 'runners', 'beam_runner.py')}"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert create.returncode == 0, create.stderr[-3000:]
    assert 'Pipeline "pinrank" created successfully' in create.stdout
    # make test runs it beside the unit tests and the other e2e group: 19 min seen on 2 cores
    run = subprocess.run([tfx, "run", "create", "--engine=beam", "--pipeline_name=pinrank"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=2700)
    assert run.returncode == 0, run.stderr[-3000:]
    pushed = glob.glob(str(tmp_path / "home" / "pinrank" / "*" / "serving" / "pinnerformer" / "*"
                           / "saved_model.pb"))
    assert len(pushed) == 1, pushed
    blessed = glob.glob(str(tmp_path / "home" / "pinrank" / "*" / "pipeline_root"
                            / "RetrievalEvaluator" / "blessing" / "*" / "BLESSED"))
    assert len(blessed) == 1
