"""The command line: the README's main job, the model list, export, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_close
from tests.fixtures.tiny_models import write_models_toml

MAIN_JOB = {
    "inputs": {
        "source_sentence": "That is a happy person",
        "sentences": ["That is a happy dog", "That is a very happy person", "Today is a sunny day"],
    }
}


@pytest.fixture(scope="module")
def cli_env(tiny, home, tmp_path_factory):
    toml = write_models_toml(tmp_path_factory.mktemp("cli") / "models.toml", tiny)
    return {**os.environ, "LOCALINFER_HOME": str(home), "LOCALINFER_MODELS": str(toml)}


def run(env, *args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "localinfer", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_main_job_prints_the_published_numbers(home, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LOCALINFER_MODELS"}
    env["LOCALINFER_HOME"] = str(home)
    done = run(env, "query", "sentence-transformers/all-MiniLM-L6-v2", "--data", json.dumps(MAIN_JOB), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_close(json.loads(done.stdout), [0.6945773363113403, 0.9429150819778442, 0.2568760812282562], 1e-5)


def test_query_from_a_file(cli_env, tmp_path):
    (tmp_path / "payload.json").write_text(json.dumps({"inputs": "I love you", "parameters": {"top_k": 1}}))
    done = run(cli_env, "query", "tiny/distilbert-sentiment", "--data", f"@{tmp_path / 'payload.json'}")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert len(answer) == 1 and len(answer[0]) == 1 and answer[0][0]["label"] in {"POSITIVE", "NEGATIVE"}


def test_models_lists_task_backend_and_export(cli_env):
    done = run(cli_env, "models")
    assert done.returncode == 0, done.stderr
    line = next(row for row in done.stdout.splitlines() if row.startswith("tiny/distilbert-sentiment"))
    assert line.split()[1:3] == ["text-classification", "onnx"]


def test_export_then_listed_as_exported(cli_env, tmp_path):
    env = {**cli_env, "LOCALINFER_HOME": str(tmp_path / "home")}
    done = run(env, "export", "tiny/bert-single-label")
    assert done.returncode == 0 and (Path(done.stdout.strip()) / "model.onnx").is_file(), done.stderr
    # Quiet: one progress line while the first export runs, then its duration; no tracer or library warnings.
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "exporting" in lines[0] and lines[1].startswith("localinfer: exported in "), lines
    listed = run(env, "models").stdout
    assert next(r for r in listed.splitlines() if r.startswith("tiny/bert-single-label")).split()[-1] == "yes"


def test_errors_print_the_json_body_and_fail(cli_env):
    done = run(cli_env, "query", "tiny/distilbert-sentiment", "--data", '{"inputs": "x", "parameters": {"top_k": 0}}')
    assert done.returncode == 1 and "parameters.top_k" in json.loads(done.stdout)["error"]
    assert "Traceback" not in done.stderr
    done = run(cli_env, "query", "nobody/nothing", "--data", '"x"')
    assert done.returncode == 1 and "not found" in json.loads(done.stdout)["error"]


def test_export_out_writes_a_folder_that_answers_as_its_source(cli_env, tmp_path):
    env = {**cli_env, "LOCALINFER_HOME": str(tmp_path / "home")}
    done = run(env, "export", "tiny/bert-ner", "--out", str(tmp_path / "ner"))
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == tmp_path / "ner"
    manifest = json.loads((tmp_path / "ner" / "localinfer.json").read_text())
    assert manifest["task"] == "token-classification" and manifest["source"]["model_id"] == "tiny/bert-ner"
    assert manifest["export"]["task"] == "token-classification" and manifest["versions"]["onnxruntime"] != "-"
    payload = json.dumps(
        {"inputs": "My name is Sarah and I live in London", "parameters": {"aggregation_strategy": "max"}}
    )
    shipped = run(
        {**env, "LOCALINFER_HOME": str(tmp_path / "other")}, "query", str(tmp_path / "ner"), "--data", payload
    )
    source = run(env, "query", "tiny/bert-ner", "--data", payload)
    assert shipped.returncode == 0 and source.returncode == 0, shipped.stderr
    assert json.loads(shipped.stdout) == json.loads(source.stdout) and json.loads(source.stdout)
    assert not (tmp_path / "other" / "exports").exists()  # the shipped folder was used as is

    again = run(env, "export", "tiny/bert-ner", "--out", str(tmp_path / "ner"))
    assert again.returncode == 1 and "exists and is not an empty folder" in json.loads(again.stdout)["error"]
    wrong = run(env, "query", str(tmp_path / "ner"), "--task", "fill-mask", "--data", '{"inputs": "a [MASK]"}')
    assert wrong.returncode == 1
    assert json.loads(wrong.stdout) == {
        "error": f"{tmp_path / 'ner'} is an export for token-classification; it cannot answer fill-mask"
    }


def test_runtime_only_install_refuses_to_export_and_names_the_extra(cli_env, tmp_path):
    """Without the export side (optimum and torch made unimportable), a model that needs exporting is a clear 500."""
    code = (
        "import sys, json; sys.modules['optimum'] = None; sys.modules['torch'] = None\n"
        "import localinfer\n"
        "try:\n"
        "    localinfer.query('tiny/distilbert-sentiment', 'I love you')\n"
        "except localinfer.MissingExtraError as exc:\n"
        "    print(json.dumps([exc.status, exc.body]))\n"
    )
    env = {**cli_env, "LOCALINFER_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    status, body = json.loads(done.stdout)
    assert status == 500
    assert "needs optimum, which this runtime-only install lacks: install 'localinfer[export]'" in body["error"]
    assert "localinfer export MODEL --out DIR" in body["error"]


def test_export_with_torch_hidden_from_transformers_names_the_switch(cli_env, tmp_path):
    env = {**cli_env, "LOCALINFER_HOME": str(tmp_path / "home"), "USE_TORCH": "0"}
    done = run(env, "query", "tiny/bert-ner", "--data", '"My name is Sarah"')
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert "failed to import the export side" in error and "USE_TORCH=0 hides it" in error
