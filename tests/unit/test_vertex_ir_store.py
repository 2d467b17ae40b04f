"""The compiled-job runner's metadata store (tests/e2e/vertex_ir.py): Vertex filter terms become
MLMD filter queries, and a query answers the newest matching artifact of a real MLMD (SQLite)
store."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def vertex_ir():
    path = os.path.join(ROOT, "tests", "e2e", "vertex_ir.py")
    spec = importlib.util.spec_from_file_location("pinrank_tests_vertex_ir_unit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BLESSING = {"instanceSchema": "title: tfx.ModelBlessing\ntype: object\n"}
PF_QUERY = ('schema_title="tfx.ModelBlessing" AND state=LIVE AND metadata.blessed.number_value=1'
            ' AND metadata.gated_model.string_value="pinnerformer"')


def test_vertex_filter_terms_become_mlmd_terms(vertex_ir):
    assert vertex_ir.mlmd_filter(PF_QUERY) == (
        "type = 'tfx.ModelBlessing' AND state = LIVE AND custom_properties.blessed.double_value = 1"
        " AND custom_properties.gated_model.string_value = 'pinnerformer'")
    assert vertex_ir.mlmd_filter('schema_title="tfx.Model" AND name="r1/T/model"') == \
        "type = 'tfx.Model' AND name = 'r1/T/model'"
    with pytest.raises(ValueError, match="not one this runner knows"):
        vertex_ir.mlmd_filter('schema_title="tfx.Model" OR uri="x"')


def test_the_newest_match_is_answered(vertex_ir, tmp_path):
    store = vertex_ir.ArtifactStore(str(tmp_path / "metadata.sqlite"))
    assert store.latest(PF_QUERY) == []
    for i, (model, blessed) in enumerate((("pinnerformer", 1), ("pinnerformer", 1), ("pinnerformer", 0),
                                          ("ranker", 1))):
        store.record([{"name": f"r{i}/gate/blessing", "uri": f"/b{i}", "type": BLESSING,
                       "metadata": {"blessed": float(blessed), "gated_model": model,
                                    "current_model_id": f"r{i}/trainer/model", "extra": [1, 2]}}])
    (found,) = store.latest(PF_QUERY)
    assert found == {"name": "r1/gate/blessing", "uri": "/b1",
                     "metadata": {"blessed": 1.0, "gated_model": "pinnerformer",
                                  "current_model_id": "r1/trainer/model", "extra": "[1, 2]"}}
    (any_model,) = store.latest(PF_QUERY.split(" AND metadata.gated_model")[0])
    assert any_model["name"] == "r3/gate/blessing"
