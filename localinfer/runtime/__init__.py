"""Loading a model for a task: find or make its ONNX export, open a session (or PyTorch), load its tokenizer."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import EXPORT_PACKAGES, export_extra_missing
from ..imports import TORCH_BUILD_LOCK
from ..registry import ModelSpec
from ..text import read_json
from .export import ExportKind, existing_onnx, export_dir, export_onnx
from .fingerprint import folder_fingerprint
from .quantize import quantize_export, read_record


class Runner(Protocol):
    """One forward pass: named numpy inputs in, named numpy outputs out (ONNX Runtime or PyTorch)."""

    backend: str
    compute_type: str
    input_names: list[str]
    output_names: list[str] | None  # None: known only when it runs (PyTorch)

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...


class PipelineModel(Protocol):
    """The PyTorch model, for a transformers pipeline (the PyTorch route of the generation tasks)."""

    backend: str
    compute_type: str
    model: Any


@dataclass
class LoadedModel:
    """What a task needs to run: the runner, the source folder and its config, and where files live."""

    spec: ModelSpec
    kind: ExportKind
    runner: Any  # a Runner; OnnxSessions when kind.sessions is set (a PipelineModel on the PyTorch route)
    config: dict[str, Any]
    files: Path  # the folder with the tokenizer/processor files the runner goes with
    load_seconds: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)  # per-task prepared state

    @property
    def folder(self) -> Path:
        return self.spec.path


def onnx_location(spec: ModelSpec, kind: ExportKind, home: Path, fingerprint: str) -> Path:
    """The folder of ONNX files that serves `spec`: one shipped with it, else its export under `home`.

    An int8 kind is served by a shipped folder only when that folder is int8 itself; a shipped fp32 folder is
    quantised into `home`."""
    shipped = existing_onnx(spec.path)
    if shipped is not None and (kind.precision == "fp32") == (read_record(shipped) is None):
        return shipped
    return export_dir(home, spec.model_id, fingerprint, kind)


def open_onnx(
    spec: ModelSpec, kind: ExportKind, folder: Path, config: dict[str, Any], threads: int | None = None
) -> LoadedModel:
    """The ONNX Runtime session(s) of the export in `folder`, with the files the tasks need."""
    from .onnx import OnnxRunner, OnnxSessions

    runner: Runner | OnnxSessions
    if kind.sessions:
        runner = OnnxSessions(folder, kind.sessions, threads=threads, precision=kind.precision)
    else:
        runner = OnnxRunner(folder / "model.onnx", threads=threads, precision=kind.precision, task=kind.task)
    files = folder if (folder / "tokenizer.json").is_file() else spec.path
    return LoadedModel(spec, kind, runner, config, files)


def load_model(
    spec: ModelSpec,
    kind: ExportKind,
    *,
    home: Path,
    fingerprint: str,
    threads: int | None = None,
    measure: Callable[[LoadedModel, LoadedModel], dict[str, Any]] | None = None,
) -> LoadedModel:
    """Load `spec` on its backend, exporting it to ONNX first when no export exists.

    An int8 kind quantises the fp32 export (made first if needed); `measure(fp32 model, int8 model)` then gives
    the drift recorded with the int8 folder."""
    started = time.perf_counter()
    config = read_json(spec.path / "config.json")
    if spec.backend == "torch":
        from .torch import TorchPipelineModel, TorchRunner

        try:
            with TORCH_BUILD_LOCK:
                runner: Runner = TorchPipelineModel(spec.path, kind) if kind.sessions else TorchRunner(spec.path, kind)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in EXPORT_PACKAGES:
                raise
            raise export_extra_missing(f"the PyTorch route of {spec.model_id}", exc) from None
        files = spec.path
    else:
        folder = onnx_location(spec, kind, home, fingerprint)
        if not folder.is_dir() and kind.precision != "fp32":
            fp32 = replace(kind, precision="fp32")
            fp32_folder = onnx_location(spec, fp32, home, fingerprint)
            if not fp32_folder.is_dir():
                export_onnx(spec.path, fp32, fp32_folder)

            def drift(staging: Path) -> dict[str, Any]:
                if measure is None:
                    return {}
                reference = open_onnx(spec, fp32, fp32_folder, config, threads)
                return measure(reference, open_onnx(spec, kind, staging, config, threads))

            quantize_export(fp32_folder, folder, kind.sessions or ("model.onnx",), measure=drift)
        elif not folder.is_dir():
            export_onnx(spec.path, kind, folder)
        model = open_onnx(spec, kind, folder, config, threads)
        model.load_seconds = time.perf_counter() - started
        return model
    return LoadedModel(spec, kind, runner, config, files, time.perf_counter() - started)


__all__ = ["ExportKind", "LoadedModel", "PipelineModel", "Runner", "folder_fingerprint", "load_model", "onnx_location"]
