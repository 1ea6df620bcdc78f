"""Step models: each step's logits equal the PyTorch model's with its past, through beam-like row reordering.

Every case feeds the same tokens to the ONNX step model and to the transformers model (whose past is a
`transformers` cache, reordered with `reorder_cache`, as `generate`'s beam search reorders it): the prompt, greedy
steps, one row expanded to three, different tokens per row, and rows reordered with repeats.
"""

from __future__ import annotations

import numpy as np
import pytest

from localinfer.decoding.models import CausalStepModel, EncoderDecoderStepModel, step_model

TEXT = "The tower is 324 metres tall, about the same height"
# (rows to keep, one new token per kept row): expansion to 3 rows, a reordering with a repeat, rows kept in place,
# then 2 of them (a finished row dropped)
SCHEDULE = [
    (None, [[5]]),
    (None, [[7]]),
    ([0, 0, 0], [[3], [9], [11]]),
    ([2, 0, 2], [[4], [4], [8]]),
    ([0, 1, 2], [[6], [2], [1]]),
    ([2, 1], [[3], [3]]),
]


def _close(actual: np.ndarray, expected) -> None:
    expected = expected.detach().numpy()
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-3)


def _drive(step, forward, reorder, first):
    """Feed `first`, then the SCHEDULE's tokens, to the step model and the torch side; compare each step."""
    import torch

    _close(step.step(np.array(first)), forward(torch.tensor(first)))
    for rows, tokens in SCHEDULE:
        if rows is not None:
            step.reorder(np.array(rows))
            reorder(torch.tensor(rows))
        if tokens is not None:
            _close(step.step(np.array(tokens)), forward(torch.tensor(tokens)))


@pytest.mark.parametrize("name", ["gpt2", "gpt2-chat"])
def test_causal_step_logits_equal_pytorch(engine, tiny, name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = engine.preload(f"tiny/{name}")
    step = step_model(model.runner.sessions, model.config)
    assert isinstance(step, CausalStepModel) and step.vocab_size == model.config["vocab_size"]
    reference = AutoModelForCausalLM.from_pretrained(tiny[name]).eval()
    prompt = AutoTokenizer.from_pretrained(tiny[name])(TEXT)["input_ids"]
    state = {}

    def forward(tokens):
        with torch.inference_mode():
            out = reference(input_ids=tokens, past_key_values=state.get("past"), use_cache=True)
        state["past"] = out.past_key_values
        return out.logits[:, -1]

    _drive(step, forward, lambda rows: state["past"].reorder_cache(rows), [prompt])
    # the past stays inside ONNX Runtime between steps
    assert all(type(v).__name__ == "OrtValue" for v in step.decoder.past.values()) and step.decoder.past


@pytest.mark.parametrize("name", ["bart", "t5", "marian", "blenderbot-small"])
def test_encoder_decoder_step_logits_equal_pytorch(engine, tiny, name):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = engine.preload(f"tiny/{name}")
    encoded = AutoTokenizer.from_pretrained(tiny[name])(TEXT, return_tensors="np")
    step = step_model(model.runner.sessions, model.config, dict(encoded))
    assert isinstance(step, EncoderDecoderStepModel) and step.vocab_size == model.config["vocab_size"]
    reference = AutoModelForSeq2SeqLM.from_pretrained(tiny[name]).eval()
    with torch.inference_mode():
        hidden = reference.get_encoder()(input_ids=torch.tensor(encoded["input_ids"])).last_hidden_state
    state = {"hidden": hidden, "mask": torch.tensor(encoded["attention_mask"])}

    def forward(tokens):
        with torch.inference_mode():
            out = reference(
                encoder_outputs=(state["hidden"],),
                attention_mask=state["mask"],
                decoder_input_ids=tokens,
                past_key_values=state.get("past"),
                use_cache=True,
            )
        state["past"] = out.past_key_values
        return out.logits[:, -1]

    def reorder(rows):
        state["past"].reorder_cache(rows)
        state["hidden"], state["mask"] = state["hidden"][rows], state["mask"][rows]

    start = model.config["decoder_start_token_id"]
    _drive(step, forward, reorder, [[start]])
    assert all(type(v).__name__ == "OrtValue" for v in step.decoder.past.values()) and step.decoder.past
