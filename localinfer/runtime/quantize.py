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
- In encoders (and every graph without past key/values), the projections that write into the residual stream
  (attention output, feed-forward output) stay fp32; those that read the normalised residual (query, key, value,
  feed-forward input, a classifier's input) are int8: see `_excluded` for the numbers behind it.
- Decoder step graphs (past key/values in, one token per step) are weight-only 8-bit instead (`MatMulNBits`,
  `_weight_only_int8`): every projection, symmetric per block of 128 inputs, activations quantised per block of a
  row at run time. A decode step is bound by reading the weights, and ONNX Runtime's dynamic int8 GEMV does not
  stream them at the memory's speed. GPT-2 small size (bench_int8.py; a fused step, runtime/fuse.py, 2 cores,
  interleaved): fp32 14.3 ms, dynamic int8 7.1 ms (2.0x), MatMulNBits 8-bit block 128 5.6 ms (2.56x), block 32
  6.7 ms, block 256 5.6 ms. Accuracy, logits along fp32's tokens (6 x 48, teacher-forced): relative error
  0.028 and top-1 agreement 96.2 % at block 128, against 0.031 and 94.8 % for the dynamic recipe (README: int8).
  Gemms, which MatMulNBits does not take, are quantised dynamically.
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
RECIPE = "dynamic-qint8-per-channel-matmul-gemm-residual-writers-fp32-decoders-matmulnbits8-b128-v2"
BLOCK = 128  # MatMulNBits' block of inputs sharing one scale (decoders); see _weight_only_int8
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
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source), load_external_data=False)
    external = any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in _initializers(model.graph)
    ) or source.stat().st_size > (1 << 31) - (1 << 24)
    decoder = any(i.name.startswith("past_key_values") for i in model.graph.input)
    excluded = [] if decoder else _excluded(model.graph)
    del model
    if decoder:
        _weight_only_int8(source, target, external)
        source = target  # Gemms, which MatMulNBits does not take, are quantised dynamically below
    # quantize_dynamic warns that pre-processing (shape inference) may help: it does not change what it quantises.
    logging.getLogger().disabled, was = True, logging.getLogger().disabled
    try:
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["Gemm"] if decoder else ["MatMul", "Gemm"],
            nodes_to_exclude=excluded,
            use_external_data_format=external,
            # DefaultTensorType: shape inference gives no types past ONNX Runtime's own ops (a fused decoder's
            # MultiHeadAttention, runtime/fuse.py); every activation here is float
            extra_options={
                "MatMulConstBOnly": True,
                "EnableSubgraph": True,
                "DefaultTensorType": onnx.TensorProto.FLOAT,
            },
        )
    finally:
        logging.getLogger().disabled = was


def _weight_only_int8(source: Path, target: Path, external: bool) -> None:
    """A decoder step graph's MatMuls with constant weights as MatMulNBits: 8-bit weights, symmetric per block of
    BLOCK inputs, multiplied by activations quantised to int8 per block of the same rows (`accuracy_level` 4:
    ONNX Runtime's integer kernel, VNNI where the CPU has it). Subgraphs (the merged decoder's branches) too."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
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


def _initializers(graph: Any) -> list[Any]:
    """Every initializer of `graph` and of its subgraphs."""
    found = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                found += _initializers(attribute.g)
    return found


# Ops an activation passes through unchanged in kind between a producer and a projection: reshapes, casts and the
# element-wise pieces of GELU (x * 0.5 * (1 + erf(x / sqrt 2))) and of bias additions.
_PASS_THROUGH = {
    "Reshape",
    "Transpose",
    "Cast",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
    "Mul",
    "Add",
    "Div",
}
_ACTIVATIONS = {"Erf", "Tanh", "Relu", "Sigmoid", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Softplus", "Elu"}


def _excluded(graph: Any, outer: tuple[dict[str, Any], set[str]] = ({}, set())) -> list[str]:
    """The projections that write into the residual stream, kept fp32: a MatMul or Gemm whose input comes from an
    activation function (a feed-forward block's output projection) or from an activation-by-activation MatMul (the
    attention context, into the attention's output projection). The projections that read a normalised residual
    (query, key, value, the feed-forward input, a language model's head) are quantised.

    Why, on all-MiniLM-L6-v2 over 1000 varied sentences (min cosine of int8 to fp32 embeddings): every weight
    MatMul quantised 0.982; each node alone shows the feed-forward block's two projections cost the most
    (1 - mean cosine 3e-4 to 2e-3 each, against 1e-5 to 3e-4 for attention's); keeping both feed-forward
    projections fp32 leaves most of the work fp32, while keeping the residual writers (feed-forward output and
    attention output) fp32 gives 0.9905 with query, key, value and feed-forward input int8 (README: int8).
    """
    producers = {**outer[0], **{out: node for node in graph.node for out in node.output}}
    constants = outer[1] | {t.name for t in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    found = []
    for node in graph.node:
        for attribute in node.attribute:  # an If's branches read the outer graph's tensors
            if attribute.g.node:
                found += _excluded(attribute.g, (producers, constants))
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in constants:
            if _writes_residual(node.input[0], producers, constants):
                # quantize_dynamic first rewrites a Gemm as a MatMul named "<gemm>_MatMul" (plus an Add): both names
                found += [node.name, f"{node.name}_MatMul"] if node.op_type == "Gemm" else [node.name]
    return found


def _writes_residual(name: str, producers: dict[str, Any], constants: set[str], depth: int = 6) -> bool:
    """Whether tensor `name` comes, through pass-through ops, from an activation or an activation-by-activation
    MatMul."""
    node = producers.get(name)
    if node is None or depth == 0:
        return False
    if node.op_type in _ACTIVATIONS:
        return True
    if node.op_type == "MatMul":
        return not any(i in constants for i in node.input)
    if node.op_type in _PASS_THROUGH:
        inputs = [i for i in node.input if i and i not in constants]
        return any(_writes_residual(i, producers, constants, depth - 1) for i in inputs)
    return False
