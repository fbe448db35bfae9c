"""`recsys events push` reads each line on its own (CSV or JSON lines) and the `events` model's
configuration lists the contract's inputs, the optional ones marked."""
from __future__ import annotations

import math

import pytest

from core.contract import EVENTS, model_config
from recsys.events import parse


def test_csv_lines_are_read_one_by_one():
    parsed = parse("user_id,item_id,timestamp,event_type,event_value\n"
                   "1,10,1764583200,click,\n2,11,2025-12-01T10:00:00Z,buy,4.5\n"
                   "x,12,0,,\n3,13,soon,,\n4,14,,,many\n5,15,,,\n")
    assert parsed.lines == [2, 3, 7] and parsed.user_ids == [1, 2, 5]
    assert parsed.timestamps == [1764583200, 1764583200, 0]
    assert math.isnan(parsed.event_values[0]) and parsed.event_values[1] == 4.5
    assert [line for line, _ in parsed.errors] == [4, 5, 6]
    assert "user_id must be a 64-bit integer" in parsed.errors[0][1] and "'soon'" in parsed.errors[1][1]
    assert "event_value must be a number" in parsed.errors[2][1]


def test_json_lines_and_a_missing_header():
    parsed = parse('{"user_id": 1, "item_id": 2}\nnot json\n{"user_id": 3, "item_id": 4, "timestamp": 5}\n')
    assert parsed.user_ids == [1, 3] and parsed.timestamps == [0, 5] and parsed.errors[0][0] == 2
    with pytest.raises(ValueError, match=r"no column\(s\) \['item_id'\]"):
        parse("user_id,timestamp\n1,2\n")


def test_the_events_config_lists_its_inputs():
    text = model_config(EVENTS, "events", 10, version=3)
    assert '{ name: "user_id" data_type: TYPE_INT64 dims: [ -1 ] }' in text
    assert '{ name: "item_id" data_type: TYPE_INT64 dims: [ -1 ] }' in text
    assert '{ name: "event_value" data_type: TYPE_FP32 dims: [ -1 ] optional: true }' in text
    assert '{ name: "error" data_type: TYPE_STRING dims: [ -1 ] }' in text and "filter" not in text


def test_out_of_range_values_are_that_line_s_error():
    parsed = parse("user_id,item_id,timestamp\n99999999999999999999,1,0\n1,2,inf\n1,3,1e30\n4,5,\n")
    assert parsed.user_ids == [4] and [line for line, _ in parsed.errors] == [2, 3, 4]
