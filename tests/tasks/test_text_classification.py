"""text-classification: parity with the transformers pipeline for every parameter; bounds checked."""

from __future__ import annotations

import pytest

from localinfer import BadRequestError
from tests.conftest import SENTENCES, assert_close, assert_informative

MODELS = ["distilbert-sentiment", "bert-single-label", "roberta-multilabel"]
LABELS = {"distilbert-sentiment": 2, "bert-single-label": 1, "roberta-multilabel": 4}
DEFAULT_FUNCTION = {"distilbert-sentiment": "softmax", "bert-single-label": "sigmoid", "roberta-multilabel": "sigmoid"}
PAIRS = [
    {"text": "Paris is the capital of France.", "text_pair": "That is a happy dog"},
    {"text": "Today is a sunny day", "text_pair": "My name is Sarah and I live in London"},
]


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
    {"function_to_apply": "none", "top_k": 1},
]


def _untested(name: str, parameters: dict) -> tuple[str, ...]:
    """The parameters that cannot change this model's answer: a top_k of at least its number of labels, and the
    function it applies by default."""
    untested = []
    if parameters.get("top_k", 0) >= LABELS[name]:
        untested.append("top_k")
    if parameters.get("function_to_apply", "").lower() == DEFAULT_FUNCTION[name]:
        untested.append("function_to_apply")
    return tuple(untested)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("parameters", PARAMETERS)
def test_parity_with_the_pipeline(engine, oracles, name, parameters):
    def oracle(texts, parameters):
        return [oracles[name](text, **{"top_k": None, **parameters}) for text in texts]

    if name == "bert-single-label" and parameters.get("function_to_apply") == "softmax":
        expected = oracle(SENTENCES, parameters)  # the softmax of one logit is 1 whatever the input
        assert all(answer == [{"label": "LABEL_0", "score": 1.0}] for answer in expected)
    else:
        others = [""] * len(SENTENCES)  # every input replaced by "" must not pass
        expected = assert_informative(
            oracle, SENTENCES, parameters, other_inputs=others, fixed=_untested(name, parameters)
        )
    answer = engine.query(f"tiny/{name}", {"inputs": SENTENCES, "parameters": parameters})
    assert_close(answer, expected)
    single = engine.query(f"tiny/{name}", {"inputs": SENTENCES[2], "parameters": parameters})
    assert_close(single, [expected[2]])


def test_every_label_best_first_by_default(engine, tiny):
    answer = engine.query("tiny/roberta-multilabel", "I like you. I love you")
    assert len(answer) == 1 and [e["label"] for e in answer[0]].__len__() == 4
    scores = [e["score"] for e in answer[0]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("name", MODELS)
def test_text_pair(engine, oracles, name):
    def oracle(inputs, parameters):
        return [oracles[name](item, top_k=None, **parameters) for item in inputs]

    # the pair is read whole: neither its second text dropped nor both texts emptied passes
    assert_informative(oracle, PAIRS, {}, other_inputs=[{"text": "", "text_pair": ""}] * len(PAIRS))
    expected = assert_informative(oracle, PAIRS, {}, other_inputs=[pair["text"] for pair in PAIRS])
    assert_close(engine.query(f"tiny/{name}", {"inputs": PAIRS}), expected)
    assert_close(engine.query(f"tiny/{name}", {"inputs": PAIRS[0]}), [expected[0]])


def test_torch_backend_answers_the_same(engine, torch_engine):
    for name in MODELS:
        payload = {"inputs": SENTENCES, "parameters": {"top_k": 2}}
        assert_close(torch_engine.query(f"tiny/{name}", payload), engine.query(f"tiny/{name}", payload))


def test_long_input_is_truncated_to_the_window(engine, oracles):
    text = "My name is Sarah and I live in London. " * 12 + "happy " * 400

    def oracle(text, parameters):
        return [oracles["distilbert-sentiment"](text, top_k=None, truncation=True)]

    # the window keeps the first tokens: keeping the last ones (truncating on the wrong side) answers otherwise
    expected = assert_informative(oracle, text, {}, other_inputs="happy " * 400)
    assert_close(engine.query("tiny/distilbert-sentiment", text), expected)


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
