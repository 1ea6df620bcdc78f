"""Every request bound through the real server (`localinfer serve` with the bounds' flags): the right status, and a
message that names the bound and its setting, in the hosted API's `{"error": ...}` shape; long text answered."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import assert_close
from tests.fixtures.bounded_child import audio, words
from tests.fixtures.tiny_models import write_models_toml
from tests.test_server import WAIT, _free_port

SAMPLES = Path(__file__).parent / "samples"
MAX_BODY = 1_000_000
BOUNDS = ["--max-json-depth", "8", "--max-list-items", "3", "--max-image-pixels", "10000"]
BOUNDS += ["--max-audio-seconds", "5", "--max-unchunked-audio-seconds", "2"]
MODELS = ["tiny/distilbert-sentiment", "tiny/bert-ner", "tiny/vit", "tiny/wav2vec2-ctc", "tiny/wav2vec2-classifier"]


@pytest.fixture(scope="module")
def server(engine, tiny, home, tmp_path_factory):
    """`localinfer --max-... serve --max-body-size 1000000` on the session's exports (made here first)."""
    for model in MODELS:
        engine.export(model)
    toml = write_models_toml(tmp_path_factory.mktemp("server-bounds") / "models.toml", tiny)
    port = _free_port()
    command = [sys.executable, "-m", "localinfer", "--models", str(toml), "--home", str(home), *BOUNDS]
    command += ["serve", "--port", str(port), "--no-preload", "--max-body-size", str(MAX_BODY)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(url + "/", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.terminate()
                raise RuntimeError(f"the server did not start: {process.communicate(timeout=30)[0][-2000:]}") from None
            time.sleep(0.2)
    yield url
    process.terminate()
    process.communicate(timeout=30)


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _json(payload) -> bytes:
    return json.dumps(payload).encode()


# (model, body, status, what the message says): each bound, beyond it
BEYOND = {
    "json depth": (
        "tiny/distilbert-sentiment",
        _json({"inputs": "hi", "parameters": {"top_k": _deep(20)}}),
        400,
        "parameters.top_k[0][0][0][0][0][0][0]: nested deeper than 8 levels "
        "(Limits(max_json_depth=...), --max-json-depth)",
    ),
    "json depth beyond the parser": (
        "tiny/distilbert-sentiment",
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        400,
        "request body: JSON nested too deeply to parse",
    ),
    "list items": (
        "tiny/distilbert-sentiment",
        _json({"inputs": ["a", "b", "c", "d"]}),
        400,
        "inputs: a list of 4 items; the limit is 3 (Limits(max_list_items=...), --max-list-items)",
    ),
    "list items in the parameters": (
        "tiny/bert-ner",
        _json({"inputs": "a", "parameters": {"ignore_labels": ["O", "X", "Y", "Z"]}}),
        400,
        "parameters.ignore_labels: a list of 4 items; the limit is 3 (Limits(max_list_items=...), --max-list-items)",
    ),
    "image pixels": (
        "tiny/vit",
        (SAMPLES / "plane.jpg").read_bytes(),
        400,
        "inputs: an image of 300x200 pixels; the limit is 10000 pixels (Limits(max_image_pixels=...), "
        "--max-image-pixels)",
    ),
    "decompression bomb": ("tiny/vit", _png((20_000, 20_000), mode="1"), 400, "decompression bomb"),
    "audio seconds": (
        "tiny/wav2vec2-ctc",
        (SAMPLES / "sample1.flac").read_bytes(),
        413,
        "inputs: audio longer than 5 s (at least 14 s); the limit is 5 s (Limits(max_audio_seconds=...), "
        "--max-audio-seconds)",
    ),
    "audio seconds in one pass (classification)": (
        "tiny/wav2vec2-classifier",
        audio(4),
        413,
        "inputs: audio of 4.0 s; this model classifies at most 2 s in one pass "
        "(Limits(max_unchunked_audio_seconds=...), --max-unchunked-audio-seconds)",
    ),
    "a CTC chunk beyond one pass": (
        "tiny/wav2vec2-ctc",
        None,  # JSON: the audio base64-encoded, with chunk_length_s
        400,
        "parameters.chunk_length_s: at most 2 s in one pass (Limits(max_unchunked_audio_seconds=...), "
        "--max-unchunked-audio-seconds)",
    ),
    "body size": ("tiny/distilbert-sentiment", _json({"inputs": words(300_000)}), 413, "larger than 1000000 bytes"),
}


def _body(case: str) -> bytes:
    model, body, _, _ = BEYOND[case]
    if body is None:
        import base64

        return _json({"inputs": base64.b64encode(audio(4)).decode(), "parameters": {"chunk_length_s": 3}})
    return body


@pytest.mark.parametrize("case", BEYOND)
def test_each_bound_answers_its_status_naming_the_limit(server, case):
    model, _, status, message = BEYOND[case]
    body = _body(case)
    response = requests.post(f"{server}/models/{model}", data=body, headers=WAIT, timeout=120)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert set(answer) == {"error"} and isinstance(answer["error"], str), answer
    assert message in answer["error"], answer["error"]
    assert "Traceback" not in response.text


def test_body_size_without_a_declared_length_is_413(server):
    """A chunked upload (no Content-Length) is counted while it streams."""

    def chunks():
        for _ in range(20):
            yield b"x" * 100_000

    response = requests.post(f"{server}/models/tiny/vit", data=chunks(), headers=WAIT, timeout=120)
    assert response.status_code == 413
    assert response.json() == {"error": f"request body is larger than {MAX_BODY} bytes (--max-body-size)"}


def test_within_each_bound_answers(server, engine):
    """The same bounds let what is within them through: 3 items, 2 s of audio, a 100x100 image."""
    cases = [
        ("tiny/distilbert-sentiment", _json({"inputs": ["a", "b", "c"], "options": {"use_cache": False}})),
        ("tiny/wav2vec2-classifier", audio(2)),
        ("tiny/vit", _png((100, 100))),
    ]
    for model, body in cases:
        response = requests.post(f"{server}/models/{model}", data=body, headers=WAIT, timeout=120)
        assert response.status_code == 200, (model, response.text[:500])
        assert_close(response.json(), engine.query(model, body))


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        ("tiny/distilbert-sentiment", words(50_000)),  # truncated to the model's window, as the pipeline does
        ("tiny/bert-ner", words(20_000)),  # split with a stride, as the pipeline does
    ],
)
def test_long_text_is_answered(server, engine, model, inputs):
    payload = {"inputs": inputs, "options": {"use_cache": False}}
    response = requests.post(f"{server}/models/{model}", json=payload, headers=WAIT, timeout=300)
    assert response.status_code == 200, response.text[:500]
    assert_close(response.json(), engine.query(model, payload))
