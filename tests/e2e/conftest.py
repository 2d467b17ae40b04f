import os

import pytest

# tests/run.sh runs the e2e tests in two processes side by side: PINRANK_E2E_GROUP=shared keeps
# the tests that use the session's tiny_run (so it runs once), =own the ones that run their own
# pipelines. Unset: all of them.
_GROUPS = ("shared", "own")


def pytest_collection_modifyitems(config, items):
    group = os.environ.get("PINRANK_E2E_GROUP", "")
    if not group:
        return
    if group not in _GROUPS:
        raise pytest.UsageError(f"PINRANK_E2E_GROUP={group!r}: expected one of {', '.join(_GROUPS)}")
    keep, drop = [], []
    for item in items:
        shared = "tiny_run" in getattr(item, "fixturenames", ())
        (keep if shared == (group == "shared") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny synthetic pipeline, run twice in one home (the second run exercises the cache
    and the last-blessed-model baseline). Returns (cfg, first_summary, second_summary)."""
    from pinrank.pipeline import local_runner
    from pinrank.pipeline.config import preset
    home = str(tmp_path_factory.mktemp("home"))
    cfg = preset("tiny")
    first = local_runner.run(cfg, home)
    second = local_runner.run(cfg, home)
    return cfg, first, second
