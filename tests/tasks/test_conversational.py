"""conversational: the reply equals what PyTorch `generate` gives for the same prompt and settings."""

from __future__ import annotations

import pytest

from localinfer import BadRequestError

HISTORY = {
    "past_user_inputs": ["Which city is the capital of France?"],
    "generated_responses": ["Paris is the capital of France."],
    "text": "How tall is the tower?",
}


def _pytorch_reply(folder, input_ids, encoder_decoder, **kwargs):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = (AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM).from_pretrained(folder).eval()
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    return tokenizer.decode(out[0] if encoder_decoder else out[0][ids.shape[1] :], skip_special_tokens=True).strip()


def _check(answer, expected_reply):
    assert answer["generated_text"] == expected_reply
    assert answer["conversation"] == {
        "past_user_inputs": [*HISTORY["past_user_inputs"], HISTORY["text"]],
        "generated_responses": [*HISTORY["generated_responses"], expected_reply],
    }
    assert answer["warnings"] == []


def test_chat_template_model_gets_chat_messages(engine, tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["gpt2-chat"])
    messages = [
        {"role": "user", "content": HISTORY["past_user_inputs"][0]},
        {"role": "assistant", "content": HISTORY["generated_responses"][0]},
        {"role": "user", "content": HISTORY["text"]},
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = _pytorch_reply(tiny["gpt2-chat"], ids, False, do_sample=False, max_new_tokens=8)
    _check(engine.query("tiny/gpt2-chat", {"inputs": HISTORY, "parameters": {"do_sample": False}}), expected)


def test_model_without_template_gets_turns_joined_by_eos(engine, tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["gpt2"])
    turns = [*HISTORY["past_user_inputs"], *HISTORY["generated_responses"], HISTORY["text"]]
    turns = [HISTORY["past_user_inputs"][0], HISTORY["generated_responses"][0], HISTORY["text"]]
    ids = tokenizer("".join(t + tokenizer.eos_token for t in turns))["input_ids"]
    expected = _pytorch_reply(tiny["gpt2"], ids, False, do_sample=False, max_new_tokens=6)
    answer = engine.query(
        "tiny/gpt2", {"inputs": HISTORY, "parameters": {"do_sample": False, "max_length": 6}}, task="conversational"
    )
    _check(answer, expected)


def test_blenderbot_gets_its_joined_history(engine, tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["blenderbot-small"])
    text = "  ".join([" " + HISTORY["past_user_inputs"][0], HISTORY["generated_responses"][0], " " + HISTORY["text"]])
    expected = _pytorch_reply(
        tiny["blenderbot-small"],
        tokenizer(text)["input_ids"],
        True,
        do_sample=False,
        max_new_tokens=8,
        min_new_tokens=3,
    )
    answer = engine.query(
        "tiny/blenderbot-small", {"inputs": HISTORY, "parameters": {"do_sample": False, "min_length": 3}}
    )
    _check(answer, expected)


def test_seeded_sampling_equals_pytorch(engine, tiny):
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["gpt2-chat"])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
    torch.manual_seed(9)
    expected = _pytorch_reply(
        tiny["gpt2-chat"], ids, False, do_sample=True, top_k=30, temperature=0.8, max_new_tokens=8
    )
    answer = engine.query(
        "tiny/gpt2-chat",
        {"inputs": {"text": "Hello"}, "parameters": {"seed": 9, "do_sample": True, "top_k": 30, "temperature": 0.8}},
    )
    assert answer["generated_text"] == expected


def test_a_long_history_is_truncated_with_a_warning(engine):
    long = {
        "text": "And now?",
        "past_user_inputs": ["That is a happy person."] * 30,
        "generated_responses": ["Today is a sunny day."] * 30,
    }
    answer = engine.query("tiny/gpt2-chat", {"inputs": long, "parameters": {"do_sample": False}})
    assert answer["warnings"] and "truncated" in answer["warnings"][0]
    assert len(answer["conversation"]["past_user_inputs"]) == 31


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
