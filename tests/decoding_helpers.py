"""Test-only helpers for the decoding loop: a `StepModel` over a transformers PyTorch model, tiny random models
built from configs in code, and the settings `model.generate(**kwargs)` runs with."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import transformers
from transformers.modeling_outputs import BaseModelOutput

from localinfer.decoding import GenerationSettings
from localinfer.decoding.settings import settings_from_config
from tests.fixtures.tiny_models import _SEQ2SEQ

VOCAB = 64


class TorchStepModel:
    """`StepModel` over a transformers PyTorch model with `past_key_values`; an encoder-decoder runs its encoder
    on `encoder_ids` once, here."""

    def __init__(self, model, encoder_ids: Sequence[int] | None = None) -> None:
        self.model = model
        self.vocab_size = model.config.get_text_config().vocab_size
        self.past = None
        self.encoder = None
        self.calls = 0
        if model.config.is_encoder_decoder:
            with torch.no_grad():
                hidden = model.get_encoder()(input_ids=torch.tensor([list(encoder_ids)])).last_hidden_state
            self.encoder = hidden
            self.mask = torch.ones(1, hidden.shape[1], dtype=torch.long)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.calls += 1
        ids = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
        with torch.no_grad():
            if self.encoder is not None:
                out = self.model(
                    decoder_input_ids=ids,
                    encoder_outputs=BaseModelOutput(last_hidden_state=self.encoder),
                    attention_mask=self.mask,
                    past_key_values=self.past,
                    use_cache=True,
                )
            else:
                out = self.model(input_ids=ids, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[:, -1].float().numpy()

    def reorder(self, rows: np.ndarray) -> None:
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self.past.reorder_cache(index)
        if self.encoder is not None:
            self.encoder, self.mask = self.encoder[index], self.mask[index]


def _seq2seq_sizes() -> dict:
    return dict(_SEQ2SEQ, max_position_embeddings=128, init_std=0.2)  # the fixtures' encoder-decoder size


def build(name: str, vocab: int = VOCAB):
    """A tiny random model with a wide init, so that its tokens vary with the input and the settings; its
    generation config has no eos (each case sets its own), pad 1."""
    torch.manual_seed({"gpt2": 1, "bart": 2, "t5": 3, "marian": 4}[name])
    special = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if name == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128, initializer_range=0.5, **special
        )
        model = transformers.GPT2LMHeadModel(config)
    elif name == "bart":
        config = transformers.BartConfig(vocab_size=vocab, decoder_start_token_id=2, **_seq2seq_sizes(), **special)
        model = transformers.BartForConditionalGeneration(config)
    elif name == "marian":
        config = transformers.MarianConfig(
            vocab_size=vocab, decoder_start_token_id=1, scale_embedding=True, **_seq2seq_sizes(), **special
        )
        model = transformers.MarianMTModel(config)
    else:
        config = transformers.T5Config(
            vocab_size=vocab,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            initializer_factor=4.0,
            decoder_start_token_id=1,
            **special,
        )
        model = transformers.T5ForConditionalGeneration(config)
    model.eval()
    model.generation_config = transformers.GenerationConfig(
        pad_token_id=1, bos_token_id=0, decoder_start_token_id=config.decoder_start_token_id
    )
    return model


def settings_for(model, **kwargs) -> GenerationSettings:
    """The settings `model.generate(input_ids, **kwargs)` runs with: the model's generation config updated with
    `kwargs` (`_prepare_generation_config` with no config given)."""
    config = copy.deepcopy(model.generation_config)
    seed = kwargs.pop("seed", None)
    unused = config.update(**kwargs)
    assert not unused, unused
    config.validate()
    return settings_from_config(
        config,
        is_encoder_decoder=model.config.is_encoder_decoder,
        max_position_embeddings=getattr(model.config, "max_position_embeddings", None),
        max_length_is_default="max_length" not in kwargs,
        seed=seed,
    )


def torch_generate(model, prompt: Sequence[int], **kwargs) -> list[list[int]]:
    """`model.generate`'s sequences, each cut after its first eos among the new tokens (the padding dropped)."""
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            out = model.generate(torch.tensor([list(prompt)]), **kwargs)
            start = 1
        else:
            out = model.generate(torch.tensor([list(prompt)]), attention_mask=torch.ones(1, len(prompt)), **kwargs)
            start = len(prompt)
    eos = kwargs.get("eos_token_id", model.generation_config.eos_token_id)
    eos = {eos} if isinstance(eos, int) else set(eos or ())
    rows = []
    for row in out.tolist():
        for i in range(start, len(row)):
            if row[i] in eos:
                row = row[: i + 1]
                break
        rows.append(row)
    return rows


def loop_overhead(vocab: int = 50257, tokens: int = 200, repeats: int = 3) -> dict[str, float]:
    """The decoding loop's own time per new token (search and processors), in ms, over a StepModel that returns
    precomputed logits at once: `python -m tests.decoding_helpers`."""
    import time

    from localinfer.decoding import generate

    table = np.random.default_rng(0).standard_normal((64, vocab)).astype(np.float32) * 3
    logits: dict[tuple[int, int], np.ndarray] = {}

    class Instant:
        vocab_size = vocab

        def __init__(self) -> None:
            self.calls = 0

        def step(self, ids: np.ndarray) -> np.ndarray:
            # A contiguous array, as an ONNX Runtime step returns (a broadcast view would make the loop copy what no
            # real model makes it copy), built once per logits row and row count; read-only, so that a loop that
            # wrote into the model's logits would fail here rather than change the next steps.
            self.calls += 1
            key = (self.calls % 64, len(ids))
            if key not in logits:
                logits[key] = np.repeat(table[key[0]][None], len(ids), axis=0)
                logits[key].flags.writeable = False
            return logits[key]

        def reorder(self, rows: np.ndarray) -> None:
            pass

    cases = {
        "greedy": {},
        "greedy, repetition_penalty 1.3, no_repeat_ngram_size 3": {
            "repetition_penalty": 1.3,
            "no_repeat_ngram_size": 3,
        },
        "4 beams": {"num_beams": 4},
        "4 beams, no_repeat_ngram_size 3, length_penalty 2": {
            "num_beams": 4,
            "no_repeat_ngram_size": 3,
            "length_penalty": 2.0,
        },
        "sampling, temperature 0.7, top_k 50, top_p 0.9": {
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 0,
        },
    }
    result = {}
    for name, values in cases.items():
        settings = GenerationSettings(max_new_tokens=tokens, **values)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            generate(Instant(), list(range(20)), settings)
            best = min(best, time.perf_counter() - start)
        result[name] = best / tokens * 1e3
    return result


if __name__ == "__main__":
    for case, ms in loop_overhead().items():
        print(f"{case}: {ms:.3f} ms per token")
