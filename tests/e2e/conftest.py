import pytest


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
