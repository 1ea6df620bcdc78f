"""feature-extraction: parity with sentence-transformers and the transformers pipeline, inputs checked."""

from __future__ import annotations

import pytest

from localinfer import BadRequestError
from tests.conftest import SENTENCES, assert_close, assert_informative

OTHER = ["I like you. I love you", "Paris is the capital of France.", "That is a happy dog", "", "zebra"]


@pytest.fixture(scope="module")
def st_oracle(tiny):
    from sentence_transformers import SentenceTransformer

    return {name: SentenceTransformer(str(tiny[name]), device="cpu") for name in ("st-mean-normalize", "st-cls")}


@pytest.mark.parametrize("name", ["st-mean-normalize", "st-cls"])
def test_sentence_transformers_model_answers_its_pooled_embeddings(engine, st_oracle, name):
    def oracle(texts, parameters):
        return st_oracle[name].encode(texts).tolist()

    expected = assert_informative(oracle, SENTENCES, {}, other_inputs=OTHER, tol=1e-5)
    assert_close(engine.query(f"tiny/{name}", {"inputs": SENTENCES}, task="feature-extraction"), expected, 1e-5)
    single = engine.query(f"tiny/{name}", SENTENCES[0], task="feature-extraction")
    assert_close(single, expected[0], 1e-5)


def test_plain_model_answers_what_the_transformers_pipeline_answers(engine, tiny):
    from transformers import pipeline

    oracle = pipeline("feature-extraction", model=str(tiny["bert-base"]))
    texts = SENTENCES[:3]
    # other texts of the same lengths in tokens: the features must differ with the words, not only the shapes
    others = ["That is a happy dog", "I like you. I love", "My name is Sarah and I live in Paris"]
    expected = assert_informative(lambda t, p: [oracle(x) for x in t], texts, {}, other_inputs=others, tol=1e-5)
    assert_close(engine.query("tiny/bert-base", {"inputs": texts}), expected, 1e-5)
    assert_close(engine.query("tiny/bert-base", texts[1]), expected[1], 1e-5)


def test_torch_backend_answers_the_same(engine, torch_engine):
    payload = {"inputs": SENTENCES}
    for model in ("tiny/st-mean-normalize", "tiny/bert-base"):
        assert_close(
            torch_engine.query(model, payload, task="feature-extraction"),
            engine.query(model, payload, task="feature-extraction"),
            1e-5,
        )


@pytest.mark.parametrize(
    ("inputs", "message"),
    [([], "inputs"), (None, "inputs"), (3, "inputs"), (["a", 1], "inputs.")],
)
def test_bad_inputs_are_400_naming_inputs(engine, inputs, message):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/bert-base", {"inputs": inputs})
    assert info.value.status == 400 and message in info.value.body["error"]


def test_unknown_parameter_is_400_naming_it(engine):
    with pytest.raises(BadRequestError, match=r"parameters\.pooling: unknown parameter"):
        engine.query("tiny/bert-base", {"inputs": "hi", "parameters": {"pooling": "max"}})
