"""token-classification (NER): per-token labels grouped into entities, as the transformers pipeline groups them.

The aggregation below follows transformers' TokenClassificationPipeline (gather_pre_entities, aggregate,
group_entities, aggregate_overlapping_entities) step for step: that pipeline is the contract's oracle,
and it cannot be called without importing transformers and torch, which the ONNX route avoids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, Field

from ..errors import BadRequestError
from ..imports import transformers_ready
from ..runtime import ExportKind, LoadedModel
from ..scores import softmax
from ..text import TextTokenizer, run_batched
from .base import BATCH_SIZE, Parameters, Task, lowercase, text_tokenizer

Strategy = Literal["none", "simple", "first", "average", "max"]


class TokenClassificationParameters(Parameters):
    aggregation_strategy: Annotated[Strategy, BeforeValidator(lowercase)] = "simple"
    ignore_labels: list[str] = ["O"]
    stride: Annotated[int, Field(ge=0)] | None = None


class TokenClassification(Task):
    """A str answers a list of entities; a list of strings answers one list per string."""

    name = "token-classification"
    batches = True
    Inputs = str | Annotated[list[str], Field(min_length=1)]
    Parameters = TokenClassificationParameters

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("token-classification")

    def run(self, model: LoadedModel, inputs: str | list[str], parameters: TokenClassificationParameters) -> Any:
        strategy = parameters.aggregation_strategy
        id2label = {int(k): v for k, v in (model.config.get("id2label") or {}).items()}
        texts = [inputs] if isinstance(inputs, str) else inputs
        try:
            tokenizer = text_tokenizer(model, stride=parameters.stride or 0)
        except FileNotFoundError:  # no tokenizer.json: a slow tokenizer, which gives no character offsets
            answers = _run_without_offsets(model, texts, parameters, id2label)
            return answers[0] if isinstance(inputs, str) else answers
        if parameters.stride is not None:
            _check_stride(tokenizer, parameters.stride, strategy)
        # Every window of every text, run in batches; a window knows its text.
        windows = [(i, enc) for i, text in enumerate(texts) for enc in _windows(tokenizer, text, parameters.stride)]

        def run(batch: list[tuple[int, Any]]) -> list[np.ndarray]:
            feeds = tokenizer.arrays([encoding for _, encoding in batch])
            return list(model.runner.run(feeds, ("logits",))["logits"].astype(np.float32))

        all_logits = run_batched(windows, run, batch_size=BATCH_SIZE, length=lambda w: len(w[1].ids))
        backend = tokenizer.tokenizer
        grouper = _Grouper(id2label, _tokens_to_string(backend))
        has_prefix = bool(getattr(backend.model, "continuing_subword_prefix", None))
        unk = tokenizer.special_token("unk_token")
        answers: list[list[dict]] = [[] for _ in texts]
        for (index, encoding), logits in zip(windows, all_logits, strict=True):
            pre = _pre_entities(texts[index], encoding, softmax(logits), backend, has_prefix, unk[1] if unk else None)
            answers[index].extend(_kept(grouper.aggregate(pre, strategy), parameters.ignore_labels))
        for index, encoding_count in enumerate(np.bincount([i for i, _ in windows], minlength=len(texts))):
            if encoding_count > 1:
                answers[index] = _merge_overlapping(answers[index])
        return answers[0] if isinstance(inputs, str) else answers


def _check_stride(tokenizer: TextTokenizer, stride: int, strategy: str) -> None:
    if strategy == "none":
        raise BadRequestError("parameters.stride: needs an aggregation_strategy other than 'none'")
    room = tokenizer.max_length - tokenizer.tokenizer.num_special_tokens_to_add(False)
    if stride >= room:
        raise BadRequestError(
            f"parameters.stride: must be less than {room} (the model's window less its special tokens)"
        )


def _windows(tokenizer: TextTokenizer, text: str, stride: int | None) -> list[Any]:
    encodings = tokenizer.encode_with_overflow(text)
    return encodings if stride is not None else encodings[:1]


def _run_without_offsets(
    model: LoadedModel, texts: list[str], parameters: TokenClassificationParameters, id2label: dict[int, str]
) -> list[list[dict]]:
    """A slow tokenizer: entities without start and end, as the pipeline gives them; no word strategies."""
    strategy = parameters.aggregation_strategy
    if strategy not in ("none", "simple"):
        raise BadRequestError(
            f"parameters.aggregation_strategy: {strategy!r} needs word boundaries, which this model's tokenizer "
            "cannot give (it has no fast tokenizer.json, so no character offsets); use 'none' or 'simple'"
        )
    if parameters.stride is not None:
        raise BadRequestError("parameters.stride: needs a fast tokenizer (tokenizer.json), which this model lacks")
    if "slow-tokenizer" not in model.state:
        transformers_ready()
        from transformers import AutoTokenizer

        model.state["slow-tokenizer"] = AutoTokenizer.from_pretrained(model.files, use_fast=False)
    slow = model.state["slow-tokenizer"]
    grouper = _Grouper(id2label, slow.convert_tokens_to_string)
    answers = []
    for text in texts:
        encoded = slow(text, truncation=True, return_special_tokens_mask=True, return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in encoded.items() if k != "special_tokens_mask"}
        scores = softmax(model.runner.run(feeds, ("logits",))["logits"][0].astype(np.float32))
        pre = [
            {
                "word": slow.convert_ids_to_tokens(int(token)),
                "scores": scores[index],
                "start": None,
                "end": None,
                "index": index,
                "is_subword": False,
            }
            for index, (token, special) in enumerate(
                zip(feeds["input_ids"][0], encoded["special_tokens_mask"][0], strict=True)
            )
            if not special
        ]
        answers.append(_kept(grouper.aggregate(pre, strategy), parameters.ignore_labels))
    return answers


def _kept(entities: list[dict], ignore_labels: list[str]) -> list[dict]:
    return [e for e in entities if e.get("entity", e.get("entity_group")) not in ignore_labels]


def _tokens_to_string(backend: Any):
    """transformers' fast convert_tokens_to_string: the tokenizer's decoder, else tokens joined by spaces."""
    decoder = backend.decoder
    return decoder.decode if decoder is not None else " ".join


def _pre_entities(
    sentence: str, encoding: Any, scores: np.ndarray, backend: Any, has_subword_prefix: bool, unk_id: int | None
) -> list[dict]:
    """transformers' gather_pre_entities: every non-special token with its scores, offsets and subword flag."""
    pre = []
    for index, (token_id, special, (start, end)) in enumerate(
        zip(encoding.ids, encoding.special_tokens_mask, encoding.offsets, strict=True)
    ):
        if special:
            continue
        word = backend.id_to_token(token_id)
        reference = sentence[start:end]
        if has_subword_prefix:
            is_subword = len(word) != len(reference)
        else:  # the pipeline's fallback heuristic for tokenizers without a subword prefix
            is_subword = start > 0 and " " not in sentence[start - 1 : start + 1]
        if token_id == unk_id:
            word, is_subword = reference, False
        pre.append(
            {
                "word": word,
                "scores": scores[index],
                "start": start,
                "end": end,
                "index": index,
                "is_subword": is_subword,
            }
        )
    return pre


class _Grouper:
    """transformers' TokenClassificationPipeline aggregation: tokens -> words -> entity groups."""

    def __init__(self, id2label: dict[int, str], tokens_to_string) -> None:
        self.id2label = id2label
        self.tokens_to_string = tokens_to_string

    def aggregate(self, pre: list[dict], strategy: str) -> list[dict]:
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                best = int(p["scores"].argmax())
                entities.append(
                    {
                        "entity": self.id2label[best],
                        "score": float(p["scores"][best]),
                        "index": p["index"],
                        "word": p["word"],
                        "start": p["start"],
                        "end": p["end"],
                    }
                )
        else:
            entities = self._aggregate_words(pre, strategy)
        return entities if strategy == "none" else self._group(entities)

    def _aggregate_words(self, pre: list[dict], strategy: str) -> list[dict]:
        words: list[list[dict]] = []
        for entity in pre:
            if words and entity["is_subword"]:
                words[-1].append(entity)
            else:
                words.append([entity])
        return [self._aggregate_word(group, strategy) for group in words]

    def _aggregate_word(self, group: list[dict], strategy: str) -> dict:
        if strategy == "first":
            scores = group[0]["scores"]
        elif strategy == "max":
            scores = max(group, key=lambda entity: entity["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([entity["scores"] for entity in group]), axis=0)
        best = int(scores.argmax())
        return {
            "entity": self.id2label[best],
            "score": float(scores[best]),
            "word": self.tokens_to_string([e["word"] for e in group]),
            "start": group[0]["start"],
            "end": group[-1]["end"],
        }

    def _group(self, entities: list[dict]) -> list[dict]:
        groups: list[list[dict]] = []
        for entity in entities:
            bi, tag = _tag(entity["entity"])
            if groups and tag == _tag(groups[-1][-1]["entity"])[1] and bi != "B":
                groups[-1].append(entity)
            else:
                groups.append([entity])
        return [
            {
                "entity_group": group[0]["entity"].split("-", 1)[-1],
                "score": float(np.mean(np.nanmean([e["score"] for e in group]))),
                "word": self.tokens_to_string([e["word"] for e in group]),
                "start": group[0]["start"],
                "end": group[-1]["end"],
            }
            for group in groups
        ]


def _tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _merge_overlapping(entities: list[dict]) -> list[dict]:
    """Entities from overlapping windows: of two that overlap, the longer (then the surer) stays."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    merged = []
    previous = entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged
