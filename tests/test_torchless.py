"""Tasks that run from an ONNX session answer in an interpreter without torch, optimum and sentence-transformers.

The exports are made here (the engine's `export()`, which needs them); the child (tests/torchless.py) loads only
the exports, and must answer what the engine answers here."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.compare import assert_close
from tests.fixtures.tiny_models import TABLE, write_models_toml
from tests.torchless import run_without_torch

SAMPLES = Path(__file__).parent / "samples"
EXPORT_SIDE = ("torch", "optimum", "sentence_transformers")


def _audio(data: bytes, parameters: dict) -> dict:
    return {"inputs": base64.b64encode(data).decode(), "parameters": parameters}


def _child(toml: Path, folder: Path, queries: list) -> str:
    """The child's program: answer `queries` (a JSON file) with the exports, and name the export-side libraries
    it imported; one JSON line."""
    (folder / "queries.json").write_text(json.dumps(queries))
    return f"""
import json, sys
from localinfer import InferenceError, LocalInference
engine = LocalInference({str(toml)!r}, {str(folder / "home")!r})
answers = []
for model, payload in json.loads(open({str(folder / "queries.json")!r}).read()):
    try:
        answers.append(engine.query(model, payload))
    except InferenceError as error:
        answers.append({{"status": error.status, **error.body}})
imported = [name for name in {EXPORT_SIDE!r} if name in sys.modules]
print(json.dumps({{"answers": answers, "imported": imported}}))
"""


def test_audio_and_tapas_run_without_torch(engine, tmp_path):
    """CTC speech recognition (unchunked and chunked), audio classification and TAPAS."""
    names = ("wav2vec2-ctc", "wav2vec2-classifier", "tapas")
    toml = write_models_toml(tmp_path / "models.toml", {name: engine.export(f"tiny/{name}") for name in names})
    flac = (SAMPLES / "sample1.flac").read_bytes()
    queries = [
        ("tiny/wav2vec2-ctc", _audio(flac, {})),
        ("tiny/wav2vec2-ctc", _audio(flac, {"chunk_length_s": 4.0, "stride_length_s": 1.0})),
        ("tiny/wav2vec2-classifier", _audio(flac, {"top_k": 3})),
        ("tiny/tapas", {"inputs": [{"query": q, "table": TABLE} for q in ("what is the total height?", "paris?")]}),
    ]
    found = run_without_torch(_child(toml, tmp_path, queries), tmp_path)
    assert found["imported"] == []
    assert_close(found["answers"], [engine.query(model, payload) for model, payload in queries])


def test_tapas_without_pandas_is_a_500_naming_the_extra(engine, tmp_path):
    toml = write_models_toml(tmp_path / "models.toml", {"tapas": engine.export("tiny/tapas")})
    query = ("tiny/tapas", {"inputs": {"query": "what is the total height?", "table": TABLE}})
    found = run_without_torch(_child(toml, tmp_path, [query]), tmp_path, without=("pandas",))
    assert found["answers"] == [
        {
            "status": 500,
            "error": "table-question-answering needs pandas, which is not installed: pip install 'localinfer[tapas]'",
        }
    ]
