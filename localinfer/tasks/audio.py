"""automatic-speech-recognition and audio-classification: the body is an audio file, decoded with PyAV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from ..media import decode_audio
from ..runtime import ExportKind, LoadedModel
from ..text import read_json
from .base import FunctionToApply, Parameters, Task, task_pipeline


def _audio(model: LoadedModel, data: bytes, pipe: Any) -> dict[str, Any]:
    rate = pipe.feature_extractor.sampling_rate
    return {"raw": decode_audio(data, rate), "sampling_rate": rate}


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
        architectures = read_json(folder / "config.json").get("architectures") or []
        if any(a.endswith("ForCTC") for a in architectures):
            return ExportKind("automatic-speech-recognition", ort_class="ORTModelForCTC")
        return ExportKind("automatic-speech-recognition-with-past", ort_class="ORTModelForSpeechSeq2Seq")

    def run(self, model: LoadedModel, inputs: bytes, parameters: SpeechRecognitionParameters) -> dict:
        pipe = task_pipeline(model, self.name, "tokenizer", "feature_extractor")
        audio = _audio(model, inputs, pipe)
        kwargs = parameters.model_dump(exclude_none=True)
        window = getattr(pipe.feature_extractor, "chunk_length", None)  # Whisper's 30 s
        if window and "chunk_length_s" not in kwargs and len(audio["raw"]) > window * audio["sampling_rate"]:
            kwargs["chunk_length_s"] = window
        return {"text": pipe(audio, **kwargs)["text"]}


class ClassificationParameters(Parameters):
    top_k: Annotated[int, Field(ge=1)] = 5
    function_to_apply: FunctionToApply | None = None


class AudioClassification(Task):
    """Audio bytes answer `[{label, score}]`, best first (5 by default)."""

    name = "audio-classification"
    Inputs = bytes
    Parameters = ClassificationParameters
    media = "audio"

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("audio-classification", ort_class="ORTModelForAudioClassification")

    def run(self, model: LoadedModel, inputs: bytes, parameters: ClassificationParameters) -> list[dict]:
        pipe = task_pipeline(model, self.name, "feature_extractor")
        return _plain(pipe(_audio(model, inputs, pipe), **parameters.model_dump(exclude_none=True)))


def _plain(entries: list[dict]) -> list[dict]:
    """Pipeline answers with plain floats (some carry numpy scalars)."""
    return [{**e, "score": float(e["score"])} for e in entries]
