"""localinfer.chat in-process (no HTTP): a chat is the text-generation pipeline's answer to the same messages; the
refusals name the model; embeddings are feature-extraction's vectors with their token count."""

from __future__ import annotations

import pytest

from localinfer.chat import embed, open_chat
from localinfer.errors import BadRequestError, ModelNotFoundError
from tests.conftest import assert_close

MESSAGES = [{"role": "user", "content": "Which movie is the best ?"}, {"role": "assistant", "content": "It is"}]


def test_a_greedy_chat_continues_a_final_assistant_message_as_the_pipeline(engine, tiny):
    import transformers

    transformers.logging.set_verbosity_error()
    pipe = transformers.pipeline("text-generation", model=str(tiny["gpt2-chat"]))
    out = pipe(MESSAGES, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    expected = out[-1]["content"][len(MESSAGES[-1]["content"]) :]
    chat = open_chat(engine, "tiny/gpt2-chat", MESSAGES, {"max_new_tokens": 6, "do_sample": False})
    tokens = list(chat.choice(0).tokens)
    assert "".join(text for _, text in tokens) == expected and 0 < len(tokens) <= 6
    assert chat.prompt == pipe.tokenizer.apply_chat_template(MESSAGES, continue_final_message=True, tokenize=True)


@pytest.mark.parametrize(
    ("model_id", "parameters", "error", "message"),
    [
        ("tiny/gpt2", {}, BadRequestError, "tiny/gpt2 has no chat template"),
        ("tiny/blenderbot-small", {}, BadRequestError, "encoder-decoder"),
        ("tiny/bert-mlm", {}, BadRequestError, "fill-mask model"),
        ("tiny/gpt2-chat", {"max_new_tokens": 0}, BadRequestError, "parameters.max_new_tokens"),
        ("tiny/gpt2-chat", {"max_new_tokens": 250}, BadRequestError, "window is 128 tokens"),
        ("nobody/nothing", {}, ModelNotFoundError, "not found"),
    ],
)
def test_refusals_name_the_problem(engine, model_id, parameters, error, message):
    with pytest.raises(error, match=message):
        open_chat(engine, model_id, MESSAGES, parameters)


def test_embed_is_feature_extraction_with_its_token_count(engine, tiny):
    from transformers import AutoTokenizer

    texts = ["a happy dog", "Today is a sunny day"]
    vectors, tokens = embed(engine, "tiny/st-mean-normalize", texts)
    assert_close(vectors, engine.query("tiny/st-mean-normalize", {"inputs": texts}, task="feature-extraction"), 1e-6)
    tokenizer = AutoTokenizer.from_pretrained(tiny["st-mean-normalize"])
    assert tokens == sum(len(tokenizer(t)["input_ids"]) for t in texts)
