"""question-answering: the best spans of the context, as the transformers question-answering pipeline finds them.

Span scoring (`_select_spans`) and character alignment follow transformers' `select_starts_ends`,
`decode_spans` and `get_indices` line for line, quirks included: that pipeline is the contract's oracle,
and calling it would import transformers and torch, which the ONNX route avoids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import BadRequestError
from ..runtime import ExportKind, LoadedModel
from ..text import TextTokenizer, run_batched
from .base import BATCH_SIZE, Parameters, Task, text_tokenizer


class QuestionContext(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: Annotated[str, Field(min_length=1)]
    context: Annotated[str, Field(min_length=1)]


class QuestionAnsweringParameters(Parameters):
    top_k: Annotated[int, Field(ge=1)] = 1
    doc_stride: Annotated[int, Field(ge=0)] | None = None
    max_answer_len: Annotated[int, Field(ge=1)] = 15
    max_seq_len: Annotated[int, Field(ge=2)] | None = None
    max_question_len: Annotated[int, Field(ge=1)] = 64  # used by slow tokenizers only, as in the pipeline
    handle_impossible_answer: bool = False
    align_to_words: bool = True


class QuestionAnswering(Task):
    """`{question, context}` answers `{answer, score, start, end}` (a list of them when top_k > 1)."""

    name = "question-answering"
    batches = True
    Inputs = QuestionContext | Annotated[list[QuestionContext], Field(min_length=1)]
    Parameters = QuestionAnsweringParameters

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("question-answering")

    def run(self, model: LoadedModel, inputs: Any, parameters: QuestionAnsweringParameters) -> Any:
        window = text_tokenizer(model)
        question_first = not window.settings.get("padding_side") == "left"
        max_seq_len = parameters.max_seq_len or min(window.max_length, 384)
        if max_seq_len > window.max_length:
            raise BadRequestError(f"parameters.max_seq_len: at most {window.max_length}, the model's window")
        doc_stride = parameters.doc_stride if parameters.doc_stride is not None else min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise BadRequestError(f"parameters.doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
        tokenizer = text_tokenizer(
            model,
            max_length=max_seq_len,
            stride=doc_stride,
            truncation="only_second" if question_first else "only_first",
        )
        examples = inputs if isinstance(inputs, list) else [inputs]
        spans = []
        for index, example in enumerate(examples):
            pair = (example.question, example.context) if question_first else (example.context, example.question)
            try:
                encodings = tokenizer.encode_with_overflow(pair)
            except Exception as exc:  # the question leaves no room for the context at this length and stride
                raise BadRequestError(f"inputs: cannot fit the question in max_seq_len={max_seq_len}: {exc}") from None
            spans += [(index, encoding) for encoding in encodings]

        def run(batch: list[tuple[int, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
            outputs = model.runner.run(tokenizer.arrays([e for _, e in batch]), ("start_logits", "end_logits"))
            starts, ends = outputs["start_logits"].astype(np.float32), outputs["end_logits"].astype(np.float32)
            return list(zip(starts, ends, strict=True))

        logits = run_batched(spans, run, batch_size=BATCH_SIZE, length=lambda span: len(span[1].ids))
        answers = []
        for index, example in enumerate(examples):
            mine = [(enc, lg) for (i, enc), lg in zip(spans, logits, strict=True) if i == index]
            found = _answers(tokenizer, example.context, mine, parameters, question_first)
            answers.append(found[0] if parameters.top_k == 1 and len(found) == 1 else found)
        return answers if isinstance(inputs, list) else answers[0]


def _answers(
    tokenizer: TextTokenizer, context: str, spans: list, parameters: QuestionAnsweringParameters, question_first: bool
) -> list[dict]:
    cls = tokenizer.special_token("cls_token")
    min_null_score = 1000000.0
    top_k = parameters.top_k * 2 + 10 if parameters.align_to_words else parameters.top_k
    found: list[dict] = []
    for encoding, (start_logits, end_logits) in spans:
        p_mask = np.array([(s != 1) if question_first else 0 for s in encoding.sequence_ids], dtype=np.int64)
        if cls is not None:
            p_mask[np.array(encoding.ids) == cls[1]] = 0
        attention = np.array([encoding.attention_mask])
        starts, ends, scores, min_null_score = _select_spans(
            start_logits[None],
            end_logits[None],
            p_mask,
            attention,
            min_null_score,
            top_k,
            parameters.handle_impossible_answer,
            parameters.max_answer_len,
        )
        for s, e, score in zip(starts, ends, scores, strict=True):
            first, last = _char_span(encoding, int(s), int(e), 1 if question_first else 0, parameters.align_to_words)
            text = context[first:last]
            same = next((a for a in found if a["answer"].lower() == text.lower()), None)
            if same:
                same["score"] += score.item()
            else:
                found.append({"score": score.item(), "start": first, "end": last, "answer": text})
    if parameters.handle_impossible_answer:
        found.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(found, key=lambda a: a["score"], reverse=True)[: parameters.top_k]


def _select_spans(start, end, p_mask, attention_mask, min_null_score, top_k, handle_impossible, max_answer_len):
    """transformers.pipelines.question_answering.select_starts_ends."""
    undesired = np.abs(np.array(p_mask) - 1) & attention_mask
    masked = undesired == 0.0
    start = np.where(masked, -10000.0, start)
    end = np.where(masked, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = _decode_spans(start, end, top_k, max_answer_len, undesired)
    return starts, ends, scores, min_null_score


def _decode_spans(start, end, top_k, max_answer_len, undesired):
    """transformers.pipelines.question_answering.decode_spans."""
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        order = [np.argmax(flat)]
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        best = np.argpartition(-flat, top_k)[0:top_k]
        order = best[np.argsort(-flat[best])]
    starts, ends = np.unravel_index(order, candidates.shape)[1:]
    wanted = np.isin(starts, undesired.nonzero()) & np.isin(ends, undesired.nonzero())
    starts, ends = starts[wanted], ends[wanted]
    return starts, ends, candidates[0, starts, ends]


def _char_span(encoding: Any, s: int, e: int, sequence: int, align_to_words: bool) -> tuple[int, int]:
    """Token span -> character span of the context, widened to whole words when asked."""
    if align_to_words:
        try:
            return (
                encoding.word_to_chars(encoding.token_to_word(s), sequence_index=sequence)[0],
                encoding.word_to_chars(encoding.token_to_word(e), sequence_index=sequence)[1],
            )
        except Exception:  # a token outside any word: fall back to its own offsets, as the pipeline does
            pass
    return encoding.offsets[s][0], encoding.offsets[e][1]
