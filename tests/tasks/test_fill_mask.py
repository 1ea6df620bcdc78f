"""fill-mask: parity with the transformers pipeline (one mask, several masks, targets, top_k); errors."""

from __future__ import annotations

import re

import pytest

from localinfer import BadRequestError
from tests.conftest import assert_close, assert_informative, is_close

CASES = {
    "bert-mlm": ["That is a [MASK] person.", "Paris is the [MASK] of France, isn't it?", "[MASK] is a [MASK] day"],
    "roberta-mlm": ["That is a<mask> person.", "Paris is the capital of<mask>.", "<mask> is a<mask> day"],
}
OTHER = {
    "bert-mlm": ["My name is [MASK] and I live in London", "The [MASK] is 324 metres tall", "I [MASK] you. I love you"],
    "roberta-mlm": ["My name is<mask> and I live in London", "The<mask> is 324 metres tall", "I<mask> you. I love you"],
}
TARGETS = {"bert-mlm": ["happy", "sunny", "zzz-not-a-word"], "roberta-mlm": ["Ġhappy", "happy", "day"]}


def _predictions(answer):
    """The tokens and scores, not the filled sequences (which differ with the input whatever the model says)."""
    if isinstance(answer, dict):
        return {k: v for k, v in answer.items() if k != "sequence"}
    return [_predictions(a) for a in answer]


@pytest.fixture(scope="module")
def oracles(tiny):
    from transformers import pipeline

    return {name: pipeline("fill-mask", model=str(tiny[name])) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "parameters", [{}, {"top_k": 1}, {"top_k": 12}, "targets", "one target", "targets+top_k", "one target+top_k"]
)
def test_parity_with_the_pipeline(engine, oracles, name, parameters):
    fixed = ()
    if parameters == "targets":
        parameters = {"targets": TARGETS[name]}
    elif parameters == "one target":
        parameters = {"targets": TARGETS[name][0]}
    elif parameters == "targets+top_k":
        parameters = {"targets": TARGETS[name], "top_k": 2}
    elif parameters == "one target+top_k":
        parameters, fixed = {"targets": TARGETS[name][0], "top_k": 3}, ("top_k",)  # one target: one answer

    def oracle(texts, parameters):
        return [oracles[name](text, **parameters) for text in texts]

    expected = assert_informative(
        oracle,
        CASES[name],
        parameters,
        other_inputs=OTHER[name],
        fixed=fixed,
        same=lambda a, b: is_close(_predictions(a), _predictions(b)),
    )
    for text, expected_for_text in zip(CASES[name], expected, strict=True):
        answer = engine.query(f"tiny/{name}", {"inputs": text, "parameters": parameters})
        assert_close(answer, expected_for_text)
    assert_close(engine.query(f"tiny/{name}", {"inputs": CASES[name], "parameters": parameters}), expected)


def test_default_is_five_best_first(engine):
    answer = engine.query("tiny/bert-mlm", "That is a [MASK] person.")
    assert len(answer) == 5 and set(answer[0]) == {"sequence", "score", "token", "token_str"}
    assert [a["score"] for a in answer] == sorted((a["score"] for a in answer), reverse=True)


def test_torch_backend_answers_the_same(engine, torch_engine):
    for name, texts in CASES.items():
        payload = {"inputs": texts, "parameters": {"top_k": 3}}
        assert_close(torch_engine.query(f"tiny/{name}", payload), engine.query(f"tiny/{name}", payload))


@pytest.mark.parametrize(("name", "token"), [("bert-mlm", "[MASK]"), ("roberta-mlm", "<mask>")])
def test_input_without_the_mask_token_is_400_naming_it(engine, name, token):
    with pytest.raises(BadRequestError, match=re.escape(f"no mask token {token}")):
        engine.query(f"tiny/{name}", {"inputs": ["That is a [mask] <MASK> person"]})


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"top_k": 0}, "parameters.top_k"),
        ({"top_k": "3"}, "parameters.top_k"),
        ({"targets": []}, "parameters.targets"),
        ({"targets": [1]}, "parameters.targets"),
        ({"targets": ""}, "parameters.targets"),
        ({"target": "x"}, "parameters.target: unknown parameter"),
    ],
)
def test_bad_parameters_are_400_naming_them(engine, parameters, field):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/bert-mlm", {"inputs": "a [MASK]", "parameters": parameters})
    assert field in info.value.body["error"]
