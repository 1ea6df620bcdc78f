"""question-answering: parity with the transformers pipeline for every parameter; long contexts; errors."""

from __future__ import annotations

import pytest

from localinfer import BadRequestError
from tests.conftest import assert_close, assert_informative

MODELS = ["bert-qa", "roberta-qa"]
EXAMPLES = [
    {"question": "What is the capital of France?", "context": "Paris is the capital of France."},
    {"question": "Where do I live?", "context": "My name is Sarah and I live in London, near the café."},
    {
        "question": "How tall is the tower?",
        "context": "The tower is 324 metres tall, about the same height as an 81-storey building.",
    },
]
LONG = {
    "question": "Where is Hugging Face based?",
    "context": " ".join(["Hugging Face is based in New York City. Paris is the capital of France."] * 15),
}
# The null answer ("" at 0) beats every span here when it may (handle_impossible_answer), and loses on EXAMPLES.
NULL_WINS = {"question": "What is my name?", "context": "My name is Sarah"}
OTHER = [
    {"question": "Where do I live?", "context": "Paris is the capital of France."},
    {"question": "What is the capital of France?", "context": "I like you. I love you, near the café."},
    {"question": "Who am I?", "context": "The answer to the universe is 42, the same height as an 81-storey building."},
    {"question": "Which dog?", "context": "That is a happy dog"},
    {"question": "How tall is the tower?", "context": LONG["context"]},
]
PARAMETERS = [
    {},
    {"top_k": 3},
    {"top_k": 2, "max_answer_len": 3},
    {"handle_impossible_answer": True},
    {"align_to_words": False, "top_k": 4},
    {"max_seq_len": 48, "doc_stride": 16},
]


@pytest.fixture(scope="module")
def oracles(tiny):
    from transformers import pipeline

    return {name: pipeline("question-answering", model=str(tiny[name])) for name in MODELS}


def _as_issue_says(answer, top_k):
    """The pipeline answers a dict when it finds one answer; the issue asks for a list whenever top_k > 1."""
    return [answer] if isinstance(answer, dict) and top_k > 1 else answer


def _oracle(pipe):
    def answer(examples, parameters):
        top_k = parameters.get("top_k", 1)
        return [_as_issue_says(pipe(**example, **parameters), top_k) for example in examples]

    return answer


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("parameters", PARAMETERS)
def test_parity_with_the_pipeline(engine, oracles, name, parameters):
    examples = [*EXAMPLES, NULL_WINS, LONG]
    expected = assert_informative(_oracle(oracles[name]), examples, parameters, other_inputs=OTHER)
    for example, expected_for_example in zip(examples, expected, strict=True):
        answer = engine.query(f"tiny/{name}", {"inputs": example, "parameters": parameters})
        assert_close(answer, expected_for_example)
    batch = engine.query(f"tiny/{name}", {"inputs": examples[:-1], "parameters": parameters})
    assert_close(batch, expected[:-1])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("top_k", [1, 3])
def test_impossible_answer_wins_where_the_pipeline_says(engine, oracles, name, top_k):
    """The null answer wins on NULL_WINS and loses on EXAMPLES[0], for the oracle and for localinfer."""
    parameters = {"handle_impossible_answer": True, "top_k": top_k}
    changes = {"top_k": 2} if top_k == 1 else {}
    oracle = _oracle(oracles[name])
    wins, loses = assert_informative(
        oracle, [NULL_WINS, EXAMPLES[0]], parameters, other_inputs=OTHER[:2], changes=changes
    )
    best_of = lambda answer: answer if isinstance(answer, dict) else answer[0]  # noqa: E731
    assert best_of(wins) == {"answer": "", "score": best_of(wins)["score"], "start": 0, "end": 0}
    assert best_of(loses)["answer"] != ""
    for example, expected in ((NULL_WINS, wins), (EXAMPLES[0], loses)):
        assert_close(engine.query(f"tiny/{name}", {"inputs": example, "parameters": parameters}), expected)


def test_answer_is_the_context_slice(engine):
    for name in MODELS:
        for answer in engine.query(f"tiny/{name}", {"inputs": LONG, "parameters": {"top_k": 5}}):
            assert LONG["context"][answer["start"] : answer["end"]] == answer["answer"]
            assert set(answer) == {"answer", "score", "start", "end"}


def test_long_context_is_split_with_a_stride(engine, oracles):
    """The answer may come from any window: the whole context is read, not its first window."""
    context = " ".join(f"The tower number {i} is {3 * i} metres tall." for i in range(40))
    example = {"question": "How tall is the tower?", "context": context}
    parameters = {"top_k": 20, "max_seq_len": 32}
    other = {"question": "How tall is the tower?", "context": context.replace("tall", "high")}
    expected = assert_informative(_oracle(oracles["bert-qa"]), [example], parameters, other_inputs=[other])[0]
    answers = engine.query("tiny/bert-qa", {"inputs": example, "parameters": parameters})
    assert max(a["end"] for a in answers) > len(context) // 2
    assert_close(answers, expected)


def test_torch_backend_answers_the_same(engine, torch_engine):
    for name in MODELS:
        payload = {"inputs": EXAMPLES, "parameters": {"top_k": 2}}
        assert_close(torch_engine.query(f"tiny/{name}", payload), engine.query(f"tiny/{name}", payload))


@pytest.mark.parametrize(
    ("inputs", "parameters", "message"),
    [
        ({"question": "", "context": "x"}, {}, "inputs.question"),
        ({"question": "q"}, {}, "inputs.context"),
        ({"question": "q", "context": 3}, {}, "inputs.context"),
        ("just text", {}, "inputs"),
        (EXAMPLES[0], {"top_k": 0}, "parameters.top_k"),
        (EXAMPLES[0], {"max_answer_len": 0}, "parameters.max_answer_len"),
        (EXAMPLES[0], {"doc_stride": -1}, "parameters.doc_stride"),
        (EXAMPLES[0], {"max_seq_len": 1}, "parameters.max_seq_len"),
        (EXAMPLES[0], {"max_seq_len": 4096}, "parameters.max_seq_len: at most 128"),
        (EXAMPLES[0], {"max_seq_len": 32, "doc_stride": 40}, "parameters.doc_stride (40) is larger than max_seq_len"),
        (EXAMPLES[0], {"max_question_len": 0}, "parameters.max_question_len"),
        (EXAMPLES[0], {"handle_impossible_answer": "yes"}, "parameters.handle_impossible_answer"),
        (EXAMPLES[0], {"topk": 2}, "parameters.topk: unknown parameter"),
        ({"question": "why " * 40, "context": "because"}, {"max_seq_len": 24, "doc_stride": 4}, "inputs: cannot fit"),
    ],
)
def test_bad_requests_are_400_naming_the_field(engine, inputs, parameters, message):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/bert-qa", {"inputs": inputs, "parameters": parameters})
    assert message in info.value.body["error"]
