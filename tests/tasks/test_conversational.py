"""conversational: the reply equals what the hosted API's (since removed) ConversationalPipeline answered.

That pipeline (transformers <= 4.42, pipelines/conversational.py) rendered the messages with
`tokenizer.apply_chat_template(conversation, add_generation_prompt=True)`, generated, and decoded the new tokens
with `skip_special_tokens=True`. The oracles here rebuild that from transformers' own parts, not from localinfer:
a model with a chat template goes to the text-generation pipeline as a list of messages (it applies the template
itself); a model without one gets its tokenizer class's legacy default template, quoted below.
"""

from __future__ import annotations

import pytest

from localinfer import BadRequestError
from tests.conftest import assert_informative
from tests.fixtures.tiny_models import CORPUS

HISTORY = {
    "past_user_inputs": ["Which city is the capital of France?"],
    "generated_responses": ["Paris is the capital of France."],
    "text": "How tall is the tower?",
}
SHORT = {"past_user_inputs": ["happy dog"], "generated_responses": ["sunny day"], "text": "London"}  # a short reply

# transformers v4.38-v4.42, src/transformers/models/gpt2/tokenization_gpt2.py, GPT2Tokenizer.default_chat_template
# (removed in v4.43): the DialoGPT convention, every turn followed by the end of sequence token.
GPT2_DEFAULT_CHAT_TEMPLATE = "{% for message in messages %}{{ message.content }}{{ eos_token }}{% endfor %}"
# transformers v4.38-v4.42, BlenderbotSmallTokenizer.default_chat_template (as BlenderbotTokenizer's, quoted in
# that version's docs/source/en/chat_templating.md): user turns led by a space, turns joined by two spaces.
BLENDERBOT_DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ ' ' }}{% endif %}"
    "{{ message['content'] }}"
    "{% if not loop.last %}{{ '  ' }}{% endif %}"
    "{% endfor %}"
    "{{ eos_token }}"
)


def messages(conversation: dict) -> list[dict]:
    """The conversation as chat messages, oldest first (as the old `Conversation` object held them)."""
    turns = []
    for user, reply in zip(conversation["past_user_inputs"], conversation["generated_responses"], strict=True):
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return [*turns, {"role": "user", "content": conversation["text"]}]


def _generate_kwargs(parameters: dict) -> dict:
    """The contract's parameters as `generate` arguments: min_length / max_length bound the reply in tokens (the
    models' generation config says 8 when no max_length is given)."""
    kwargs = {k: v for k, v in parameters.items() if k not in ("seed", "min_length", "max_length")}
    kwargs["max_new_tokens"] = parameters.get("max_length", 8)
    if "min_length" in parameters:
        kwargs["min_new_tokens"] = parameters["min_length"]
    return kwargs


def _seeded(seed, call):
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    return call()


def _without_pipeline_defaults(pipe):
    """Today's pipelines add defaults of their own where the model's generation config is silent (4 beams,
    temperature 0.7, 256 new tokens); the ConversationalPipeline called `generate` with the model's config alone."""
    import copy

    pipe.generation_config = copy.deepcopy(pipe.model.generation_config)
    return pipe


def causal_oracle(folder, template: str | None = None, *, keep_start: bool = False):
    """The reply of a causal model: the text-generation pipeline given the messages (`template`: the tokenizer
    class's legacy default, for a tokenizer without a chat template); the oldest tokens cut to fit the window
    (`keep_start`: the newest cut instead, the wrong end, to prove that the end kept matters; greedy only)."""
    from transformers import pipeline

    pipe = _without_pipeline_defaults(pipeline("text-generation", model=str(folder)))
    if template is not None:
        assert pipe.tokenizer.chat_template is None
        pipe.tokenizer.chat_template = template

    def answer(conversation: dict, parameters: dict) -> str:
        kwargs = _generate_kwargs(parameters)
        if keep_start:
            ids = pipe.tokenizer.apply_chat_template(messages(conversation), add_generation_prompt=True)
            start = pipe.tokenizer.decode(ids[: pipe.tokenizer.model_max_length - kwargs["max_new_tokens"]])
            return pipe(start, return_full_text=False, **kwargs)[0]["generated_text"].strip()
        out = _seeded(
            parameters.get("seed"), lambda: pipe(messages(conversation), handle_long_generation="hole", **kwargs)
        )
        return out[0]["generated_text"][-1]["content"].strip()

    return answer


def encoder_decoder_oracle(folder, *, keep_start: bool = False):
    """The reply of BlenderbotSmall: the legacy template's text through the text2text-generation pipeline, whose
    tokenizer appends the end of sequence token that the template ends with; the oldest tokens cut to fit
    (`keep_start`: the newest cut instead, the wrong end)."""
    from transformers import pipeline

    pipe = _without_pipeline_defaults(pipeline("text2text-generation", model=str(folder)))
    pipe.tokenizer.truncation_side = "right" if keep_start else "left"
    eos = pipe.tokenizer.eos_token

    def answer(conversation: dict, parameters: dict) -> str:
        rendered = pipe.tokenizer.apply_chat_template(
            messages(conversation), chat_template=BLENDERBOT_DEFAULT_CHAT_TEMPLATE, tokenize=False
        )
        assert rendered.endswith(eos)
        text = rendered[: -len(eos)]
        # the same ids as the old pipeline's apply_chat_template(..., tokenize=True), whenever they fit the window
        ids = pipe.tokenizer.apply_chat_template(messages(conversation), chat_template=BLENDERBOT_DEFAULT_CHAT_TEMPLATE)
        assert pipe.tokenizer(text)["input_ids"] == ids or len(ids) > pipe.tokenizer.model_max_length
        kwargs = _generate_kwargs(parameters)
        out = _seeded(parameters.get("seed"), lambda: pipe(text, truncation=True, **kwargs))
        return out[0]["generated_text"].strip()

    return answer


def expected_reply(
    answer, conversation: dict, parameters: dict, *, fixed=("do_sample",), changes=None, turns: bool = True
) -> str:
    """The oracle's reply, proven to follow the history (dropped) and each parameter; with `turns`, the order of the
    turns and the new text too (a window that keeps a long history's newest part may not reach either)."""
    reply = assert_informative(
        answer,
        conversation,
        parameters,
        other_inputs={**conversation, "past_user_inputs": [], "generated_responses": []},
        fixed=fixed,
        changes=changes,
    )
    swapped = {
        **conversation,
        "past_user_inputs": conversation["generated_responses"],
        "generated_responses": conversation["past_user_inputs"],
    }
    if turns:
        assert answer(swapped, dict(parameters)) != reply, "the order of the turns is not tested"
        assert answer({**conversation, "text": "Today is a sunny day"}, dict(parameters)) != reply
    return reply


def _check(answer, conversation, expected):
    assert answer["generated_text"] == expected
    assert answer["conversation"] == {
        "past_user_inputs": [*conversation["past_user_inputs"], conversation["text"]],
        "generated_responses": [*conversation["generated_responses"], expected],
    }
    assert answer["warnings"] == []


def test_chat_template_model_gets_chat_messages(engine, tiny):
    parameters = {"do_sample": False, "max_length": 5}
    expected = expected_reply(causal_oracle(tiny["gpt2-chat"]), HISTORY, parameters)
    _check(engine.query("tiny/gpt2-chat", {"inputs": HISTORY, "parameters": parameters}), HISTORY, expected)


def test_model_without_template_gets_its_legacy_default_template(engine, tiny):
    parameters = {"do_sample": False, "max_length": 6}
    expected = expected_reply(causal_oracle(tiny["gpt2"], GPT2_DEFAULT_CHAT_TEMPLATE), HISTORY, parameters)
    answer = engine.query("tiny/gpt2", {"inputs": HISTORY, "parameters": parameters}, task="conversational")
    _check(answer, HISTORY, expected)


@pytest.mark.parametrize(
    ("conversation", "parameters"),
    [(HISTORY, {"do_sample": False, "max_length": 6}), (SHORT, {"do_sample": False, "min_length": 6})],
)
def test_blenderbot_gets_its_legacy_default_template(engine, tiny, conversation, parameters):
    expected = expected_reply(encoder_decoder_oracle(tiny["blenderbot-small"]), conversation, parameters)
    _check(
        engine.query("tiny/blenderbot-small", {"inputs": conversation, "parameters": parameters}),
        conversation,
        expected,
    )


def test_seeded_sampling_is_reproducible_and_seeds_differ(engine):
    """numpy's generator cannot be bit-equal to torch's: a seed answers the same again, another seed otherwise."""
    parameters = {"seed": 9, "do_sample": True, "top_k": 30, "temperature": 0.5, "repetition_penalty": 1.5}

    def ask(changes):
        payload = {"inputs": HISTORY, "parameters": {**parameters, **changes}, "options": {"use_cache": False}}
        return engine.query("tiny/gpt2-chat", payload)["generated_text"]

    answer = ask({})
    assert answer and ask({}) == answer and ask({"seed": 10}) != answer


def test_sampling_from_the_top_token_is_the_greedy_reply(engine, tiny):
    parameters = {"do_sample": False, "repetition_penalty": 1.5}
    expected = expected_reply(causal_oracle(tiny["gpt2-chat"]), HISTORY, parameters)
    sampled = {**parameters, "do_sample": True, "top_k": 1, "temperature": 0.5, "seed": 9}
    answer = engine.query("tiny/gpt2-chat", {"inputs": HISTORY, "parameters": sampled})
    assert answer["generated_text"] == expected


LONG = {  # 30 turns, far more than the 128-token window: the oldest 20 say one thing, the newest 10 others
    "text": "And now?",
    "past_user_inputs": [CORPUS[8]] * 20 + [CORPUS[i % 8] for i in range(10)],
    "generated_responses": [CORPUS[9]] * 20 + [CORPUS[(i + 4) % 8] for i in range(10)],
}


@pytest.mark.parametrize("name", ["gpt2-chat", "blenderbot-small"])
def test_a_long_history_keeps_its_newest_turns_with_a_warning(engine, tiny, name):
    oracle = causal_oracle if name == "gpt2-chat" else encoder_decoder_oracle
    answer = oracle(tiny[name])
    parameters = {"do_sample": False}
    expected = expected_reply(answer, LONG, parameters, turns=False)
    # the window keeps the newest turns: keeping the oldest answers otherwise; without a few oldest, the same
    assert oracle(tiny[name], keep_start=True)(LONG, parameters) != expected
    newest = {k: v[5:] if isinstance(v, list) else v for k, v in LONG.items()}
    assert answer(newest, parameters) == expected
    reply = engine.query(f"tiny/{name}", {"inputs": LONG, "parameters": parameters})
    assert reply["generated_text"] == expected
    assert reply["warnings"] and "truncated" in reply["warnings"][0]
    assert len(reply["conversation"]["past_user_inputs"]) == 31


@pytest.mark.parametrize(
    ("inputs", "parameters", "message"),
    [
        ({"text": "hi", "past_user_inputs": ["a"], "generated_responses": []}, {}, "must have the same length"),
        ({"past_user_inputs": []}, {}, "inputs.text: Field required"),
        ({"text": ""}, {}, "inputs.text"),
        ({"text": "hi"}, {"min_length": 5, "max_length": 2}, "min_length (5) must not exceed max_length (2)"),
        ({"text": "hi"}, {"max_length": 501}, "parameters.max_length"),
        ({"text": "hi"}, {"temperature": 101}, "parameters.temperature"),
        ({"text": "hi"}, {"num_return_sequences": 2}, "parameters.num_return_sequences: unknown parameter"),
    ],
)
def test_bad_requests_are_400(engine, inputs, parameters, message):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/gpt2-chat", {"inputs": inputs, "parameters": parameters})
    assert message in info.value.body["error"]
