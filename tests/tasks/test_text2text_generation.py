"""text2text-generation, summarization, translation: greedy and seeded answers equal the transformers pipeline's.

The tiny seq2seq models are trained to copy their input (tests/fixtures/tiny_models.py), so every answer below
follows the input and each tested parameter: `assert_informative` proves it before localinfer is compared.
"""

from __future__ import annotations

import pytest

from localinfer import BadRequestError
from tests.conftest import assert_informative

TEXTS = ["That is a happy person", "The tower is 324 metres tall, about the same height as an 81-storey building."]
OTHER_TEXTS = ["Today is a sunny day", "Paris is the capital of France."]
GREEDY = {"do_sample": False, "max_new_tokens": 5}
# ignoring max_new_tokens would give the models' default (8); the pipeline alone would give 256
DEFAULT_LENGTH = {"max_new_tokens": 8}


def _pipeline(tiny, task, name):
    from transformers import pipeline

    return pipeline(task, model=str(tiny[name]))


def _seeded(pipe, inputs, seed, **kwargs):
    import torch

    torch.manual_seed(seed)
    return pipe(inputs, **kwargs)


def _seeded_answer(pipe, **fixed):
    """The oracle for a request whose `seed` seeds torch before the pipeline samples."""
    return lambda inputs, parameters: _seeded(pipe, inputs, parameters.pop("seed", None), **{**fixed, **parameters})


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_text2text_greedy_equals_the_pipeline(engine, tiny, name):
    oracle = _pipeline(tiny, "text2text-generation", name)
    answer = lambda inputs, parameters: oracle(inputs, **parameters)  # noqa: E731
    # a list answers as the pipeline does: one entry per text
    expected = assert_informative(
        answer, TEXTS, GREEDY, other_inputs=OTHER_TEXTS, changes=DEFAULT_LENGTH, fixed=("do_sample",)
    )
    assert engine.query(f"tiny/{name}", {"inputs": TEXTS, "parameters": GREEDY}, task="text2text-generation") == (
        expected
    )
    one = engine.query(f"tiny/{name}", {"inputs": TEXTS[0], "parameters": GREEDY}, task="text2text-generation")
    assert one == oracle(TEXTS[0], **GREEDY)


def _reproducible(engine, name, text, parameters, task=None):
    """The seeded answer: the same again, another with another seed (numpy's generator cannot be bit-equal to
    torch's; the draws' distribution is tested in tests/decoding)."""

    def ask(changes):
        payload = {"inputs": text, "parameters": {**parameters, **changes}, "options": {"use_cache": False}}
        return engine.query(f"tiny/{name}", payload, task=task)

    answer = ask({})
    assert ask({}) == answer and len(answer) == parameters.get("num_return_sequences", 1)
    assert ask({"seed": parameters["seed"] + 1}) != answer
    return answer


def test_text2text_seeded_sampling_is_reproducible(engine):
    parameters = {"seed": 11, "do_sample": True, "top_k": 10, "num_return_sequences": 2, "max_new_tokens": 6}
    answer = _reproducible(engine, "t5", TEXTS[1], parameters)
    assert all(set(a) == {"generated_text"} and a["generated_text"] for a in answer)


@pytest.mark.parametrize("name", ["bart", "t5"])
@pytest.mark.parametrize("lengths", [{}, {"min_length": 10, "max_length": 12}, {"max_length": 4}])
def test_summarization_equals_the_pipeline(engine, tiny, name, lengths):
    oracle = _pipeline(tiny, "summarization", name)  # T5's "summarize: " prefix comes from its config

    def answer(inputs, parameters):
        # max_length bounds the summary (the pipeline's 256-token default must not override it); else the model's 8
        return oracle(inputs, **parameters, max_new_tokens=None if "max_length" in parameters else 8)

    parameters = {"do_sample": False, **lengths}
    expected = assert_informative(answer, TEXTS, parameters, other_inputs=OTHER_TEXTS, fixed=("do_sample",))
    answer = engine.query(f"tiny/{name}", {"inputs": TEXTS, "parameters": parameters}, task="summarization")
    assert answer == expected
    one = engine.query(f"tiny/{name}", {"inputs": TEXTS[1], "parameters": parameters}, task="summarization")
    assert one == [expected[1]] and set(one[0]) == {"summary_text"}


def test_summarization_seeded_sampling_is_reproducible(engine):
    parameters = {"seed": 4, "do_sample": True, "temperature": 2.0, "max_length": 10}
    answer = _reproducible(engine, "bart", TEXTS[1], parameters)
    assert set(answer[0]) == {"summary_text"} and answer[0]["summary_text"]


def test_long_input_is_truncated_not_refused(engine, tiny):
    """The encoder sees the input's start: truncating its other end answers differently (the model copies)."""
    oracle = _pipeline(tiny, "summarization", "bart")
    text = " ".join([TEXTS[0], *[TEXTS[1]] * 40])
    assert len(oracle.tokenizer(text)["input_ids"]) > 4 * oracle.tokenizer.model_max_length
    expected = oracle(text, do_sample=False, truncation=True, max_new_tokens=8)
    oracle.tokenizer.truncation_side = "left"
    assert oracle(text, do_sample=False, truncation=True, max_new_tokens=8) != expected
    assert engine.query("tiny/bart", {"inputs": text, "parameters": {"do_sample": False}}) == expected


def test_t5_translation_takes_its_task_prefix_from_the_config(engine, tiny):
    from transformers import pipeline

    oracle = pipeline("translation_en_to_fr", model=str(tiny["t5"]))
    expected = assert_informative(
        lambda inputs, parameters: oracle(inputs, **parameters),
        TEXTS,
        GREEDY,
        other_inputs=OTHER_TEXTS,
        changes=DEFAULT_LENGTH,
        fixed=("do_sample",),
    )
    # without its prefix ("translate English to French: ") the model answers otherwise
    assert _pipeline(tiny, "text2text-generation", "t5")(TEXTS, **GREEDY) != [
        {"generated_text": e["translation_text"]} for e in expected
    ]
    assert engine.query("tiny/t5", {"inputs": TEXTS, "parameters": GREEDY}, task="translation") == expected
    with_langs = {**GREEDY, "src_lang": "en", "tgt_lang": "fr"}
    assert engine.query("tiny/t5", {"inputs": TEXTS, "parameters": with_langs}, task="translation") == expected
    with pytest.raises(BadRequestError, match="translation_en_to_fr, not translation_en_to_de"):
        engine.query("tiny/t5", {"inputs": "x", "parameters": {"src_lang": "en", "tgt_lang": "de"}}, task="translation")


def test_marian_translation_equals_the_pipeline(engine, tiny):
    oracle = _pipeline(tiny, "translation", "marian")
    answer = lambda inputs, parameters: oracle(inputs, **parameters)  # noqa: E731
    expected = assert_informative(
        answer, TEXTS, GREEDY, other_inputs=OTHER_TEXTS, changes=DEFAULT_LENGTH, fixed=("do_sample",)
    )
    assert engine.query("tiny/marian", {"inputs": TEXTS, "parameters": GREEDY}) == expected
    one = engine.query("tiny/marian", {"inputs": TEXTS[0], "parameters": GREEDY})
    assert one == oracle(TEXTS[0], **GREEDY) and set(one[0]) == {"translation_text"}


def test_torch_backend_answers_the_same(engine, torch_engine):
    for name, task in [("bart", "summarization"), ("t5", "text2text-generation"), ("marian", "translation")]:
        payload = {"inputs": TEXTS, "parameters": {"do_sample": False}}
        assert torch_engine.query(f"tiny/{name}", payload, task=task) == engine.query(
            f"tiny/{name}", payload, task=task
        )


def test_the_onnx_route_reuses_past_key_values(engine):
    """The decoder graph takes past key/values, which the step model keeps between steps
    (tests/test_decoding_models.py checks each step's logits against PyTorch's)."""
    model = engine.preload("tiny/bart")
    assert model.runner.backend == "onnx"
    decoder = model.runner.sessions["decoder_model_merged.onnx"]
    assert any(i.name.startswith("past_key_values") for i in decoder.get_inputs())


@pytest.mark.parametrize(
    ("task", "parameters", "field"),
    [
        ("summarization", {"min_length": 0}, "parameters.min_length"),
        ("summarization", {"max_length": 501}, "parameters.max_length"),
        ("summarization", {"min_length": 9, "max_length": 5}, "min_length (9) must not exceed max_length (5)"),
        ("summarization", {"top_p": -0.1}, "parameters.top_p"),
        ("summarization", {"max_time": 200}, "parameters.max_time"),
        ("text2text-generation", {"max_new_tokens": 300}, "parameters.max_new_tokens"),
        ("text2text-generation", {"repetition_penalty": 101}, "parameters.repetition_penalty"),
        ("translation", {"src_lang": 3}, "parameters.src_lang"),
        ("translation", {"num_return_sequences": 2, "temperature": 0}, "parameters.num_return_sequences"),
    ],
)
def test_bad_parameters_are_400_naming_them(engine, task, parameters, field):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/bart", {"inputs": "hi", "parameters": parameters}, task=task)
    assert field in info.value.body["error"]
