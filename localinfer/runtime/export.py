"""Export to ONNX once per weights and graph-shaping versions, atomically."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import EXPORT_PACKAGES, MissingExtraError, export_extra_missing
from ..imports import TORCH_BUILD_LOCK, transformers_ready
from .fingerprint import graph_versions
from .fuse import FUSION_VERSION, fuse_decoder_export

log = logging.getLogger("localinfer")


@dataclass(frozen=True)
class ExportKind:
    """How a model is exported for a task: optimum's task name and library, or a custom exporter.

    `exporter` names an entry of CUSTOM_EXPORTERS for architectures optimum cannot export.
    `sessions` names the ONNX files a generation task runs step by step (localinfer.decoding): each is opened
    once, in one ONNX Runtime session; on the PyTorch route such a kind loads the model for a pipeline. Without
    it, one ONNX Runtime session runs `model.onnx`.
    `precision` "int8": the fp32 export quantised (runtime/quantize.py), in a folder of its own.
    """

    task: str
    library: str = "transformers"
    exporter: str = "optimum"
    sessions: tuple[str, ...] = ()
    precision: str = "fp32"


# optimum's tasks whose graph runtime/fuse.py rewrites after the export (its version is in their folders' key)
FUSED_TASKS = frozenset({"text-generation-with-past"})

# name -> "module:function(model folder, output folder)": exporters for models optimum cannot export.
CUSTOM_EXPORTERS: dict[str, str] = {"tapas": "localinfer.runtime.tapas:export_tapas"}


def existing_onnx(folder: Path) -> Path | None:
    """A folder of ONNX files shipped with the model: itself, or `onnx/` as sentence-transformers saves it."""
    for candidate in (folder, folder / "onnx"):
        if candidate.is_dir() and any(candidate.glob("*.onnx")):
            return candidate
    return None


def export_dir(home: Path, model_id: str, fingerprint: str, kind: ExportKind) -> Path:
    """Where the export of these weights, for this kind, by these library versions, lives.

    An int8 export's key adds its precision and what shapes the quantised graph (the recipe, ONNX Runtime's
    version): it never shares a folder with the fp32 one, whose key stays as it was before int8 existed."""
    parts: list = [fingerprint, kind.task, kind.library, kind.exporter, graph_versions()]
    if kind.task in FUSED_TASKS:
        parts.append(FUSION_VERSION)
    task = kind.task
    if kind.precision != "fp32":
        from .quantize import quantization_key

        parts += [kind.precision, quantization_key()]
        task = f"{kind.task}--{kind.precision}"
    key = json.dumps(parts, sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "--", model_id).strip("-.")[-60:] or "model"
    return home / "exports" / f"{slug}--{task}--{hashlib.sha256(key.encode()).hexdigest()[:16]}"


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
        with TORCH_BUILD_LOCK, _quiet():  # _quiet's switches are process-wide too
            _export(folder, kind, staging)
        try:
            staging.rename(destination)
        except OSError:  # another process finished first: its export is as good as ours
            if not destination.is_dir():
                raise
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in EXPORT_PACKAGES:
            raise
        raise export_extra_missing(f"exporting {folder} to ONNX", exc) from None
    except ImportError as exc:  # installed but not importable: e.g. transformers told to hide torch
        first = (str(exc).splitlines() or [""])[0]
        raise MissingExtraError(
            f"exporting {folder} to ONNX failed to import the export side ({first}); it needs torch visible to "
            "transformers (USE_TORCH=0 hides it: set it only in processes that serve exported folders)"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported in %.1f s to %s", time.perf_counter() - started, destination)
    return destination


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' tracer warnings and library chatter silenced: an export prints our two lines only."""
    # transformers and optimum configure their root loggers on first use, which would undo the levels set below.
    for module in ("transformers.utils.logging", "optimum.utils.logging"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module).get_logger()
    loggers = [logging.getLogger(name) for name in ("transformers", "optimum", "torch", "sentence_transformers")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export(folder: Path, kind: ExportKind, staging: Path) -> None:
    if kind.exporter == "optimum":
        transformers_ready()
        from optimum.exporters.onnx import main_export

        main_export(
            str(folder),
            str(staging),
            task=kind.task,
            library_name=kind.library,
            local_files_only=True,
            do_validation=False,
        )
        if kind.task in FUSED_TASKS:
            fuse_decoder_export(staging)
    else:
        module, function = CUSTOM_EXPORTERS[kind.exporter].split(":")
        getattr(importlib.import_module(module), function)(folder, staging)
