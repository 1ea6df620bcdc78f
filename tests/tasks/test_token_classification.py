"""token-classification: parity with the transformers pipeline for every aggregation strategy, on three
tokenizer families (WordPiece "##", byte-level BPE "Ġ", Metaspace "▁") and labels without B-/I- prefixes."""

from __future__ import annotations

import pytest

from localinfer import BadRequestError
from tests.conftest import assert_close, assert_informative, plain

MODELS = ["bert-ner", "roberta-ner", "metaspace-ner"]
STRATEGIES = ["none", "simple", "first", "average", "max"]
TEXTS = [
    "My name is Sarah and I live in London",
    "Hugging Face is based in New York City, near the café!",
    "unbelievable zebras: 324 metres tall",
    "",
]
OTHER = ["That is a happy person", "Paris is the capital of France.", "I like you. I love you", "Today is a sunny day"]
# words out of the WordPiece vocabulary ("unbelievable zebras") split into pieces: the strategies then differ
LONG = " ".join(
    ["Sarah and Hugging Face live in New York City and Paris, the capital of France, with unbelievable zebras."] * 10
)
OTHER_LONG = " ".join(["My name is Sarah and I live in London, near the tower of Hugging Face."] * 12)


def _another_strategy(strategy: str) -> dict:
    """The oracle must answer otherwise with another strategy: "simple" (localinfer's default) for the others,
    "none" (the pipeline's default) for "simple"."""
    return {"aggregation_strategy": "none" if strategy == "simple" else "simple"}


def _oracle(pipe):
    return lambda texts, parameters: [plain(pipe(text, **parameters)) for text in texts]


@pytest.fixture(scope="module")
def oracles(tiny):
    from transformers import pipeline

    return {name: pipeline("token-classification", model=str(tiny[name])) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_parity_with_the_pipeline(engine, oracles, name, strategy):
    parameters = {"aggregation_strategy": strategy}
    changes = _another_strategy(strategy)
    expected = assert_informative(_oracle(oracles[name]), TEXTS, parameters, other_inputs=OTHER, changes=changes)
    assert sum(len(e) for e in expected) > 0  # the tiny model does find entities
    assert_close(engine.query(f"tiny/{name}", {"inputs": TEXTS, "parameters": parameters}), expected)
    assert_close(engine.query(f"tiny/{name}", {"inputs": TEXTS[1], "parameters": parameters}), expected[1])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_long_text_with_stride(engine, oracles, name, strategy):
    parameters = {"aggregation_strategy": strategy, "stride": 16}
    # without a stride the pipeline reads the first window only; "none" takes no stride
    changes = {"aggregation_strategy": "first" if strategy == "simple" else "simple"}
    expected = assert_informative(
        _oracle(oracles[name]), [LONG], parameters, other_inputs=[OTHER_LONG], changes=changes
    )
    expected = expected[0]
    assert_close(engine.query(f"tiny/{name}", {"inputs": LONG, "parameters": parameters}), expected)


def test_long_text_without_stride_is_truncated_as_the_pipeline_does(engine, oracles):
    expected = oracles["bert-ner"](LONG, aggregation_strategy="simple")
    assert_close(engine.query("tiny/bert-ner", LONG), expected)


@pytest.mark.parametrize("name", MODELS)
def test_ignore_labels(engine, oracles, name):
    oracle = _oracle(oracles[name])
    parameters = {"aggregation_strategy": "none", "ignore_labels": []}
    changes = {"aggregation_strategy": "simple"}
    expected = assert_informative(oracle, TEXTS[:1], parameters, other_inputs=OTHER[:1], changes=changes)[0]
    assert len(expected) == len(
        engine.query(
            f"tiny/{name}",
            {"inputs": TEXTS[0], "parameters": {"aggregation_strategy": "none", "ignore_labels": ["nothing"]}},
        )
    )
    assert_close(engine.query(f"tiny/{name}", {"inputs": TEXTS[0], "parameters": parameters}), expected)
    parameters = {"aggregation_strategy": "simple", "ignore_labels": ["O", "PER", "LOC"]}
    fixed = ("aggregation_strategy",)  # pinned: the ignored labels are under test
    expected = assert_informative(oracle, TEXTS[:2], parameters, other_inputs=OTHER[:2], fixed=fixed)
    assert_close(engine.query(f"tiny/{name}", {"inputs": TEXTS[:2], "parameters": parameters}), expected)


def test_default_strategy_is_simple(engine, oracles):
    answer = engine.query("tiny/bert-ner", TEXTS[0])
    parameters = {"aggregation_strategy": "simple"}
    expected = assert_informative(_oracle(oracles["bert-ner"]), TEXTS[:1], parameters, other_inputs=OTHER[:1])
    assert_close(answer, expected[0])
    assert all(set(e) == {"entity_group", "score", "word", "start", "end"} for e in answer)


def test_torch_backend_answers_the_same(engine, torch_engine):
    for name in MODELS:
        payload = {"inputs": TEXTS, "parameters": {"aggregation_strategy": "average"}}
        assert_close(torch_engine.query(f"tiny/{name}", payload), engine.query(f"tiny/{name}", payload))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"aggregation_strategy": "longest"}, "parameters.aggregation_strategy"),
        ({"aggregation_strategy": 1}, "parameters.aggregation_strategy"),
        ({"ignore_labels": "O"}, "parameters.ignore_labels"),
        ({"stride": -1}, "parameters.stride"),
        ({"stride": 2.5}, "parameters.stride"),
        ({"stride": 126}, "parameters.stride: must be less than 126"),
        ({"stride": 8, "aggregation_strategy": "none"}, "parameters.stride: needs an aggregation_strategy"),
        ({"grouped_entities": True}, "parameters.grouped_entities: unknown parameter"),
    ],
)
def test_bad_parameters_are_400_naming_them(engine, parameters, message):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/bert-ner", {"inputs": "x", "parameters": parameters})
    assert message in info.value.body["error"]


@pytest.fixture(scope="module")
def slow_tokenizer_model(tiny, tmp_path_factory):
    """bert-ner shipped with an ONNX file and only a slow tokenizer (no tokenizer.json): no offsets."""
    import shutil

    from optimum.exporters.onnx import main_export

    folder = shutil.copytree(tiny["bert-ner"], tmp_path_factory.mktemp("slow") / "bert-ner-slow")
    main_export(str(folder), str(folder / "onnx"), task="token-classification")
    for path in (folder / "tokenizer.json", folder / "onnx" / "tokenizer.json"):
        path.unlink()
    return folder


@pytest.mark.parametrize("strategy", ["none", "simple"])
def test_slow_tokenizer_answers_without_offsets(engine, slow_tokenizer_model, strategy):
    from transformers import AutoTokenizer, pipeline

    slow = AutoTokenizer.from_pretrained(slow_tokenizer_model, use_fast=False)
    oracle = pipeline("token-classification", model=str(slow_tokenizer_model), tokenizer=slow)
    parameters = {"aggregation_strategy": strategy}
    changes = _another_strategy(strategy)
    answer_of = _oracle(oracle)
    expected = assert_informative(answer_of, TEXTS[:1], parameters, other_inputs=OTHER[:1], changes=changes)[0]
    answer = engine.query(
        str(slow_tokenizer_model), {"inputs": TEXTS[0], "parameters": {"aggregation_strategy": strategy}}
    )
    assert_close(answer, expected)
    assert all(e["start"] is None for e in answer)


@pytest.mark.parametrize("strategy", ["first", "average", "max"])
def test_word_strategies_need_offsets(engine, slow_tokenizer_model, strategy):
    with pytest.raises(BadRequestError, match="needs word boundaries"):
        engine.query(str(slow_tokenizer_model), {"inputs": "x", "parameters": {"aggregation_strategy": strategy}})
