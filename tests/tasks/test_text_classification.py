"""text-classification: parity with the transformers pipeline for every parameter; bounds checked."""

from __future__ import annotations

import pytest

from localinfer import BadRequestError
from tests.conftest import SENTENCES, assert_close

MODELS = ["distilbert-sentiment", "bert-single-label", "roberta-multilabel"]


@pytest.fixture(scope="module")
def oracles(tiny):
    from transformers import pipeline

    return {name: pipeline("text-classification", model=str(tiny[name])) for name in MODELS}


PARAMETERS = [
    {},
    {"top_k": 1},
    {"top_k": 2},
    {"function_to_apply": "sigmoid"},
    {"function_to_apply": "softmax", "top_k": 3},
    {"function_to_apply": "NONE"},
]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("parameters", PARAMETERS)
def test_parity_with_the_pipeline(engine, oracles, name, parameters):
    oracle_kwargs = {"top_k": None, **parameters}
    expected = [oracles[name](text, **oracle_kwargs) for text in SENTENCES]
    answer = engine.query(f"tiny/{name}", {"inputs": SENTENCES, "parameters": parameters})
    assert_close(answer, expected)
    single = engine.query(f"tiny/{name}", {"inputs": SENTENCES[2], "parameters": parameters})
    assert_close(single, [expected[2]])


def test_every_label_best_first_by_default(engine, tiny):
    answer = engine.query("tiny/roberta-multilabel", "I like you. I love you")
    assert len(answer) == 1 and [e["label"] for e in answer[0]].__len__() == 4
    scores = [e["score"] for e in answer[0]]
    assert scores == sorted(scores, reverse=True)


def test_text_pair(engine, oracles):
    pair = {"text": "Paris is the capital of France.", "text_pair": "That is a happy dog"}
    expected = oracles["distilbert-sentiment"](pair, top_k=None)
    assert_close(engine.query("tiny/distilbert-sentiment", {"inputs": pair}), [expected])


def test_torch_backend_answers_the_same(engine, torch_engine):
    for name in MODELS:
        payload = {"inputs": SENTENCES, "parameters": {"top_k": 2}}
        assert_close(torch_engine.query(f"tiny/{name}", payload), engine.query(f"tiny/{name}", payload))


def test_long_input_is_truncated_to_the_window(engine, oracles):
    text = "happy " * 400
    answer = engine.query("tiny/distilbert-sentiment", text)
    assert_close(answer, [oracles["distilbert-sentiment"](text, top_k=None, truncation=True)])


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"top_k": 0}, "parameters.top_k"),
        ({"top_k": -3}, "parameters.top_k"),
        ({"top_k": "2"}, "parameters.top_k"),
        ({"top_k": 1.5}, "parameters.top_k"),
        ({"function_to_apply": "relu"}, "parameters.function_to_apply"),
        ({"function_to_apply": 1}, "parameters.function_to_apply"),
        ({"return_all_scores": True}, "parameters.return_all_scores: unknown parameter"),
    ],
)
def test_bad_parameters_are_400_naming_them(engine, parameters, field):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/distilbert-sentiment", {"inputs": "hi", "parameters": parameters})
    assert info.value.status == 400 and field in info.value.body["error"]


def test_top_k_message_gives_the_bound(engine):
    with pytest.raises(BadRequestError, match=r"parameters\.top_k: Input should be greater than or equal to 1"):
        engine.query("tiny/distilbert-sentiment", {"inputs": "hi", "parameters": {"top_k": 0}})
