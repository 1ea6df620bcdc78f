"""The runtime without PyTorch: exported folders answer every task with the runtime alone.

The README's set-up command makes `.venv-runtime`, a virtual environment with the runtime-only install
(`pip install -e .`, no extras). Here the full install exports every fixture model with
`localinfer export --out`, then a child interpreter answers every case of tests/fixtures/runtime_cases.py from
those folders: in the runtime-only environment (where `import torch` fails) and in the full one (where torch is
installed but the runtime path must not import it). Both answer exactly what the full install answers from the
source folders, which the task tests compare with the transformers pipelines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localinfer.runtime.manifest import MANIFEST, read_manifest
from tests.conftest import assert_close
from tests.fixtures import runtime_cases
from tests.fixtures.tiny_models import TASKS

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_PYTHON = Path(os.environ.get("LOCALINFER_RUNTIME_PYTHON", ROOT / ".venv-runtime" / "bin" / "python"))


@pytest.fixture(scope="module")
def shipped(engine, tmp_path_factory) -> dict[str, Path]:
    """Every runtime case's model written as a shippable folder by the full install."""
    out = tmp_path_factory.mktemp("shipped")
    return {name: engine.export_to(f"tiny/{name}", out / name) for name in runtime_cases.CASES}


@pytest.fixture(scope="module")
def expected(engine) -> list:
    """The full install's answers from the source folders."""
    answers = []
    for name, payloads in runtime_cases.CASES.items():
        for payload in payloads:
            answers.append(engine.query(f"tiny/{name}", runtime_cases._materialise(payload)))
    return answers


def _every_case(shipped: dict[str, Path]) -> list[dict]:
    return [
        {"folder": str(shipped[name]), "payload": payload}
        for name, payloads in runtime_cases.CASES.items()
        for payload in payloads
    ]


def answer_in_child(python: Path, cases: list[dict], tmp_path: Path, **extra_env: str) -> dict:
    """tests/fixtures/runtime_cases.py's answers to `cases` (`{"folder", "payload"}`) from interpreter `python`."""
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "LOCALINFER_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), **extra_env}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)  # localinfer sets them itself
    done = subprocess.run(
        [str(python), runtime_cases.__file__, str(tmp_path / "cases.json"), str(tmp_path / "out.json")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())


def test_every_task_has_cases():
    """Every fixture model but gpt2-long."""
    assert set(runtime_cases.CASES) == set(TASKS) - {"gpt2-long"}


def test_shipped_folders_are_identified_by_their_manifest(shipped):
    """A shipped folder's fingerprint (the result cache's key) comes from its manifest and file sizes, without
    hashing its weights: distinct per model, stable, and changed when the manifest changes."""
    from localinfer.runtime.manifest import manifest_fingerprint

    prints = {name: manifest_fingerprint(folder) for name, folder in shipped.items()}
    assert None not in prints.values() and len(set(prints.values())) == len(prints)
    folder = shipped["bert-base"]
    assert manifest_fingerprint(folder) == prints["bert-base"]
    manifest = (folder / MANIFEST).read_text()
    try:
        (folder / MANIFEST).write_text(manifest.replace('"fingerprint": "', '"fingerprint": "0'))
        assert manifest_fingerprint(folder) != prints["bert-base"]
    finally:
        (folder / MANIFEST).write_text(manifest)


def test_shipped_folder_has_a_manifest_and_no_pytorch_weights(shipped, tiny):
    for name, folder in shipped.items():
        manifest = read_manifest(folder)
        assert manifest is not None and (folder / MANIFEST).is_file()
        assert manifest.task == TASKS[name]
        assert manifest.source["model_id"] == f"tiny/{name}"
        assert any(folder.glob("*.onnx")), name
        assert not [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")], name
        assert (folder / "config.json").is_file()


def test_runtime_only_install_answers_as_the_full_one(shipped, expected, tmp_path):
    if not RUNTIME_PYTHON.is_file():
        pytest.fail(f"{RUNTIME_PYTHON} is missing: run the README's set-up command (it makes .venv-runtime)")
    probe = subprocess.run([str(RUNTIME_PYTHON), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    for missing in ("optimum", "onnx", "sentence_transformers", "pandas"):
        probe = subprocess.run([str(RUNTIME_PYTHON), "-c", f"import {missing}"], capture_output=True)
        assert probe.returncode != 0, f"{missing} is installed in the runtime-only environment"
    # The installed dependency chain, not only the direct requirements: no export-side distribution at all.
    names = "import json, importlib.metadata as m; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
    listed = subprocess.run([str(RUNTIME_PYTHON), "-c", names], capture_output=True, text=True, check=True)
    installed = {name.lower().replace("_", "-") for name in json.loads(listed.stdout)}
    assert not installed & {"torch", "optimum", "optimum-onnx", "onnx", "sentence-transformers"}, installed
    result = answer_in_child(RUNTIME_PYTHON, _every_case(shipped), tmp_path)
    _check_answers(result["answers"], expected, tapas_needs_pandas=True)
    assert result["modules"] == []


def test_full_install_runtime_path_imports_no_export_side(shipped, expected, tmp_path):
    """localinfer's own code on the runtime path imports no export-side package, even where they are installed.
    transformers itself imports torch whenever torch is installed (its image and feature processors do), so the
    child tells it not to (USE_TORCH=0), as it would find no torch on a runtime-only install."""
    result = answer_in_child(Path(sys.executable), _every_case(shipped), tmp_path, USE_TORCH="0")
    _check_answers(result["answers"], expected, tapas_needs_pandas=False)
    assert result["modules"] == [], f"the runtime path imported {result['modules']}"


def _check_answers(answers: list, expected: list, *, tapas_needs_pandas: bool) -> None:
    names = [name for name, payloads in runtime_cases.CASES.items() for _ in payloads]
    assert len(answers) == len(expected)
    for name, answer, want in zip(names, answers, expected, strict=True):
        if name in ("tapas", "tapex") and tapas_needs_pandas:
            assert answer == {"error": answer.get("error")} and "localinfer[tapas]" in answer["error"], answer
            continue
        assert "error" not in answer or "error" in want, (name, answer)
        assert_close(answer, want)


def test_runtime_only_install_asked_to_export_names_the_extra(tiny, tmp_path):
    code = (
        "import json, sys, localinfer\n"
        "try:\n"
        "    localinfer.query(sys.argv[1], 'I love you')\n"
        "except localinfer.MissingExtraError as exc:\n"
        "    print(json.dumps([exc.status, exc.message]))\n"
    )
    env = {**os.environ, "LOCALINFER_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(RUNTIME_PYTHON), "-c", code, str(tiny["distilbert-sentiment"])],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    status, message = json.loads(done.stdout)
    assert status == 500 and "install 'localinfer[export]'" in message and "--out DIR" in message
