"""sentence-similarity: cosine similarities as sentence-transformers computes them."""

from __future__ import annotations

import pytest

from localinfer import BadRequestError
from tests.conftest import SENTENCES, assert_close, assert_informative

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
PUBLISHED = [0.6945773363113403, 0.9429150819778442, 0.2568760812282562]
EXAMPLE = {
    "inputs": {
        "source_sentence": "That is a happy person",
        "sentences": ["That is a happy dog", "That is a very happy person", "Today is a sunny day"],
    }
}


def test_minilm_reproduces_the_published_answer_on_onnx(engine):
    assert_close(engine.query(MINILM, EXAMPLE), PUBLISHED, 1e-5)
    assert (engine.onnx_dir(*engine.resolve(MINILM)) / "model.onnx").is_file()


def test_minilm_reproduces_the_published_answer_on_torch(torch_engine):
    assert_close(torch_engine.query(MINILM, EXAMPLE), PUBLISHED, 1e-5)


@pytest.mark.parametrize("name", ["st-mean-normalize", "st-cls"])
def test_parity_with_sentence_transformers(engine, tiny, name):
    from sentence_transformers import SentenceTransformer, util

    model = SentenceTransformer(str(tiny[name]), device="cpu")

    def oracle(inputs, parameters):
        source, others = inputs
        return util.cos_sim(model.encode(source), model.encode(others)).tolist()[0]

    source, others = SENTENCES[0], SENTENCES[1:]
    expected = assert_informative(oracle, (source, others), {}, other_inputs=(SENTENCES[1], others), tol=1e-5)
    answer = engine.query(f"tiny/{name}", {"inputs": {"source_sentence": source, "sentences": others}})
    assert_close(answer, expected, 1e-5)


def test_plain_model_is_mean_pooled_as_sentence_transformers_does(engine, tiny):
    from sentence_transformers import SentenceTransformer, util

    model = SentenceTransformer(str(tiny["bert-base"]), device="cpu")

    def oracle(inputs, parameters):
        source, others = inputs
        return util.cos_sim(model.encode(source), model.encode(others)).tolist()[0]

    inputs = (SENTENCES[0], SENTENCES[1:])
    expected = assert_informative(oracle, inputs, {}, other_inputs=(SENTENCES[2], SENTENCES[1:]), tol=1e-5)
    answer = engine.query(
        "tiny/bert-base", {"source_sentence": SENTENCES[0], "sentences": SENTENCES[1:]}, task="sentence-similarity"
    )
    assert_close(answer, expected, 1e-5)


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"source_sentence": "a", "sentences": []}, "inputs.sentences"),
        ({"source_sentence": "a"}, "inputs.sentences"),
        ({"sentences": ["a"]}, "inputs.source_sentence"),
        ({"source_sentence": 1, "sentences": ["a"]}, "inputs.source_sentence"),
        ({"source_sentence": "a", "sentences": "b"}, "inputs.sentences"),
        ({"source_sentence": "a", "sentences": ["b"], "extra": 1}, "inputs.extra"),
        ("just a string", "inputs"),
    ],
)
def test_bad_inputs_are_400_naming_the_field(engine, inputs, field):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/st-mean-normalize", {"inputs": inputs})
    assert field in info.value.body["error"]
