"""Payload parsing as the hosted API parsed bodies."""

from __future__ import annotations

import base64

import pytest

from localinfer import BadRequestError
from localinfer.payload import parse_payload


def test_dict_with_inputs_parameters_options():
    request = parse_payload({"inputs": "hi", "parameters": {"top_k": 2}, "options": {"use_cache": False}})
    assert request.inputs == "hi" and request.parameters == {"top_k": 2}
    assert request.options.use_cache is False and request.options.wait_for_model is False


def test_dict_without_inputs_is_the_inputs():
    request = parse_payload({"source_sentence": "a", "sentences": ["b"]})
    assert request.inputs == {"source_sentence": "a", "sentences": ["b"]} and request.parameters == {}


def test_str_is_the_inputs():
    assert parse_payload("hello").inputs == "hello"


@pytest.mark.parametrize(
    ("body", "inputs"),
    [
        (b'{"inputs": "x"}', "x"),
        (b'"a bare json string"', "a bare json string"),
        (b"42", 42),
        (b'["a", "b"]', ["a", "b"]),
        ("plain UTF-8 text, not JSON: café".encode(), "plain UTF-8 text, not JSON: café"),
    ],
)
def test_bytes_bodies(body, inputs):
    assert parse_payload(body).inputs == inputs


def test_invalid_utf8_is_400_for_a_text_task():
    with pytest.raises(BadRequestError, match="UTF-8"):
        parse_payload(b"\xff\xfe\x00bad")


def test_media_bytes_pass_through():
    raw = b"\xff\xd8\xff\xe0 a jpeg"
    assert parse_payload(raw, media=True).inputs == raw


def test_media_as_base64_json():
    raw = b"\x89PNG\r\n"
    encoded = base64.b64encode(raw).decode()
    assert parse_payload({"inputs": encoded, "parameters": {"top_k": 1}}, media=True).inputs == raw
    assert parse_payload({"image": encoded}, media=True).inputs == raw


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"inputs": "x", "options": {"use_cache": "no"}}, "options.use_cache"),
        ({"inputs": "x", "options": {"wait_for_model": 1}}, "options.wait_for_model"),
        ({"inputs": "x", "parameters": [1]}, "parameters must be a JSON object"),
        ({"inputs": "x", "options": "fast"}, "options must be a JSON object"),
        ({"inputs": None}, "inputs"),
        (b"", "empty"),
        (None, "payload must be"),
        (True, "payload must be"),
    ],
)
def test_bad_payloads_are_400(payload, message):
    with pytest.raises(BadRequestError) as info:
        parse_payload(payload)
    assert info.value.status == 400 and message in info.value.body["error"]
