"""Text generation as TGI answers it, over a real server on 127.0.0.1, through huggingface_hub's InferenceClient:
`details` (finish reason, tokens with ids and log-probabilities), `stream` (one event per token), both, and errors.
The oracle of the tokens and their log-probabilities is transformers' `generate` (`output_scores`)."""

from __future__ import annotations

import time

import pytest
import requests
import torch

from tests.fixtures.streams import fail_at_third_token
from tests.live_server import LiveServer

PROMPT = "The answer to the universe is"


@pytest.fixture(scope="module")
def live(engine):
    server = LiveServer(engine)
    yield server
    server.stop()


@pytest.fixture
def client(live, monkeypatch):
    """InferenceClient at the server's model URL. localinfer (and the tests) set HF_HUB_OFFLINE, with which
    huggingface_hub's sessions refuse every request: lifted for this client, which only reaches 127.0.0.1."""
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    yield InferenceClient(model=f"{live.url}/models/tiny/gpt2")
    monkeypatch.undo()
    reset_sessions()


@pytest.fixture(scope="module")
def oracle(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny["gpt2"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny["gpt2"])

    def generate(prompt: str, **kwargs) -> tuple[list[int], list[float], int]:
        """New token ids, their log-probabilities under `generate`'s processed scores, the prompt's length."""
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), output_scores=True, return_dict_in_generate=True, **kwargs
            )
        new = out.sequences[0, ids.shape[1] :].tolist()
        if model.generation_config.eos_token_id in new:  # generate pads after the eos of a finished row
            new = new[: new.index(model.generation_config.eos_token_id) + 1]
        logprobs = [float(torch.log_softmax(s[0].double(), -1)[t]) for s, t in zip(out.scores, new, strict=False)]
        return new, logprobs, ids.shape[1]

    return generate


def test_details_are_generates_tokens_and_log_probabilities(client, engine, oracle):
    result = client.text_generation(PROMPT, details=True, max_new_tokens=8, do_sample=False, repetition_penalty=1.5)
    ids, logprobs, _ = oracle(PROMPT, max_new_tokens=8, do_sample=False, repetition_penalty=1.5)
    details = result.details
    assert [t.id for t in details.tokens] == ids and details.generated_tokens == len(ids)
    assert [t.logprob for t in details.tokens] == pytest.approx(logprobs, abs=1e-4)
    assert details.finish_reason == ("eos_token" if ids[-1] == 0 else "length") and details.seed is None
    assert details.prefill == []
    plain = {"max_new_tokens": 8, "do_sample": False, "repetition_penalty": 1.5}
    assert (
        result.generated_text == engine.query("tiny/gpt2", {"inputs": PROMPT, "parameters": plain})[0]["generated_text"]
    )
    new_text = engine.query("tiny/gpt2", {"inputs": PROMPT, "parameters": {**plain, "return_full_text": False}})
    assert "".join(t.text for t in details.tokens) == new_text[0]["generated_text"]
    assert ids != oracle(PROMPT, max_new_tokens=8, do_sample=False)[0]  # the repetition penalty is tested


def test_details_of_a_sampled_answer_report_the_seed_it_drew(client):
    first = client.text_generation(PROMPT, details=True, max_new_tokens=6, do_sample=True, temperature=1.5)
    assert isinstance(first.details.seed, int)
    again = client.text_generation(
        PROMPT, details=True, max_new_tokens=6, do_sample=True, temperature=1.5, seed=first.details.seed
    )
    assert [t.id for t in again.details.tokens] == [t.id for t in first.details.tokens]


@pytest.mark.parametrize(
    "parameters", [{"do_sample": False, "max_new_tokens": 12}, {"seed": 3, "temperature": 1.5, "max_new_tokens": 12}]
)
def test_stream_joins_to_the_answers_new_text(client, engine, parameters):
    pieces = list(client.text_generation(PROMPT, stream=True, **parameters))
    expected = engine.query("tiny/gpt2", {"inputs": PROMPT, "parameters": {**parameters, "return_full_text": False}})
    assert "".join(pieces) == expected[0]["generated_text"] and len(pieces) > 1


def test_stream_with_details(client, engine, oracle):
    events = list(client.text_generation(PROMPT, stream=True, details=True, max_new_tokens=10, do_sample=False))
    ids, logprobs, prompt_length = oracle(PROMPT, max_new_tokens=10, do_sample=False)
    assert [e.token.id for e in events] == ids and [e.index for e in events] == list(range(len(ids)))
    assert [e.token.logprob for e in events] == pytest.approx(logprobs, abs=1e-4)
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    last = events[-1]
    answer = engine.query("tiny/gpt2", {"inputs": PROMPT, "parameters": {"max_new_tokens": 10, "do_sample": False}})
    assert last.generated_text == answer[0]["generated_text"]
    assert last.details.generated_tokens == len(ids) and last.details.input_length == prompt_length
    assert last.details.finish_reason in ("length", "eos_token") and last.details.seed is None


def test_stream_refusals_are_the_hosted_apis_errors(live):
    url = f"{live.url}/models/tiny/gpt2"
    cases = [
        ({"inputs": PROMPT, "stream": True, "parameters": {"max_new_tokens": 1000}}, "parameters.max_new_tokens"),
        ({"inputs": [PROMPT, "x"], "stream": True}, "one prompt"),
        ({"inputs": PROMPT, "parameters": {"details": True, "decoder_input_details": True}}, "prefill"),
    ]
    for payload, message in cases:
        response = requests.post(url, json=payload, timeout=60)
        assert response.status_code == 400 and message in response.json()["error"], response.text
    chat = requests.post(
        f"{live.url}/models/tiny/gpt2-chat", json={"inputs": {"text": "hi"}, "stream": True}, timeout=60
    )
    assert chat.status_code == 400 and "text-generation" in chat.json()["error"]


def test_a_failure_after_the_first_event_is_an_error_event(client, monkeypatch):
    from huggingface_hub.errors import GenerationError

    fail_at_third_token(monkeypatch)
    received = []
    with pytest.raises(GenerationError, match="unknown error"):
        for piece in client.text_generation(PROMPT, stream=True, max_new_tokens=8, do_sample=False):
            received.append(piece)
    assert len(received) == 2


def test_a_client_that_disconnects_stops_the_generation(live, monkeypatch):
    from localinfer.decoding import models

    original, steps = models.step_model, []

    def counting(*args, **kwargs):
        model = original(*args, **kwargs)
        step = model.step

        def counted(tokens):
            steps.append(1)
            return step(tokens)

        model.step = counted
        return model

    monkeypatch.setattr(models, "step_model", counting)
    payload = {"inputs": "Today", "stream": True, "parameters": {"max_new_tokens": 250, "do_sample": False}}
    with requests.post(f"{live.url}/models/tiny/gpt2-long", json=payload, stream=True, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith(b"data:")  # the generation has begun
    time.sleep(0.5)
    stopped_at = len(steps)
    time.sleep(0.5)
    assert len(steps) == stopped_at < 200  # the full answer is 250 tokens (test_the_full_answer_is_long)


def test_the_full_answer_is_long(engine):
    parameters = {"max_new_tokens": 250, "do_sample": False, "details": True}
    answer = engine.query("tiny/gpt2-long", {"inputs": "Today", "parameters": parameters})
    assert answer[0]["details"]["generated_tokens"] == 250
