"""LocalInference: resolves a model, consults the result cache, loads the model, dispatches to its task."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from .batching import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_WAIT_MS, Batcher
from .cache import ResultCache, cache_key
from .errors import BadRequestError, InferenceError, ModelFailureError, ModelLoadingError
from .limits import Limits, applied, check_structure
from .media import check_bounds
from .payload import Options, parse_payload
from .registry import ModelSpec, Registry, check_precision, check_task_name, infer_task
from .runtime import ExportKind, LoadedModel, folder_fingerprint, load_model, onnx_location
from .runtime.manifest import check_task, manifest_fingerprint, read_manifest, write_export
from .runtime.quantize import read_record
from .tasks import Task, get_task

log = logging.getLogger("localinfer")

PACKAGED_MODELS = Path(__file__).with_name("models.toml")
# Load-time estimates for a model never loaded here: reading weights, and exporting them first.
_LOAD_BYTES_PER_S = 200e6
_EXPORT_BYTES_PER_S = 20e6
_EXPORT_FIXED_S = 8.0


def default_models_file() -> Path:
    """$LOCALINFER_MODELS, else ./models.toml if present, else the models.toml the package ships."""
    if os.environ.get("LOCALINFER_MODELS"):
        return Path(os.environ["LOCALINFER_MODELS"]).expanduser()
    local = Path.cwd() / "models.toml"
    return local if local.is_file() else PACKAGED_MODELS


def default_home() -> Path:
    """$LOCALINFER_HOME, else localinfer/ in the user's cache folder."""
    if os.environ.get("LOCALINFER_HOME"):
        return Path(os.environ["LOCALINFER_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "localinfer"


@dataclass
class Answer:
    """A result with what the HTTP adapter reports about it."""

    result: Any
    task: str
    cached: bool
    compute_type: str
    seconds: float
    media: str | None = None  # "audio" or "image" for media tasks
    characters: int = 0  # characters of text in the inputs
    audio_seconds: float = 0.0


class LocalInference:
    """The engine behind `localinfer.query`: a registry, a result cache and the loaded models.

    `emulate_loading=True` answers 503 with `estimated_time` while a model loads in the
    background, as the hosted API did, unless the request sets `wait_for_model`; by default a
    query waits for the load. `allow_paths=False` refuses local folders given as model ids.
    Concurrent queries of one model, task and parameters run as one batch of at most `max_batch_size` requests
    (0 or 1: each alone), waiting at most `max_batch_wait_ms` for one another (localinfer/batching.py).
    `precision="int8"` runs every ONNX model whose models.toml entry sets no precision quantised to int8 (its
    drift from fp32 measured and recorded when it is quantised); fp32 by default.
    """

    def __init__(
        self,
        models_file: Path | str | None = None,
        home: Path | str | None = None,
        *,
        cache_size_limit: int = 1 << 30,
        emulate_loading: bool = False,
        threads: int | None = None,
        allow_paths: bool = True,
        limits: Limits | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_batch_wait_ms: float = DEFAULT_MAX_BATCH_WAIT_MS,
        precision: str | None = None,
    ) -> None:
        self.models_file = Path(models_file) if models_file else default_models_file()
        self.home = Path(home) if home else default_home()
        self.registry = Registry(self.models_file, allow_paths=allow_paths, base=PACKAGED_MODELS)
        self.cache = ResultCache(self.home / "results", size_limit=cache_size_limit)
        self.emulate_loading = emulate_loading
        self.threads = threads
        self.limits = limits or Limits()
        self.batcher = Batcher(max_batch_size, max_batch_wait_ms / 1e3)
        self.precision = check_precision(precision) if precision is not None else None
        self._lock = threading.Lock()
        self._loads: dict[tuple, tuple[Future[LoadedModel], float, float]] = {}
        self._fingerprints: dict[Path, str] = {}
        self._resolved: dict[tuple[str, str | None, str | None], tuple[ModelSpec, Task, ExportKind]] = {}
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="localinfer-load")

    # -- the entry points ------------------------------------------------------------------------

    def query(self, model_id: str, payload: Any, *, task: str | None = None) -> Any:
        """The contract's JSON answer to `payload` from `model_id`; raises InferenceError."""
        return self.answer(model_id, payload, task=task).result

    def answer(
        self, model_id: str, payload: Any, *, task: str | None = None, options: dict[str, bool] | None = None
    ) -> Answer:
        """As `query`, with whether the cache answered and what computed it.

        `options` override the payload's (the HTTP adapter takes them from headers).
        """
        with applied(self.limits):
            return self._answer(model_id, payload, task, options)

    def _answer(self, model_id: str, payload: Any, task: str | None, options: dict[str, bool] | None) -> Answer:
        started = time.perf_counter()
        spec, handler, kind = self._resolve(model_id, task)
        request = parse_payload(payload, media=handler.media is not None)
        check_structure(request.inputs, "inputs", self.limits)
        check_structure(request.parameters, "parameters", self.limits)
        if options:
            request.options = Options.model_validate({**request.options.model_dump(), **options})
        inputs, parameters = handler.validate(request.inputs, request.parameters)
        declared_seconds = check_bounds(handler.media, inputs) if handler.media else 0.0
        key = cache_key(
            model=spec.model_id,
            weights=self.fingerprint(spec),
            task=handler.name,
            backend=spec.backend,
            precision=kind.precision,
            inputs=request.inputs,
            parameters=parameters.model_dump(mode="json", exclude_unset=True),
        )
        if request.options.use_cache:
            hit = self.cache.get(key)
            if hit is not None:
                answer = Answer(hit, handler.name, True, self._compute_type(spec, kind), time.perf_counter() - started)
                return self._usage(answer, handler, request.inputs, declared_seconds)
        model = self._loaded(spec, handler, kind, wait=request.options.wait_for_model)
        try:
            result = self._run(spec, kind, handler, model, inputs, parameters)
        except InferenceError:
            raise
        except Exception as exc:
            log.exception("model %s failed on task %s", model_id, handler.name)
            raise ModelFailureError(one_line(exc)) from exc
        self.cache.set(key, result)
        answer = Answer(result, handler.name, False, model.runner.compute_type, time.perf_counter() - started)
        return self._usage(answer, handler, request.inputs, declared_seconds)

    def _run(
        self, spec: ModelSpec, kind: ExportKind, handler: Task, model: LoadedModel, inputs: Any, parameters: Any
    ) -> Any:
        """The task's answer, batched with concurrent requests of the same model, task and parameters."""
        if not (handler.batches and self.batcher.enabled):
            return handler.run(model, inputs, parameters)
        same = orjson.dumps(parameters.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        key = (spec.model_id, spec.path, spec.backend, kind, handler.name, same)
        return self.batcher.submit(key, inputs, lambda many: handler.run_many(model, many, parameters))

    def queue_depth(self, model_id: str) -> int:
        """Requests of `model_id` waiting for a batch (behind the one that runs)."""
        return self.batcher.queue_depth(lambda key: key[0] == model_id)

    def stream(self, model_id: str, payload: Any, *, task: str | None = None) -> Iterator[str]:
        """The new text of a text-generation answer, piece by piece as it is decoded (never from the cache):
        the pieces joined equal the answer's new text. One prompt, num_beams 1, one sequence."""
        handler, model, inputs, parameters = self.prepare_stream(model_id, payload, task=task, wait=True)
        return handler.stream(model, inputs, parameters)

    def prepare_stream(
        self,
        model_id: str,
        payload: Any,
        *,
        task: str | None = None,
        options: dict[str, bool] | None = None,
        wait: bool | None = None,
    ) -> tuple[Any, LoadedModel, str, Any]:
        """A streamed text-generation request checked (bounds, inputs, parameters) and its model loaded: the
        handler, the model, the prompt and the parameters. `options` (from headers) override the payload's; the
        load is waited for when `wait`, else as the request's `wait_for_model` says (a 503 on an engine that
        emulates loading)."""
        spec, handler, kind = self._resolve(model_id, task)
        if getattr(handler, "stream", None) is None:
            raise BadRequestError(f"streaming answers text-generation, not {handler.name}")
        with applied(self.limits):
            request = parse_payload(payload, media=False)
            check_structure(request.inputs, "inputs", self.limits)
            check_structure(request.parameters, "parameters", self.limits)
            inputs, parameters = handler.validate(request.inputs, request.parameters)
        if not isinstance(inputs, str):
            raise BadRequestError("inputs: streaming answers one prompt (a string)")
        if wait is None:
            wait = (options or {}).get("wait_for_model", request.options.wait_for_model)
        model = self._loaded(spec, handler, kind, wait=wait)
        if model.runner.backend != "onnx":
            raise BadRequestError("streaming runs on ONNX Runtime, not on the PyTorch route")
        return handler, model, inputs, parameters

    @staticmethod
    def _usage(answer: Answer, handler: Task, inputs: Any, declared_seconds: float) -> Answer:
        """What the work was: characters of text, seconds of audio (as its header declares them), or an image (the
        hosted API's headers)."""
        if handler.media:
            answer.media = handler.media
            if answer.media == "audio":
                answer.audio_seconds = declared_seconds
        else:
            answer.characters = _characters(inputs)
        return answer

    def compute_type(self, model_id: str, *, task: str | None = None) -> str:
        """What computes `model_id`'s answers (the `x-compute-type` header): `cpu+optimized`, `cpu+int8`, `cpu`..."""
        spec, _, kind = self._resolve(model_id, task)
        return self._compute_type(spec, kind)

    def _compute_type(self, spec: ModelSpec, kind: ExportKind) -> str:
        """What computes this model's answers: the loaded runner's type, else what its backend would be."""
        with self._lock:
            entry = self._loads.get((spec.model_id, spec.path, spec.backend, kind))
        if entry is not None and entry[0].done() and entry[0].exception() is None:
            return entry[0].result().runner.compute_type
        if spec.backend != "onnx":
            return "cpu"
        return "cpu+optimized" if kind.precision == "fp32" else f"cpu+{kind.precision}"

    def start_loading(self, model_id: str, *, task: str | None = None) -> None:
        """Begin loading a model in the background (a server's preload); returns at once."""
        spec, handler, kind = self._resolve(model_id, task)
        with self._lock:
            if (spec.model_id, spec.path, spec.backend, kind) in self._loads:
                return
        try:
            self._loaded(spec, handler, kind, wait=False, emulate=True)
        except ModelLoadingError:
            pass

    def preload(self, model_id: str, *, task: str | None = None, wait: bool = True) -> LoadedModel:
        """Load (and export, if needed) a model now, waiting for it; with `wait=False` on an engine that emulates
        loading, a model still loading is a 503 with `estimated_time`, as a query without `wait_for_model`."""
        return self._loaded(*self._resolve(model_id, task), wait=wait)

    def export(self, model_id: str, *, task: str | None = None, precision: str | None = None) -> Path:
        """Export a model to ONNX ahead of time (int8: quantised, its drift measured); returns the folder of its
        ONNX files. `precision` overrides the model's and the engine's."""
        spec, handler, kind = self._resolve(model_id, task, precision)
        self._loaded(spec, handler, kind, wait=True)
        return onnx_location(spec, kind, self.home, self.fingerprint(spec))

    def export_to(
        self, model_id: str, destination: Path | str, *, task: str | None = None, precision: str | None = None
    ) -> Path:
        """Write a self-contained exported folder (ONNX graphs, tokenizer/processor/config files, manifest)
        that serves as a model id, or a models.toml path, on a machine with the runtime alone."""
        spec, handler, kind = self._resolve(model_id, task, precision)
        if spec.backend != "onnx":
            raise BadRequestError(f"{model_id}: backend {spec.backend!r} has no ONNX export to write")
        onnx_folder = self.export(model_id, task=task, precision=precision)
        return write_export(
            spec.path,
            onnx_folder,
            Path(destination).expanduser().resolve(),
            task=handler.name,
            kind=kind,
            model_id=model_id,
            fingerprint=self.fingerprint(spec),
        )

    def resolve(self, model_id: str, task: str | None = None) -> tuple[ModelSpec, Task]:
        """The model's spec and the handler of its task (`task` overrides models.toml and inference)."""
        spec, handler, _ = self._resolve(model_id, task)
        return spec, handler

    def _resolve(
        self, model_id: str, task: str | None, precision: str | None = None
    ) -> tuple[ModelSpec, Task, ExportKind]:
        """Resolved once per (model, task, precision asked): the hot path reads no file to find its model."""
        found = self._resolved.get((model_id, task, precision))
        if found is None:
            spec = self.registry.resolve(model_id)
            if task is not None:
                check_task_name(task)
            if precision is not None:
                check_precision(precision)
            manifest = read_manifest(spec.path)  # an exported folder says what it is
            handler = get_task(task or spec.task or (manifest.task if manifest else infer_task(spec.path)))
            kind = self._kind(spec, handler, precision)
            found = self._resolved[(model_id, task, precision)] = (spec, handler, kind)
        return found

    def _kind(self, spec: ModelSpec, handler: Task, precision: str | None = None) -> ExportKind:
        """How `spec` is exported for `handler`'s task: an exported folder's manifest, else the task's kind; at the
        precision asked (the call's, else the model's, else the engine's), else the folder's, else fp32."""
        kind = handler.export_kind(spec.path)
        manifest = read_manifest(spec.path)
        if manifest is not None:
            check_task(manifest, handler.name, replace(kind, precision=manifest.kind.precision), spec.path)
            kind = manifest.kind
        wanted = precision or spec.precision or self.precision
        if wanted is None or wanted == kind.precision:
            return kind
        if kind.precision != "fp32":  # an int8 folder has no fp32 weights left to run
            raise BadRequestError(f"{spec.path} is a {kind.precision} export; it cannot run at precision {wanted}")
        if spec.backend != "onnx":
            raise BadRequestError(f"{spec.model_id}: precision {wanted} runs on ONNX Runtime, not on {spec.backend}")
        return replace(kind, precision=wanted)

    def onnx_dir(self, spec: ModelSpec, handler: Task, precision: str | None = None) -> Path:
        """The folder of ONNX files serving this model for this task (it may not be exported yet)."""
        return onnx_location(spec, self._kind(spec, handler, precision), self.home, self.fingerprint(spec))

    def precision_of(self, model_id: str, *, task: str | None = None) -> str:
        """The precision `model_id` runs at: "fp32" or "int8"."""
        return self._resolve(model_id, task)[2].precision

    def drift(self, model_id: str, *, task: str | None = None, precision: str | None = None) -> dict | None:
        """The drift from fp32 recorded when this model's int8 export was made; None for fp32 or not made yet."""
        spec, handler, kind = self._resolve(model_id, task, precision)
        if kind.precision == "fp32":
            return None
        record = read_record(onnx_location(spec, kind, self.home, self.fingerprint(spec)))
        return record.get("drift") if record else None

    def fingerprint(self, spec: ModelSpec) -> str:
        if spec.path not in self._fingerprints:
            self._fingerprints[spec.path] = manifest_fingerprint(spec.path) or folder_fingerprint(
                spec.path, self.home / "fingerprints.json"
            )
        return self._fingerprints[spec.path]

    def state(self, model_id: str) -> str:
        """`not loaded`, `loading`, `ready` or `failed`, for any model id this engine has seen."""
        with self._lock:
            futures = [entry[0] for key, entry in self._loads.items() if key[0] == model_id]
        if not futures:
            return "not loaded"
        if not all(f.done() for f in futures):
            return "loading"
        return "failed" if any(f.exception() for f in futures) else "ready"

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.cache.close()

    # -- loading ---------------------------------------------------------------------------------

    def _loaded(
        self, spec: ModelSpec, handler: Task, kind: ExportKind, *, wait: bool, emulate: bool | None = None
    ) -> LoadedModel:
        key = (spec.model_id, spec.path, spec.backend, kind)
        with self._lock:
            entry = self._loads.get(key)
            if entry is None or (entry[0].done() and entry[0].exception() is not None):
                estimate = self._estimate_load_seconds(spec, kind)
                future = self._executor.submit(self._load, spec, handler, kind)
                entry = self._loads[key] = (future, time.monotonic(), estimate)
        future, since, estimate = entry
        if not future.done() and (self.emulate_loading if emulate is None else emulate) and not wait:
            raise ModelLoadingError(spec.model_id, max(estimate - (time.monotonic() - since), 0.1))
        try:
            return future.result()
        except InferenceError:
            raise
        except Exception as exc:
            log.exception("loading %s failed", spec.model_id)
            raise ModelFailureError(f"Model {spec.model_id} failed to load: {one_line(exc)}") from exc

    def _load(self, spec: ModelSpec, handler: Task, kind: ExportKind) -> LoadedModel:
        fingerprint = self.fingerprint(spec)
        exported = spec.backend == "torch" or onnx_location(spec, kind, self.home, fingerprint).is_dir()

        def measure(reference: LoadedModel, quantised: LoadedModel) -> dict[str, Any]:
            from .drift import measure_drift

            return measure_drift(handler, reference, quantised)

        model = load_model(spec, kind, home=self.home, fingerprint=fingerprint, threads=self.threads, measure=measure)
        if exported:  # a load that exported first would overstate the next load's time
            self._record_load_time(spec, kind, model.load_seconds)
        log.debug("loaded %s (%s) in %.2f s", spec.model_id, spec.backend, model.load_seconds)
        return model

    def _load_times_file(self) -> Path:
        return self.home / "load_times.json"

    def _estimate_load_seconds(self, spec: ModelSpec, kind: ExportKind) -> float:
        """The last measured load of these weights, else an estimate from their size."""
        try:
            known = json.loads(self._load_times_file().read_text())
        except (OSError, ValueError):
            known = {}
        recorded = known.get(self._load_key(spec, kind))
        exported = spec.backend == "torch" or onnx_location(spec, kind, self.home, self.fingerprint(spec)).is_dir()
        if isinstance(recorded, (int, float)) and exported:
            return float(recorded)
        size = sum(p.stat().st_size for p in spec.path.rglob("*") if p.is_file())
        estimate = size / _LOAD_BYTES_PER_S + 0.5
        return estimate if exported else estimate + _EXPORT_FIXED_S + size / _EXPORT_BYTES_PER_S

    def _load_key(self, spec: ModelSpec, kind: ExportKind) -> str:
        """A load time's key: the weights, the backend and the export (its task and precision: an int8 export, or
        another task's, loads in its own time)."""
        return f"{self.fingerprint(spec)}:{spec.backend}:{kind.task}:{kind.precision}"

    def _record_load_time(self, spec: ModelSpec, kind: ExportKind, seconds: float) -> None:
        path = self._load_times_file()
        with self._lock:
            try:
                known = json.loads(path.read_text())
            except (OSError, ValueError):
                known = {}
            known[self._load_key(spec, kind)] = round(seconds, 3)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(known))
                os.replace(tmp, path)
            except OSError:
                pass  # only an estimate is lost


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message (ONNX Runtime's messages
    carry graph dumps on the lines after)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _characters(inputs: Any) -> int:
    """Characters of every string in the inputs."""
    if isinstance(inputs, str):
        return len(inputs)
    if isinstance(inputs, dict):
        return sum(_characters(v) for v in inputs.values())
    if isinstance(inputs, list):
        return sum(_characters(v) for v in inputs)
    return 0
