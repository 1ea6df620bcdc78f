"""Shippable exports: a self-contained folder with a manifest the runtime reads instead of guessing.

`localinfer export MODEL --out DIR` writes the ONNX graph(s), the tokenizer / processor / config files of the
source (never its PyTorch weights) and `localinfer.json`: the task, how it was exported (its precision
included), a fingerprint of the source weights, the library versions and, for an int8 export, its drift from fp32
as measured when it was quantised. DIR then serves as a model id, or as a models.toml `path`, on a machine
with the runtime alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import BadRequestError, InferenceError
from .export import ExportKind
from .fingerprint import graph_versions
from .quantize import read_record

MANIFEST = "localinfer.json"
FORMAT = 1

# Source files that are weights or other exports: an exported folder runs on its ONNX graphs alone.
_WEIGHT_SUFFIXES = {
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".ot", ".gguf", ".onnx", ".onnx_data",
    ".tflite", ".mlmodel", ".npz",
}  # fmt: skip
_SKIPPED_FOLDERS = {"onnx", "openvino", "coreml", "tf", "flax"}


@dataclass(frozen=True)
class Manifest:
    """What the runtime needs to know about an exported folder."""

    task: str
    kind: ExportKind
    source: dict[str, str]  # model_id, fingerprint (of the source weights' folder)
    versions: dict[str, str]
    drift: dict[str, Any] | None = None  # int8: measured against fp32 when quantised (localinfer.drift)


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of an exported folder; None for a folder without one. A malformed one is an error."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, this localinfer reads format {FORMAT}")
        known = {f.name for f in fields(ExportKind)}  # a field of an older localinfer (ort_class) is ignored
        export = {k: tuple(v) if isinstance(v, list) else v for k, v in data["export"].items() if k in known}
        drift = data.get("drift")
        return Manifest(
            data["task"], ExportKind(**export), dict(data["source"]), dict(data["versions"]), drift and dict(drift)
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InferenceError(f"{path}: not a localinfer export manifest ({exc})") from None


def manifest_fingerprint(folder: Path) -> str | None:
    """An exported folder's identity without reading its weights: the manifest (the source weights' fingerprint,
    the export kind, the versions that shaped the graphs) and every file's name and size. Hashing a shipped
    folder's ONNX files instead would cost a new device's first answer ~0.13 s per 90 MB."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    digest = hashlib.sha256(path.read_bytes())
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(folder).as_posix()}\0{file.stat().st_size}\n".encode())
    return digest.hexdigest()


def check_task(manifest: Manifest, task: str, kind: ExportKind, folder: Path) -> None:
    """An exported folder answers its own task, or another whose export is the same (summarization, ...)."""
    if task != manifest.task and kind != manifest.kind:
        raise BadRequestError(f"{folder} is an export for {manifest.task}; it cannot answer {task}")


def _versions() -> dict[str, str]:
    versions = graph_versions()
    for name in ("localinfer", "onnxruntime"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


def _copy_source_files(source: Path, destination: Path) -> None:
    """Tokenizer, processor, config and sentence-transformers module files; no weights, no other exports."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if relative.parts[0] in _SKIPPED_FOLDERS or path.suffix.lower() in _WEIGHT_SUFFIXES:
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def write_export(
    source: Path, onnx_folder: Path, destination: Path, *, task: str, kind: ExportKind, model_id: str, fingerprint: str
) -> Path:
    """Assemble a shippable folder at `destination` (which must not exist yet), atomically."""
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise BadRequestError(f"--out {destination}: exists and is not an empty folder")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.partial"
    try:
        staging.mkdir()
        _copy_source_files(source, staging)
        for path in sorted(onnx_folder.rglob("*")):  # the export's own files win over the source's
            if path.is_file():
                target = staging / path.relative_to(onnx_folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        manifest = {
            "format": FORMAT,
            "task": task,
            "export": asdict(kind),
            "source": {"model_id": model_id, "fingerprint": fingerprint},
            "versions": _versions(),
        }
        record = read_record(onnx_folder)
        if record is not None:
            manifest["drift"] = record.get("drift")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if destination.is_dir():
            destination.rmdir()  # empty, checked above
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination
