"""One description of each served model: the config Triton reads and the schema the graph's
last operator declares both come from it."""
from __future__ import annotations

import re

from core.contract import RECOMMENDER, SIMILAR_ITEMS, model_config
from operators.schemas import contract_schema


def test_the_model_config_declares_every_output_and_the_served_version():
    for contract in (RECOMMENDER, SIMILAR_ITEMS):
        text = model_config(contract, "m", 10, version=3)
        assert re.findall(r'name: "(\w+)" data_type', text)[len(contract.inputs):] == list(contract.output_names)
        assert 'dims: [ -1, 10 ]' in text and f'string_value: "{contract.kind}"' in text
        assert "version_policy: { specific: { versions: [ 3 ] } }" in text
    assert "version_policy" not in model_config(RECOMMENDER, "m", 10)


def test_the_graph_schema_is_the_contract_without_what_the_runner_adds():
    schema = contract_schema(RECOMMENDER, 7)
    assert schema.column_names == ["item_ids", "scores", "fallback", "source", "filled"]
    assert schema["item_ids"].shape.dims[1].max == 7 and "release" in RECOMMENDER.output_names
