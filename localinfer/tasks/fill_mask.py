"""fill-mask: the best tokens for each mask token, as the transformers fill-mask pipeline ranks them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from ..errors import BadRequestError
from ..runtime import ExportKind, LoadedModel
from ..scores import softmax
from ..text import TextTokenizer, run_tokenized
from .base import BATCH_SIZE, Parameters, Task, text_tokenizer


class FillMaskParameters(Parameters):
    top_k: Annotated[int, Field(ge=1)] = 5
    targets: str | Annotated[list[str], Field(min_length=1)] | None = None


class FillMask(Task):
    """A str with the model's mask token answers `[{sequence, score, token, token_str}]`, best first.

    Several masks answer one list per mask; a list of inputs answers one answer per input.
    """

    name = "fill-mask"
    batches = True
    Inputs = str | Annotated[list[str], Field(min_length=1)]
    Parameters = FillMaskParameters

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("fill-mask")

    def run(self, model: LoadedModel, inputs: str | list[str], parameters: FillMaskParameters) -> Any:
        tokenizer = text_tokenizer(model)
        mask = tokenizer.special_token("mask_token")
        if mask is None:
            raise BadRequestError("this model's tokenizer has no mask token: it cannot fill masks")
        mask_token, mask_id = mask
        texts = [inputs] if isinstance(inputs, str) else inputs
        for text in texts:
            if mask_token not in text:
                raise BadRequestError(f"inputs: no mask token {mask_token} found in {text[:80]!r}")
        targets = _target_ids(tokenizer, parameters.targets) if parameters.targets is not None else None

        def run(feeds: dict[str, np.ndarray]) -> list[Any]:
            logits = model.runner.run(feeds, ("logits",))["logits"]
            answers = []
            for ids, mask_row, row in zip(feeds["input_ids"], feeds["attention_mask"], logits, strict=True):
                answers.append(_fill(tokenizer, ids[mask_row.astype(bool)], row, mask_id, parameters.top_k, targets))
            return answers

        answers = run_tokenized(tokenizer, texts, run, batch_size=BATCH_SIZE)
        return answers[0] if isinstance(inputs, str) else answers


def _fill(
    tokenizer: TextTokenizer, ids: np.ndarray, logits: np.ndarray, mask_id: int, top_k: int, targets: np.ndarray | None
) -> list:
    """The answer for one input: `ids` without padding, `logits` [positions, vocabulary] (padding may follow)."""
    positions = np.flatnonzero(ids == mask_id)
    if len(positions) == 0:
        raise BadRequestError("inputs: the mask token was cut off: it lies beyond the model's window")
    probs = softmax(logits[positions].astype(np.float32))
    if targets is not None:
        probs = probs[:, targets]
    k = min(top_k, probs.shape[-1])
    single = len(positions) == 1
    rows = []
    for position, row in zip(positions, probs, strict=True):
        best = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        best = best[np.argsort(-row[best], kind="stable")]  # sorting k, not the whole vocabulary
        entries = []
        for index in best:
            token = int(targets[index] if targets is not None else index)
            filled = ids.copy()
            filled[position] = token
            filled = filled[filled != tokenizer.pad_id]
            entries.append(
                {
                    "score": float(row[index]),
                    "token": token,
                    "token_str": tokenizer.decode([token]),
                    "sequence": tokenizer.decode(filled, skip_special_tokens=single),
                }
            )
        rows.append(entries)
    return rows[0] if single else rows


def _target_ids(tokenizer: TextTokenizer, targets: str | list[str]) -> np.ndarray:
    """Each target's id; a word outside the vocabulary takes its first token, as the pipeline does."""
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    ids = []
    for target in [targets] if isinstance(targets, str) else targets:
        token_id = vocab.get(target)
        if token_id is None:
            pieces = tokenizer.tokenizer.encode(target, add_special_tokens=False).ids
            if not pieces:
                continue
            token_id = pieces[0]
        ids.append(token_id)
    if not ids:
        raise BadRequestError("parameters.targets: none of the targets is in the model's vocabulary")
    return np.array(sorted(set(ids)))
