"""Decoder step graphs made lean after optimum's export: attention with past as one ONNX Runtime node.

A decode step reads every weight once, so its time should be the weights' streaming time. optimum's export of a
decoder (transformers' SDPA attention traced by torch.onnx) leaves ~100 small nodes per layer around attention
with past (Shape, Gather, Unsqueeze, Concat, Reshape, Transpose, the mask's Where and Slice, the scale's Sqrt), and
a Reshape pair with computed shapes around every Conv1D projection: on GPT-2 small size ~1300 nodes a step, ~3 ms
of a 15 ms step on 2 cores (benchmarks/bench_generation.py, README). ONNX Runtime's own transformer optimizer does
not fuse this graph: its GPT-2 attention fusion expects the stacked `past_{i}` of its own exporter, and fuses only
LayerNorm and Gelu here. Two rewrites, written here because no library makes them for optimum's graphs:

- Attention with past -> `com.microsoft.MultiHeadAttention` (query, key, value [batch, n, hidden]; past and
  present key/value [batch, heads, length, head_dim], optimum's layout; `unidirectional` for the causal mask;
  the attention mask as its key padding mask). Matched from each `present.{i}.key|value` Concat back to the
  projections' outputs and forward to the context's Reshape. Each layer's scale is the graph's own: SDPA scales
  query and key by tensors computed from the head size (or the model's own scale), read by running the exported
  graph once with them as outputs.
- A projection flattened for Gemm (Reshape to 2-D -> Gemm -> Reshape back) -> MatMul + Add on the 3-D input
  (MatMul broadcasts). It also leaves the weights in MatMul nodes, which int8 quantisation needs.

Nothing is trusted to the pattern: the rewritten graph is run beside the exported one on random inputs (a
prompt with a left-padded row, then a step with past) and kept only if its logits and presents agree within
1e-4; otherwise the export stays as optimum made it (logged). Models whose attention differs (rotary, grouped
heads, ALiBi) do not match or do not verify, and run unfused. Encoder-decoder decoders (the merged
graph's `If` branches) are not rewritten.
"""

from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("localinfer")

# Part of an export's key (fingerprint.graph_versions): a new rewrite never reuses an old export.
FUSION_VERSION = "decoder-mha-scale-from-graph-matmul-v2"
TOLERANCE = 1e-4  # relative to the largest logit or present value


def fuse_decoder_export(folder: Path, name: str = "model.onnx") -> dict[str, int]:
    """Rewrite `folder/name` (a text-generation-with-past export) in place where the rewrite verifies.

    Returns the rewrites applied ({"attention": layers, "projections": Gemms}); {} where nothing matched or the
    rewritten graph did not answer as the exported one."""
    import onnx

    path = folder / name
    model = onnx.load(str(path), load_external_data=True)
    external = path.with_name(name + "_data").exists() or model.ByteSize() > (1 << 31) - (1 << 24)
    try:
        scales = _scales(model, folder / ".probe", name, external)
    except Exception as exc:  # the attention then stays as exported
        log.info("decoder attention left as exported: its scale could not be read (%s)", exc)
        scales = {}
    for attempt in (("attention", "projections"), ("attention",), ("projections",)):
        trial = folder / ".fused"
        try:
            candidate = onnx.ModelProto()
            candidate.CopyFrom(model)
            counts = _rewrite(candidate, attempt, scales)
            if not any(counts.values()):
                continue
            shutil.rmtree(trial, ignore_errors=True)
            trial.mkdir()
            _save(candidate, trial / name, external)
            problem = compare(path, trial / name)
        except Exception as exc:  # a graph the rewrite or ONNX Runtime does not take: the export stays as it is
            problem = f"failed ({type(exc).__name__}: {str(exc)[:200]})"
            counts = {}
        try:
            if problem is None:
                for file in trial.iterdir():
                    file.replace(folder / file.name)
                log.info("decoder graph fused: %s", counts)
                return counts
            log.info("decoder graph left as exported: the %s rewrite %s", "+".join(attempt), problem)
        finally:
            shutil.rmtree(trial, ignore_errors=True)
    return {}


def _scales(model: Any, probe: Path, name: str, external: bool) -> dict[int, float]:
    """Each matching layer's attention scale, read by running the exported graph once with its scale tensors as
    extra outputs (SDPA's scale is computed from the head size in the graph, or is the model's own: GPT-2's
    `scale_attn_by_inverse_layer_idx`, `scale_attn_weights`). A layer whose scale is not one number is left out."""
    import onnx
    from onnx import helper

    factors = attention_factors(model.graph)
    if not factors:
        return {}
    wanted = sorted({name for pair in factors.values() for name in pair})
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    probed.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted)
    shutil.rmtree(probe, ignore_errors=True)
    probe.mkdir()
    try:
        _save(probed, probe / name, external)
        del probed
        values = run_probe(probe / name, wanted)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return {
        layer: float(values[q].reshape(())) * float(values[k].reshape(()))
        for layer, (q, k) in factors.items()
        if values[q].size == 1 and values[k].size == 1
    }


def _save(model: Any, path: Path, external: bool) -> None:
    import onnx

    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + "_data")
    else:
        onnx.save_model(model, str(path))


def _rewrite(model: Any, kinds: tuple[str, ...], scales: dict[int, float]) -> dict[str, int]:
    graph = model.graph
    counts = {"attention": 0, "projections": 0}
    if "attention" in kinds:
        counts["attention"] = _fuse_attention(graph, scales)
        if counts["attention"] and not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(_opset("com.microsoft", 1))
    if "projections" in kinds:
        counts["projections"] = _unflatten_projections(graph)
    _prune(graph)
    if _dangling(graph):
        return {"attention": 0, "projections": 0}
    return counts


def _dangling(graph: Any) -> set[str]:
    """Tensors some node reads but nothing makes (a Shape of a removed tensor that is still needed)."""
    made = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    made |= {out for node in graph.node for out in node.output}
    return {name for node in graph.node for name in node.input if name not in made}


def _opset(domain: str, version: int) -> Any:
    from onnx import helper

    return helper.make_opsetid(domain, version)


class _Graph:
    """Producers and consumers of a graph's tensors."""

    def __init__(self, graph: Any) -> None:
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.outputs = {o.name for o in graph.output}
        self.constants = {t.name: t for t in graph.initializer}

    def parent(self, node: Any, index: int, op: str) -> Any | None:
        """The node that makes `node`'s input `index`, if it is an `op`."""
        if len(node.input) <= index:
            return None
        found = self.producer.get(node.input[index])
        return found if found is not None and found.op_type == op else None

    def only_child(self, name: str, op: str) -> Any | None:
        """The one node that reads tensor `name` (besides Shape nodes, which only read its shape), if it is an
        `op` and `name` is no graph output."""
        readers = self.readers(name)
        if len(readers) != 1 or name in self.outputs or readers[0].op_type != op:
            return None
        return readers[0]

    def readers(self, name: str) -> list[Any]:
        """The nodes that read tensor `name`'s values: its consumers but Shape nodes. A Shape node of a tensor
        that a rewrite removes is left dangling; `_rewrite` abandons a rewrite whose graph still needs one."""
        return [n for n in self.consumers.get(name, []) if n.op_type != "Shape"]


def _attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _heads_split(g: _Graph, node: Any | None) -> str | None:
    """The [batch, n, hidden] tensor behind `node` = Transpose(0, 2, 1, 3) of a Reshape to [batch, n, heads,
    head_dim] (the reshape's shape is computed in the graph; the verification checks it)."""
    if node is None or node.op_type != "Transpose" or list(_attribute(node, "perm", [])) != [0, 2, 1, 3]:
        return None
    reshape = g.parent(node, 0, "Reshape")
    return reshape.input[0] if reshape is not None else None


def _layers(graph: Any) -> int:
    inputs = {i.name for i in graph.input}
    count = 0
    while f"past_key_values.{count}.key" in inputs:
        count += 1
    return count


def attention_factors(graph: Any) -> dict[int, tuple[str, str]]:
    """Per layer whose attention matches, the tensors that scale its query and its key (computed in the graph from
    shapes, or constants): their product is the layer's MultiHeadAttention `scale`."""
    inputs = {i.name: i for i in graph.input}
    g = _Graph(graph)
    found = {layer: _match_layer(g, inputs, layer) for layer in range(_layers(graph))}
    return {layer: match[3] for layer, match in found.items() if match is not None}


def _fuse_attention(graph: Any, scales: dict[int, float]) -> int:
    """Each layer's attention with past replaced by one MultiHeadAttention node of scale `scales[layer]` (layers
    without a scale are left); returns how many."""
    from onnx import TensorProto, helper

    inputs = {i.name: i for i in graph.input}
    if "attention_mask" not in inputs:
        return 0
    g = _Graph(graph)
    mask = "localinfer_attention_mask_int32"
    new_nodes, removed = [], set()
    for layer in range(_layers(graph)):
        found = _match_layer(g, inputs, layer)
        if found is None or layer not in scales:
            continue
        nodes, (query, key, value, context), heads, _ = found
        new_nodes.append(
            helper.make_node(
                "MultiHeadAttention",
                [query, key, value, "", mask, "", f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"],
                [context, f"present.{layer}.key", f"present.{layer}.value"],
                name=f"localinfer/layer{layer}/MultiHeadAttention",
                domain="com.microsoft",
                num_heads=heads,
                scale=scales[layer],
                unidirectional=1,
            )
        )
        removed |= {id(n) for n in nodes}
    fused = len(new_nodes)
    if not fused:
        return 0
    kept = [n for n in graph.node if id(n) not in removed]
    cast = helper.make_node("Cast", ["attention_mask"], [mask], name="localinfer/mask_int32", to=TensorProto.INT32)
    # MultiHeadAttention's inputs are made by the projections before it: place each after its last producer.
    ordered = [cast, *kept]
    for node in new_nodes:
        position = max(i for i, n in enumerate(ordered) if set(n.output) & set(node.input)) + 1
        ordered.insert(position, node)
    del graph.node[:]
    graph.node.extend(ordered)
    return fused


def _match_layer(g: _Graph, inputs: dict[str, Any], layer: int) -> tuple[list, tuple, int, tuple] | None:
    """The nodes of layer `layer`'s attention (from the projections' outputs to the context's Reshape), the
    MultiHeadAttention's query, key, value and context tensors, its heads, and the two tensors that scale the
    query and the key; None where the graph differs."""
    present_key, present_value = f"present.{layer}.key", f"present.{layer}.value"
    concat_k, concat_v = g.producer.get(present_key), g.producer.get(present_value)
    shape = inputs[f"past_key_values.{layer}.key"].type.tensor_type.shape.dim
    if len(shape) != 4 or not shape[1].HasField("dim_value"):
        return None
    heads = shape[1].dim_value
    for concat, past in ((concat_k, "key"), (concat_v, "value")):
        if (
            concat is None
            or concat.op_type != "Concat"
            or _attribute(concat, "axis") not in (2, -2)
            or list(concat.input[:1]) != [f"past_key_values.{layer}.{past}"]
            or len(concat.input) != 2
        ):
            return None
    key_split, value_split = g.producer.get(concat_k.input[1]), g.producer.get(concat_v.input[1])
    key, value = _heads_split(g, key_split), _heads_split(g, value_split)
    if key is None or value is None:
        return None
    # scores = (Q * s) @ (K^T * s), K^T = Transpose(present.key, (0, 1, 3, 2))
    transposed = [n for n in g.consumers[present_key] if n.op_type == "Transpose"]
    if len(transposed) != 1 or list(_attribute(transposed[0], "perm", [])) != [0, 1, 3, 2]:
        return None
    key_scale = g.only_child(transposed[0].output[0], "Mul")
    scores = key_scale and g.only_child(key_scale.output[0], "MatMul")
    if scores is None or scores.input[1] != key_scale.output[0]:
        return None
    query_scale = g.parent(scores, 0, "Mul")
    query_split = query_scale and g.producer.get(query_scale.input[0])
    query = _heads_split(g, query_split)
    if query is None or key_scale.input[0] != transposed[0].output[0]:
        return None
    factors = (query_scale.input[1], key_scale.input[1])  # SDPA's scale, its square root on each side
    add = g.only_child(scores.output[0], "Add")
    softmax = add and g.only_child(add.output[0], "Softmax")
    if softmax is None or _attribute(softmax, "axis", -1) not in (-1, 3):
        return None
    probabilities, nan_guard = softmax.output[0], []
    readers = g.readers(probabilities)
    if len(readers) == 2 and {n.op_type for n in readers} == {"IsNaN", "Where"}:  # SDPA's fully-masked rows -> 0
        is_nan = next(n for n in readers if n.op_type == "IsNaN")
        where = next(n for n in readers if n.op_type == "Where")
        if g.only_child(is_nan.output[0], "Where") is not where:
            return None
        nan_guard, probabilities = [is_nan, where], where.output[0]
    weighted = g.only_child(probabilities, "MatMul")
    if weighted is None or list(weighted.input) != [probabilities, present_value]:
        return None
    merge = g.only_child(weighted.output[0], "Transpose")
    if merge is None or list(_attribute(merge, "perm", [])) != [0, 2, 1, 3]:
        return None
    context = g.only_child(merge.output[0], "Reshape")
    if context is None:
        return None
    # The split heads and the scaled query feed nothing else (the concats read the key and value splits).
    for node, reader in ((key_split, concat_k), (value_split, concat_v), (query_split, query_scale)):
        if g.readers(node.output[0]) != [reader]:
            return None
    nodes = [concat_k, concat_v, transposed[0], key_scale, query_scale, scores, add, softmax, *nan_guard]
    nodes += [weighted, merge, context]
    nodes += [key_split, value_split, query_split]
    nodes += [g.producer[n.input[0]] for n in (key_split, value_split, query_split)]  # their Reshapes
    return nodes, (query, key, value, context.output[0]), heads, factors


def gemm_as_matmul(gemm: Any, constants: dict[str, Any], readers: int, source: str, target: str) -> list[Any] | None:
    """MatMul(`source`, W) (+ Add(bias)) making `target`, for a Gemm with a constant weight that only multiplies
    (alpha = beta = 1, its input not transposed); W is transposed in place where the Gemm transposes it, unless
    another node reads it too (`readers`: how many nodes read W). None where the Gemm does more than that.
    Used here (a projection's flattening Reshapes dropped) and by runtime/quantize.py (MatMulNBits takes MatMuls)."""
    from onnx import helper, numpy_helper

    weight = gemm.input[1]
    transposed = _attribute(gemm, "transB", 0)
    if (
        weight not in constants
        or _attribute(gemm, "transA", 0)
        or _attribute(gemm, "alpha", 1.0) != 1.0
        or _attribute(gemm, "beta", 1.0) != 1.0
        or (transposed and readers > 1)  # shared (tied weights): left as it is
    ):
        return None
    if transposed:
        array = np.ascontiguousarray(numpy_helper.to_array(constants[weight]).T)
        constants[weight].CopyFrom(numpy_helper.from_array(array, weight))
    if len(gemm.input) < 3 or not gemm.input[2]:
        return [helper.make_node("MatMul", [source, weight], [target], name=gemm.name)]
    product = f"{target}/matmul"
    return [
        helper.make_node("MatMul", [source, weight], [product], name=gemm.name),
        helper.make_node("Add", [product, gemm.input[2]], [target], name=f"{gemm.name}/Add"),
    ]


def _unflatten_projections(graph: Any) -> int:
    """Reshape(x, [-1, k]) -> Gemm(W, b) -> Reshape(back) rewritten as MatMul(x, W) + Add(b); returns how many.
    (The reshapes' shapes are computed in the graph; the verification checks they flatten and restore.)"""
    g = _Graph(graph)
    replace: dict[int, list] = {}
    for gemm in graph.node:
        if gemm.op_type != "Gemm":
            continue
        flatten = g.parent(gemm, 0, "Reshape")
        restore = g.only_child(gemm.output[0], "Reshape")
        if flatten is None or restore is None or g.consumers[flatten.output[0]] != [gemm]:
            continue
        readers = len(g.consumers[gemm.input[1]])
        rewritten = gemm_as_matmul(gemm, g.constants, readers, flatten.input[0], restore.output[0])
        if rewritten is not None:
            replace.update({id(flatten): [], id(gemm): rewritten, id(restore): []})
    if replace:
        nodes = [new for node in graph.node for new in replace.get(id(node), [node])]
        del graph.node[:]
        graph.node.extend(nodes)
    return len(replace) // 3


def _prune(graph: Any) -> None:
    """Drop the nodes whose outputs nothing reads any more, and the initializers no node reads."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        subgraph_reads = {name for a in node.attribute if a.g.node for n in a.g.node for name in n.input}
        if set(node.output) & needed or not node.output:
            kept.append(node)
            needed |= set(node.input) | subgraph_reads
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    from .onnx import session_options

    return ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])


KNOWN_INPUTS = frozenset({"input_ids", "attention_mask", "position_ids", "cache_position"})
CASES = ((2, 5, 0, 2), (2, 1, 3, 0))  # rows, new tokens, past length, left padding of the second row


def _feeds(session: Any, rows: int, new: int, past: int, pad: int, rng: Any) -> tuple[dict, np.ndarray]:
    """Random inputs for a decoder step, and their attention mask. Past key/values are drawn with a spread of 3,
    so that attention scores are large enough for a wrong scale or mask to show in the logits."""
    names = [i.name for i in session.get_inputs()]
    vocab = next(o.shape[-1] for o in session.get_outputs() if o.name == "logits")
    vocab = vocab if isinstance(vocab, int) else 16
    mask = np.ones((rows, past + new), dtype=np.int64)
    mask[1, :pad] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, past:]
    feeds: dict[str, np.ndarray] = {
        "input_ids": rng.integers(0, vocab, (rows, new), dtype=np.int64),
        "attention_mask": mask,
        "position_ids": positions.astype(np.int64),
        "cache_position": np.arange(past, past + new, dtype=np.int64),
    }
    for node in session.get_inputs():
        if node.name.startswith("past_key_values."):
            shape = (rows, node.shape[1], past, node.shape[3])
            feeds[node.name] = (3 * rng.standard_normal(shape)).astype(np.float32)
    return {k: v for k, v in feeds.items() if k in names}, mask


def run_probe(path: Path, outputs: list[str]) -> dict[str, np.ndarray]:
    """`outputs` of the graph at `path`, run once on random inputs (the first of CASES)."""
    session = _session(path)
    if any(i.name not in KNOWN_INPUTS and not i.name.startswith("past_key_values.") for i in session.get_inputs()):
        raise ValueError("the graph has inputs the probe does not know")
    feeds, _ = _feeds(session, *CASES[0], np.random.default_rng(0))
    return dict(zip(outputs, session.run(outputs, feeds), strict=True))


def compare(reference: Path, candidate: Path, seed: int = 0) -> str | None:
    """Run both decoder graphs on random inputs (a 2-row prompt of 5 tokens, the second row left-padded by 2,
    then a one-token step with a past of 3); None where every logit of a real position and every present of a
    real position agree within TOLERANCE (relative), else what differs."""
    sessions = [_session(reference), _session(candidate)]
    if any(i.name not in KNOWN_INPUTS and not i.name.startswith("past_key_values.") for i in sessions[0].get_inputs()):
        return "has inputs the check does not know"
    rng = np.random.default_rng(seed)
    for case in CASES:
        feeds, mask = _feeds(sessions[0], *case, rng)
        outputs = [dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds), strict=True)) for s in sessions]
        for name, expected in outputs[0].items():
            got = outputs[1].get(name)
            if got is None or got.shape != expected.shape:
                return f"answers {name} in another shape"
            if name == "logits":
                expected, got = expected[:, -1], got[:, -1]  # the padded row's earlier positions are padding
            else:
                real = mask.astype(bool)  # present [rows, heads, past + new, head_dim]: padded positions aside
                expected, got = expected.transpose(0, 2, 1, 3)[real], got.transpose(0, 2, 1, 3)[real]
            scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
            difference = float(np.abs(expected - got).max(initial=0.0))
            if not difference <= TOLERANCE * scale:
                return f"differs in {name} by {difference:.3g}"
    return None
