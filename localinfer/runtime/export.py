"""Export to ONNX with optimum, once per weights and graph-shaping versions, atomically."""

from __future__ import annotations

import hashlib
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
    """How optimum must export a model for a task: its task name and library."""

    task: str
    library: str = "transformers"


def existing_onnx(folder: Path) -> Path | None:
    """An ONNX model already in the folder (`model.onnx`, or `onnx/model.onnx` as sentence-transformers saves)."""
    for candidate in (folder / "model.onnx", folder / "onnx" / "model.onnx"):
        if candidate.is_file():
            return candidate
    return None


def export_dir(home: Path, model_id: str, fingerprint: str, kind: ExportKind) -> Path:
    """Where the export of these weights, for this kind, by these library versions, lives."""
    key = json.dumps([fingerprint, kind.task, kind.library, graph_versions()], sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "--", model_id).strip("-.")[-60:] or "model"
    return home / "exports" / f"{slug}--{kind.task}--{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def export_onnx(folder: Path, kind: ExportKind, destination: Path) -> Path:
    """Export `folder` into `destination` unless it exists; returns `destination`.

    The export is written to a temporary folder beside it and renamed into place when complete,
    so a crash, or two processes exporting at once, never leave a partial model at `destination`.
    """
    if (destination / "model.onnx").is_file():
        return destination
    from optimum.exporters.onnx import main_export

    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.partial"
    log.info("exporting %s to ONNX (%s), first use only ...", folder, kind.task)
    started = time.perf_counter()
    try:
        main_export(
            str(folder),
            str(staging),
            task=kind.task,
            library_name=kind.library,
            local_files_only=True,
            do_validation=False,
        )
        try:
            staging.rename(destination)
        except OSError:  # another process finished first: its export is as good as ours
            if not (destination / "model.onnx").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported in %.1f s to %s", time.perf_counter() - started, destination)
    return destination
