"""automatic-speech-recognition and audio-classification: parity with the transformers pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest

from localinfer import BadRequestError
from localinfer.media import decode_audio
from tests.conftest import assert_close

SAMPLES = Path(__file__).parent.parent / "samples"
FLAC = (SAMPLES / "sample1.flac").read_bytes()


def _oracle(tiny, task, name):
    from transformers import pipeline

    return pipeline(task, model=str(tiny[name]))


def _audio(pipe, data=FLAC):
    rate = pipe.feature_extractor.sampling_rate
    return {"raw": decode_audio(data, rate), "sampling_rate": rate}


@pytest.mark.parametrize("name", ["wav2vec2-ctc", "whisper"])
def test_asr_equals_the_pipeline(engine, tiny, name):
    oracle = _oracle(tiny, "automatic-speech-recognition", name)
    expected = oracle(_audio(oracle))
    answer = engine.query(f"tiny/{name}", FLAC)
    assert answer == {"text": expected["text"]} and answer["text"]


def test_ctc_transcribes_the_whole_sample(engine, tiny):
    """13.7 s of audio: the transcript covers all of it, as the pipeline's unchunked run does."""
    oracle = _oracle(tiny, "automatic-speech-recognition", "wav2vec2-ctc")
    first_half = oracle(_audio(oracle) | {"raw": _audio(oracle)["raw"][:110000]})["text"]
    whole = engine.query("tiny/wav2vec2-ctc", FLAC)["text"]
    assert len(whole) > len(first_half) * 1.5


@pytest.mark.parametrize("chunking", [{"chunk_length_s": 4.0}, {"chunk_length_s": 4.0, "stride_length_s": 1.0}])
def test_ctc_chunked_and_stitched_as_the_pipeline(engine, tiny, chunking):
    oracle = _oracle(tiny, "automatic-speech-recognition", "wav2vec2-ctc")
    expected = oracle(_audio(oracle), **chunking)["text"]
    payload = {"inputs": __import__("base64").b64encode(FLAC).decode(), "parameters": chunking}
    assert engine.query("tiny/wav2vec2-ctc", payload) == {"text": expected}


def test_whisper_is_chunked_beyond_its_window(engine, tiny):
    oracle = _oracle(tiny, "automatic-speech-recognition", "whisper")
    long = decode_audio(FLAC, 16000)
    import av
    import numpy as np

    audio = np.concatenate([long, long, long])  # 41 s: beyond Whisper's 30 s window
    buffer = __import__("io").BytesIO()
    with av.open(buffer, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray((audio[None] * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    wav = buffer.getvalue()
    expected = oracle({"raw": decode_audio(wav, 16000), "sampling_rate": 16000}, chunk_length_s=30)["text"]
    assert engine.query("tiny/whisper", wav) == {"text": expected}


@pytest.mark.parametrize("sample", ["sample1_dual.ogg", "sample1.webm"])
def test_other_containers(engine, tiny, sample):
    oracle = _oracle(tiny, "automatic-speech-recognition", "wav2vec2-ctc")
    data = (SAMPLES / sample).read_bytes()
    assert engine.query("tiny/wav2vec2-ctc", data) == {"text": oracle(_audio(oracle, data))["text"]}


@pytest.mark.parametrize("parameters", [{}, {"top_k": 2}, {"top_k": 10, "function_to_apply": "sigmoid"}])
def test_audio_classification_equals_the_pipeline(engine, tiny, parameters):
    oracle = _oracle(tiny, "audio-classification", "wav2vec2-classifier")
    expected = oracle(_audio(oracle), **parameters)
    answer = engine.query(
        "tiny/wav2vec2-classifier", {"inputs": __import__("base64").b64encode(FLAC).decode(), "parameters": parameters}
    )
    assert_close(answer, expected)
    assert_close(engine.query("tiny/wav2vec2-classifier", FLAC), oracle(_audio(oracle)))


def test_torch_backend_answers_the_same(engine, torch_engine):
    for name in ("wav2vec2-ctc", "whisper", "wav2vec2-classifier"):
        assert_close(torch_engine.query(f"tiny/{name}", FLAC), engine.query(f"tiny/{name}", FLAC))


@pytest.mark.parametrize("data", [(SAMPLES / "malformed.flac").read_bytes(), b""])
def test_undecodable_audio_is_400(engine, data):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/wav2vec2-ctc", data)
    assert info.value.body == {"error": "Malformed soundfile"}


@pytest.mark.parametrize(
    ("model", "parameters", "field"),
    [
        ("wav2vec2-classifier", {"top_k": 0}, "parameters.top_k"),
        ("wav2vec2-classifier", {"function_to_apply": "relu"}, "parameters.function_to_apply"),
        ("wav2vec2-ctc", {"chunk_length_s": 0}, "parameters.chunk_length_s"),
        ("wav2vec2-ctc", {"stride_length_s": -1}, "parameters.stride_length_s"),
        ("wav2vec2-ctc", {"language": "fr"}, "parameters.language: unknown parameter"),
    ],
)
def test_bad_parameters_are_400(engine, model, parameters, field):
    payload = {"inputs": __import__("base64").b64encode(FLAC).decode(), "parameters": parameters}
    with pytest.raises(BadRequestError) as info:
        engine.query(f"tiny/{model}", payload)
    assert field in info.value.body["error"]
