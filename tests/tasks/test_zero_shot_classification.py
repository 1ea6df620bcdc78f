"""zero-shot-classification: parity with the transformers pipeline; labels, template and model checks."""

from __future__ import annotations

import pytest

from localinfer import BadRequestError
from tests.conftest import SENTENCES, assert_close, assert_informative

MODELS = ["bert-nli", "roberta-nli"]
LABELS = ["happy", "weather", "travel", "london"]
OTHER = [
    "I like you. I love you",
    "Paris is the capital of France.",
    "The answer to the universe is 42.",
    "That is a happy dog",
]


@pytest.fixture(scope="module")
def oracles(tiny):
    from transformers import pipeline

    return {name: pipeline("zero-shot-classification", model=str(tiny[name])) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "parameters",
    [
        {"candidate_labels": LABELS},
        {"candidate_labels": LABELS, "multi_label": True},
        {"candidate_labels": ["weather"]},
        {"candidate_labels": "happy, sad ,, weather"},
        {"candidate_labels": LABELS[:2], "hypothesis_template": "The topic is {} !"},
    ],
)
def test_parity_with_the_pipeline(engine, oracles, name, parameters):
    def oracle(texts, parameters):
        return [oracles[name](text, **parameters) for text in texts]

    texts = SENTENCES[:4]
    # other labels, one of them changed (the pipeline needs candidate labels: they are replaced, not dropped)
    labels = parameters["candidate_labels"]
    other_labels = ["sad", *labels[1:]] if isinstance(labels, list) else labels.replace("happy", "sunny")
    changes = {"candidate_labels": other_labels}
    expected = assert_informative(oracle, texts, parameters, other_inputs=OTHER, changes=changes)
    answer = engine.query(f"tiny/{name}", {"inputs": texts, "parameters": parameters})
    assert_close(answer, expected)
    assert_close(engine.query(f"tiny/{name}", {"inputs": texts[0], "parameters": parameters}), expected[0])


def test_scores_sum_to_one_unless_multi_label(engine):
    single = engine.query("tiny/bert-nli", {"inputs": "a sunny day", "parameters": {"candidate_labels": LABELS}})
    assert abs(sum(single["scores"]) - 1) < 1e-5 and single["scores"] == sorted(single["scores"], reverse=True)
    parameters = {"candidate_labels": LABELS, "multi_label": True}
    multi = engine.query("tiny/bert-nli", {"inputs": "a sunny day", "parameters": parameters})
    assert abs(sum(multi["scores"]) - 1) > 1e-3


def test_torch_backend_answers_the_same(engine, torch_engine):
    payload = {"inputs": SENTENCES[:3], "parameters": {"candidate_labels": LABELS}}
    for name in MODELS:
        assert_close(torch_engine.query(f"tiny/{name}", payload), engine.query(f"tiny/{name}", payload))


def test_model_without_entailment_label_is_400(engine):
    with pytest.raises(BadRequestError, match="entailment label"):
        engine.query(
            "tiny/distilbert-sentiment",
            {"inputs": "x", "parameters": {"candidate_labels": ["a"]}},
            task="zero-shot-classification",
        )


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({}, "parameters.candidate_labels: Field required"),
        ({"candidate_labels": []}, "parameters.candidate_labels"),
        ({"candidate_labels": " , "}, "parameters.candidate_labels"),
        ({"candidate_labels": [str(i) for i in range(11)]}, "parameters.candidate_labels"),
        ({"candidate_labels": ["a"], "multi_label": "yes"}, "parameters.multi_label"),
        ({"candidate_labels": ["a"], "hypothesis_template": "no slot"}, "parameters.hypothesis_template"),
        ({"candidate_labels": ["a"], "hypothesis_template": "{0} {1}"}, "parameters.hypothesis_template"),
        ({"candidate_labels": ["a"], "multi_class": True}, "parameters.multi_class: unknown parameter"),
    ],
)
def test_bad_parameters_are_400_naming_them(engine, parameters, field):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/bert-nli", {"inputs": "x", "parameters": parameters})
    assert field in info.value.body["error"]
