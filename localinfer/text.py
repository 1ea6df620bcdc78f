"""Text tokenization with the `tokenizers` library and length-sorted batching.

The ONNX route tokenizes with `tokenizers` directly, not through `transformers`: importing
`transformers` costs seconds, which would make every new process slow to answer. A fast
`transformers` tokenizer is a thin wrapper around the same `tokenizer.json`, so the ids are equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

# transformers stores "no limit" as int(1e30); positions of these models start after the pad id.
_NO_LIMIT = 10**12
# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order.
_CLEAN_UP = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
]
_POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "ibert", "xlm-roberta-xl"}


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _token_content(token: Any) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


class TextTokenizer:
    """Encodes texts (or text pairs) into padded int64 arrays, truncated to the model's window."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        pad_id: int,
        max_length: int,
        lowercase: bool = False,
        pad_left: bool = False,
        settings: dict[str, Any] | None = None,
        truncation: str = "longest_first",
        stride: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.lowercase = lowercase
        self.pad_id = pad_id
        self.settings = settings or {}
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length, strategy=truncation, stride=stride)
        pad_token = tokenizer.id_to_token(pad_id) or "[PAD]"
        tokenizer.enable_padding(direction="left" if pad_left else "right", pad_id=pad_id, pad_token=pad_token)

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        config: dict[str, Any],
        *,
        max_length: int | None = None,
        lowercase: bool = False,
        truncation: str = "longest_first",
        stride: int = 0,
    ) -> TextTokenizer:
        """Load `tokenizer.json` with its `tokenizer_config.json` (pad token, window, padding side)."""
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json (a fast tokenizer is needed)")
        tokenizer = Tokenizer.from_file(str(path))
        settings = read_json(folder / "tokenizer_config.json")
        specials = read_json(folder / "special_tokens_map.json")
        pad = _token_content(settings.get("pad_token") or specials.get("pad_token"))
        pad_id = tokenizer.token_to_id(pad) if pad else None
        if pad_id is None:
            pad_id = config.get("pad_token_id") if isinstance(config.get("pad_token_id"), int) else 0
        limits = [settings.get("model_max_length") or _NO_LIMIT, max_length or _NO_LIMIT]
        positions = config.get("max_position_embeddings")
        if isinstance(positions, int):
            if config.get("model_type") in _POSITION_OFFSET_MODELS:
                positions -= (config.get("pad_token_id") or 1) + 1
            limits.append(positions)
        window = int(min(limits))
        if window >= _NO_LIMIT:
            window = 512
        for name, token in specials.items():  # special_tokens_map.json fills what tokenizer_config lacks
            settings.setdefault(name, token)
        return cls(
            tokenizer,
            pad_id=pad_id,
            max_length=window,
            lowercase=lowercase,
            truncation=truncation,
            stride=stride,
            pad_left=settings.get("padding_side") == "left",
            settings=settings,
        )

    def special_token(self, name: str) -> tuple[str, int] | None:
        """A special token (`mask_token`, `sep_token`, ...) and its id, if the tokenizer has it."""
        token = _token_content(self.settings.get(name))
        token_id = self.tokenizer.token_to_id(token) if token else None
        return None if token_id is None else (token, token_id)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """As transformers' fast `decode`, with its `clean_up_tokenization_spaces` setting."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.settings.get("clean_up_tokenization_spaces", False):
            for before, after in _CLEAN_UP:
                text = text.replace(before, after)
        return text

    def encode(self, texts: Sequence[str | tuple[str, str]]) -> dict[str, np.ndarray]:
        """`input_ids`, `attention_mask` and `token_type_ids`, padded to the longest in the batch."""
        return self.arrays(self._encode_batch(texts))

    def token_counts(self, texts: Sequence[str | tuple[str, str]]) -> list[int]:
        """Each text's (or text pair's) tokens after truncation, padding aside."""
        return [sum(encoding.attention_mask) for encoding in self._encode_batch(texts)]

    def _encode_batch(self, texts: Sequence[str | tuple[str, str]]) -> list[Any]:
        if self.lowercase:
            texts = [t.lower() if isinstance(t, str) else (t[0].lower(), t[1].lower()) for t in texts]
        return self.tokenizer.encode_batch(list(texts), add_special_tokens=True)

    def encode_with_overflow(self, text: str | tuple[str, str]) -> list[Any]:
        """The encoding of one text, then the windows truncation cut off (overlapping by the stride)."""
        encoding = self.tokenizer.encode(*([text] if isinstance(text, str) else text), add_special_tokens=True)
        return [encoding, *encoding.overflowing]

    def arrays(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        """Model inputs from encodings, padded to the longest. `token_type_ids` where the tokenizer makes them."""
        longest = max(len(e.ids) for e in encodings)
        direction = self.tokenizer.padding["direction"] if self.tokenizer.padding else "right"
        for encoding in encodings:
            if len(encoding.ids) < longest:
                encoding.pad(
                    longest,
                    direction=direction,
                    pad_id=self.pad_id,
                    pad_token=self.tokenizer.id_to_token(self.pad_id) or "[PAD]",
                )
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        if "token_type_ids" in self.settings.get("model_input_names", ["token_type_ids"]):
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return feeds


def run_tokenized(
    tokenizer: TextTokenizer,
    texts: Sequence[str | tuple[str, str]],
    run: Callable[[dict[str, np.ndarray]], list[Any]],
    *,
    batch_size: int,
) -> list[Any]:
    """`run(feeds)` over batches of texts of similar token counts; results in the texts' order.

    Sorted by tokens rather than characters (sentence-transformers and the pipelines sort by characters, or not at
    all): on 1000 varied sentences (bench_int8's: CJK, emoji, URLs) MiniLM's batches of 32 hold 31264 tokens with
    their padding against 37616 sorted by characters (30157 without padding). Counting the tokens costs a second
    tokenisation (~2 % of MiniLM's time at batch 32), skipped where the texts make one batch."""
    if len(texts) <= batch_size:
        return run(tokenizer.encode(texts))
    counts = tokenizer.token_counts(texts)
    return run_batched(
        range(len(texts)),
        lambda chunk: run(tokenizer.encode([texts[i] for i in chunk])),
        batch_size=batch_size,
        length=counts.__getitem__,
    )


def run_batched(
    items: Sequence[T], run: Callable[[list[T]], list[Any]], *, batch_size: int, length: Callable[[T], int]
) -> list[Any]:
    """`run` over batches of items of similar length (less padding); results in the items' order."""
    order = sorted(range(len(items)), key=lambda i: -length(items[i]))
    results: list[Any] = [None] * len(items)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for index, result in zip(chunk, run([items[i] for i in chunk]), strict=True):
            results[index] = result
    return results
