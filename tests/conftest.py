"""Shared fixtures: tiny models built once per session, engines on the ONNX and PyTorch routes."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import math  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from localinfer import LocalInference  # noqa: E402
from tests.fixtures.tiny_models import build_all, write_models_toml  # noqa: E402

SENTENCES = [
    "That is a happy person",
    "Today is a sunny day",
    "My name is Sarah and I live in London",
    "unknown words: zebra quokka",
    "",
]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    """One LOCALINFER_HOME for the session, so each tiny model is exported once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def engine(tiny, home, tmp_path_factory) -> LocalInference:
    toml = write_models_toml(tmp_path_factory.mktemp("onnx") / "models.toml", tiny)
    return LocalInference(toml, home)


@pytest.fixture(scope="session")
def torch_engine(tiny, home, tmp_path_factory) -> LocalInference:
    toml = write_models_toml(tmp_path_factory.mktemp("torch") / "models.toml", tiny, backend="torch")
    return LocalInference(toml, home)


def assert_close(actual, expected, tol: float = 1e-4, path: str = "$") -> None:
    """Recursive equality: strings, ints and keys equal, floats within `tol` (the oracle may give numpy floats)."""
    if hasattr(expected, "item") and not isinstance(expected, (list, dict)):
        expected = expected.item()
    assert not hasattr(actual, "dtype"), f"{path}: {actual!r} is a numpy value, not JSON"
    if isinstance(expected, float) or isinstance(actual, float):
        assert isinstance(actual, (int, float)) and isinstance(expected, (int, float)), f"{path}: {actual!r}"
        assert math.isclose(actual, expected, abs_tol=tol), f"{path}: {actual} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{path}: {actual!r} != {expected!r}"
        for key in expected:
            assert_close(actual[key], expected[key], tol, f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{path}: length differs"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, tol, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
