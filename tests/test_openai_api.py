"""The OpenAI-compatible routes over a real server on 127.0.0.1, through the `openai` package and huggingface_hub's
`InferenceClient.chat_completion` (by model URL and by `base_url`), streamed and not. The oracle of a chat is the
transformers text-generation pipeline given the same messages; of an embedding, `query()`'s feature-extraction
answer."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
import requests

from tests.conftest import assert_close, assert_informative
from tests.fixtures.streams import fail_at_third_token
from tests.live_server import LiveServer

CHAT = "tiny/gpt2-chat"
EMBEDDER = "tiny/st-mean-normalize"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Which movie is the best ?"},
    {"role": "assistant", "content": "It is Die Hard for sure."},
    {"role": "user", "content": "Can you explain why ?"},
]
OTHER = [{"role": "user", "content": "Today is a sunny day"}]


@pytest.fixture(scope="module")
def live(engine):
    server = LiveServer(engine)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded(engine):
    server = LiveServer(engine, token="s3cret", max_body_bytes=2000)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def hub(monkeypatch):
    """huggingface_hub's sessions with HF_HUB_OFFLINE lifted (localinfer sets it; these clients reach 127.0.0.1)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    yield
    monkeypatch.undo()
    reset_sessions()


@pytest.fixture(scope="module")
def pipeline(tiny):
    import transformers

    transformers.logging.set_verbosity_error()
    pipe = transformers.pipeline("text-generation", model=str(tiny["gpt2-chat"]))

    def reply(messages: list[dict], parameters: dict) -> dict:
        """The pipeline's new assistant text (or the continued last message), and its token counts."""
        out = pipe(messages, do_sample=False, **parameters)[0]["generated_text"]
        continued = messages[-1]["role"] == "assistant"
        text = out[-1]["content"][len(messages[-1]["content"]) :] if continued else out[-1]["content"]
        ids = pipe.tokenizer.apply_chat_template(
            messages, add_generation_prompt=not continued, continue_final_message=continued, tokenize=True
        )
        return {"text": text, "prompt_tokens": len(ids)}

    return reply


@pytest.mark.parametrize("messages", [MESSAGES, MESSAGES[:2], [*MESSAGES[:3]]], ids=["turns", "one", "prefill"])
def test_chat_completion_is_the_pipelines_answer(client, pipeline, messages):
    expected = pipeline(messages, {"max_new_tokens": 7})
    answer = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=7, temperature=0)
    choice = answer.choices[0]
    assert choice.message.content == expected["text"] and choice.message.role == "assistant"
    assert answer.usage.prompt_tokens == expected["prompt_tokens"]
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert choice.finish_reason == ("length" if answer.usage.completion_tokens == 7 else "stop")
    assert answer.model == CHAT and answer.object == "chat.completion"


def test_chat_oracle_is_informative(pipeline):
    def answer(messages, parameters):
        return pipeline(messages, parameters)["text"]

    assert_informative(answer, MESSAGES, {"max_new_tokens": 7}, other_inputs=OTHER, changes={"max_new_tokens": 3})


def test_streamed_chat_joins_to_the_answer(client, pipeline):
    expected = pipeline(MESSAGES, {"max_new_tokens": 9})
    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=MESSAGES,
            max_tokens=9,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in deltas) == expected["text"]
    assert [c.choices[0].finish_reason for c in deltas][-1] in ("length", "stop")
    assert all(c.choices[0].finish_reason is None for c in deltas[:-1])
    usage = chunks[-1].usage
    assert usage.prompt_tokens == expected["prompt_tokens"] and usage.completion_tokens == len(deltas) - 1


def test_sampled_choices_are_seeded(client):
    def ask(**overrides):
        request = {"model": CHAT, "messages": MESSAGES, "max_tokens": 8, "temperature": 1.5, "seed": 4, **overrides}
        return [c.message.content for c in client.chat.completions.create(**request).choices]

    two = ask(n=2)
    assert two == ask(n=2) and two[0] == ask()[0] and two[0] != two[1]
    assert ask(seed=5) != two[:1] and ask(temperature=0) != two[:1]


def test_logprobs_are_the_tokens_of_the_answer(client, pipeline):
    answer = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True)
    content = answer.choices[0].logprobs.content
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    assert len(content) == answer.usage.completion_tokens and all(t.logprob <= 0 for t in content)


def test_stop_sequence_ends_the_answer(client, pipeline):
    full = pipeline(MESSAGES, {"max_new_tokens": 12})["text"]
    stop = full[3:5]
    answer = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=12, temperature=0, stop=[stop])
    text = answer.choices[0].message.content
    assert text.endswith(stop) and full.startswith(text) and len(text) < len(full)
    assert answer.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("by", ["model-url", "base-url"])
def test_inference_client_chat_completion(live, hub, pipeline, by, stream):
    from huggingface_hub import InferenceClient

    expected = pipeline(MESSAGES, {"max_new_tokens": 8})["text"]
    if by == "model-url":
        hf = InferenceClient(model=f"{live.url}/models/{CHAT}")
        kwargs = {}
    else:
        hf = InferenceClient(base_url=live.url)
        kwargs = {"model": CHAT}
    answer = hf.chat_completion(MESSAGES, max_tokens=8, temperature=0, stream=stream, **kwargs)
    if stream:
        assert "".join(chunk.choices[0].delta.content or "" for chunk in answer) == expected
    else:
        assert answer.choices[0].message.content == expected and answer.usage.completion_tokens > 0


@pytest.mark.parametrize("encoding", ["float", "base64"])
@pytest.mark.parametrize("model", [EMBEDDER, MINILM])
def test_embeddings_are_the_feature_extraction_answer(client, engine, tiny, model, encoding):
    texts = ["That is a happy person", "Today is a sunny day"]
    answer = client.embeddings.create(model=model, input=texts, encoding_format=encoding)
    expected = engine.query(model, {"inputs": texts}, task="feature-extraction")
    assert_close([vector(d.embedding) for d in answer.data], expected, 1e-6)
    assert [d.index for d in answer.data] == [0, 1]
    from transformers import AutoTokenizer

    folder = tiny["st-mean-normalize"] if model == EMBEDDER else engine.resolve(model)[0].path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert answer.usage.prompt_tokens == sum(len(tokenizer(t)["input_ids"]) for t in texts)
    single = client.embeddings.create(model=model, input=texts[1], encoding_format=encoding)
    assert_close(vector(single.data[0].embedding), expected[1], 1e-6)


def vector(embedding: list[float] | str) -> list[float]:
    """The openai client hands back the base64 string it was asked for as is."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist()
    return embedding


def test_base64_is_float32_little_endian(live, engine):
    body = {"model": EMBEDDER, "input": "a happy dog", "encoding_format": "base64"}
    encoded = requests.post(f"{live.url}/v1/embeddings", json=body, timeout=60).json()["data"][0]["embedding"]
    vector = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    expected = np.asarray(engine.query(EMBEDDER, {"inputs": "a happy dog"}, task="feature-extraction"), dtype="<f4")
    assert vector.tobytes() == expected.tobytes()


def test_models_list(client, engine):
    listed = client.models.list()
    assert [m.id for m in listed.data] == engine.registry.ids() and all(m.owned_by == "localinfer" for m in listed)


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"model": CHAT, "messages": []}, 400, "messages", "at least 1"),
        ({"model": CHAT}, 400, "messages", "required"),
        ({"model": CHAT, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role", "robot"),
        ({"model": "tiny/gpt2", "messages": OTHER}, 400, None, "tiny/gpt2 has no chat template"),
        ({"model": "tiny/blenderbot-small", "messages": OTHER}, 400, None, "encoder-decoder"),
        ({"model": "tiny/bert-mlm", "messages": OTHER}, 400, None, "fill-mask"),
        ({"model": CHAT, "messages": OTHER, "max_tokens": 1000}, 400, "max_tokens", "250"),
        ({"model": CHAT, "messages": OTHER, "n": 11}, 400, "n", "10"),
        ({"model": CHAT, "messages": OTHER, "temperature": 3}, 400, "temperature", "2"),
        ({"model": CHAT, "messages": OTHER, "tools": [{"type": "function"}]}, 400, "tools", "at most 0"),
        ({"model": CHAT, "messages": OTHER * 1025}, 400, None, "limit is 1024"),
        ({"messages": OTHER}, 400, "model", "required"),
        ({"model": "nobody/nothing", "messages": OTHER}, 404, None, "not found"),
    ],
)
def test_chat_refusals_are_openai_errors(live, body, status, param, message):
    response = requests.post(f"{live.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert message in error["message"] and "Traceback" not in response.text


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "tiny/gpt2", "input": "x"}, 400, "text-generation model"),
        ({"model": "tiny/bert-base", "input": "x"}, 400, "token features"),
        ({"model": EMBEDDER, "input": []}, 400, "input: expected str or list[str]"),
        ({"model": EMBEDDER, "input": ["x"], "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": EMBEDDER, "input": ["x"] * 1025}, 400, "limit is 1024"),
        ({"model": "nobody/nothing", "input": "x"}, 404, "not found"),
    ],
)
def test_embedding_refusals_are_openai_errors(live, body, status, message):
    response = requests.post(f"{live.url}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == status and message in response.json()["error"]["message"], response.text


def test_the_openai_client_raises_the_status_errors(client):
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="tiny/gpt2", messages=OTHER)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nobody/nothing", input="x")
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="tiny/gpt2", messages=OTHER, stream=True)  # refused before the stream


def test_the_model_in_the_path_wins_and_other_methods_are_405(live):
    body = {"model": "dummy", "messages": OTHER, "max_tokens": 3, "temperature": 0}
    response = requests.post(f"{live.url}/models/{CHAT}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200 and response.json()["model"] == CHAT
    assert requests.get(f"{live.url}/v1/chat/completions", timeout=60).status_code == 405
    assert requests.post(f"{live.url}/v1/models", timeout=60).status_code == 405


def test_token_and_body_limit_in_openai_shape(guarded):
    url = f"{guarded.url}/v1/chat/completions"
    body = {"model": CHAT, "messages": OTHER, "max_tokens": 2}
    denied = requests.post(url, json=body, timeout=60)
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
    assert requests.get(f"{guarded.url}/v1/models", timeout=60).status_code == 401
    secret = {"Authorization": "Bearer s3cret"}
    assert requests.post(url, json=body, headers=secret, timeout=60).status_code == 200
    large = requests.post(url, json={**body, "messages": OTHER * 100}, headers=secret, timeout=60)
    assert large.status_code == 413 and "larger than 2000 bytes" in large.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_a_failure_mid_stream_is_an_error_event(client, monkeypatch):
    fail_at_third_token(monkeypatch)
    stream = client.chat.completions.create(model=CHAT, messages=OTHER, max_tokens=8, temperature=0, stream=True)
    received = []
    with pytest.raises(openai.APIError, match="unknown error"):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3  # the role chunk and two tokens
