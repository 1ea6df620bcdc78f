"""int8 exports: the fp32 export's graphs quantised by ONNX Runtime (`onnxruntime.quantization`), atomically.

The recipe (RECIPE; its numbers are in the README and benchmarks/bench_int8.py):
- Dynamic quantisation (`quantize_dynamic`): int8 weights per output channel, activations quantised per tensor
  at run time. No calibration set, so it applies to every export kind alike, and ONNX Runtime runs it with its
  integer GEMM (VNNI where the CPU has it). Static QDQ needs calibration inputs per task and, on CPU, gains
  nothing over dynamic for transformers (activations are re-quantised per tensor either way).
- MatMul and Gemm with a constant weight only (`MatMulConstBOnly`): activation-by-activation MatMuls (attention
  scores) stay fp32; quantising them both ways costs accuracy and saves no weight bytes.
- Gather (embeddings) stays fp32: a lookup reads a few rows, so int8 saves nothing there and adds drift.
- Conv stays fp32: ONNX Runtime's ConvInteger runs slower than its fp32 Conv on CPU, and the convolutions of the
  vision and audio models here are a small share of their work.
- Nodes whose input has activation outliers (EXCLUDED below) stay fp32: see `_excluded`.
- Subgraphs (the merged decoder's `If` branches) are quantised too.

The export side's `onnx` package is needed to quantise (the runtime-only install runs int8 folders, never makes
them).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import EXPORT_PACKAGES, export_extra_missing

log = logging.getLogger("localinfer")

# What the quantised graph depends on besides the fp32 export: change it when the recipe changes, so that a
# new recipe never reuses an old int8 folder.
RECIPE = "dynamic-qint8-per-channel-matmul-gemm-v1"
RECORD = "localinfer-int8.json"  # in an int8 folder: the recipe, and the drift measured when it was made


def quantization_key() -> dict[str, str]:
    """What decides an int8 folder's content beyond the fp32 export (part of its folder key)."""
    try:
        version = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        version = "-"
    return {"recipe": RECIPE, "onnxruntime": version}


def read_record(folder: Path) -> dict[str, Any] | None:
    """The int8 record of a folder (recipe and drift); None for an fp32 folder or an unreadable record."""
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def quantize_export(
    fp32_folder: Path, destination: Path, *, measure: Callable[[Path], dict[str, Any]] | None = None
) -> Path:
    """Quantise every ONNX graph of `fp32_folder` into `destination` (unless it exists), with the other files.

    `measure(staging folder)` returns the drift of the quantised model from the fp32 one; it is recorded in
    RECORD before the folder is renamed into place, so an existing int8 folder always carries its drift.
    """
    if destination.is_dir():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.partial"
    log.info("quantising %s to int8, first use only ...", fp32_folder)
    started = time.perf_counter()
    try:
        staging.mkdir()
        for path in sorted(fp32_folder.rglob("*")):
            if not path.is_file() or path.suffix == ".onnx_data":
                continue
            target = staging / path.relative_to(fp32_folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".onnx":
                quantize_graph(path, target)
            else:
                shutil.copy2(path, target)
        record: dict[str, Any] = {**quantization_key(), "drift": measure(staging) if measure else None}
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            staging.rename(destination)
        except OSError:  # another process finished first
            if not destination.is_dir():
                raise
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in EXPORT_PACKAGES:
            raise
        raise export_extra_missing(f"quantising {fp32_folder} to int8", exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("quantised in %.1f s to %s", time.perf_counter() - started, destination)
    return destination


def quantize_graph(source: Path, target: Path) -> None:
    """One graph quantised by RECIPE."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source), load_external_data=False)
    external = any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in _initializers(model.graph)
    ) or source.stat().st_size > (1 << 31) - (1 << 24)
    excluded = _excluded(model.graph)
    del model
    # quantize_dynamic warns that pre-processing (shape inference) may help: it does not change what it quantises.
    logging.getLogger().disabled, was = True, logging.getLogger().disabled
    try:
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=excluded,
            use_external_data_format=external,
            extra_options={"MatMulConstBOnly": True, "EnableSubgraph": True},
        )
    finally:
        logging.getLogger().disabled = was


def _initializers(graph: Any) -> list[Any]:
    """Every initializer of `graph` and of its subgraphs."""
    found = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                found += _initializers(attribute.g)
    return found


def _excluded(graph: Any) -> list[str]:
    """Nodes kept fp32 (see the module docstring)."""
    return []
