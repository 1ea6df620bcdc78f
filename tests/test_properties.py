"""Property-based: any JSON as inputs and parameters, any bytes as a body, gives a result or a 4xx, never
another exception (a 500, a traceback or a hang), for every task (hypothesis, derandomised: the same examples
on every run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localinfer import InferenceError
from localinfer.tasks import TASKS

SAMPLES = Path(__file__).parent / "samples"

# One tiny model per task.
MODELS = {
    "feature-extraction": "tiny/bert-base",
    "sentence-similarity": "tiny/st-mean-normalize",
    "text-classification": "tiny/distilbert-sentiment",
    "fill-mask": "tiny/bert-mlm",
    "zero-shot-classification": "tiny/bert-nli",
    "token-classification": "tiny/bert-ner",
    "question-answering": "tiny/bert-qa",
    "table-question-answering": "tiny/tapas",
    "text-generation": "tiny/gpt2",
    "conversational": "tiny/blenderbot-small",
    "summarization": "tiny/bart",
    "text2text-generation": "tiny/t5",
    "translation": "tiny/marian",
    "automatic-speech-recognition": "tiny/wav2vec2-ctc",
    "audio-classification": "tiny/wav2vec2-classifier",
    "image-classification": "tiny/vit",
    "object-detection": "tiny/yolos",
    "image-segmentation": "tiny/segformer",
}
# The field names the tasks' inputs use, so that generated dicts reach the validators' inner checks.
INPUT_KEYS = [
    "text", "text_pair", "question", "context", "source_sentence", "sentences", "query", "table",
    "past_user_inputs", "generated_responses",
]  # fmt: skip
WORDS = st.sampled_from(["", " ", "a", "London", "[MASK]", "<mask>", "Paris is nice", "é😀", "\x00", "324", "x" * 300])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=600),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=2),
    WORDS,
    st.text(max_size=20),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(INPUT_KEYS), st.text(max_size=5)), inner, max_size=4),
    ),
    max_leaves=12,
)


TEXT = st.one_of(WORDS, st.text(max_size=40))
TEXTS = st.lists(TEXT, min_size=1, max_size=4)
# Values a parameter plausibly takes, so that most examples pass validation and reach the model.
PLAUSIBLE = st.one_of(
    st.integers(min_value=0, max_value=12), st.floats(min_value=0, max_value=1.5), st.booleans(), TEXT, TEXTS
)
# Inputs of each task's own shape, with arbitrary texts (generic JSON reaches only the validators).
SHAPED = {
    "question-answering": st.fixed_dictionaries({"question": TEXT, "context": TEXT}),
    "sentence-similarity": st.fixed_dictionaries({"source_sentence": TEXT, "sentences": TEXTS}),
    "table-question-answering": st.fixed_dictionaries(
        {
            "query": TEXT,
            "table": st.dictionaries(TEXT, st.lists(st.one_of(TEXT, st.integers(-5, 5)), min_size=2, max_size=2)),
        }
    ),
    "conversational": st.fixed_dictionaries(
        {"text": TEXT}, optional={"past_user_inputs": TEXTS, "generated_responses": TEXTS}
    ),
    "text-classification": st.one_of(TEXT, st.fixed_dictionaries({"text": TEXT, "text_pair": TEXT})),
}


def _inputs(task: str) -> st.SearchStrategy[Any]:
    return st.one_of(JSON, SHAPED.get(task, st.one_of(TEXT, TEXTS)))


def _parameters(task: str) -> st.SearchStrategy[dict[str, Any]]:
    names = sorted(TASKS[task].Parameters.model_fields) or ["top_k"]
    values = st.one_of(PLAUSIBLE, PLAUSIBLE, JSON)
    if task == "zero-shot-classification":  # its labels are required: mostly given
        required = st.fixed_dictionaries({"candidate_labels": st.one_of(TEXT, TEXTS)})
        return st.one_of(
            st.builds(lambda a, b: {**a, **b}, required, st.dictionaries(st.sampled_from(names), values, max_size=3)),
            st.dictionaries(st.sampled_from(names), values, max_size=3),
        )
    return st.dictionaries(st.one_of(st.sampled_from(names), st.text(max_size=4)), values, max_size=3)


def _answered_or_4xx(engine, model: str, payload: Any) -> None:
    try:
        engine.query(model, payload)
    except InferenceError as exc:
        assert exc.status < 500, (payload, exc.status, exc.body)
        assert set(exc.body) <= {"error", "estimated_time", "warnings"} and isinstance(exc.body["error"], str)


PROPERTY = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
)


@pytest.mark.parametrize("task", sorted(MODELS))
def test_any_json_inputs_and_parameters(engine, task):
    media = TASKS[task].media is not None

    @PROPERTY
    @given(inputs=_inputs(task), parameters=_parameters(task), use_cache=st.booleans())
    def check(inputs, parameters, use_cache):
        payload = {"inputs": inputs, "parameters": parameters, "options": {"use_cache": use_cache}}
        _answered_or_4xx(engine, MODELS[task], payload)

    check()
    if not media:
        return

    sample = (SAMPLES / ("plane.jpg" if TASKS[task].media == "image" else "sample1.flac")).read_bytes()

    damaged = st.tuples(st.integers(0, len(sample) - 1), st.integers(0, 255)).map(
        lambda at: sample[: at[0]] + bytes([at[1]]) + sample[at[0] + 1 :]
    )
    truncated = st.integers(0, len(sample)).map(lambda n: sample[:n])

    @PROPERTY
    @given(body=st.one_of(st.binary(max_size=200), truncated, damaged), parameters=_parameters(task))
    def check_bytes(body, parameters):
        _answered_or_4xx(engine, MODELS[task], body)
        _answered_or_4xx(engine, MODELS[task], {"inputs": body, "parameters": parameters})

    check_bytes()


@pytest.mark.parametrize("task", sorted(t for t in MODELS if TASKS[t].media is None))
def test_any_bytes_as_a_text_body(engine, task):
    @PROPERTY
    @given(body=st.binary(max_size=300))
    def check(body):
        _answered_or_4xx(engine, MODELS[task], body)

    check()
