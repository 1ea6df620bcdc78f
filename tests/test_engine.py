"""LocalInference: options, loading, exports and errors (the no-network guarantee: tests/test_offline.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localinfer import (
    BadRequestError,
    LocalInference,
    ModelFailureError,
    ModelLoadingError,
    ModelNotFoundError,
)
from tests.conftest import SENTENCES, assert_close
from tests.fixtures.tiny_models import write_models_toml

CLASSIFIER = "tiny/distilbert-sentiment"


def _keys_written(engine, monkeypatch) -> list[str]:
    keys: list[str] = []
    original = engine.cache.set
    monkeypatch.setattr(engine.cache, "set", lambda key, value: (keys.append(key), original(key, value)))
    return keys


def test_cache_hit_and_use_cache_false_replaces_the_entry(engine, monkeypatch):
    payload = {"inputs": "cache me", "parameters": {"top_k": 1}}
    keys = _keys_written(engine, monkeypatch)
    first = engine.answer(CLASSIFIER, {**payload, "options": {"use_cache": False}})
    assert not first.cached and len(keys) == 1
    engine.cache.set(keys[0], [[{"label": "STALE", "score": 1.0}]])
    hit = engine.answer(CLASSIFIER, payload)
    assert hit.cached and hit.result == [[{"label": "STALE", "score": 1.0}]]
    fresh = engine.answer(CLASSIFIER, {**payload, "options": {"use_cache": False}})
    assert not fresh.cached and fresh.result == first.result
    assert engine.answer(CLASSIFIER, payload).result == first.result  # replaced


def test_cache_key_distinguishes_parameters_and_tasks(engine):
    one = engine.query(CLASSIFIER, {"inputs": "same text", "parameters": {"top_k": 1}})
    two = engine.query(CLASSIFIER, {"inputs": "same text", "parameters": {"top_k": 2}})
    assert len(one[0]) == 1 and len(two[0]) == 2
    vectors = engine.query("tiny/st-cls", "same text", task="feature-extraction")
    assert isinstance(vectors[0], float)
    # One model, one payload, three tasks that answer it: with the cache on, each answer stays its own task's.
    fields = {
        "summarization": "summary_text",
        "text2text-generation": "generated_text",
        "translation": "translation_text",
    }
    for cached in (False, True):
        for task, field in fields.items():
            answer = engine.answer("tiny/bart", {"inputs": "the cache key names the task"}, task=task)
            assert answer.cached == cached and list(answer.result[0]) == [field], (task, answer)


def test_corrupt_cache_never_fails_a_query(tiny, tmp_path, home):
    toml = write_models_toml(tmp_path / "models.toml", tiny)
    engine = LocalInference(toml, home)
    engine.cache.directory = tmp_path / "results"
    engine.cache.directory.mkdir()
    (engine.cache.directory / "cache.db").write_bytes(b"\x00corrupt" * 500)
    expected = LocalInference(toml, home).query(CLASSIFIER, {"inputs": "x", "options": {"use_cache": False}})
    assert engine.query(CLASSIFIER, "x") == expected
    assert engine.answer(CLASSIFIER, "x").cached


def _fresh_engine(tiny, tmp_path, **kwargs) -> LocalInference:
    return LocalInference(write_models_toml(tmp_path / "models.toml", tiny), tmp_path / "home", **kwargs)


def test_emulated_loading_answers_503_then_the_result(tiny, tmp_path, monkeypatch):
    engine = _fresh_engine(tiny, tmp_path, emulate_loading=True)
    with pytest.raises(ModelLoadingError) as info:
        engine.query(CLASSIFIER, "hello")
    error = info.value
    assert error.status == 503 and error.body["error"] == f"Model {CLASSIFIER} is currently loading"
    assert isinstance(error.body["estimated_time"], float) and error.body["estimated_time"] > 0
    assert engine.state(CLASSIFIER) == "loading"
    answer = engine.query(CLASSIFIER, {"inputs": "hello", "options": {"wait_for_model": True}})
    assert answer[0][0]["label"] in {"POSITIVE", "NEGATIVE"}
    assert engine.state(CLASSIFIER) == "ready"
    assert engine.query(CLASSIFIER, {"inputs": "again"})  # loaded: no 503

    # A load that exported first is not a load time; a plain load is, and a new engine estimates from it.
    import localinfer.engine as engine_module

    assert not (tmp_path / "home" / "load_times.json").exists()
    LocalInference(engine.models_file, tmp_path / "home").preload(CLASSIFIER)
    recorded = json.loads((tmp_path / "home" / "load_times.json").read_text())
    assert [key.split(":")[1:] for key in recorded] == [["onnx", "text-classification", "fp32"]]  # per export
    original = engine_module.load_model
    monkeypatch.setattr(engine_module, "load_model", lambda *a, **k: (time.sleep(0.5), original(*a, **k))[1])
    again = LocalInference(engine.models_file, tmp_path / "home", emulate_loading=True)
    with pytest.raises(ModelLoadingError) as info:
        again.query(CLASSIFIER, "not in the result cache yet")
    assert 0 < info.value.estimated_time <= max(max(recorded.values()), 0.1)  # 0.1 s: the floor of an estimate
    again.preload(CLASSIFIER)


def test_default_engine_blocks_until_loaded(tiny, tmp_path):
    engine = _fresh_engine(tiny, tmp_path)
    assert engine.query(CLASSIFIER, {"inputs": "hello", "options": {"wait_for_model": False}})


def test_concurrent_first_queries_load_once(tiny, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import localinfer.engine as engine_module

    engine = _fresh_engine(tiny, tmp_path)
    calls = []
    original = engine_module.load_model
    monkeypatch.setattr(engine_module, "load_model", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: engine.query(CLASSIFIER, f"text {i}"), range(8)))
    assert len(answers) == 8 and len(calls) == 1


def test_crashed_export_leaves_nothing_half_written(tiny, tmp_path, monkeypatch):
    import optimum.exporters.onnx as exporter

    def crash(model, output, **kwargs):
        Path(output).mkdir(parents=True)
        (Path(output) / "model.onnx").write_bytes(b"half a model")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(exporter, "main_export", crash)
    engine = _fresh_engine(tiny, tmp_path)
    with pytest.raises(ModelFailureError, match="killed mid-export") as info:
        engine.query(CLASSIFIER, "hi")
    assert info.value.status == 500 and "Traceback" not in info.value.message
    exports = tmp_path / "home" / "exports"
    assert not any(exports.iterdir())
    monkeypatch.undo()
    assert engine.query(CLASSIFIER, "hi")  # a failed load is retried


def test_two_processes_exporting_at_once(tiny, tmp_path):
    toml = write_models_toml(tmp_path / "models.toml", tiny)
    env = {**os.environ, "LOCALINFER_HOME": str(tmp_path / "home"), "LOCALINFER_MODELS": str(toml)}
    command = [sys.executable, "-m", "localinfer", "-q", "export", "tiny/roberta-multilabel"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    paths = {out.decode().strip() for out, _ in outputs}
    assert len(paths) == 1 and (Path(paths.pop()) / "model.onnx").is_file()
    assert [p.name for p in (tmp_path / "home" / "exports").iterdir()] == [
        next((tmp_path / "home" / "exports").iterdir()).name
    ]  # one export, no partial folder left


def test_shipped_onnx_is_used_without_exporting(tiny, tmp_path):
    """An ONNX file in the model's folder (here without the pooling) is used as is; pooling runs in numpy."""
    from optimum.exporters.onnx import main_export
    from sentence_transformers import SentenceTransformer, util

    folder = shutil.copytree(tiny["st-cls"], tmp_path / "st-with-onnx")
    main_export(str(folder), str(folder / "onnx"), task="feature-extraction", library_name="transformers")
    engine = LocalInference(None, tmp_path / "home")
    payload = {"source_sentence": SENTENCES[0], "sentences": SENTENCES[1:]}
    answer = engine.query(str(folder), payload)
    model = SentenceTransformer(str(tiny["st-cls"]), device="cpu")
    assert_close(answer, util.cos_sim(model.encode(SENTENCES[0]), model.encode(SENTENCES[1:])).tolist()[0], 1e-5)
    assert not (tmp_path / "home" / "exports").exists()


def test_model_failure_is_500_without_traceback(engine, monkeypatch):
    model = engine.preload(CLASSIFIER)
    monkeypatch.setattr(model.runner, "run", lambda feeds: (_ for _ in ()).throw(RuntimeError("device lost")))
    with pytest.raises(ModelFailureError) as info:
        engine.query(CLASSIFIER, {"inputs": "boom", "options": {"use_cache": False}})
    assert info.value.status == 500 and info.value.body == {"error": "RuntimeError: device lost"}


@pytest.mark.parametrize(
    ("model", "payload", "task", "error", "message"),
    [
        ("nobody/nothing", "hi", None, ModelNotFoundError, "Model nobody/nothing not found"),
        (CLASSIFIER, "hi", "dancing", BadRequestError, "unknown task 'dancing'"),
        ("tiny/st-cls", b'{"inputs": {"source_sentence": ', None, BadRequestError, "inputs"),
        (CLASSIFIER, b"\xc3\x28 invalid", None, BadRequestError, "UTF-8"),
        (CLASSIFIER, {"parameters": {"top_k": 1}}, None, BadRequestError, "inputs"),
        (CLASSIFIER, {"inputs": 5}, None, BadRequestError, "inputs"),
        (CLASSIFIER, {"inputs": "x", "parameters": {"top_k": 0}}, None, BadRequestError, "parameters.top_k"),
        (CLASSIFIER, {"inputs": "x", "parameters": {"topk": 1}}, None, BadRequestError, "parameters.topk"),
    ],
)
def test_errors_have_the_contract_shape(engine, model, payload, task, error, message):
    with pytest.raises(error) as info:
        engine.query(model, payload, task=task)
    assert set(info.value.body) == {"error"} and message in info.value.body["error"]
    assert info.value.status == {BadRequestError: 400, ModelNotFoundError: 404}[error]


def test_module_level_query_reads_its_configuration_on_first_use(tiny, tmp_path, monkeypatch):
    import localinfer

    toml = write_models_toml(tmp_path / "models.toml", tiny)
    monkeypatch.setenv("LOCALINFER_MODELS", str(toml))
    monkeypatch.setenv("LOCALINFER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(localinfer, "_default", None)
    answer = localinfer.query(CLASSIFIER, {"inputs": "hello", "parameters": {"top_k": 1}})
    assert len(answer[0]) == 1
    assert localinfer.default_engine().home == tmp_path / "home"
    assert (tmp_path / "home" / "exports").is_dir()


def test_models_loading_on_several_threads_at_once(engine, home):
    """A fresh process whose first queries of three models run on three threads at once (a server's preload and
    its first requests): each answers. Without localinfer's import lock (localinfer/imports.py) their first imports
    from transformers meet and one fails with `cannot import name ...` (seen in 4 runs of 5 in a plain script)."""
    for model_id in ("tiny/gpt2", "tiny/vit", "tiny/bert-ner"):
        engine.export(model_id)  # the exports exist: the child only loads
    script = Path(__file__).parent / "fixtures" / "parallel_loads.py"
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(script), str(engine.models_file), str(home)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_models_exporting_on_several_threads_at_once(tiny, tmp_path):
    """A server's preload exports the models of models.toml on its loading threads at once: each export answers.
    Two PyTorch models built at once interfere (transformers' process-wide device and init switches: "Tensor on
    device meta is not on the expected device cpu"), so localinfer builds one at a time (TORCH_BUILD_LOCK)."""
    engine = _fresh_engine(tiny, tmp_path, emulate_loading=True)
    models = ("tiny/gpt2", "tiny/bart", "tiny/st-cls", "tiny/vit")
    for model_id in models:
        engine.start_loading(model_id)
    for model_id in models:
        assert engine.preload(model_id).runner.backend == "onnx"
