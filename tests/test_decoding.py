"""The decoding loop against `transformers.generate` on PyTorch models: token-identical for greedy and beam search,
the same distribution for sampling; `resolve_settings` against what the pipelines build."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from localinfer.decoding import GenerationSettings, generate, stream
from localinfer.decoding.search import resolve_lengths, stream_tokens
from localinfer.decoding.settings import PIPELINE_DEFAULTS, resolve_settings
from tests.decoding_helpers import TorchStepModel, build, settings_for, torch_generate

P1, P2 = [5, 9, 13, 17, 21], [40, 3, 33, 8]
P3 = P1 + [44, 18, 23] + P1  # holds the trigram beam search wants next
DROP = object()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ten times faster on one torch thread than on contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(one_thread) -> dict:
    transformers.logging.set_verbosity_error()
    return {name: build(name) for name in ("gpt2", "bart", "t5", "marian")}


def ours(model, prompt, **kwargs) -> list[list[int]]:
    if model.config.is_encoder_decoder:
        return generate(TorchStepModel(model, prompt), [], settings_for(model, **kwargs))
    return generate(TorchStepModel(model), prompt, settings_for(model, **kwargs))


def check(model, prompt, kwargs: dict, variants: dict) -> list[list[int]]:
    """Our sequences equal `generate`'s, and `generate`'s change with each variant of the settings (a parameter
    dropped (DROP) or set to another value), so that the case can fail."""
    expected = torch_generate(model, prompt, **kwargs)
    assert ours(model, prompt, **kwargs) == expected
    for name, value in variants.items():
        changed = {k: v for k, v in kwargs.items() if k != name}
        if value is not DROP:
            changed[name] = value
        assert torch_generate(model, prompt, **changed) != expected, f"{name} -> {value} changes nothing"
    return expected


# (model, prompt, generate kwargs, variants that must change the answer)
CASES = {
    "greedy": ("gpt2", P1, {"max_new_tokens": 12}, {"max_new_tokens": 6}),
    "greedy-eos": ("gpt2", P1, {"max_new_tokens": 12, "eos_token_id": 63}, {"eos_token_id": DROP}),
    "eos-list": ("gpt2", P1, {"max_new_tokens": 12, "eos_token_id": [60, 44]}, {"eos_token_id": [60]}),
    "max-length": ("gpt2", P1, {"max_length": 9}, {"max_length": DROP}),
    "max-new-tokens-over-max-length": ("gpt2", P1, {"max_length": 9, "max_new_tokens": 7}, {"max_new_tokens": DROP}),
    "min-length": ("gpt2", P1, {"max_new_tokens": 12, "eos_token_id": 44, "min_length": 9}, {"min_length": DROP}),
    "min-new-tokens": (
        "gpt2",
        P1,
        {"max_new_tokens": 12, "eos_token_id": 44, "min_new_tokens": 4},
        {"min_new_tokens": DROP},
    ),
    "repetition-penalty": ("gpt2", P1, {"max_new_tokens": 12, "repetition_penalty": 1.3}, {"repetition_penalty": DROP}),
    "no-repeat-ngram-2": (
        "gpt2",
        P1,
        {"max_new_tokens": 12, "no_repeat_ngram_size": 2},
        {"no_repeat_ngram_size": DROP},
    ),
    "bad-words": ("gpt2", P1, {"max_new_tokens": 12, "bad_words_ids": [[55], [18, 23]]}, {"bad_words_ids": [[55]]}),
    "suppress-tokens": ("gpt2", P1, {"max_new_tokens": 12, "suppress_tokens": [63, 56]}, {"suppress_tokens": DROP}),
    "begin-suppress-tokens": (
        "gpt2",
        P1,
        {"max_new_tokens": 12, "begin_suppress_tokens": [55]},
        {"begin_suppress_tokens": DROP},
    ),
    "forced-bos-eos": (
        "bart",
        P1,
        {"max_length": 10, "eos_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2},
        {"forced_bos_token_id": DROP, "forced_eos_token_id": DROP},
    ),
    "beam-2-lp-2-early": (
        "gpt2",
        P1,
        {"max_new_tokens": 12, "num_beams": 2, "length_penalty": 2.0, "early_stopping": True, "eos_token_id": [18, 55]},
        {"length_penalty": DROP, "early_stopping": DROP, "num_beams": DROP},
    ),
    "beam-4-lp-2-not-early": (
        "gpt2",
        P1,
        {"max_new_tokens": 12, "num_beams": 4, "length_penalty": 2.0, "early_stopping": False, "eos_token_id": 40},
        {"length_penalty": DROP, "early_stopping": True},
    ),
    "beam-4-lp-2-never": (
        "gpt2",
        P1,
        {
            "max_new_tokens": 12,
            "num_beams": 4,
            "length_penalty": 2.0,
            "early_stopping": "never",
            "eos_token_id": [55, 40],
        },
        {"early_stopping": DROP, "length_penalty": DROP},
    ),
    "beam-4-lp-0.5": (
        "gpt2",
        P1,
        {"max_new_tokens": 12, "num_beams": 4, "length_penalty": 0.5, "eos_token_id": 18},
        {"length_penalty": DROP},
    ),
    "beam-4-return-2": (
        "gpt2",
        P1,
        {"max_new_tokens": 12, "num_beams": 4, "num_return_sequences": 2, "eos_token_id": 18},
        {"num_return_sequences": DROP},
    ),
    "beam-no-repeat-ngram-3": (
        "gpt2",
        P3,
        {"max_new_tokens": 12, "num_beams": 4, "no_repeat_ngram_size": 3},
        {"no_repeat_ngram_size": DROP},
    ),
    "beam-repetition-penalty": (
        "gpt2",
        P2,
        {"max_new_tokens": 16, "num_beams": 4, "repetition_penalty": 1.3},
        {"repetition_penalty": DROP},
    ),
    "beam-seq2seq": ("bart", P1, {"max_new_tokens": 12, "num_beams": 3}, {"num_beams": DROP}),
    "beam-seq2seq-no-repeat-ngram-3": (
        "bart",
        P1,
        {"max_new_tokens": 12, "num_beams": 4, "no_repeat_ngram_size": 3},
        {"no_repeat_ngram_size": DROP},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_token_identical_with_generate(models, case):
    name, prompt, kwargs, variants = CASES[case]
    check(models[name], prompt, kwargs, variants)


# Generation configs shaped like real ones (lengths scaled down to the tiny models).
REAL_SHAPES = {
    # facebook/bart-large-cnn: num_beams 4, length_penalty 2.0, no_repeat_ngram_size 3, min_length 56,
    # max_length 142, forced_bos 0, forced_eos 2, early_stopping true
    "bart-cnn": (
        "bart",
        {
            "num_beams": 4,
            "length_penalty": 2.0,
            "no_repeat_ngram_size": 3,
            "min_length": 8,
            "max_length": 16,
            "early_stopping": True,
            "forced_bos_token_id": 0,
            "forced_eos_token_id": 2,
            "eos_token_id": 2,
            "decoder_start_token_id": 2,
            "bos_token_id": 0,
            "pad_token_id": 1,
        },
    ),
    # Helsinki-NLP/opus-mt-*: num_beams 4-6, max_length 512, bad_words_ids [[pad]], forced_eos, renormalize_logits
    "marian": (
        "marian",
        {
            "num_beams": 6,
            "max_length": 14,
            "bad_words_ids": [[1]],
            "eos_token_id": 2,
            "forced_eos_token_id": 2,
            "renormalize_logits": True,
            "decoder_start_token_id": 1,
            "pad_token_id": 1,
        },
    ),
    # google-t5/t5-small task_specific_params["summarization"]: early_stopping, length_penalty 2.0, max_length 200,
    # min_length 30, no_repeat_ngram_size 3, num_beams 4
    "t5-summarization": (
        "t5",
        {
            "early_stopping": True,
            "length_penalty": 2.0,
            "max_length": 12,
            "min_length": 5,
            "no_repeat_ngram_size": 3,
            "num_beams": 4,
            "eos_token_id": 28,
            "decoder_start_token_id": 1,
            "pad_token_id": 1,
        },
    ),
}


@pytest.mark.parametrize("shape", list(REAL_SHAPES))
def test_real_generation_config_shapes(models, shape):
    name, values = REAL_SHAPES[shape]
    model = models[name]
    saved = model.generation_config
    model.generation_config = transformers.GenerationConfig(**values)
    try:
        for prompt in (P1, P2):
            expected = torch_generate(model, prompt)
            assert ours(model, prompt) == expected
        model.generation_config = transformers.GenerationConfig(**{**values, "num_beams": 1, "no_repeat_ngram_size": 0})
        assert torch_generate(model, P2) != expected, "the config's beam search changes nothing"
    finally:
        model.generation_config = saved


def test_encoder_decoder_with_a_decoder_prompt(models):
    """A decoder prompt (Whisper's start, language, task tokens) is kept, and begin_suppress_tokens apply right after
    it, as `generate(decoder_input_ids=...)` does."""
    model = models["bart"]
    decoder_prompt = [2, 41, 56]
    kwargs = {"max_new_tokens": 8, "begin_suppress_tokens": [59, 25, 41], "suppress_tokens": [18]}
    with torch.no_grad():
        out = model.generate(torch.tensor([P1]), decoder_input_ids=torch.tensor([decoder_prompt]), **kwargs).tolist()
    assert out[0][:3] == decoder_prompt
    assert generate(TorchStepModel(model, P1), decoder_prompt, settings_for(model, **kwargs)) == out
    with torch.no_grad():
        plain = model.generate(torch.tensor([P1]), decoder_input_ids=torch.tensor([decoder_prompt]), max_new_tokens=8)
    assert plain.tolist() != out
    forced = dataclasses.replace(settings_for(model, max_new_tokens=8), forced_decoder_ids=((1, 41), (2, 56)))
    assert generate(TorchStepModel(model, P1), [], forced) == plain.tolist()


def test_stream_yields_the_greedy_tokens_one_by_one(models):
    model = models["gpt2"]
    settings = settings_for(model, max_new_tokens=10, eos_token_id=63)
    step_model = TorchStepModel(model)
    pieces = []
    for token in stream(step_model, P1, settings):
        pieces.append((token, step_model.calls))
    assert [t for t, _ in pieces] == torch_generate(model, P1, max_new_tokens=10, eos_token_id=63)[0][len(P1) :]
    assert [calls for _, calls in pieces] == list(range(1, len(pieces) + 1))  # each token before the next step


def test_stop_callback_ends_the_row(models):
    model = models["gpt2"]
    settings = settings_for(model, max_new_tokens=12)
    full = generate(TorchStepModel(model), P1, settings)[0]
    seen = []

    def stop(new: list[int]) -> bool:
        seen.append(list(new))
        return len(new) >= 3 and new[-1] == full[len(P1) + 3]

    assert generate(TorchStepModel(model), P1, settings, stop=stop) == [full[: len(P1) + 4]]
    assert seen[0] == full[len(P1) : len(P1) + 1]


def test_max_time_stops_generation(models):
    class Slow(TorchStepModel):
        def step(self, tokens):
            time.sleep(0.02)
            return super().step(tokens)

    model = models["gpt2"]
    out = generate(Slow(model), P1, settings_for(model, max_new_tokens=50, max_time=0.1))[0]
    assert 1 <= len(out) - len(P1) < 20


def test_prompt_longer_than_max_length_is_refused():
    with pytest.raises(ValueError, match="max_length"):
        resolve_lengths(GenerationSettings(max_length=4, max_length_is_default=False), 5)


def test_default_max_length_counts_new_tokens_capped_by_positions():
    assert resolve_lengths(GenerationSettings(), 7).max_length == 27
    assert resolve_lengths(GenerationSettings(max_position_embeddings=24), 7).max_length == 24
    assert resolve_lengths(GenerationSettings(max_length_is_default=False), 7).max_length == 20
    assert resolve_lengths(GenerationSettings(max_length=30), 7).max_length == 30


# Sampling: numpy's generator, so the same distribution as `generate`, not the same draws.


class FixedLogits:
    """A StepModel whose next-token logits are always `logits`."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = np.asarray(logits, dtype=np.float32)
        self.vocab_size = len(self.logits)
        self.rows = 1

    def step(self, tokens: np.ndarray) -> np.ndarray:
        assert len(tokens) == self.rows
        return np.tile(self.logits, (self.rows, 1))

    def reorder(self, rows: np.ndarray) -> None:
        self.rows = len(rows)


LOGITS = np.array([2.0, 1.5, 1.2, 1.0, 0.4, 0.0, -0.5, -1.0, -2.0, -3.0], dtype=np.float32)


def expected_probs(**warpers) -> np.ndarray:
    """The distribution `generate` samples from: transformers' own warpers on the logits, then softmax."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = torch.tensor(LOGITS)[None]
    if "temperature" in warpers:
        scores = TemperatureLogitsWarper(warpers["temperature"])(None, scores)
    if "top_k" in warpers:
        scores = TopKLogitsWarper(warpers["top_k"])(None, scores)
    if "top_p" in warpers:
        scores = TopPLogitsWarper(warpers["top_p"])(None, scores)
    return torch.softmax(scores, -1)[0].numpy().astype(np.float64)


@pytest.mark.parametrize(
    "warpers",
    [{}, {"temperature": 0.7}, {"top_k": 4}, {"top_p": 0.8}, {"temperature": 1.5, "top_k": 6, "top_p": 0.9}],
    ids=["plain", "temperature", "top_k", "top_p", "all"],
)
def test_sampling_follows_the_warped_distribution(warpers):
    draws = 40000
    values = {"top_k": 0, **warpers}
    settings = GenerationSettings(do_sample=True, **values, max_new_tokens=2, num_return_sequences=draws, seed=3)
    rows = generate(FixedLogits(LOGITS), [0], settings)
    tokens = np.array([row[1:] for row in rows])  # [draws, 2]: two independent steps
    probs = expected_probs(**warpers)
    for step in range(2):
        counts = np.bincount(tokens[:, step], minlength=len(LOGITS))
        assert counts[probs == 0].sum() == 0
        expected = probs * draws
        kept = expected > 0
        chi2 = (((counts - expected) ** 2)[kept] / expected[kept]).sum()
        # chi-square with (kept - 1) degrees of freedom: its 99.9 % quantile is below 30 for up to 10 tokens.
        assert chi2 < 30, (chi2, counts, expected)
    uniform = np.full(len(LOGITS), draws / len(LOGITS))
    assert ((np.bincount(tokens[:, 0], minlength=len(LOGITS)) - uniform) ** 2 / uniform).sum() > 1000


def test_sampling_is_reproducible_with_a_seed(models):
    model = models["gpt2"]

    def run(seed):
        settings = settings_for(model, do_sample=True, max_new_tokens=12, num_return_sequences=3, top_k=0, seed=seed)
        return generate(TorchStepModel(model), P1, settings)

    first = run(7)
    assert run(7) == first
    assert run(8) != first
    assert len({tuple(row) for row in first}) > 1  # the rows draw independently


def test_beam_sampling_is_reproducible_with_a_seed(models):
    model = models["gpt2"]

    def run(seed):
        settings = settings_for(model, do_sample=True, num_beams=3, max_new_tokens=10, top_k=0, seed=seed)
        return generate(TorchStepModel(model), P1, settings)

    assert run(1) == run(1)
    assert {tuple(run(seed)[0]) for seed in range(6)} != {tuple(run(1)[0])}


# resolve_settings against what the pipelines hand to `generate`: the generation config `generate` holds once it has
# resolved the lengths (`_prepare_generated_length`), captured on the PyTorch pipeline before any decoding.


class _Captured(Exception):
    pass


def pipeline_generation(pipe, text: str, request: dict) -> tuple:
    """The final generation config of `pipe(text, **request)` and the prompt length it was resolved for."""
    model = pipe.model
    original = model._prepare_generated_length
    seen = {}

    def capture(**kwargs):
        config = original(**kwargs)
        seen.update(config=copy.deepcopy(config), length=kwargs["input_ids_length"])
        raise _Captured

    model._prepare_generated_length = capture
    try:
        with pytest.raises(_Captured):
            pipe(text, **request)
    finally:
        del model._prepare_generated_length
    return seen["config"], seen["length"]


FIELDS = (
    "num_beams", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size",
    "length_penalty", "early_stopping", "num_return_sequences", "forced_bos_token_id", "max_time",
)  # fmt: skip


def comparable(settings: GenerationSettings, prompt_length: int) -> dict:
    lengths = resolve_lengths(settings, prompt_length)
    values = {name: getattr(settings, name) for name in FIELDS}
    eos = settings.eos_token_id
    bad = settings.bad_words_ids
    return {
        **values,
        "max_length": lengths.max_length,
        "min_length": lengths.min_length,
        "eos_token_id": list(eos) if eos else None,
        "bad_words_ids": [list(w) for w in bad] if bad else None,
    }


def config_values(config) -> dict:
    eos = config.eos_token_id
    return {
        **{name: getattr(config, name) for name in FIELDS},
        "max_length": config.max_length,
        "min_length": config.min_length,
        "eos_token_id": [eos] if isinstance(eos, int) else eos,
        "bad_words_ids": config.bad_words_ids,
    }


BART_CNN = {
    "num_beams": 4, "length_penalty": 2.0, "no_repeat_ngram_size": 3, "min_length": 56, "max_length": 142,
    "early_stopping": True, "forced_bos_token_id": 0, "forced_eos_token_id": 2, "eos_token_id": 2,
    "decoder_start_token_id": 2, "bos_token_id": 0, "pad_token_id": 1,
}  # fmt: skip
T5_TASKS = {
    "summarization": {
        "early_stopping": True, "length_penalty": 2.0, "max_length": 200, "min_length": 30,
        "no_repeat_ngram_size": 0, "num_beams": 4, "prefix": "summarize: ",
    },
    "translation_en_to_fr": {
        "early_stopping": True, "max_length": 300, "num_beams": 4, "prefix": "translate English to French: ",
    },
}  # fmt: skip

# name: (model, generation_config.json (None: none, the legacy config.json route), task_specific_params)
PIPELINE_MODELS = {
    "gpt2": ("gpt2", {"max_new_tokens": 8, "no_repeat_ngram_size": 2, "eos_token_id": 2, "pad_token_id": 1}, None),
    "gpt2-legacy": ("gpt2", None, None),
    "gpt2-sampling": ("gpt2", {"do_sample": True, "top_k": 20, "top_p": 0.9, "eos_token_id": 2}, None),
    "bart-cnn": ("bart", BART_CNN, None),
    "bart-plain": ("bart", {"decoder_start_token_id": 2, "eos_token_id": 2, "bos_token_id": 0}, None),
    "marian": (
        "marian",
        {"num_beams": 6, "max_length": 512, "bad_words_ids": [[1]], "eos_token_id": 2, "decoder_start_token_id": 1},
        None,
    ),
    "t5-tasks": ("t5", {"decoder_start_token_id": 1, "eos_token_id": 2, "no_repeat_ngram_size": 3}, T5_TASKS),
    "t5-tasks-old-config": (
        "t5",
        {"decoder_start_token_id": 1, "eos_token_id": 2, "no_repeat_ngram_size": 3, "transformers_version": "4.27.0"},
        T5_TASKS,
    ),
}

RESOLVE_CASES = [
    ("gpt2", "text-generation", {}),
    ("gpt2", "text-generation", {"max_new_tokens": 5, "do_sample": False}),
    ("gpt2", "text-generation", {"max_length": 20, "max_new_tokens": None}),
    ("gpt2", "text-generation", {"max_new_tokens": None}),
    ("gpt2", "text-generation", {"temperature": 1.3, "top_k": 5, "repetition_penalty": 1.2, "max_time": 3.0}),
    ("gpt2-legacy", "text-generation", {}),
    ("gpt2-legacy", "text-generation", {"max_length": 40, "num_return_sequences": 2}),
    ("gpt2-sampling", "text-generation", {"top_p": 0.5}),
    ("bart-cnn", "summarization", {}),
    ("bart-cnn", "summarization", {"max_new_tokens": 10, "min_length": 3}),
    ("bart-cnn", "text2text-generation", {"num_beams": 2, "max_length": 60}),
    ("bart-plain", "text2text-generation", {}),
    ("bart-plain", "summarization", {"max_length": 30, "max_new_tokens": None}),
    ("marian", "translation", {}),
    ("marian", "translation", {"num_beams": 1, "do_sample": False}),
    ("t5-tasks", "summarization", {}),
    ("t5-tasks", "translation_en_to_fr", {}),
    ("t5-tasks", "translation_en_to_fr", {"max_new_tokens": 12}),
    ("t5-tasks-old-config", "summarization", {}),
    ("t5-tasks", "text2text-generation", {}),
]


@pytest.fixture(scope="module")
def pipeline_models(tmp_path_factory, one_thread) -> dict:
    """Each model saved with a generation config (or none) and its tokenizer, built once."""
    from tests.fixtures.tiny_models import _bpe_tokenizer

    root = tmp_path_factory.mktemp("decoding-pipelines")
    folders = {}
    for name, (kind, generation, task_params) in PIPELINE_MODELS.items():
        folder = root / name
        tok = _bpe_tokenizer(folder)
        model = build(kind, vocab=len(tok))
        if task_params is not None:
            model.config.task_specific_params = copy.deepcopy(task_params)
        model.generation_config = transformers.GenerationConfig(**{k: v for k, v in (generation or {}).items()})
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        path = folder / "generation_config.json"
        if generation is None:
            path.unlink()
        elif "transformers_version" in generation:  # save_pretrained writes the running version
            path.write_text(json.dumps({**json.loads(path.read_text()), **generation}))
        folders[name] = folder
    return folders


@pytest.mark.parametrize(("name", "task", "request_"), RESOLVE_CASES, ids=lambda v: str(v) if v else "-")
def test_resolve_settings_as_the_pipeline(pipeline_models, name, task, request_):
    folder = pipeline_models[name]
    pipe = transformers.pipeline(task, model=str(folder))
    expected, length = pipeline_generation(pipe, "That is a happy person", dict(request_))
    settings = resolve_settings(dict(request_), folder, task=task)
    assert comparable(settings, length) == config_values(expected)
    assert settings.prefix == pipe.prefix


def test_resolve_settings_cases_are_informative(pipeline_models):
    """The pipeline's config changes with the model's generation config, the task and the request."""
    answers = {}
    for name, task, request_ in RESOLVE_CASES:
        pipe = transformers.pipeline(task, model=str(pipeline_models[name]))
        config, length = pipeline_generation(pipe, "That is a happy person", dict(request_))
        answers[(name, task, str(request_))] = json.dumps(config_values(config), sort_keys=True)
    same = [key for key, value in answers.items() if list(answers.values()).count(value) > 1]
    assert not same, f"these cases resolve to the same settings: {same}"


def test_pipeline_defaults_are_the_pipelines_own():
    from transformers.pipelines import (
        AutomaticSpeechRecognitionPipeline,
        SummarizationPipeline,
        TableQuestionAnsweringPipeline,
        Text2TextGenerationPipeline,
        TextGenerationPipeline,
        TranslationPipeline,
    )

    classes = {
        "text-generation": TextGenerationPipeline,
        "text2text-generation": Text2TextGenerationPipeline,
        "summarization": SummarizationPipeline,
        "translation": TranslationPipeline,
        "automatic-speech-recognition": AutomaticSpeechRecognitionPipeline,
        "table-question-answering": TableQuestionAnsweringPipeline,
    }
    for task, cls in classes.items():
        assert transformers.GenerationConfig(**PIPELINE_DEFAULTS[task]) == cls._default_generation_config, task


def test_resolve_settings_refuses_what_is_not_ported(pipeline_models):
    with pytest.raises(ValueError, match="not generation parameters"):
        resolve_settings({"foo": 1}, pipeline_models["gpt2"], task="text-generation")
    with pytest.raises(ValueError, match="not supported"):
        resolve_settings({"encoder_repetition_penalty": 1.5}, pipeline_models["bart-plain"], task="summarization")


_CHILD = """
import json, sys
import numpy as np
from localinfer.decoding import GenerationSettings, generate
from localinfer.decoding.settings import resolve_settings

class Fixed:
    vocab_size = 10
    def step(self, tokens):
        return np.tile(np.linspace(0, 1, 10, dtype=np.float32), (len(tokens), 1))
    def reorder(self, rows):
        pass

settings = resolve_settings({"max_new_tokens": 3}, sys.argv[1], task="summarization")
sequences = generate(Fixed(), [], settings)
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "optimum", "sentence_transformers"})
print(json.dumps({"loaded": loaded, "sequences": sequences, "num_beams": settings.num_beams}))
"""


def test_runs_without_torch(pipeline_models):
    """resolve_settings and generate in a fresh process: no torch, optimum or sentence-transformers imported.
    `import transformers` imports torch wherever torch is installed; USE_TORCH=0 makes it behave as in an install
    without torch."""
    folder = pipeline_models["t5-tasks"]
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "USE_TORCH": "0"},
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["num_beams"] == resolve_settings({}, folder, task="summarization").num_beams == 4
    assert result["sequences"] == [[1, 9, 9, 9]]


# Each processor against its transformers counterpart (torch), on random scores, small and GPT-2-sized vocabularies.


def _processor_pairs(vocab: int) -> dict:
    from transformers.generation import logits_process as lp

    from localinfer.decoding import processors as ours

    eos = [2, 7]
    return {
        "repetition": (ours.RepetitionPenalty(1.3), lp.RepetitionPenaltyLogitsProcessor(1.3)),
        "no-repeat-ngram": (ours.NoRepeatNGram(2), lp.NoRepeatNGramLogitsProcessor(2)),
        "bad-words": (
            ours.no_bad_words([[3], [4, 5], [2]], eos, vocab),
            lp.NoBadWordsLogitsProcessor([[3], [4, 5], [2]], eos),
        ),
        "sequence-bias": (
            ours.SequenceBias([((3,), 2.5), ((4, 5), -1.5)], vocab),
            lp.SequenceBiasLogitsProcessor([[[3], 2.5], [[4, 5], -1.5]]),
        ),
        "min-length": (ours.MinLength(50, eos, vocab), lp.MinLengthLogitsProcessor(50, eos)),
        "forced-eos": (ours.ForcedToken(13, eos), lp.ForcedEOSTokenLogitsProcessor(14, eos)),
        "exp-decay": (
            ours.ExponentialDecayLengthPenalty(3, 1.5, eos, 6),
            lp.ExponentialDecayLengthPenalty((3, 1.5), eos, 6),
        ),
        "suppress": (ours.SuppressTokens([3, 9], vocab), lp.SuppressTokensLogitsProcessor([3, 9])),
        "temperature": (ours.Temperature(0.7), lp.TemperatureLogitsWarper(0.7)),
        "top-k": (ours.TopK(5), lp.TopKLogitsWarper(5)),
        "top-k-beams": (ours.TopK(1, 3), lp.TopKLogitsWarper(1, min_tokens_to_keep=3)),
        "top-p": (ours.TopP(0.8), lp.TopPLogitsWarper(0.8)),
        "top-p-beams": (ours.TopP(0.01, 3), lp.TopPLogitsWarper(0.01, min_tokens_to_keep=3)),
        "min-p": (ours.MinP(0.2), lp.MinPLogitsWarper(0.2)),
        "typical": (ours.Typical(0.6), lp.TypicalLogitsWarper(0.6)),
        "epsilon": (ours.EpsilonCutoff(3e-4), lp.EpsilonLogitsWarper(3e-4)),
        "eta": (ours.EpsilonCutoff(3e-4, eta=True), lp.EtaLogitsWarper(3e-4)),
        "inf-nan": (ours.inf_nan_remove, lp.InfNanRemoveLogitsProcessor()),
        "renormalize": (ours.renormalize, lp.LogitNormalization()),
    }


@pytest.mark.parametrize("vocab", [11, 50257])
@pytest.mark.parametrize("name", list(_processor_pairs(11)))
def test_processor_equals_transformers(name, vocab):
    ours, theirs = _processor_pairs(vocab)[name]
    rng = np.random.default_rng(vocab)
    input_ids = rng.integers(0, 11, size=(3, 13))
    input_ids[1, -3:] = [4, 5, 4]  # a bad word's prefix, a repeated bigram
    scores = (rng.standard_normal((3, vocab)) * 4).astype(np.float32)
    if name == "inf-nan":
        scores[0, :3] = [np.inf, -np.inf, np.nan]
    if name.startswith("top-p"):
        scores[2, 20 % vocab :] = -np.inf  # a row already cut by top-k
    expected = theirs(torch.from_numpy(input_ids), torch.from_numpy(scores.copy())).numpy()
    np.testing.assert_allclose(ours(input_ids, scores.copy()), expected, rtol=1e-5, atol=1e-5)
    if name not in ("inf-nan",):
        assert not np.array_equal(expected, scores), "the processor changes nothing here"


def test_beam_top_k_equals_a_full_sort():
    from localinfer.decoding.processors import kth_largest
    from localinfer.decoding.search import _top

    rng = np.random.default_rng(0)
    for size in (40, 4 * 50257, 6 * 32000 + 17):
        values = rng.standard_normal(size).astype(np.float32)
        values[rng.integers(0, size, size // 3)] = -np.inf
        values[rng.integers(0, size, 12)] = values.max()  # ties at the top
        for k in (1, 8, 12, 40):
            assert _top(values, k).tolist() == np.argsort(-values, kind="stable")[:k].tolist()
        rounded = np.round(values * 2)  # many ties at the k-th value
        rounded[-3:] = rounded.max() + 1  # the largest in the last, longer block
        for k in (1, 4, 9):
            assert _top(rounded, k).tolist() == np.argsort(-rounded, kind="stable")[:k].tolist()
            rows = np.stack([rounded, rounded[::-1]])
            assert kth_largest(rows, k)[:, 0].tolist() == (-np.sort(-rows, axis=1))[:, k - 1].tolist()


def test_log_softmax_graph_is_the_documented_one():
    """The serialised graph kernels.py runs is what its docstring's `onnx.helper` code builds."""
    from onnx import TensorProto, helper

    from localinfer.decoding import kernels

    graph = helper.make_graph(
        [helper.make_node("LogSoftmax", ["scores"], ["log_probs"], axis=-1)],
        "log_softmax",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["rows", "vocab"])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["rows", "vocab"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7, producer_name="localinfer"
    )
    assert model.SerializeToString() == kernels.LOG_SOFTMAX_ONNX


@pytest.mark.parametrize("vocab", [11, 50257])
def test_log_softmax_equals_torch(vocab):
    """Beam search's log-softmax (ONNX Runtime on a large vocabulary, numpy on a small one) equals torch's."""
    from localinfer.decoding.processors import log_softmax

    scores = (np.random.default_rng(vocab).standard_normal((4, vocab)) * 4).astype(np.float32)
    scores[1, :3] = -np.inf
    ours = log_softmax(scores)
    assert ours.dtype == np.float32 and ours.shape == scores.shape
    np.testing.assert_allclose(ours, torch.log_softmax(torch.from_numpy(scores), -1).numpy(), rtol=0, atol=1e-5)


def test_sampled_rows_end_at_their_own_eos():
    """Rows that draw eos stop there (and leave the batch), the others go on to the length limit."""
    model = FixedLogits(LOGITS)
    settings = GenerationSettings(
        do_sample=True, top_k=0, eos_token_id=1, max_new_tokens=12, num_return_sequences=60, seed=5
    )
    rows = generate(model, [0], settings)
    assert len(rows) == 60
    for row in rows:
        new = row[1:]
        assert 1 not in new[:-1]
        assert new[-1] == 1 or len(new) == 12
    assert len({len(row) for row in rows}) > 3
    assert model.rows < 60  # the finished rows were dropped from the model's batch


@pytest.mark.parametrize("name", ["gpt2", "bart", "t5", "marian", "blenderbot-small"])
def test_fixture_models_token_identical(tiny, one_thread, name):
    """The session's trained generation fixtures, with their own generation configs, greedy and beam search."""
    from tests.fixtures.tiny_models import CORPUS

    folder = tiny[name]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    auto = transformers.AutoModelForCausalLM if name == "gpt2" else transformers.AutoModelForSeq2SeqLM
    model = auto.from_pretrained(folder).eval()
    settings = (
        {},
        {"num_beams": 4, "length_penalty": 2.0, "no_repeat_ngram_size": 3, "min_length": 5, "max_length": 24,
         "max_new_tokens": None, "early_stopping": True},
        {"num_beams": 5, "num_return_sequences": 3, "max_new_tokens": 16, "repetition_penalty": 1.3},
    )  # fmt: skip
    answers = []
    for text in CORPUS[4:7]:
        prompt = tok(text)["input_ids"]
        answers.append([])
        for kwargs in settings:
            expected = torch_generate(model, prompt, **kwargs)
            answers[-1].append(expected)
            assert ours(model, prompt, **kwargs) == expected
    for i in range(len(settings)):  # each setting's answer changes with the input, and differs from greedy's
        assert len({str(row[i]) for row in answers}) > 1
        assert i == 0 or any(row[i][:1] != row[0] for row in answers)


@pytest.mark.parametrize("warpers", [{"top_k": 0}, {"top_k": 6, "temperature": 0.5}], ids=["plain", "top_k"])
def test_sampling_on_a_gpt2_sized_vocabulary(warpers):
    """The large-vocabulary path: ten likely tokens spread over 50257, the rest with no mass to speak of."""
    vocab, rows, steps = 50257, 100, 30
    logits = np.full(vocab, -60.0, dtype=np.float32)
    where = np.linspace(7, vocab - 1, len(LOGITS)).astype(int)
    logits[where] = LOGITS
    settings = GenerationSettings(do_sample=True, max_new_tokens=steps, num_return_sequences=rows, seed=11, **warpers)
    tokens = np.array([row[1:] for row in generate(FixedLogits(logits), [0], settings)]).reshape(-1)
    assert set(tokens.tolist()) <= set(where.tolist())
    probs = expected_probs(**{k: v for k, v in warpers.items() if v})
    counts = np.array([(tokens == w).sum() for w in where])
    expected = probs * rows * steps
    kept = expected > 0
    assert counts[~kept].sum() == 0
    assert (((counts - expected) ** 2)[kept] / expected[kept]).sum() < 30, (counts, expected)


def test_beam_sampling_draws_the_possible_tokens_first():
    """Fewer non-zero probabilities than beams to draw (a forced token): those come first, then impossible ones,
    as torch.multinomial draws them (numpy's choice alone refuses)."""
    from localinfer.decoding.search import _draw_without_replacement

    scores = np.full(10, -np.inf, dtype=np.float32)
    scores[[3, 7]] = [0.0, 1.0]
    seen_first = set()
    for seed in range(20):
        drawn = _draw_without_replacement(np.random.default_rng(seed), scores, 4)
        assert sorted(drawn[:2]) == [3, 7] and len(set(drawn)) == 4 and not set(drawn[2:]) & {3, 7}
        seen_first.add(int(drawn[0]))
    assert seen_first == {3, 7}  # drawn, not sorted
    full = _draw_without_replacement(np.random.default_rng(0), np.zeros(10, dtype=np.float32), 4)
    assert len(set(full)) == 4


def test_stream_tokens_logprobs_are_of_the_processed_distribution(models):
    """TGI's logprob: the log-softmax of the scores the token was chosen from (after the processors), which is what
    `generate` returns as `scores`; not the raw logits' (the repetition penalty makes them differ)."""
    model = models["gpt2"]
    kwargs = {"max_new_tokens": 8, "eos_token_id": 63, "repetition_penalty": 1.8}
    tokens = list(stream_tokens(TorchStepModel(model), P3, settings_for(model, **kwargs), logprobs=True))
    with torch.no_grad():
        out = model.generate(
            torch.tensor([P3]), attention_mask=torch.ones(1, len(P3)), output_scores=True, output_logits=True,
            return_dict_in_generate=True, **kwargs,
        )  # fmt: skip
    new = out.sequences[0, len(P3) :].tolist()
    assert [t.id for t in tokens] == new[: len(tokens)]
    processed = [float(torch.log_softmax(s[0].double(), -1)[t]) for s, t in zip(out.scores, new, strict=False)]
    raw = [float(torch.log_softmax(s[0].double(), -1)[t]) for s, t in zip(out.logits, new, strict=False)]
    assert np.allclose([t.logprob for t in tokens], processed, atol=1e-4)
    assert not np.allclose(processed, raw, atol=1e-3)  # the case can tell the two apart
    assert all(t.logprob is None for t in stream_tokens(TorchStepModel(model), P3, settings_for(model, **kwargs)))


def test_stream_tokens_finish_reasons(models):
    model = models["gpt2"]
    greedy = [t.id for t in stream_tokens(TorchStepModel(model), P1, settings_for(model, max_new_tokens=6))]

    def reasons(settings, stop=None):
        return [t.finish_reason for t in stream_tokens(TorchStepModel(model), P1, settings, stop=stop)]

    assert reasons(settings_for(model, max_new_tokens=6)) == [None] * 5 + ["length"]
    eos = greedy[2]
    assert greedy[:2].count(eos) == 0
    assert reasons(settings_for(model, max_new_tokens=6, eos_token_id=eos)) == [None, None, "eos_token"]
    stop_after_two = lambda new: len(new) == 2  # noqa: E731
    assert reasons(settings_for(model, max_new_tokens=6), stop_after_two) == [None, "stop_sequence"]
    # at the length limit, the length is the reason even when the last token is also the eos (TGI's order)
    assert reasons(settings_for(model, max_new_tokens=3, eos_token_id=eos)) == [None, None, "length"]
