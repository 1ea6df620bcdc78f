"""automatic-speech-recognition and audio-classification: the body is an audio file, decoded with PyAV.

CTC models (wav2vec2) and audio classifiers run from one ONNX Runtime session (or the PyTorch model), with the
model's feature extractor before it and the pipelines' post-processing ported to numpy after it. Whisper, an
encoder-decoder, runs its encoder and merged decoder on localinfer's decoding loop (localinfer/decoding/whisper.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from .. import limits
from ..audio_chunks import chunk_iter, chunk_samples, rescale_stride, strip_stride
from ..decoding.models import ENCODER_DECODER_FILES
from ..errors import BadRequestError, PayloadTooLargeError
from ..imports import transformers_ready
from ..media import audio_seconds, decode_audio
from ..runtime import ExportKind, LoadedModel
from ..scores import apply_function
from ..text import read_json
from .base import FunctionToApply, Parameters, Task, run_stacked, task_pipeline
from .generation import generation_tokenizer


def _is_ctc(folder: Path) -> bool:
    architectures = read_json(folder / "config.json").get("architectures") or []
    return any(a.endswith("ForCTC") for a in architectures)


def _preprocessors(model: LoadedModel) -> Any:
    """The model's feature extractor and its transformers config (for `inputs_to_logits_ratio`), loaded once."""
    if "audio-preprocessors" not in model.state:
        transformers_ready()
        from transformers import AutoConfig, AutoFeatureExtractor

        extractor = AutoFeatureExtractor.from_pretrained(model.files)
        model.state["audio-preprocessors"] = extractor, AutoConfig.from_pretrained(model.files)
    return model.state["audio-preprocessors"]


def _features(extractor: Any, samples: np.ndarray, **options: Any) -> dict[str, np.ndarray]:
    """The feature extractor's arrays for one clip (a batch of one), as the pipelines compute them."""
    return dict(extractor(samples, sampling_rate=extractor.sampling_rate, return_tensors="np", **options))


class SpeechRecognitionParameters(Parameters):
    chunk_length_s: Annotated[float, Field(gt=0, le=600)] | None = None
    stride_length_s: Annotated[float, Field(ge=0)] | None = None


class AutomaticSpeechRecognition(Task):
    """Audio bytes answer `{"text"}`: CTC models (wav2vec2) and encoder-decoder models (Whisper).

    Audio longer than the model's window is cut into overlapping chunks and stitched as the
    transformers pipeline does; Whisper's window is 30 s, so longer audio is chunked by default.
    """

    name = "automatic-speech-recognition"
    Inputs = bytes
    Parameters = SpeechRecognitionParameters
    media = "audio"

    def export_kind(self, folder: Path) -> ExportKind:
        if _is_ctc(folder):
            return ExportKind("automatic-speech-recognition")
        return ExportKind("automatic-speech-recognition-with-past", sessions=ENCODER_DECODER_FILES)

    def run(self, model: LoadedModel, inputs: bytes, parameters: SpeechRecognitionParameters) -> dict:
        if model.kind.sessions:
            return {"text": _whisper(model, inputs, parameters)}
        return {"text": _ctc(model, inputs, parameters)}


def _chunking(
    parameters: SpeechRecognitionParameters, sampling_rate: int, align_to: int
) -> tuple[int, int, int] | None:
    """The chunk and strides in samples, or None when the request asks for no chunking."""
    if not parameters.chunk_length_s:
        return None
    try:
        return chunk_samples(parameters.chunk_length_s, parameters.stride_length_s, sampling_rate, align_to)
    except ValueError:
        raise BadRequestError(
            "parameters.stride_length_s: the strides on both sides must not exceed chunk_length_s"
        ) from None


def _ctc(model: LoadedModel, data: bytes, parameters: SpeechRecognitionParameters) -> str:
    """Greedy CTC: the argmax frame by frame, then the tokenizer's CTC decoding (repeats and blanks collapsed).

    As `AutomaticSpeechRecognitionPipeline` does for CTC models: unchunked unless `chunk_length_s` is given; each
    chunk runs alone and keeps only the frames outside its stride (see localinfer/audio_chunks.py).
    """
    extractor, config = _preprocessors(model)
    samples = decode_audio(data, extractor.sampling_rate)
    ratio = config.inputs_to_logits_ratio  # audio samples per logits frame
    window = limits.current().max_unchunked_audio_seconds
    if parameters.chunk_length_s is not None and parameters.chunk_length_s > window:
        raise BadRequestError(
            f"parameters.chunk_length_s: at most {window:g} s in one pass "
            f"({limits.Limits.setting('max_unchunked_audio_seconds')})"
        )
    if parameters.chunk_length_s is None and samples.size > window * extractor.sampling_rate:
        # Unlike the pipeline (which would run it in one pass, its memory growing with the square of the duration),
        # long audio is chunked by default, at the bound, with the pipeline's default strides.
        parameters = parameters.model_copy(update={"chunk_length_s": window})
    chunking = _chunking(parameters, extractor.sampling_rate, ratio)
    if chunking is None:
        features = _features(extractor, samples, return_attention_mask=True)
        tokens = model.runner.run(features, ["logits"])["logits"].argmax(axis=-1)
    else:
        pieces = []
        for chunk in chunk_iter(samples, *chunking):
            features = _features(extractor, chunk.samples, return_attention_mask=True)
            logits = model.runner.run(features, ["logits"])["logits"]
            pieces.append(strip_stride(logits.argmax(axis=-1), rescale_stride(chunk.stride, 1 / ratio)))
        tokens = np.concatenate(pieces, axis=1)
    # The pipeline decodes CTC output with the special tokens kept (its `skip_special_tokens = type != "ctc"`).
    return _ctc_tokenizer(model).decode(tokens[0], skip_special_tokens=False)


def _ctc_tokenizer(model: LoadedModel) -> Any:
    if "ctc-tokenizer" not in model.state:
        transformers_ready()
        from transformers import AutoTokenizer

        model.state["ctc-tokenizer"] = AutoTokenizer.from_pretrained(model.files)
    return model.state["ctc-tokenizer"]


def _whisper(model: LoadedModel, data: bytes, parameters: SpeechRecognitionParameters) -> str:
    """Whisper, chunked beyond its 30 s window as the pipeline is with chunk_length_s=30.

    On ONNX Runtime, as `AutomaticSpeechRecognitionPipeline` (pipelines/automatic_speech_recognition.py) runs a
    Whisper model, with localinfer's decoding loop in place of `generate` (localinfer/decoding/whisper.py): each
    chunk's features from the model's `WhisperFeatureExtractor`, its tokens decoded from Whisper's prompt, and the
    chunks' tokens merged and decoded by the tokenizer's `_decode_asr` (tokenization_whisper.py, no torch), as the
    pipeline's `postprocess` does. On the PyTorch route, the transformers pipeline itself.
    """
    extractor, _ = _preprocessors(model)
    rate = extractor.sampling_rate
    samples = decode_audio(data, rate)
    _chunking(parameters, rate, 1)  # the pipeline aligns Whisper's chunks to single samples
    window = getattr(extractor, "chunk_length", None)  # Whisper's 30 s
    if window and parameters.chunk_length_s is None and samples.size > window * rate:
        parameters = parameters.model_copy(update={"chunk_length_s": float(window)})
    if model.runner.backend == "torch":  # the reference route: the transformers pipeline
        pipe = task_pipeline(model, "automatic-speech-recognition", "tokenizer", "feature_extractor")
        audio = {"raw": samples, "sampling_rate": rate}
        return pipe(audio, **parameters.model_dump(exclude_none=True))["text"]
    chunking = _chunking(parameters, rate, 1)
    outputs = []
    if chunking is None:
        outputs.append({"tokens": np.asarray([_whisper_tokens(model, _features(extractor, samples))])})
    else:
        for chunk in chunk_iter(samples, *chunking):
            tokens = _whisper_tokens(model, _features(extractor, chunk.samples))
            outputs.append({"tokens": np.asarray([tokens]), "stride": tuple(s / rate for s in chunk.stride)})
    tokenizer = generation_tokenizer(model)
    precision = extractor.chunk_length / model.config["max_source_positions"]
    text, _ = tokenizer._decode_asr(outputs, return_timestamps=None, return_language=None, time_precision=precision)
    return text


def _whisper_tokens(model: LoadedModel, features: dict[str, np.ndarray]) -> list[int]:
    """The tokens `generate` answers for one window (the decoder prompt first)."""
    from ..decoding.whisper import transcribe_window, whisper_plan

    try:
        if "whisper-plan" not in model.state:
            model.state["whisper-plan"] = whisper_plan(model.folder)
        return transcribe_window(model.runner.sessions, model.config, model.state["whisper-plan"], features)
    except ValueError as exc:
        raise BadRequestError(f"parameters: {exc}") from None


class ClassificationParameters(Parameters):
    top_k: Annotated[int, Field(ge=1)] = 5
    function_to_apply: FunctionToApply | None = None


class AudioClassification(Task):
    """Audio bytes answer `[{label, score}]`, best first (5 by default)."""

    name = "audio-classification"
    batches = True
    Inputs = bytes
    Parameters = ClassificationParameters
    media = "audio"

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("audio-classification")

    def run(self, model: LoadedModel, inputs: bytes, parameters: ClassificationParameters) -> list[dict]:
        return self.run_many(model, [inputs], parameters)[0]

    def run_many(self, model: LoadedModel, inputs: list[bytes], parameters: ClassificationParameters) -> list[Any]:
        """As `AudioClassificationPipeline.postprocess`: softmax unless asked otherwise (whatever the config's
        problem type), the `top_k` best, `top_k` capped at the number of labels. Clips whose features have one
        shape (a spectrogram model's window, or raw waveforms of one length) run together, never padded: a
        raw-waveform model without an attention mask would hear the padding."""
        _, config = _preprocessors(model)
        function = parameters.function_to_apply or "softmax"
        answers = []
        for outputs in run_stacked(model, [_clip_features(model, data) for data in inputs], ("logits",)):
            scores = apply_function(function, outputs["logits"][0].astype(np.float32))
            best = np.argsort(-scores, kind="stable")[: min(parameters.top_k, config.num_labels)]
            answers.append([{"score": float(scores[i]), "label": config.id2label[int(i)]} for i in best])
        return answers


def _clip_features(model: LoadedModel, data: bytes) -> dict[str, np.ndarray]:
    """A clip's features for classification, within the one-pass bound."""
    extractor, _ = _preprocessors(model)
    window = limits.current().max_unchunked_audio_seconds
    # A raw-waveform model (wav2vec2, HuBERT) takes the whole clip in one pass; a spectrogram extractor (AST)
    # cuts it to its own window, so any duration is bounded there.
    one_pass = getattr(extractor, "feature_size", None) == 1
    declared = audio_seconds(data) if one_pass else 0.0
    if declared > window:  # refused from the header, before decoding
        raise _beyond_one_pass(declared, window)
    samples = decode_audio(data, extractor.sampling_rate)
    if one_pass and samples.size > window * extractor.sampling_rate:
        raise _beyond_one_pass(samples.size / extractor.sampling_rate, window)
    return _features(extractor, samples)


def _beyond_one_pass(seconds: float, window: float) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"inputs: audio of {seconds:.1f} s; this model classifies at most {window:g} s in one pass "
        f"({limits.Limits.setting('max_unchunked_audio_seconds')})"
    )
