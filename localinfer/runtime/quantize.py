"""int8 exports: the fp32 export's graphs quantised by ONNX Runtime (`onnxruntime.quantization`), atomically.

The recipe (RECIPE; its numbers are in the README and benchmarks/bench_int8.py):
- Every MatMul with a constant weight becomes `MatMulNBits` at 8 bits (`_weight_only_int8`): weights symmetric per
  block of inputs, activations quantised to int8 per block of each row at run time, ONNX Runtime's integer kernel
  (VNNI where the CPU has it). Every projection of every export kind, encoders and decoders alike.
- Why not dynamic quantisation (`quantize_dynamic`, the previous recipe): it quantises each activation per tensor,
  over the whole batch. An answer then depends on the other inputs in its batch (a request batched with others
  would not answer as it does alone), and the per-tensor range loses the rows with small activations. On
  all-MiniLM-L6-v2 over 1000 varied sentences in batches of 32 sorted by tokens (min / mean cosine to fp32;
  sentences per second, raw ONNX Runtime, 2 cores; fp32 264):
  every projection dynamic 0.9776 / 0.9913, 487/s; dynamic with the residual-stream writers (attention and
  feed-forward outputs) fp32 0.9893 / 0.9957, 348/s; MatMulNBits block 256 0.9943 / 0.9982, 351/s; block 128
  0.9974 / 0.9989, 298/s. ViT-base size, batch 4: fp32 735 ms, dynamic with writers fp32 480 ms, block 256 452 ms.
- ENCODER_BLOCK 256 for graphs without past key/values: as fast as the previous recipe, more accurate. At batch 32
  an encoder's projections are compute-bound; the block decides how often the kernel rescales.
- DECODER_BLOCK 128 for decoder step graphs (past key/values in, one token per step), which are bound by reading
  the weights. GPT-2 small size (a fused step, runtime/fuse.py, interleaved): fp32 14.3 ms, dynamic int8 7.1 ms
  (2.0x), block 128 5.6 ms (2.56x), block 256 5.6 ms, block 32 6.7 ms. Logits along fp32's tokens (6 x 48,
  teacher-forced): relative error 0.028 and top-1 agreement 96.2 % at block 128, 0.030 / 96.5 % at 256, against
  0.031 / 94.8 % for dynamic int8.
- Gemms with a constant weight (classifier heads, poolers) are rewritten as MatMul + Add first
  (`_gemms_as_matmuls`): MatMulNBits takes MatMuls only.
- Activation-by-activation MatMuls (attention scores) stay fp32: no weight bytes to save.
- Gather (embeddings) stays fp32: a lookup reads a few rows, so int8 saves nothing there and adds drift.
- Conv stays fp32: ONNX Runtime's ConvInteger runs slower than its fp32 Conv on CPU, and the convolutions of the
  vision and audio models here are a small share of their work.
- Subgraphs (the merged decoder's `If` branches) are quantised too.

The export side's `onnx` and `onnx-ir` packages are needed to quantise (the runtime-only install runs int8 folders,
never makes them).
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
RECIPE = "matmulnbits8-symmetric-encoders-b256-decoders-b128-gemms-as-matmuls-v3"
ENCODER_BLOCK = 256  # MatMulNBits' block of inputs sharing one scale, graphs without past key/values
DECODER_BLOCK = 128  # the same, decoder step graphs
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
    fp32_folder: Path,
    destination: Path,
    graphs: tuple[str, ...],
    *,
    measure: Callable[[Path], dict[str, Any]] | None = None,
) -> Path:
    """Quantise the ONNX graphs `graphs` of `fp32_folder` into `destination` (unless it exists), with the other
    files but no other graph (optimum's unmerged decoders, which the runtime never opens).

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
            relative = path.relative_to(fp32_folder)
            if not path.is_file() or path.suffix in (".onnx", ".onnx_data") and relative.as_posix() not in graphs:
                continue
            target = staging / relative
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

    model = onnx.load(str(source), load_external_data=False)
    external = any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in _initializers(model.graph)
    ) or source.stat().st_size > (1 << 31) - (1 << 24)
    if external:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(source.parent))
    decoder = any(i.name.startswith("past_key_values") for i in model.graph.input)
    _gemms_as_matmuls(model.graph)
    _weight_only_int8(model, target, external, DECODER_BLOCK if decoder else ENCODER_BLOCK)


def _weight_only_int8(model: Any, target: Path, external: bool, block: int) -> None:
    """The MatMuls with a constant weight as MatMulNBits: 8-bit weights, symmetric per block of `block` inputs,
    multiplied by activations quantised to int8 per block of each row (`accuracy_level` 4: ONNX Runtime's integer
    kernel, VNNI where the CPU has it). Subgraphs (the merged decoder's branches) too."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    chatter = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")  # a line per node at INFO
    level = chatter.level
    chatter.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        chatter.setLevel(level)
    if external:
        quantizer.model.save_model_to_file(str(target), use_external_data_format=True)
    else:
        quantizer.model.save_model_to_file(str(target))


def _gemms_as_matmuls(graph: Any) -> None:
    """Gemms with a constant weight (a classifier's head, a pooler) rewritten as MatMul + Add
    (`fuse.gemm_as_matmul`): MatMulNBits quantises MatMuls only. Subgraphs too."""
    from .fuse import gemm_as_matmul

    constants = {t.name: t for t in _initializers(graph)}
    readers: dict[str, int] = {}
    for node in _nodes(graph):
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for g in reversed(_graphs(graph)):  # subgraphs first: rebuilding a graph's nodes copies the subgraphs in them
        nodes = []
        for node in g.node:
            rewritten = None
            if node.op_type == "Gemm":
                rewritten = gemm_as_matmul(node, constants, readers[node.input[1]], node.input[0], node.output[0])
            nodes += rewritten or [node]
        del g.node[:]
        g.node.extend(nodes)


def _graphs(graph: Any) -> list[Any]:
    """`graph` and its subgraphs (the merged decoder's `If` branches), depth first."""
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                found += _graphs(attribute.g)
    return found


def _nodes(graph: Any) -> list[Any]:
    """Every node of `graph` and of its subgraphs."""
    return [node for g in _graphs(graph) for node in g.node]


def _initializers(graph: Any) -> list[Any]:
    """Every initializer of `graph` and of its subgraphs."""
    return [tensor for g in _graphs(graph) for tensor in g.initializer]
