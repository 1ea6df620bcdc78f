"""Model ids -> model specs: models.toml entries, local folders and the local Hugging Face cache."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import BadRequestError, InferenceError, ModelNotFoundError
from .payload import format_validation_error

Backend = Literal["onnx", "torch"]
# fp32: the export as optimum writes it. int8: that export quantised by ONNX Runtime (runtime/quantize.py), with its
# drift from fp32 measured when it is made (drift.py).
Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "int8")


class RegistryError(InferenceError):
    """models.toml is malformed or names something that does not exist (a configuration error)."""

    status = 500


@dataclass(frozen=True)
class ModelSpec:
    """Where a model lives and how to serve it."""

    model_id: str
    path: Path
    task: str | None = None
    backend: Backend = "onnx"
    origin: str = "folder"  # "<models.toml path> [models.<id>]", "folder" or "hf-cache"
    precision: Precision | None = None  # None: not set for this model (the engine's default, else fp32)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = ""
    package: str | None = None  # `path` is then relative to this installed package's folder
    task: str | None = None
    backend: Backend = "onnx"
    precision: Precision | None = None


class Registry:
    """Resolves model ids. `allow_paths=False` refuses local folders given as ids (for servers).

    `base` (the models.toml the package ships, with the embedded default) is read first and `toml_path` over it:
    a user's file adds ids and may override one, but never makes the embedded default vanish.
    """

    def __init__(self, toml_path: Path | None = None, *, allow_paths: bool = True, base: Path | None = None) -> None:
        self.toml_path = toml_path
        self.allow_paths = allow_paths
        self.entries: dict[str, tuple[_Entry, str, Path]] = {}
        self._resolved: dict[str, ModelSpec] = {}  # successes only: a folder that appears later is found
        for path in dict.fromkeys(p for p in (base, toml_path) if p is not None):
            self._load(path)

    def _load(self, toml_path: Path) -> None:
        try:
            data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RegistryError(f"{toml_path}: cannot read models file: {exc}") from None
        unknown = set(data) - {"models"}
        if unknown:
            raise RegistryError(f'{toml_path}: unknown table(s) {sorted(unknown)}; expected [models."<id>"]')
        for model_id, raw in (data.get("models") or {}).items():
            where = f'{toml_path} [models."{model_id}"]'
            try:
                entry = _Entry.model_validate(raw)
            except ValidationError as exc:
                raise RegistryError(f"{where}: {format_validation_error(exc, '')}") from None
            if entry.task is not None:
                check_task_name(entry.task, where)
            self.entries[model_id] = (entry, where, toml_path.parent)

    def ids(self) -> list[str]:
        return list(self.entries)

    def resolve(self, model_id: str) -> ModelSpec:
        """The spec of `model_id`: a models.toml entry, a local folder, or the local HF cache."""
        spec = self._resolved.get(model_id)
        if spec is None:
            spec = self._resolved[model_id] = self._resolve(model_id)
        return spec

    def _resolve(self, model_id: str) -> ModelSpec:
        if model_id in self.entries:
            entry, where, folder = self.entries[model_id]
            path = self._entry_folder(entry, where, folder)
            return ModelSpec(model_id, path, entry.task, entry.backend, where, entry.precision)
        looked = [f"models file {self.toml_path}" if self.toml_path else "no models file"]
        if self.allow_paths:
            folder = Path(model_id).expanduser()
            if folder.is_dir():
                return ModelSpec(model_id, folder.resolve(), origin="folder")
            looked.append("no local folder of that name")
        snapshot = _hf_cache_snapshot(model_id)
        if snapshot is not None:
            return ModelSpec(model_id, snapshot, origin="hf-cache")
        looked.append("not in the local Hugging Face cache")
        raise ModelNotFoundError(f"Model {model_id} not found ({'; '.join(looked)})")

    def _entry_folder(self, entry: _Entry, where: str, toml_folder: Path) -> Path:
        if entry.package:
            spec = importlib.util.find_spec(entry.package)
            if spec is None or not spec.submodule_search_locations:
                raise ModelNotFoundError(
                    f"{where}: package {entry.package!r} is not installed (it comes with 'localinfer[export]'; "
                    "on a runtime-only install, use a folder written by `localinfer export MODEL --out DIR`)"
                )
            base = Path(next(iter(spec.submodule_search_locations)))
        else:
            base = toml_folder
        folder = (base / Path(entry.path).expanduser()).resolve()
        if not folder.is_dir():
            raise ModelNotFoundError(f"{where}: folder {folder} does not exist")
        return folder


def _hf_cache_snapshot(model_id: str) -> Path | None:
    """The model's snapshot in the local Hugging Face cache, never reaching the network."""
    if model_id.startswith(("/", ".", "~")) or ".." in model_id.split("/"):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError, OSError, ValueError):
        return None


# The tasks of the contract. A task's handler may not exist yet; `tasks.get_task` says so.
KNOWN_TASKS = (
    "audio-classification",
    "automatic-speech-recognition",
    "conversational",
    "feature-extraction",
    "fill-mask",
    "image-classification",
    "image-segmentation",
    "object-detection",
    "question-answering",
    "sentence-similarity",
    "summarization",
    "table-question-answering",
    "text-classification",
    "text-generation",
    "text2text-generation",
    "token-classification",
    "translation",
    "zero-shot-classification",
)


def check_precision(precision: str, where: str = "precision") -> Precision:
    """`precision` if it is one localinfer runs; a 400 naming the known ones otherwise."""
    if precision not in PRECISIONS:
        raise BadRequestError(f"{where}: unknown precision {precision!r}; known precisions: {', '.join(PRECISIONS)}")
    return precision  # type: ignore[return-value]


def check_task_name(task: str, where: str = "task") -> None:
    if task not in KNOWN_TASKS:
        raise BadRequestError(f"{where}: unknown task {task!r}; known tasks: {', '.join(KNOWN_TASKS)}")


# config.json architecture suffix -> task, most specific first.
_ARCHITECTURE_TASKS = (
    ("ForTableQuestionAnswering", "table-question-answering"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForCTC", "automatic-speech-recognition"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("WhisperForConditionalGeneration", "automatic-speech-recognition"),
    ("MarianMTModel", "translation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForAudioClassification", "audio-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"),
    ("Segmentation", "image-segmentation"),
    ("Model", "feature-extraction"),
)


def infer_task(folder: Path) -> str:
    """A folder's task: sentence-transformers modules, else README `pipeline_tag`, else architecture."""
    if (folder / "modules.json").is_file():
        return "sentence-similarity"
    readme = folder / "README.md"
    if readme.is_file():
        front = readme.read_text(encoding="utf-8", errors="replace").split("\n---", 1)[0]
        match = re.search(r"^pipeline_tag:\s*['\"]?([\w-]+)", front, re.MULTILINE)
        if match and match.group(1) in KNOWN_TASKS:
            return match.group(1)
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        architectures = []
    for suffix, task in _ARCHITECTURE_TASKS:
        if any(arch.endswith(suffix) for arch in architectures):
            return task
    raise BadRequestError(
        f"cannot infer the task of {folder}: no modules.json, README pipeline_tag or known architecture; "
        "give task= or set task in models.toml"
    )
