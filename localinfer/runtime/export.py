"""Export to ONNX once per weights and graph-shaping versions, atomically."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .fingerprint import graph_versions

log = logging.getLogger("localinfer")


@dataclass(frozen=True)
class ExportKind:
    """How a model is exported for a task: optimum's task name and library, or a custom exporter.

    `exporter` names an entry of CUSTOM_EXPORTERS for architectures optimum cannot export.
    `ort_class` names the optimum ONNX Runtime model class that runs the export inside a transformers
    pipeline (generation, audio, vision); without it, one ONNX Runtime session runs `model.onnx`.
    `sessions` names the ONNX files a generation task runs step by step (localinfer.decoding): each is opened
    once, in one ONNX Runtime session; on the PyTorch route such a kind loads the model for a pipeline.
    """

    task: str
    library: str = "transformers"
    exporter: str = "optimum"
    ort_class: str | None = None
    sessions: tuple[str, ...] = ()


# name -> "module:function(model folder, output folder)": exporters for models optimum cannot export.
CUSTOM_EXPORTERS: dict[str, str] = {"tapas": "localinfer.runtime.tapas:export_tapas"}


def existing_onnx(folder: Path) -> Path | None:
    """A folder of ONNX files shipped with the model: itself, or `onnx/` as sentence-transformers saves it."""
    for candidate in (folder, folder / "onnx"):
        if candidate.is_dir() and any(candidate.glob("*.onnx")):
            return candidate
    return None


def export_dir(home: Path, model_id: str, fingerprint: str, kind: ExportKind) -> Path:
    """Where the export of these weights, for this kind, by these library versions, lives."""
    key = json.dumps([fingerprint, kind.task, kind.library, kind.exporter, graph_versions()], sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "--", model_id).strip("-.")[-60:] or "model"
    return home / "exports" / f"{slug}--{kind.task}--{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def export_onnx(folder: Path, kind: ExportKind, destination: Path) -> Path:
    """Export `folder` into `destination` unless it exists; returns `destination`.

    The export is written to a temporary folder beside it and renamed into place when complete,
    so a crash, or two processes exporting at once, never leave a partial model at `destination`:
    an existing `destination` is always a complete export.
    """
    if destination.is_dir():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.partial"
    log.info("exporting %s to ONNX (%s), first use only ...", folder, kind.task)
    started = time.perf_counter()
    try:
        if kind.exporter == "optimum":
            from optimum.exporters.onnx import main_export

            main_export(
                str(folder),
                str(staging),
                task=kind.task,
                library_name=kind.library,
                local_files_only=True,
                do_validation=False,
            )
        else:
            module, function = CUSTOM_EXPORTERS[kind.exporter].split(":")
            getattr(importlib.import_module(module), function)(folder, staging)
        try:
            staging.rename(destination)
        except OSError:  # another process finished first: its export is as good as ours
            if not destination.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported in %.1f s to %s", time.perf_counter() - started, destination)
    return destination
