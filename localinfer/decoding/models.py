"""Step models: the decoder graphs that optimum exports, behind the decoding loop's `StepModel` interface.

What optimum exports for generation (`main_export`, transformers 4.57 / optimum 2.1):
- `text-generation-with-past` (GPT-2, ...): `model.onnx`, inputs `input_ids`, `attention_mask`, `position_ids`
  and `past_key_values.{i}.key|value` [rows, heads, past, head_dim] (a past of length 0 on the first call),
  outputs `logits` [rows, n, vocab] and `present.{i}.key|value`.
- `text2text-generation-with-past` (BART, T5, Marian, BlenderbotSmall, ...): `encoder_model.onnx`
  (`input_ids`, `attention_mask` -> `last_hidden_state`) and `decoder_model_merged.onnx`, which holds both
  `decoder_model.onnx` (first step: no past) and `decoder_with_past_model.onnx` behind a `use_cache_branch` flag:
  inputs `input_ids`, `encoder_hidden_states`, `encoder_attention_mask`, `use_cache_branch` and
  `past_key_values.{i}.decoder|encoder.key|value`; outputs `logits` and `present.{i}.decoder|encoder.key|value`
  (the encoder's (cross-attention) key/values are made on the first step, then fed back unchanged).

Past key/values stay ONNX Runtime values between steps: the graph's outputs are bound with IO binding and the
presents are bound as the next step's past; only the last position's logits come back to numpy. Beam search's
`reorder` gathers rows with numpy (on CPU `OrtValue.numpy()` is a view, so it costs one copy of the past).
All rows of a step model continue one prompt, so the encoder's tensors, identical in every row, are gathered
only when the number of rows changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _device(session: Any) -> str:
    return "cuda" if session.get_providers()[0].startswith("CUDA") else "cpu"


def _ortvalue(array: np.ndarray, device: str) -> Any:
    import onnxruntime as ort

    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)


def _gather(value: Any, rows: np.ndarray, device: str) -> Any:
    """The rows `rows` of an ONNX Runtime value, as a new value on the same device."""
    return _ortvalue(value.numpy().take(rows, axis=0), device)


def _past_names(session: Any) -> list[str]:
    return [i.name for i in session.get_inputs() if i.name.startswith("past_key_values")]


def _empty_past(session: Any, rows: int) -> dict[str, np.ndarray]:
    """Pasts of length 0, as the first step of a graph with past inputs takes them (optimum does the same)."""
    empty = {}
    for node in session.get_inputs():
        if node.name.startswith("past_key_values"):
            heads, head_dim = node.shape[1], node.shape[3]
            empty[node.name] = np.zeros((rows, heads, 0, head_dim), dtype=np.float32)
    return empty


class _Decoder:
    """One decoder graph run step after step: numpy feeds in, last-position logits out, the past kept in ORT.

    `present.{i}.x` of one step is `past_key_values.{i}.x` of the next; `fixed` names the past inputs that
    never change after the first step (an encoder-decoder's cross-attention key/values).
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.device = _device(session)
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.past_names = _past_names(session)
        self.past: dict[str, Any] = {}  # past input name -> OrtValue
        self.past_length = 0
        vocab = next(o.shape[-1] for o in session.get_outputs() if o.name == "logits")
        self.vocab_size = vocab if isinstance(vocab, int) else None

    def run(self, feeds: Mapping[str, Any], rows: int) -> np.ndarray:
        """Run one step on `feeds` (numpy arrays or OrtValues) plus the past; return the logits [rows, vocab]."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if name not in self.input_names:
                continue
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        if "use_cache_branch" in self.input_names:
            binding.bind_cpu_input("use_cache_branch", np.array([bool(self.past)]))
        if self.past:
            for name, value in self.past.items():
                binding.bind_ortvalue_input(name, value)
        else:
            for name, value in _empty_past(self.session, rows).items():
                binding.bind_cpu_input(name, value)
        # Once the fixed pasts are known, their presents (unchanged copies) are not asked for.
        wanted = [n for n in self.output_names if n == "logits" or self._past_of(n) not in self.past or self._moves(n)]
        for name in wanted:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outputs = dict(zip(wanted, binding.get_outputs(), strict=True))
        for name, value in outputs.items():
            if name != "logits":
                self.past[self._past_of(name)] = value
        logits = outputs["logits"].numpy()
        self.past_length += int(np.shape(feeds["input_ids"])[1])
        return np.array(logits[:, -1, :], dtype=np.float32)

    @staticmethod
    def _past_of(present: str) -> str:
        return present.replace("present", "past_key_values", 1)

    @staticmethod
    def _moves(present: str) -> bool:
        """Whether a present grows with each step (self-attention), as opposed to the encoder's key/values."""
        return ".encoder." not in present

    def reorder(self, rows: np.ndarray, *, all_past: bool) -> None:
        """Keep rows `rows` of the past; with `all_past` False, the encoder's key/values are left as they are."""
        if self.past and np.array_equal(rows, np.arange(next(iter(self.past.values())).shape()[0])):
            return  # every row kept in place
        for name, value in self.past.items():
            if all_past or self._moves(name):
                self.past[name] = _gather(value, rows, self.device)


class CausalStepModel:
    """A decoder-only export (`model.onnx` of text-generation-with-past) as a `StepModel`."""

    def __init__(self, session: Any, *, vocab_size: int | None = None) -> None:
        self.decoder = _Decoder(session)
        self.vocab_size = self.decoder.vocab_size or vocab_size
        self.rows = 1

    def step(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        rows, n = tokens.shape
        past = self.decoder.past_length
        # One prompt, no padding: every position is attended to, and positions count from 0.
        positions = np.broadcast_to(np.arange(past, past + n, dtype=np.int64), (rows, n))
        feeds = {
            "input_ids": tokens,
            "attention_mask": np.ones((rows, past + n), dtype=np.int64),
            "position_ids": np.ascontiguousarray(positions),
            "cache_position": np.arange(past, past + n, dtype=np.int64),
        }
        self.rows = rows
        return self.decoder.run(feeds, rows)

    def reorder(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self.decoder.reorder(rows, all_past=True)
        self.rows = len(rows)


class EncoderDecoderStepModel:
    """An encoder-decoder export (`encoder_model.onnx` + `decoder_model_merged.onnx`) as a `StepModel`.

    The constructor runs the encoder once on `encoder_feeds` (one prompt: `input_ids` and `attention_mask`, or
    Whisper's `input_features`); `step` feeds decoder tokens.
    """

    def __init__(
        self, encoder: Any, decoder: Any, encoder_feeds: Mapping[str, np.ndarray], *, vocab_size: int | None = None
    ) -> None:
        self.decoder = _Decoder(decoder)
        self.vocab_size = self.decoder.vocab_size or vocab_size
        names = [i.name for i in encoder.get_inputs()]
        hidden = encoder.run(None, {k: v for k, v in encoder_feeds.items() if k in names})[0]
        mask = encoder_feeds.get("attention_mask")
        if mask is None:
            mask = np.ones(hidden.shape[:2], dtype=np.int64)
        self.rows = 1
        self._encoder = {"encoder_hidden_states": hidden, "encoder_attention_mask": np.asarray(mask, dtype=np.int64)}

    def step(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        rows, n = tokens.shape
        past = self.decoder.past_length
        feeds = {
            "input_ids": tokens,
            **self._encoder,
            "cache_position": np.arange(past, past + n, dtype=np.int64),
        }
        self.rows = rows
        return self.decoder.run(feeds, rows)

    def reorder(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        # Every row continues the same prompt: the encoder's rows are equal, so only a new row count changes them.
        resized = len(rows) != self.rows
        if resized:
            self._encoder = {k: np.ascontiguousarray(v.take(rows, axis=0)) for k, v in self._encoder.items()}
        self.decoder.reorder(rows, all_past=resized)
        self.rows = len(rows)


CAUSAL_FILES = ("model.onnx",)
ENCODER_DECODER_FILES = ("encoder_model.onnx", "decoder_model_merged.onnx")


def step_model(
    sessions: Mapping[str, Any],
    config: Mapping[str, Any],
    encoder_feeds: Mapping[str, np.ndarray] | None = None,
) -> CausalStepModel | EncoderDecoderStepModel:
    """The step model over an export's opened sessions (file name -> InferenceSession) for one prompt:
    a causal model's when `encoder_feeds` is None, else an encoder-decoder's, its encoder run on them."""
    vocab = (config.get("decoder") or {}).get("vocab_size") or config.get("vocab_size")
    if encoder_feeds is None:
        return CausalStepModel(sessions["model.onnx"], vocab_size=vocab)
    return EncoderDecoderStepModel(
        sessions["encoder_model.onnx"], sessions["decoder_model_merged.onnx"], encoder_feeds, vocab_size=vocab
    )
