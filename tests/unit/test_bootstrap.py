"""pipeline/bootstrap.py's log filter: known-harmless warnings dropped, everything else kept."""
import logging

from pinrank.pipeline.bootstrap import KnownNoise


def _record(msg, *args):
    return logging.LogRecord("absl", logging.WARNING, __file__, 1, msg, args, None)


def test_known_noise_is_dropped_and_the_rest_kept():
    f = KnownNoise()
    assert not f.filter(_record("ArtifactQuery.property_predicate is not supported."))
    assert not f.filter(_record("Tables initialized inside a tf.function  will be re-initialized"))
    assert not f.filter(_record("Model's `__init__()` arguments contain non-serializable objects %s",
                                "x"))
    assert not f.filter(_record("Execution %d failed.", 6))  # the CLI's one line says why
    assert f.filter(_record("Execution %d failed to publish.", 6))
    assert f.filter(_record("Examples artifact does not have payload_format custom property."))
    assert f.filter(_record("error: %s", "ArtifactQuery.property_predicate is not supported"))


def test_installed_on_absl_and_tensorflow_loggers():
    import absl.logging  # noqa: F401

    for name in ("absl", "tensorflow"):
        assert any(isinstance(f, KnownNoise) for f in logging.getLogger(name).filters)
