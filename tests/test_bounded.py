"""Inputs far beyond every window, answered under an address-space limit (a 4 GB edge device): a result or a
4xx, never a 500, a crash or memory that grows with the input. Heavy, so each family runs in one child process
(tests/fixtures/bounded_child.py) on exports made here first."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures import bounded_child
from tests.fixtures.tiny_models import write_models_toml

LIMIT_MB = 4096
WORDS = "@words 50000"

FAMILIES = {
    "encoders": [
        ("tiny/distilbert-sentiment", {"inputs": WORDS}),
        ("tiny/bert-ner", {"inputs": WORDS}),
        ("tiny/roberta-ner", {"inputs": WORDS, "parameters": {"aggregation_strategy": "simple"}}),
        ("tiny/bert-qa", {"inputs": {"question": "Where is the tower?", "context": WORDS}}),
        ("tiny/bert-mlm", {"inputs": "@words 50000 [MASK]"}),
        ("tiny/bert-nli", {"inputs": WORDS, "parameters": {"candidate_labels": ["city", "weather"]}}),
        ("tiny/bert-base", {"inputs": WORDS}),
        ("tiny/st-mean-normalize", {"inputs": {"source_sentence": WORDS, "sentences": [WORDS, "a day"]}}),
        ("tiny/distilbert-sentiment", {"inputs": ["@words 500"] * 1000}),
    ],
    "generation": [
        ("tiny/gpt2", {"inputs": WORDS, "parameters": {"do_sample": False, "max_new_tokens": 5}}),
        ("tiny/gpt2-long", {"inputs": WORDS, "parameters": {"do_sample": False, "max_new_tokens": 5}}),
        ("tiny/bart", {"inputs": WORDS, "parameters": {"max_length": 10}}),
        ("tiny/t5", {"inputs": WORDS}),
        ("tiny/marian", {"inputs": WORDS}),
        ("tiny/blenderbot-small", {"inputs": {"text": WORDS, "past_user_inputs": [], "generated_responses": []}}),
        (
            "tiny/gpt2-chat",
            {"inputs": {"text": "hi", "past_user_inputs": ["@words 300"] * 200, "generated_responses": ["ok"] * 200}},
        ),
        (
            "tiny/blenderbot-small",
            {"inputs": {"text": "hi", "past_user_inputs": ["@words 300"] * 200, "generated_responses": ["ok"] * 200}},
        ),
    ],
    "audio": [
        ("tiny/whisper", "@audio 600"),  # chunked by 30 s
        ("tiny/wav2vec2-ctc", "@audio 600"),  # chunked by default
        ("tiny/wav2vec2-ctc", {"inputs": "@audio 600", "parameters": {"chunk_length_s": 30}}),
        ("tiny/wav2vec2-classifier", "@audio 600"),  # 413: beyond one pass
    ],
    "images": [
        (f"tiny/{name}", f"@image {size}")
        for name in ("vit", "yolos", "detr", "segformer", "mobilevit", "maskformer", "detr-panoptic")
        for size in ("1x1", "3x2000", "2000x3")
    ],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_far_beyond_the_window_under_a_memory_limit(engine, tiny, home, tmp_path, family):
    cases = FAMILIES[family]
    for model in {model for model, _ in cases}:
        engine.export(model)  # exports need torch: made here, so the child only loads them
    toml = write_models_toml(tmp_path / "models.toml", tiny)
    (tmp_path / "cases.json").write_text(json.dumps([{"model": m, "payload": p} for m, p in cases]))
    # USE_TORCH=0: transformers would import torch by itself where it is installed; a runtime-only install has none.
    env = {**os.environ, "LOCALINFER_HOME": str(home), "LOCALINFER_MODELS": str(toml), "USE_TORCH": "0"}
    done = subprocess.run(
        [sys.executable, bounded_child.__file__, str(LIMIT_MB), str(tmp_path / "cases.json"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    results = json.loads((tmp_path / "out").read_text()) if (tmp_path / "out").is_file() else []
    assert done.returncode == 0, (results, done.stderr[-3000:])
    assert len(results) == len(cases)
    for (model, _), result in zip(cases, results, strict=True):
        assert result["status"] < 500, (model, result)
    pairs = zip(cases, results, strict=True)
    print(family, [(model, r["status"], round(r["peak_mb"]), r.get("torch")) for (model, _), r in pairs])
