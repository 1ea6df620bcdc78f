"""text-generation: greedy and seeded answers equal the transformers pipeline's; KV cache; limits; bounds.

Each parity case first proves (`assert_informative`) that the oracle's answer follows its prompt and each parameter.
"""

from __future__ import annotations

import time

import pytest

from localinfer import BadRequestError
from tests.conftest import assert_close, assert_informative

PROMPTS = ["That is a happy", "Paris is the capital of", "My name is Sarah and"]
# ignoring max_new_tokens would give the model's default (8); the pipeline alone would give 256
DEFAULT_LENGTH = {"max_new_tokens": 8}


@pytest.fixture(scope="module")
def oracle(tiny):
    from transformers import pipeline

    return pipeline("text-generation", model=str(tiny["gpt2"]))


def _sampled(oracle, prompt, seed, **kwargs):
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    return oracle(prompt, **kwargs)


def _answer(oracle):
    """The oracle for a request: `seed` seeds torch before the pipeline runs, `stop` becomes its stop strings."""

    def answer(prompt, parameters):
        if parameters.get("stop"):
            parameters.update(stop_strings=parameters.pop("stop"), tokenizer=oracle.tokenizer)
        return _sampled(oracle, prompt, parameters.pop("seed", None), **parameters)

    return answer


@pytest.mark.parametrize("return_full_text", [True, False])
def test_greedy_equals_the_pipeline(engine, oracle, return_full_text):
    parameters = {"do_sample": False, "max_new_tokens": 6, "return_full_text": return_full_text}
    expected = [
        assert_informative(
            _answer(oracle),
            prompt,
            parameters,
            other_inputs=PROMPTS[i - 1],
            changes={"return_full_text": not return_full_text, **DEFAULT_LENGTH},
            fixed=("do_sample",),
        )
        for i, prompt in enumerate(PROMPTS)
    ]
    assert engine.query("tiny/gpt2", {"inputs": PROMPTS, "parameters": parameters}) == expected
    assert engine.query("tiny/gpt2", {"inputs": PROMPTS[0], "parameters": parameters}) == expected[0]


def test_empty_prompt_starts_from_bos_as_the_pipeline(engine, oracle):
    """An empty prompt: the pipeline hands `generate` no input ids, which starts from the bos token."""
    parameters = {"do_sample": False, "max_new_tokens": 6}
    expected = assert_informative(
        _answer(oracle), "", parameters, other_inputs=PROMPTS[0], changes=DEFAULT_LENGTH, fixed=("do_sample",)
    )
    assert engine.query("tiny/gpt2", {"inputs": "", "parameters": parameters}) == expected
    streamed = engine.stream("tiny/gpt2", {"inputs": "", "parameters": parameters})
    assert "".join(streamed) == expected[0]["generated_text"]


def test_temperature_zero_means_greedy(engine, oracle):
    expected = oracle(PROMPTS[0], do_sample=False, max_new_tokens=8)
    assert _sampled(oracle, PROMPTS[0], 0, do_sample=True, max_new_tokens=8) != expected  # sampling would differ
    answer = engine.query("tiny/gpt2", {"inputs": PROMPTS[0], "parameters": {"temperature": 0, "max_new_tokens": 8}})
    assert answer == expected


SAMPLED = [
    {"seed": 7, "max_new_tokens": 6},
    {"seed": 3, "max_new_tokens": 6, "top_k": 20, "top_p": 0.9, "temperature": 0.5, "num_return_sequences": 3},
    {"seed": 5, "max_new_tokens": 6, "repetition_penalty": 1.5, "temperature": 0.5},
]


@pytest.mark.parametrize("parameters", SAMPLED)
def test_seeded_sampling_is_reproducible_and_seeds_differ(engine, parameters):
    """Sampling draws with numpy's generator: a seed gives the same answer again, another seed another answer (it
    cannot be bit-equal to torch's generator; the draws' distribution is tested in tests/decoding)."""

    def ask(changes):
        payload = {"inputs": PROMPTS[1], "parameters": {**parameters, **changes}, "options": {"use_cache": False}}
        return engine.query("tiny/gpt2", payload)

    answer = ask({})
    assert ask({}) == answer and len(answer) == parameters.get("num_return_sequences", 1)
    assert ask({"seed": parameters["seed"] + 1}) != answer
    assert all(
        a["generated_text"].startswith(PROMPTS[1]) and len(a["generated_text"]) > len(PROMPTS[1]) for a in answer
    )


@pytest.mark.parametrize("changes", [{}, {"repetition_penalty": 1.5, "temperature": 0.5}])
def test_sampling_from_the_top_token_is_the_pipelines_greedy_answer(engine, oracle, changes):
    """top_k 1 leaves one token to draw: the sampling path (its processors, warpers and draw) must then answer
    what the pipeline answers greedily with the same penalties."""
    parameters = {"do_sample": False, "max_new_tokens": 6, **changes}
    expected = assert_informative(
        _answer(oracle),
        PROMPTS[1],
        parameters,
        other_inputs=PROMPTS[2],
        changes=DEFAULT_LENGTH,
        fixed=("do_sample", "temperature"),
    )
    sampled = {**parameters, "do_sample": True, "top_k": 1, "seed": 1}
    assert engine.query("tiny/gpt2", {"inputs": PROMPTS[1], "parameters": sampled}) == expected


def test_without_seed_the_cache_answers_and_use_cache_false_samples_anew(engine):
    payload = {"inputs": "I like you.", "parameters": {"max_new_tokens": 12, "temperature": 1.5}}
    first = engine.query("tiny/gpt2", payload)
    assert engine.query("tiny/gpt2", payload) == first
    fresh = [engine.query("tiny/gpt2", {**payload, "options": {"use_cache": False}}) for _ in range(3)]
    assert any(f != first for f in fresh)


def test_stop_sequences_as_the_pipeline_stops(engine, oracle):
    plain = oracle(PROMPTS[0], do_sample=False, max_new_tokens=8)[0]["generated_text"]
    stop = plain[len(PROMPTS[0]) + 3 : len(PROMPTS[0]) + 5]
    parameters = {"do_sample": False, "max_new_tokens": 8, "stop": [stop]}
    expected = assert_informative(
        _answer(oracle), PROMPTS[0], parameters, other_inputs=PROMPTS[1], fixed=("do_sample", "max_new_tokens")
    )
    answer = engine.query("tiny/gpt2", {"inputs": PROMPTS[0], "parameters": parameters})
    assert answer == expected and len(answer[0]["generated_text"]) < len(plain)


def test_max_new_tokens_zero_as_the_pipeline(engine, oracle):
    """The pipeline refuses it (generate wants at least one new token): a 400 with its reason."""
    parameters = {"do_sample": False, "max_new_tokens": 0}
    with pytest.raises(ValueError, match="must be greater than 0") as refused:
        oracle(PROMPTS[0], **parameters)
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/gpt2", {"inputs": PROMPTS[0], "parameters": parameters})
    assert str(refused.value) in info.value.body["error"]


def test_max_time_stops_a_long_generation_near_the_limit(engine):
    parameters = {"do_sample": False, "max_new_tokens": 250, "return_full_text": False}
    engine.preload("tiny/gpt2-long")
    started = time.perf_counter()
    full = engine.query("tiny/gpt2-long", {"inputs": "Today is", "parameters": parameters})[0]["generated_text"]
    full_seconds = time.perf_counter() - started
    limit = full_seconds / 5
    started = time.perf_counter()
    cut = engine.query(
        "tiny/gpt2-long",
        {"inputs": "Today is", "parameters": {**parameters, "max_time": limit}, "options": {"use_cache": False}},
    )[0]["generated_text"]
    elapsed = time.perf_counter() - started
    # a cut inside a multi-byte character (byte-level BPE) decodes its bytes to U+FFFD
    assert len(cut) < len(full) and full.startswith(cut.rstrip("\ufffd"))
    assert elapsed < limit + 0.25, (elapsed, limit, full_seconds)


def test_the_onnx_route_reuses_past_key_values(engine):
    """The export's graph takes past key/values, which the step model keeps between steps
    (tests/test_decoding_models.py checks each step's logits against PyTorch's)."""
    model = engine.preload("tiny/gpt2")
    assert model.runner.backend == "onnx"
    inputs = [i.name for i in model.runner.sessions["model.onnx"].get_inputs()]
    assert any(name.startswith("past_key_values") for name in inputs), inputs


def test_torch_backend_answers_the_same(engine, torch_engine):
    payload = {"inputs": PROMPTS, "parameters": {"do_sample": False, "max_new_tokens": 8}}
    assert torch_engine.query("tiny/gpt2", payload) == engine.query("tiny/gpt2", payload)


def test_long_prompt_keeps_its_end(engine, oracle):
    prompt = " ".join(PROMPTS[1:] + [PROMPTS[0]] * 40)  # its start and its end differ
    parameters = {"do_sample": False, "max_new_tokens": 8, "return_full_text": False}
    expected = oracle(prompt, handle_long_generation="hole", **parameters)
    ids = oracle.tokenizer(prompt)["input_ids"]
    assert len(ids) > oracle.tokenizer.model_max_length + 50
    kept_start = oracle.tokenizer.decode(ids[: oracle.tokenizer.model_max_length - 8])
    assert oracle(kept_start, **parameters) != expected  # keeping the wrong end answers otherwise
    assert_close(engine.query("tiny/gpt2", {"inputs": prompt, "parameters": parameters}), expected)


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"top_k": 0}, "parameters.top_k"),
        ({"top_p": 1.5}, "parameters.top_p"),
        ({"temperature": 101}, "parameters.temperature"),
        ({"temperature": -0.1}, "parameters.temperature"),
        ({"repetition_penalty": 100.5}, "parameters.repetition_penalty"),
        ({"max_new_tokens": 251}, "parameters.max_new_tokens"),
        ({"max_new_tokens": -1}, "parameters.max_new_tokens"),
        ({"max_time": 121}, "parameters.max_time"),
        ({"num_return_sequences": 11}, "parameters.num_return_sequences"),
        ({"num_return_sequences": 0}, "parameters.num_return_sequences"),
        ({"num_return_sequences": 2, "do_sample": False}, "parameters.num_return_sequences: more than 1 needs"),
        ({"return_full_text": "no"}, "parameters.return_full_text"),
        ({"stop": "x"}, "parameters.stop"),
        ({"seed": 1.5}, "parameters.seed"),
        ({"max_new_tokens": 200, "do_sample": False}, "parameters: We cannot use `hole`"),
        ({"best_of": 2}, "parameters.best_of: unknown parameter"),
    ],
)
def test_bad_parameters_are_400_naming_them(engine, parameters, field):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/gpt2", {"inputs": "hi", "parameters": parameters})
    assert field in info.value.body["error"]


# -- streaming -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "parameters"),
    [
        (PROMPTS[0], {"do_sample": False, "max_new_tokens": 12}),
        ("Zürich ☕ and crème brûlée 😀", {"do_sample": False, "max_new_tokens": 12}),
        (PROMPTS[1], {"seed": 3, "temperature": 1.5, "max_new_tokens": 20}),
        (PROMPTS[2], {"do_sample": False, "max_new_tokens": 12, "stop": ["e"]}),
    ],
)
def test_stream_pieces_join_to_the_answers_new_text(engine, prompt, parameters):
    import localinfer

    expected = engine.query("tiny/gpt2", {"inputs": prompt, "parameters": {**parameters, "return_full_text": False}})
    pieces = list(engine.stream("tiny/gpt2", {"inputs": prompt, "parameters": parameters}))
    assert "".join(pieces) == expected[0]["generated_text"] and len(pieces) > 1
    assert localinfer.stream is not None


def test_stream_holds_back_an_incomplete_utf8_character(engine):
    """Byte-level BPE splits a multi-byte character into byte tokens: a piece never ends inside one."""
    from transformers import AutoTokenizer

    from localinfer.tasks.text_generation import text_pieces

    tokenizer = AutoTokenizer.from_pretrained(engine.preload("tiny/gpt2").files)
    prompt = tokenizer("Paris is")["input_ids"]
    text = " crème brûlée 😀 at Zürich, isn't it ?"
    tokens = tokenizer(text)["input_ids"]
    assert any("\ufffd" in tokenizer.decode(tokens[:i]) for i in range(len(tokens)))  # the bytes do split
    pieces = list(text_pieces(tokenizer, prompt, iter(tokens)))
    assert "".join(pieces) == tokenizer.decode(prompt + tokens, clean_up_tokenization_spaces=True)[len("Paris is") :]
    assert not any("\ufffd" in piece for piece in pieces) and len(pieces) > 3


def test_stream_holds_back_a_space_that_the_clean_up_removes(engine):
    """A lone space token followed by "." decodes to "." once cleaned up: the space is never sent."""
    from transformers import AutoTokenizer

    from localinfer.tasks.text_generation import text_pieces

    tokenizer = AutoTokenizer.from_pretrained(engine.preload("tiny/gpt2").files)
    prompt = tokenizer("Paris is")["input_ids"]
    tokens = (
        tokenizer(" big")["input_ids"] + tokenizer.convert_tokens_to_ids(["Ġ", "."]) + tokenizer(" ok")["input_ids"]
    )
    expected = tokenizer.decode(prompt + tokens, clean_up_tokenization_spaces=True)[len("Paris is") :]
    assert " ." not in expected and "." in expected
    assert "".join(text_pieces(tokenizer, prompt, iter(tokens))) == expected


def test_stream_refuses_what_it_cannot_stream(engine):
    with pytest.raises(BadRequestError, match="num_return_sequences"):
        engine.stream("tiny/gpt2", {"inputs": "hi", "parameters": {"num_return_sequences": 2}})
    with pytest.raises(BadRequestError, match="one prompt"):
        engine.stream("tiny/gpt2", {"inputs": ["hi", "you"]})
    with pytest.raises(BadRequestError, match="text-generation"):
        engine.stream("tiny/bart", {"inputs": "hi"}, task="summarization")


@pytest.mark.parametrize("stops", [["stop"], ["tower", "e P"], [" is the"]])
def test_stop_strings_stop_where_transformers_stop_string_criteria_stops(oracle, stops):
    """After every token of a few texts, the `stop` callback agrees with transformers' StopStringCriteria: a stop
    string that overlaps the last token (overhangs included) stops, one wholly before it does not."""
    import torch
    from transformers import StopStringCriteria

    from localinfer.tasks.generation import stop_strings

    criteria = StopStringCriteria(oracle.tokenizer, stops)
    stop = stop_strings(oracle.tokenizer, stops)
    verdicts = []
    for text in ["Paris is the capital of France, nonstopper", "The tower stops. Paris is the tower", "unstoppable"]:
        ids = oracle.tokenizer(text)["input_ids"]
        for end in range(1, len(ids) + 1):
            expected = bool(criteria(torch.tensor([ids[:end]]), None)[0])
            assert stop(ids[:end]) == expected, (text, oracle.tokenizer.convert_ids_to_tokens(ids[:end]))
            verdicts.append(expected)
    assert any(verdicts) and not all(verdicts)
