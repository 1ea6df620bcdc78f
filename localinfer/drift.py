"""How far an int8 model answers from its fp32 model: built-in probe inputs per task, both models' answers compared.

Measured when an int8 export is made (runtime/quantize.py records it; `localinfer models` shows it):
- embeddings (feature-extraction, sentence-similarity): the cosine of each probe's int8 vector to its fp32 one
  (minimum and mean), and for sentence-similarity the largest difference of a published similarity;
- classifiers (text, token, image and audio classification, fill-mask, zero-shot, question answering, object
  detection, image segmentation): label agreement (the top answer's label, span or token the same) and the
  largest difference of a score that both answers give for the same label;
- generation and transcription (and TAPEX / TAPAS answers): token agreement (the share of positions where the
  int8 answer's tokens equal the fp32 answer's, over the longer of the two) and the share of identical answers.

The probes are made here (a dozen varied sentences, generated images and tones): no network, no data set.
Each probe runs alone through the task's own `validate` and `run`, as a request would.
"""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .runtime import LoadedModel
from .tasks import Task, get_task

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "Quarterly revenue rose 12% to $4.3 billion, beating analysts' forecasts.",
    "I absolutely hated the ending of that movie!",
    "What time does the last train to Zürich leave?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Meet me at 7pm near the old fountain in Paris, okay?",
    "The patient was prescribed 500 mg of amoxicillin twice daily.",
    "def add(a, b): return a + b",
    "Honestly, the service was slow but the food was wonderful.",
    "Mount Everest is 8,849 metres tall and lies on the border of Nepal and China.",
    "lol that was sooo funny 😂",
    "The committee will reconvene after the summer recess to vote on the proposal.",
]
CONTEXT = (
    "The Eiffel Tower was completed in 1889 in Paris. It is 330 metres tall and was designed by the engineering "
    "company of Gustave Eiffel. About seven million people visit it every year."
)
QUESTIONS = ["When was the Eiffel Tower completed?", "How tall is the tower?", "Who designed it?"]
LABELS = ["politics", "sports", "science", "food", "travel"]
TABLE = {"city": ["Paris", "London", "New York"], "height": ["330", "96", "381"]}
TABLE_QUERIES = ["which city is tallest?", "how tall is the tower in paris?", "what is the total height?"]
GREEDY = {"do_sample": False}
NEW_TOKENS = 16

Metric = Callable[[list[Any], list[Any], LoadedModel], dict[str, Any]]


def measure_drift(handler: Task, reference: LoadedModel, quantised: LoadedModel) -> dict[str, Any]:
    """The drift of `quantised` from `reference` (same model, fp32) on `handler`'s task's probes."""
    kind = _METRIC_KIND[handler.name]
    if handler.name == "sentence-similarity":  # the vectors behind the similarities, and the similarities
        embeddings = _compare(get_task("feature-extraction"), reference, quantised, _embedding, _sentences())
        similarities = _compare(handler, reference, quantised, _similarity, _sentence_pairs())
        del similarities["probes"]  # three of the same sentences
        return {"task": handler.name, **embeddings, **similarities}
    return {"task": handler.name, **_compare(handler, reference, quantised, kind, _PROBES[handler.name](reference))}


def _compare(
    handler: Task, reference: LoadedModel, quantised: LoadedModel, metric: Metric, probes: list[tuple[Any, dict]]
) -> dict[str, Any]:
    ours, theirs = [], []
    for inputs, parameters in probes:
        checked, checked_parameters = handler.validate(inputs, parameters)
        ours.append(handler.run(reference, checked, checked_parameters))
        theirs.append(handler.run(quantised, checked, checked_parameters))
    return {"probes": len(probes), **metric(ours, theirs, reference)}


# -- metrics -------------------------------------------------------------------------------------------------


def _embedding(fp32: list[Any], int8: list[Any], model: LoadedModel) -> dict[str, Any]:
    cosines = []
    for a, b in zip(fp32, int8, strict=True):
        x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
        cosines.append(float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-12)))
    return {"min_cosine": _round(min(cosines)), "mean_cosine": _round(sum(cosines) / len(cosines))}


def _similarity(fp32: list[Any], int8: list[Any], model: LoadedModel) -> dict[str, Any]:
    pairs = [(a, b) for x, y in zip(fp32, int8, strict=True) for a, b in zip(x, y, strict=True)]
    return {"max_similarity_difference": _round(max(abs(a - b) for a, b in pairs))}


def _labels(fp32: list[Any], int8: list[Any], model: LoadedModel) -> dict[str, Any]:
    agree, differences = 0, [0.0]
    for a, b in zip(fp32, int8, strict=True):
        ours, theirs = dict(_candidates(a)), dict(_candidates(b))
        top = max(ours, key=ours.__getitem__) if ours else None
        agree += top == (max(theirs, key=theirs.__getitem__) if theirs else None)
        differences += [abs(ours[label] - theirs[label]) for label in ours.keys() & theirs.keys()]
    return {"label_agreement": _round(agree / len(fp32)), "max_score_difference": _round(max(differences))}


def _tokens(fp32: list[Any], int8: list[Any], model: LoadedModel) -> dict[str, Any]:
    split = _token_splitter(model)
    agreements, identical = [], 0
    for a, b in zip(fp32, int8, strict=True):
        x, y = split(_text(a)), split(_text(b))
        agreements.append(sum(p == q for p, q in zip(x, y, strict=False)) / max(len(x), len(y)) if x or y else 1.0)
        identical += _text(a) == _text(b)
    return {
        "token_agreement": _round(sum(agreements) / len(agreements)),
        "identical_answers": _round(identical / len(fp32)),
    }


def _candidates(answer: Any) -> Iterator[tuple[Any, float]]:
    """A classifier's answer as (what it names, score) pairs: label, token, span or box with its label."""
    if isinstance(answer, list):
        for item in answer:
            yield from _candidates(item)
    elif isinstance(answer, dict):
        if "labels" in answer and "scores" in answer:  # zero-shot
            yield from zip(answer["labels"], answer["scores"], strict=True)
        elif isinstance(answer.get("score"), (int, float)):
            named = tuple(sorted((k, _freeze(v)) for k, v in answer.items() if k not in ("score", "mask")))
            yield named, float(answer["score"])


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _text(answer: Any) -> str:
    """The text of a generation, transcription or table answer."""
    while isinstance(answer, list) and answer:
        answer = answer[0]
    if isinstance(answer, dict):
        for key in ("generated_text", "summary_text", "translation_text", "text", "answer"):
            if isinstance(answer.get(key), str):
                return answer[key]
    return str(answer)


def _token_splitter(model: LoadedModel) -> Callable[[str], list[Any]]:
    """The model's own tokens when it has a fast tokenizer, else words."""
    path = model.files / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        return lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    return str.split


def _round(value: float) -> float:
    return round(value, 6)


# -- probes --------------------------------------------------------------------------------------------------


def _sentences(model: LoadedModel | None = None) -> list[tuple[Any, dict]]:
    return [(s, {}) for s in SENTENCES]


def _sentence_pairs(model: LoadedModel | None = None) -> list[tuple[Any, dict]]:
    return [({"source_sentence": s, "sentences": [t for t in SENTENCES if t != s]}, {}) for s in SENTENCES[:3]]


def _masked(model: LoadedModel) -> list[tuple[Any, dict]]:
    from .tasks.base import text_tokenizer

    mask = text_tokenizer(model).special_token("mask_token")
    token = mask[0] if mask else "[MASK]"
    probes = []
    for sentence in SENTENCES:
        words = sentence.split()
        words[len(words) // 2] = token
        probes.append((" ".join(words), {}))
    return probes


def _generation(length: dict[str, int]) -> Callable[[LoadedModel], list[tuple[Any, dict]]]:
    return lambda model: [(s, {**GREEDY, **length}) for s in SENTENCES]


def _conversations(model: LoadedModel) -> list[tuple[Any, dict]]:
    return [({"text": s}, {**GREEDY, "max_length": 32}) for s in SENTENCES[:6]]


def _questions(model: LoadedModel) -> list[tuple[Any, dict]]:
    return [({"question": q, "context": CONTEXT}, {}) for q in QUESTIONS] + [
        ({"question": "What is this about?", "context": s}, {}) for s in SENTENCES[:9]
    ]


def _tables(model: LoadedModel) -> list[tuple[Any, dict]]:
    return [({"query": q, "table": TABLE}, {}) for q in TABLE_QUERIES]


def _zero_shot(model: LoadedModel) -> list[tuple[Any, dict]]:
    return [(s, {"candidate_labels": LABELS}) for s in SENTENCES]


def images(count: int = 6, size: int = 96) -> list[bytes]:
    """Generated PNG images: gradients, stripes, a disc, checkers and noise (deterministic)."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(0)
    planes = [
        np.stack([x, y, 1 - x], -1),
        np.stack([np.sin(20 * x) * 0.5 + 0.5] * 3, -1),
        np.stack([((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1)] * 3, -1) * np.array([0.9, 0.2, 0.1]),
        np.stack([(np.floor(x * 8) + np.floor(y * 8)) % 2] * 3, -1),
        rng.random((size, size, 3)),
        np.stack([y, y * x, np.cos(6 * x * y) * 0.5 + 0.5], -1),
    ]
    out = []
    for plane in planes[:count]:
        buffer = io.BytesIO()
        Image.fromarray((np.clip(plane, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def tones(count: int = 6, rate: int = 16000, seconds: float = 1.0) -> list[bytes]:
    """Generated 16-bit WAV files: pure tones, a chord, a chirp, noise and beeps (deterministic)."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(0)
    signals = [
        np.sin(2 * math.pi * 220 * t),
        np.sin(2 * math.pi * 440 * t) + 0.5 * np.sin(2 * math.pi * 660 * t),
        np.sin(2 * math.pi * (200 + 1800 * t) * t),
        rng.normal(0, 0.3, t.shape),
        np.sin(2 * math.pi * 1000 * t) * (np.sin(2 * math.pi * 3 * t) > 0),
        np.sin(2 * math.pi * 130 * t) * np.exp(-3 * t),
    ]
    out = []
    for signal in signals[:count]:
        pcm = (np.clip(signal / max(np.abs(signal).max(), 1e-9), -1, 1) * 0.8 * 32767).astype("<i2")
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as file:
            file.setnchannels(1)
            file.setsampwidth(2)
            file.setframerate(rate)
            file.writeframes(pcm.tobytes())
        out.append(buffer.getvalue())
    return out


_PROBES: dict[str, Callable[[LoadedModel], list[tuple[Any, dict]]]] = {
    "feature-extraction": _sentences,
    "sentence-similarity": _sentence_pairs,
    "text-classification": _sentences,
    "token-classification": _sentences,
    "fill-mask": _masked,
    "zero-shot-classification": _zero_shot,
    "question-answering": _questions,
    "table-question-answering": _tables,
    "text-generation": _generation({"max_new_tokens": NEW_TOKENS}),
    "text2text-generation": _generation({"max_new_tokens": NEW_TOKENS}),
    "translation": _generation({"max_new_tokens": NEW_TOKENS}),
    "summarization": _generation({"max_length": NEW_TOKENS + 4}),
    "conversational": _conversations,
    "automatic-speech-recognition": lambda model: [(t, {}) for t in tones()],
    "audio-classification": lambda model: [(t, {}) for t in tones()],
    "image-classification": lambda model: [(i, {}) for i in images()],
    "object-detection": lambda model: [(i, {"threshold": 0.0}) for i in images()],
    "image-segmentation": lambda model: [(i, {"threshold": 0.0}) for i in images()],
}
_METRIC_KIND: dict[str, Metric] = {
    "feature-extraction": _embedding,
    "sentence-similarity": _similarity,
    "table-question-answering": _tokens,
    "text-generation": _tokens,
    "text2text-generation": _tokens,
    "translation": _tokens,
    "summarization": _tokens,
    "conversational": _tokens,
    "automatic-speech-recognition": _tokens,
    **dict.fromkeys(
        [
            "text-classification",
            "token-classification",
            "fill-mask",
            "zero-shot-classification",
            "question-answering",
            "audio-classification",
            "image-classification",
            "object-detection",
            "image-segmentation",
        ],
        _labels,
    ),
}
