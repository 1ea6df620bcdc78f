"""automatic-speech-recognition and audio-classification: parity with the transformers pipelines.

Every parity case first proves, with `assert_informative`, that the pipeline's answer changes with the audio and
with each parameter the case passes; a fixture that answered the same whatever it heard would let bugs pass."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest

from localinfer import BadRequestError
from tests.conftest import assert_close, assert_informative

SAMPLES = Path(__file__).parent.parent / "samples"


class Sound(bytes):
    """An audio file's bytes that name themselves in assertion messages (instead of a megabyte of repr)."""

    def __new__(cls, data: bytes, name: str) -> Sound:
        sound = super().__new__(cls, data)
        sound.name = name
        return sound

    def __repr__(self) -> str:
        return f"<{self.name}>"


def _sample(name: str) -> Sound:
    return Sound((SAMPLES / name).read_bytes(), name)


FLAC = _sample("sample1.flac")


def _decode(data: bytes, rate: int) -> np.ndarray:
    """The oracle's own decoding, independent of localinfer.media (which the parity would otherwise share): what
    the hosted API's `ffmpeg -i - -ac 1 -ar <rate> -f f32le` gives, through the FFmpeg that PyAV bundles (there is
    no ffmpeg binary for transformers' own `ffmpeg_read`)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
        frames += resampler.resample(None)
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])


def _wav(audio: np.ndarray, name: str, rate: int = 16000) -> Sound:
    """Mono float samples -> a 16-bit WAV file, encoded with PyAV."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((audio[None] * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return Sound(buffer.getvalue(), name)


SPEECH = _decode(FLAC, 16000)  # 13.7 s
FIRST_HALF = _wav(SPEECH[:110000], "the first 6.9 s of sample1.flac")  # what a decoder that stops early hears
LONG = _wav(np.concatenate([SPEECH, SPEECH, SPEECH]), "sample1.flac three times, 41 s")  # beyond Whisper's 30 s
FIRST_WINDOW = _wav(np.concatenate([SPEECH, SPEECH, SPEECH])[: 30 * 16000], "the first 30 s of the 41 s")
REVERSED = _wav(np.concatenate([SPEECH, SPEECH[::-1], SPEECH]), "sample1.flac forwards, backwards, forwards, 41 s")


def _oracle(tiny, task, name):
    from transformers import pipeline

    return pipeline(task, model=str(tiny[name]))


def _audio(pipe, data=FLAC):
    rate = pipe.feature_extractor.sampling_rate
    return {"raw": _decode(data, rate), "sampling_rate": rate}


def _answer(pipe):
    """The oracle as `assert_informative` calls it: (audio bytes, parameters) -> the pipeline's answer."""
    return lambda data, parameters: pipe(_audio(pipe, data), **parameters)


def _payload(data: bytes, parameters: dict) -> dict:
    return {"inputs": base64.b64encode(data).decode(), "parameters": parameters}


@pytest.mark.parametrize("name", ["wav2vec2-ctc", "whisper"])
def test_asr_equals_the_pipeline(engine, tiny, name):
    """13.7 s of audio: the transcript covers all of it (the first half alone transcribes otherwise)."""
    oracle = _oracle(tiny, "automatic-speech-recognition", name)
    expected = assert_informative(_answer(oracle), FLAC, {}, other_inputs=FIRST_HALF)
    answer = engine.query(f"tiny/{name}", FLAC)
    assert answer == {"text": expected["text"]} and answer["text"]


@pytest.mark.parametrize(
    ("name", "chunking"),
    [
        ("wav2vec2-ctc", {"chunk_length_s": 4.0}),
        ("wav2vec2-ctc", {"chunk_length_s": 4.0, "stride_length_s": 1.0}),
        ("whisper", {"chunk_length_s": 10.0, "stride_length_s": 2.0}),
    ],
)
def test_chunked_and_stitched_as_the_pipeline(engine, tiny, name, chunking):
    oracle = _oracle(tiny, "automatic-speech-recognition", name)
    expected = assert_informative(_answer(oracle), FLAC, chunking, other_inputs=FIRST_HALF)["text"]
    assert engine.query(f"tiny/{name}", _payload(FLAC, chunking)) == {"text": expected}


@pytest.mark.parametrize(
    ("data", "chunking", "changes"),
    [
        (LONG, {"chunk_length_s": 5.0}, {}),
        (REVERSED, {"chunk_length_s": 10.0, "stride_length_s": 0.0}, {"chunk_length_s": 9.0, "stride_length_s": 2.0}),
        (FIRST_WINDOW, {"chunk_length_s": 7.3, "stride_length_s": 1.7}, {"chunk_length_s": 6.0}),
    ],
)
def test_ctc_long_audio_chunked_as_the_pipeline(engine, tiny, data, chunking, changes):
    """30 s and 41 s through a CTC model, chunked with the default stride (a sixth of the chunk), with none, with
    lengths that are not a multiple of the model's 80 samples per frame: the frames of each chunk's stride are
    dropped and the rest concatenated as the pipeline does. The answer changes with each chunk parameter (and
    unchunked, in the first case: the others change chunk_length_s rather than drop it, as unchunked is slow)."""
    oracle = _oracle(tiny, "automatic-speech-recognition", "wav2vec2-ctc")
    other = REVERSED if data is LONG else LONG
    expected = assert_informative(_answer(oracle), data, chunking, other_inputs=other, changes=changes)["text"]
    assert engine.query("tiny/wav2vec2-ctc", _payload(data, chunking)) == {"text": expected}


def test_whisper_is_chunked_beyond_its_window(engine, tiny):
    """41 s: localinfer chunks by 30 s unasked, as the pipeline does with chunk_length_s=30. The first 30 s alone (one
    chunk: the unchunked answer, which the pipeline cannot give for 41 s) and 20 s chunks both answer otherwise."""
    oracle = _oracle(tiny, "automatic-speech-recognition", "whisper")
    expected = assert_informative(
        _answer(oracle), LONG, {"chunk_length_s": 30}, other_inputs=FIRST_WINDOW, changes={"chunk_length_s": 20}
    )["text"]
    assert engine.query("tiny/whisper", LONG) == {"text": expected}


def test_ctc_long_audio_is_chunked_by_default(engine, tiny):
    """41 s with no parameters: beyond Limits.max_unchunked_audio_seconds (30 s), so chunked by 30 s with the default
    strides, as the pipeline answers with chunk_length_s=30 (unasked, the pipeline would run all 41 s in one pass,
    its memory growing with the square of the duration)."""
    oracle = _oracle(tiny, "automatic-speech-recognition", "wav2vec2-ctc")
    expected = assert_informative(
        _answer(oracle), LONG, {"chunk_length_s": 30}, other_inputs=REVERSED, changes={"chunk_length_s": 20}
    )["text"]
    assert engine.query("tiny/wav2vec2-ctc", LONG) == {"text": expected}


def test_audio_classification_beyond_one_pass_is_413_unless_allowed(engine, tiny, home, tmp_path):
    from localinfer import LocalInference, PayloadTooLargeError
    from localinfer.limits import Limits
    from tests.fixtures.tiny_models import write_models_toml

    with pytest.raises(PayloadTooLargeError, match=r"audio of 41\.\d s; this model classifies at most 30 s"):
        engine.query("tiny/wav2vec2-classifier", LONG)
    allowed = LocalInference(
        write_models_toml(tmp_path / "models.toml", tiny), home, limits=Limits(max_unchunked_audio_seconds=60)
    )
    pipe = _oracle(tiny, "audio-classification", "wav2vec2-classifier")
    assert_close(allowed.query("tiny/wav2vec2-classifier", LONG), pipe(_audio(pipe, LONG), top_k=5))


@pytest.mark.parametrize("sample", ["sample1_dual.ogg", "sample1.webm"])
def test_other_containers(engine, tiny, sample):
    """The lossy codecs change the samples enough to change the transcript: the decoding itself is tested."""
    oracle = _oracle(tiny, "automatic-speech-recognition", "wav2vec2-ctc")
    data = _sample(sample)
    expected = assert_informative(_answer(oracle), data, {}, other_inputs=FLAC)
    assert engine.query("tiny/wav2vec2-ctc", data) == {"text": expected["text"]}


@pytest.mark.parametrize(
    "parameters",
    [{}, {"top_k": 2}, {"top_k": 10, "function_to_apply": "sigmoid"}, {"top_k": 3, "function_to_apply": "none"}],
)
def test_audio_classification_equals_the_pipeline(engine, tiny, parameters):
    """Seven labels: the default top_k (5), top_k=2 and top_k=10 (all seven) answer differently.

    The default is 5 (the README's contract, and the default AudioClassificationPipeline.__init__ sets), but the
    pipeline called without top_k answers every label (its _sanitize_parameters turns the missing top_k into
    num_labels), so the oracle is asked for top_k=5 when the request names none."""
    pipe = _oracle(tiny, "audio-classification", "wav2vec2-classifier")

    def oracle(data, parameters):
        return pipe(_audio(pipe, data), **{"top_k": 5, **parameters})

    expected = assert_informative(oracle, FLAC, parameters, other_inputs=FIRST_HALF)
    assert_close(engine.query("tiny/wav2vec2-classifier", _payload(FLAC, parameters)), expected)
    assert_close(engine.query("tiny/wav2vec2-classifier", FLAC), oracle(FLAC, {}))


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
        ("wav2vec2-ctc", {"chunk_length_s": 2.0, "stride_length_s": 1.5}, "parameters.stride_length_s"),
        ("wav2vec2-ctc", {"chunk_length_s": 31.0}, "parameters.chunk_length_s: at most 30 s in one pass"),
        ("whisper", {"chunk_length_s": 2.0, "stride_length_s": 1.5}, "parameters.stride_length_s"),
        ("wav2vec2-ctc", {"language": "fr"}, "parameters.language: unknown parameter"),
    ],
)
def test_bad_parameters_are_400(engine, model, parameters, field):
    with pytest.raises(BadRequestError) as info:
        engine.query(f"tiny/{model}", _payload(FLAC, parameters))
    assert field in info.value.body["error"]


def _whisper_variant(tiny, tmp_path, generation: dict) -> Path:
    """A copy of the tiny Whisper's configs with `generation` over its generation config (the weights are not
    needed: the decoder prompt and the settings come from the configs)."""
    import json
    import shutil

    folder = tmp_path / "whisper-variant"
    folder.mkdir()
    shutil.copy(tiny["whisper"] / "config.json", folder)
    values = json.loads((tiny["whisper"] / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**values, **generation}))
    return folder


def _whisper_tokens_both_ways(engine, tiny, folder: Path, data: bytes, num_beams: int | None):
    """(generate's tokens, the decoding loop's) for one window, as the pipeline calls `generate`: its generation
    config (num_beams 5 by default, the model's max_length), the features of the model's extractor. `generate`
    answers the new tokens only: each answer is preceded by its decoder prompt (transformers'
    `_retrieve_init_tokens`, localinfer's `decoder_prompt`)."""
    import copy
    import dataclasses

    import torch
    from transformers import AutoFeatureExtractor, GenerationConfig, WhisperForConditionalGeneration, pipeline

    from localinfer.decoding.whisper import decoder_prompt, transcribe_window, whisper_plan

    model = WhisperForConditionalGeneration.from_pretrained(tiny["whisper"])
    model.generation_config = GenerationConfig.from_pretrained(folder)
    extractor = AutoFeatureExtractor.from_pretrained(tiny["whisper"])
    pipe = pipeline(
        "automatic-speech-recognition", model=model, tokenizer=str(tiny["whisper"]), feature_extractor=extractor
    )
    features = extractor(_decode(data, 16000), sampling_rate=16000, return_tensors="np", return_attention_mask=True)
    extra = {} if num_beams is None else {"num_beams": num_beams}
    with torch.no_grad():
        expected = model.generate(
            torch.tensor(features["input_features"]),
            attention_mask=torch.tensor(features["attention_mask"]),
            generation_config=pipe.generation_config,
            **extra,
        ).tolist()
        config = copy.deepcopy(pipe.generation_config)
        config.return_timestamps = False  # as `generate` sets it (`_set_return_timestamps`)
        expected_prompt = model._retrieve_init_tokens(
            torch.tensor(features["input_features"]), 1, config, model.config, 3000, {}
        ).tolist()
    plan = whisper_plan(folder)
    if num_beams is not None:
        plan = dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, num_beams=num_beams))
    loaded = engine.preload("tiny/whisper")
    sessions, config = loaded.runner.sessions, loaded.config
    ours = [
        decoder_prompt(sessions, config, plan, dict(features))
        + transcribe_window(sessions, config, plan, dict(features))
    ]
    return [expected_prompt[0] + expected[0]], ours


@pytest.mark.parametrize("num_beams", [1, None])  # greedy; the pipeline's default (5 beams)
def test_whisper_tokens_equal_generate(engine, tiny, num_beams):
    """Token-identical with `WhisperForConditionalGeneration.generate` on the fixture (English-only: start and
    <|notimestamps|>, suppress_tokens, <|endoftext|> suppressed at the first new token), for two clips."""
    answers = []
    for data in (FLAC, FIRST_HALF):
        expected, ours = _whisper_tokens_both_ways(engine, tiny, tiny["whisper"], data, num_beams)
        assert ours == expected
        answers.append(expected)
    assert answers[0] != answers[1]


def _multilingual(tiny) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["whisper"])
    ids = tok.convert_tokens_to_ids
    # Two "languages" (the fixture's vocabulary has one language token: <|startoflm|> stands in for the other).
    return {
        "is_multilingual": True,
        "lang_to_id": {"<|en|>": ids("<|en|>"), "<|de|>": ids("<|startoflm|>")},
        "task_to_id": {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        "forced_decoder_ids": [[1, None], [2, ids("<|transcribe|>")]],
    }


@pytest.mark.parametrize(
    "generation",
    [
        {},  # forced_decoder_ids [[1, None], [2, transcribe]]: the language detected, as whisper-tiny's config asks
        {"language": "german", "task": "translate"},
        {"language": "en"},  # transcribe added
        {"forced_decoder_ids": [[1, "EN"], [2, "TRANSLATE"]], "lang_to_id": None},  # an old config: forced as is
    ],
)
def test_whisper_multilingual_prompts_equal_generate(engine, tiny, tmp_path, generation):
    """Multilingual generation configs (lang_to_id, task_to_id, forced_decoder_ids; language and task set or not):
    the decoder prompt `_retrieve_init_tokens` builds, language detection included, and the tokens after it."""
    values = _multilingual(tiny)
    if "EN" in repr(generation):
        generation = {
            **generation,
            "forced_decoder_ids": [[1, values["lang_to_id"]["<|en|>"]], [2, values["task_to_id"]["translate"]]],
        }
    folder = _whisper_variant(tiny, tmp_path, {**values, **generation})
    expected, ours = _whisper_tokens_both_ways(engine, tiny, folder, FLAC, 1)
    assert ours == expected
    assert len(expected[0]) > 4 and expected[0][1] in values["lang_to_id"].values()


@pytest.mark.parametrize("num_beams", [1, None])
@pytest.mark.parametrize("variant", ["begin_suppress_tokens", "eos_token_id"])
def test_whisper_generation_config_variants_equal_generate(engine, tiny, tmp_path, variant, num_beams):
    """Generation configs that change the fixture's tokens: begin_suppress_tokens banning the token decoding starts
    with (at the first new token), an eos_token_id the transcript reaches (generation stops there, and `generate`
    cuts the final eos)."""
    (plain,), _ = _whisper_tokens_both_ways(engine, tiny, tiny["whisper"], FLAC, num_beams)
    new = plain[2:]  # after <|startoftranscript|> <|notimestamps|>
    generation = {"begin_suppress_tokens": [0, new[0]], "eos_token_id": new[len(new) // 2]}[variant]
    folder = _whisper_variant(tiny, tmp_path, {variant: generation})
    expected, ours = _whisper_tokens_both_ways(engine, tiny, folder, FLAC, num_beams)
    assert ours == expected
    assert expected != [plain]


def test_whisper_samples_when_its_generation_config_says_so(engine, tiny, tmp_path):
    """`generate_with_fallback` turns sampling off, but `generate` then restores the model's do_sample and temperature
    (its generation config's values win over the defaults): the pipeline samples, and so does localinfer (with
    numpy's generator: not the same draws as torch's). At temperature 5 a draw is never the greedy transcript."""
    (greedy,), _ = _whisper_tokens_both_ways(engine, tiny, tiny["whisper"], FLAC, 1)
    folder = _whisper_variant(tiny, tmp_path, {"do_sample": True, "temperature": 5.0})
    expected, ours = _whisper_tokens_both_ways(engine, tiny, folder, FLAC, 1)
    assert expected != [greedy] and ours != [greedy]
    assert ours[0][:2] == expected[0][:2] and len(ours[0]) == len(expected[0])  # the same prompt and max_length


def test_whisper_detects_the_language(engine, tiny, tmp_path):
    """Language detection (`detect_language`) picks the model's favourite language token after the decoder start:
    here the second of two, so a detection that took the first would answer otherwise."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny["whisper"])
    values = _multilingual(tiny)
    features = torch.tensor(_whisper_features(tiny, FLAC)["input_features"])
    with torch.no_grad():
        start = torch.tensor([[model.generation_config.decoder_start_token_id]])
        logits = model(input_features=features, decoder_input_ids=start).logits[0, -1]
    order = torch.argsort(logits, descending=True).tolist()
    languages = {"<|en|>": order[-1], "<|de|>": order[0]}
    folder = _whisper_variant(tiny, tmp_path, {**values, "lang_to_id": languages})
    expected, ours = _whisper_tokens_both_ways(engine, tiny, folder, FLAC, 1)
    assert ours == expected
    assert expected[0][1] == order[0]


def _whisper_features(tiny, data: bytes) -> dict:
    from transformers import AutoFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(tiny["whisper"])
    return extractor(_decode(data, 16000), sampling_rate=16000, return_tensors="np", return_attention_mask=True)
