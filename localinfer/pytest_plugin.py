"""pytest plugin (entry point `localinfer`): the `localinfer_api` fixture answers the hosted Inference API in-process.

    def test_sentiment(localinfer_api):
        assert my_app.sentiment("I love it") == "POSITIVE"      # my_app calls requests.post(api-inference...)
        assert localinfer_api.calls[0].model == "distilbert/distilbert-base-uncased-finetuned-sst-2-english"

The models file is, first found: the test's `@pytest.mark.localinfer_models("path/models.toml")`, the ini option
`localinfer_models` (relative to the rootdir), the environment variable LOCALINFER_MODELS, else the default of
`LocalInference` (./models.toml, then the packaged one). Each test gets a fresh engine with its own result cache;
the ONNX exports live in one folder for the whole run, shared by pytest-xdist's workers (the ini option
`localinfer_home` or LOCALINFER_HOME, else a folder under pytest's base temporary directory), so each model is
exported once. HF_HUB_OFFLINE stays as it is: see `localinfer.testing` for why InferenceClient works anyway.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .engine import LocalInference
from .testing import Interceptor, intercept


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("localinfer_models", "models.toml the localinfer_api fixture serves (relative to the rootdir)")
    parser.addini("localinfer_home", "folder of the ONNX exports shared by every test (relative to the rootdir)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "localinfer_models(path): the models.toml the localinfer_api fixture serves")


@pytest.fixture(scope="session")
def localinfer_home(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the ONNX exports of the run live, shared by every test and every xdist worker."""
    configured = request.config.getini("localinfer_home") or os.environ.get("LOCALINFER_HOME")
    if configured:
        return (request.config.rootpath / Path(configured).expanduser()).resolve()
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's base is a child of the run's
        base = base.parent
    return base / "localinfer-home"


def _models_file(request: pytest.FixtureRequest) -> Path | None:
    marker = request.node.get_closest_marker("localinfer_models")
    if marker is not None:
        return Path(marker.args[0])
    configured = request.config.getini("localinfer_models")
    if configured:
        return request.config.rootpath / configured
    return Path(os.environ["LOCALINFER_MODELS"]) if os.environ.get("LOCALINFER_MODELS") else None


@pytest.fixture
def localinfer_api(request: pytest.FixtureRequest, localinfer_home: Path, tmp_path: Path) -> Iterator[Interceptor]:
    """The hosted Inference API answered in-process for this test; `.calls` lists what was asked (model, task,
    payload, status), `.engine` is the engine."""
    home = tmp_path / "localinfer-home"  # this test's result cache and load times; the shared exports
    home.mkdir()
    (localinfer_home / "exports").mkdir(parents=True, exist_ok=True)
    (home / "exports").symlink_to(localinfer_home / "exports", target_is_directory=True)
    memo = localinfer_home / "fingerprints.json"
    if memo.is_file():  # weights already hashed in this run are not read again
        shutil.copyfile(memo, home / "fingerprints.json")
    engine = LocalInference(_models_file(request), home)
    try:
        with intercept(engine) as api:
            yield api
    finally:
        engine.close()
        if (home / "fingerprints.json").is_file() and not memo.is_file():
            tmp = memo.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(home / "fingerprints.json", tmp)
            os.replace(tmp, memo)
