"""Decoder graphs fused after the export: attention with past in one node, projections unflattened, and nothing
kept that does not answer as optimum's graph does."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from localinfer.runtime.export import ExportKind, export_dir
from localinfer.runtime.fuse import FUSION_VERSION, compare, fuse_decoder_export


def _ops(path: Path) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> Path:
    """The tiny GPT-2 as optimum exports it, unfused."""
    from optimum.exporters.onnx import main_export

    folder = tmp_path_factory.mktemp("gpt2-export")
    main_export(str(tiny["gpt2"]), str(folder), task="text-generation-with-past", local_files_only=True)
    return folder


def test_the_engine_runs_gpt2_fused(engine):
    model = engine.preload("tiny/gpt2")
    ops = _ops(Path(model.runner.sessions["model.onnx"]._model_path))
    assert ops["MultiHeadAttention"] == 2  # one per layer
    assert ops["Gemm"] == 0 and ops["Softmax"] == 0
    answer = engine.query("tiny/gpt2", {"inputs": "Hello there", "parameters": {"do_sample": False}})
    assert answer[0]["generated_text"].startswith("Hello there")


def test_fused_graph_answers_as_the_exported_one(exported, tmp_path):
    folder = tmp_path / "fused"
    shutil.copytree(exported, folder)
    before = _ops(folder / "model.onnx")
    assert fuse_decoder_export(folder) == {"attention": 2, "projections": 8}
    after = _ops(folder / "model.onnx")
    assert sum(after.values()) < sum(before.values()) / 3
    assert compare(exported / "model.onnx", folder / "model.onnx") is None
    assert not (folder / ".fused").exists()


def _set_attribute(path: Path, op: str, name: str, value) -> None:
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == op:
            kept = [a for a in node.attribute if a.name != name]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute(name, value)])
    onnx.save(model, str(path))


@pytest.mark.parametrize(
    ("name", "value", "differs"),
    [("unidirectional", 0, "differs in logits"), ("scale", 0.5, "differs in logits")],
)
def test_compare_catches_attention_that_answers_otherwise(exported, tmp_path, name, value, differs):
    """A causal mask left out, or another scale, is seen on the random inputs."""
    folder = tmp_path / "fused"
    shutil.copytree(exported, folder)
    fuse_decoder_export(folder)
    _set_attribute(folder / "model.onnx", "MultiHeadAttention", name, value)
    assert differs in (compare(exported / "model.onnx", folder / "model.onnx") or "")


def test_a_rewrite_that_does_not_verify_is_not_kept(exported, tmp_path, monkeypatch):
    """Where the attention rewrite answers otherwise, the export keeps optimum's attention (the projections'
    rewrite, verified alone, stays)."""
    from localinfer.runtime import fuse

    original = fuse._fuse_attention

    def wrong(graph, scales) -> int:
        fused = original(graph, scales)
        for node in graph.node:
            if node.op_type == "MultiHeadAttention":
                node.attribute[[a.name for a in node.attribute].index("unidirectional")].i = 0
        return fused

    monkeypatch.setattr(fuse, "_fuse_attention", wrong)
    folder = tmp_path / "fused"
    shutil.copytree(exported, folder)
    assert fuse_decoder_export(folder) == {"attention": 0, "projections": 8}
    assert _ops(folder / "model.onnx")["MultiHeadAttention"] == 0
    assert compare(exported / "model.onnx", folder / "model.onnx") is None


def test_an_architecture_that_does_not_match_is_left_as_exported(tmp_path):
    """Llama's attention (rotary positions, grouped key/value heads) is not the pattern: no attention is fused,
    and the graph answers as exported."""
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.fixtures.tiny_models import _gpt2_tokenizer

    torch.manual_seed(0)
    source = tmp_path / "llama"
    tok = _gpt2_tokenizer(source, 128)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    LlamaForCausalLM(config).save_pretrained(source)
    tok.save_pretrained(source)
    exported = tmp_path / "export"
    main_export(str(source), str(exported), task="text-generation-with-past", local_files_only=True)
    folder = tmp_path / "fused"
    shutil.copytree(exported, folder)
    assert fuse_decoder_export(folder) == {}
    assert _ops(folder / "model.onnx") == _ops(exported / "model.onnx")


def test_the_fusion_is_in_the_decoder_exports_key_only(tmp_path, monkeypatch):
    from localinfer.runtime import export

    causal = ExportKind("text-generation-with-past", sessions=("model.onnx",))
    encoder = ExportKind("feature-extraction")
    before = [export_dir(tmp_path, "m", "f", kind) for kind in (causal, encoder)]
    monkeypatch.setattr(export, "FUSION_VERSION", FUSION_VERSION + "-next")
    after = [export_dir(tmp_path, "m", "f", kind) for kind in (causal, encoder)]
    assert after[0] != before[0] and after[1] == before[1]


def test_a_rewrite_that_fails_leaves_the_export_as_it_is(exported, tmp_path, monkeypatch):
    """A graph the rewrite trips on (here: any) costs the fusion, never the export."""
    from localinfer.runtime import fuse

    def broken(*args) -> int:
        raise ValueError("an unexpected graph")

    monkeypatch.setattr(fuse, "_fuse_attention", broken)
    folder = tmp_path / "fused"
    shutil.copytree(exported, folder)
    assert fuse_decoder_export(folder) == {"attention": 0, "projections": 8}  # the projections' rewrite alone
    monkeypatch.setattr(fuse, "_unflatten_projections", broken)
    again = tmp_path / "again"
    shutil.copytree(exported, again)
    assert fuse_decoder_export(again) == {}
    assert _ops(again / "model.onnx") == _ops(exported / "model.onnx") and not (again / ".fused").exists()


def _scales_of(path: Path) -> list[float]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [
        a.f for n in model.graph.node if n.op_type == "MultiHeadAttention" for a in n.attribute if a.name == "scale"
    ]


def test_each_layers_scale_is_read_from_the_graph(exported, tmp_path):
    """The scale is the exported graph's, not MultiHeadAttention's default: SDPA's 1 / sqrt(head_dim) here
    (32 wide, 2 heads); a layer whose graph scales its query otherwise (rewired below to 0.7) gets its own."""
    import onnx
    from onnx import numpy_helper

    from localinfer.runtime.fuse import attention_factors

    folder = tmp_path / "default"
    shutil.copytree(exported, folder)
    fuse_decoder_export(folder)
    assert _scales_of(folder / "model.onnx") == pytest.approx([16**-0.5] * 2)

    model = onnx.load(str(exported / "model.onnx"))
    query_factor, _ = attention_factors(model.graph)[1]
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.7, dtype=np.float32), "planted_scale"))
    for node in model.graph.node:
        if node.op_type == "Mul" and list(node.input[1:]) == [query_factor]:
            node.input[1] = "planted_scale"
    rescaled = tmp_path / "rescaled"
    shutil.copytree(exported, rescaled)
    onnx.save(model, str(rescaled / "model.onnx"))
    reference = tmp_path / "reference.onnx"
    shutil.copy(rescaled / "model.onnx", reference)
    assert fuse_decoder_export(rescaled)["attention"] == 2
    assert _scales_of(rescaled / "model.onnx") == pytest.approx([16**-0.5, 0.7 * 16**-0.25])
    assert compare(reference, rescaled / "model.onnx") is None
