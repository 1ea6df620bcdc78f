"""Generation benchmark (issues 4 and 11): tokens per second, greedy and beam search (4 beams), localinfer's decoding
loop (numpy over ONNX Runtime, past key/values kept as OrtValues) against the transformers pipeline (PyTorch), same
model and prompts, in one run; greedy GPT-2 also as a fraction of the weight-streaming bound (the model's weight
bytes read once per token, at the GEMV bandwidth measured in the same run: one long GEMV, 1x768 by 768x131072, and
the model's own projection shapes back to back, both measured before and after the greedy runs), and the time beam
search spends reordering the past (`StepModel.reorder`) per step.

Run: python benchmarks/bench_generation.py    (writes benchmarks/results/generation.json)
     python benchmarks/bench_generation.py --quick    (2-layer models, 8 tokens: proves it runs, times nothing)

Models: random GPT-2 small (12 layers, 768 wide) for text-generation and random BART-base-sized (6+6 layers,
768 wide, 12 heads, feed-forward 3072) for summarization, with a 400-token vocabulary (the one trained for the
tests, so that every generated id decodes; the real ones have 50257 and 50265, so their output layers are
bigger). Speed does not depend on the weights; random weights only make the text meaningless.
Both sides generate the same tokens (asserted). Beam search comes from the models' generation configs (the
contract's text-generation has no `num_beams`): one folder per setting, the same weights.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checks import QUICK, assert_same, results_name  # noqa: E402
from common import median, save, timed  # noqa: E402

PROMPTS = ["That is a happy person and", "Paris is the capital of France, and the tower", "My name is Sarah and I"]
NEW_TOKENS = 8 if QUICK else 64
# GPT-2 small and BART-base (facebook/bart-base's config), or 2-layer stand-ins for --quick.
GPT2_SIZE = {"n_layer": 2, "n_embd": 64, "n_head": 4} if QUICK else {"n_layer": 12, "n_embd": 768, "n_head": 12}
BART_SIZE = {
    "d_model": 768,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_attention_heads": 12,
    "decoder_attention_heads": 12,
    "encoder_ffn_dim": 3072,
    "decoder_ffn_dim": 3072,
    "max_position_embeddings": 1024,
}
if QUICK:
    BART_SIZE = {**BART_SIZE, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4}
    BART_SIZE = {**BART_SIZE, "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}


def build(root: Path) -> dict[str, Path]:
    import torch
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        BartTokenizerFast,
        GenerationConfig,
        GPT2Config,
        GPT2LMHeadModel,
    )

    from tests.fixtures.tiny_models import _bpe_tokenizer, _gpt2_tokenizer

    torch.manual_seed(0)
    gpt2_dir = root / "gpt2"
    tok = _gpt2_tokenizer(gpt2_dir, 1024)
    # No end-of-sequence token: every prompt generates exactly NEW_TOKENS tokens on both sides.
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=None, **GPT2_SIZE)
    )
    model.generation_config = GenerationConfig(pad_token_id=tok.eos_token_id)
    model.save_pretrained(gpt2_dir)
    tok.save_pretrained(gpt2_dir)
    bart_dir = root / "bart"
    _bpe_tokenizer(bart_dir)
    btok = BartTokenizerFast(
        vocab_file=str(bart_dir / "vocab.json"), merges_file=str(bart_dir / "merges.txt"), model_max_length=1024
    )
    config = BartConfig(
        vocab_size=len(btok),
        pad_token_id=btok.pad_token_id,
        bos_token_id=btok.bos_token_id,
        eos_token_id=btok.eos_token_id,
        decoder_start_token_id=btok.eos_token_id,
        **BART_SIZE,  # BartConfig()'s defaults are BART-large's (12+12 layers, 1024 wide)
    )
    bart = BartForConditionalGeneration(config)
    bart.generation_config = GenerationConfig(
        decoder_start_token_id=btok.eos_token_id,
        eos_token_id=btok.eos_token_id,
        pad_token_id=btok.pad_token_id,
        bos_token_id=btok.bos_token_id,
    )
    bart.save_pretrained(bart_dir)
    btok.save_pretrained(bart_dir)
    beams_dir = root / "gpt2-beams4"
    shutil.copytree(gpt2_dir, beams_dir)
    config = json.loads((beams_dir / "generation_config.json").read_text())
    (beams_dir / "generation_config.json").write_text(json.dumps({**config, "num_beams": 4}))
    return {
        "gpt2-greedy": (gpt2_dir, "text-generation"),
        "gpt2-beams4": (beams_dir, "text-generation"),
        # the summarization pipeline's default is 4 beams where the model's generation config names none; greedy
        # (num_beams 1, the global default, which a generation config cannot tell apart) is asked for in the
        # `generate` arguments, below the contract's parameters
        "bart-greedy": (bart_dir, "summarization"),
        "bart-beams4": (bart_dir, "summarization"),
    }


def gemv_bandwidth(threads: int | None = None) -> float:
    """GB/s at which ONNX Runtime's fp32 MatMul of 1x768 by 768x131072 streams its weights (a decode step's GEMV)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from localinfer.runtime.onnx import session_options

    weights = np.random.default_rng(0).standard_normal((768, 131072), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 768])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 131072])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads))
    x = np.ones((1, 768), dtype=np.float32)
    seconds = median(timed(lambda: session.run(None, {"x": x}), repeat=30, warmup=3))
    return weights.nbytes / seconds / 1e9


def weight_bytes(sessions: dict) -> int:
    """Bytes of the decoder's weights (what one decode step reads), from its ONNX file's initializers."""
    import onnx

    path = sessions["model.onnx"]._model_path
    model = onnx.load(path, load_external_data=True)
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def layer_gemv_bandwidth(sessions: dict, threads: int | None = None) -> float:
    """GB/s at which ONNX Runtime's fp32 MatMuls of the decoder's own weight shapes (1xK by KxN, one per projection,
    fresh weights, back to back in one graph) stream their weights: what a decode step reading nothing but its
    weights would reach, per-layer sizes and per-node costs included."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from localinfer.runtime.onnx import session_options

    model = onnx.load(sessions["model.onnx"]._model_path, load_external_data=False)
    constants = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and len(constants.get(node.input[1], [])) == 2:
            k, n = constants[node.input[1]]
            transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            shapes.append((n, k) if transposed else (k, n))
    rng = np.random.default_rng(0)
    inputs = sorted({k for k, _ in shapes})
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32), f"w{i}") for i, shape in enumerate(shapes)
    ]
    graph = helper.make_graph(
        [helper.make_node("MatMul", [f"x{k}", f"w{i}"], [f"y{i}"]) for i, (k, _) in enumerate(shapes)],
        "layers",
        [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k]) for k in inputs],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, n]) for i, (_, n) in enumerate(shapes)],
        weights,
    )
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(built.SerializeToString(), session_options(threads))
    feeds = {f"x{k}": np.ones((1, k), dtype=np.float32) for k in inputs}
    seconds = median(timed(lambda: session.run(None, feeds), repeat=30, warmup=3))
    return sum(4 * k * n for k, n in shapes) / seconds / 1e9


class ReorderClock:
    """Time spent in the step models' `reorder` (beam search's gathering of the past), and its calls."""

    def __init__(self) -> None:
        from localinfer.decoding import models

        self.seconds, self.calls, self.patched = 0.0, 0, []
        for cls in (models.CausalStepModel, models.EncoderDecoderStepModel):
            self.patched.append((cls, cls.reorder))
            cls.reorder = self._timed(cls.reorder)

    def _timed(self, reorder):
        def wrapper(model, rows):
            started = time.perf_counter()
            reorder(model, rows)
            self.seconds += time.perf_counter() - started
            self.calls += 1

        return wrapper

    def close(self) -> None:
        for cls, reorder in self.patched:
            cls.reorder = reorder


def ours(engine, model_id: str, parameters: dict, key: str) -> list[str]:
    if "num_beams" in parameters:  # not a contract parameter: the task's own run on `generate` arguments
        model = engine.preload(model_id)
        handler = engine.resolve(model_id)[1]
        return [handler.answer(model, handler.name, p, dict(parameters), None)[0][key] for p in PROMPTS]
    payloads = [{"inputs": p, "parameters": parameters, "options": {"use_cache": False}} for p in PROMPTS]
    return [engine.query(model_id, payload)[0][key] for payload in payloads]


def theirs(pipe, kwargs: dict, key: str) -> list[str]:
    return [pipe(p, **kwargs)[0][key] for p in PROMPTS]


def alternate(engine, model_id: str, parameters: dict, pipe, kwargs: dict, key: str) -> tuple[float, float]:
    """One timed run of each, back to back, so that the machine's drift hits both alike."""
    return (
        timed(lambda: ours(engine, model_id, parameters, key), repeat=1, warmup=0)[0],
        timed(lambda: theirs(pipe, kwargs, key), repeat=1, warmup=0)[0],
    )


def generated_tokens(pipe, kwargs: dict) -> int:
    """New tokens the pipeline generates for the prompts, counted on its token ids."""
    import torch

    total = 0
    for prompt in PROMPTS:
        encoded = pipe.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = pipe.model.generate(
                **encoded,
                generation_config=pipe.generation_config,
                **{k: v for k, v in kwargs.items() if k != "return_full_text"},
            )
        prompt_length = 0 if pipe.model.config.is_encoder_decoder else encoded["input_ids"].shape[1]
        total += out.shape[1] - prompt_length
    return total


def main() -> None:
    import torch
    from transformers import pipeline

    from localinfer import LocalInference

    root = Path(tempfile.mkdtemp(prefix="localinfer-bench-gen-"))
    folders = build(root)
    toml = root / "models.toml"
    toml.write_text("".join(f'[models."bench/{n}"]\npath = "{f}"\ntask = "{t}"\n\n' for n, (f, t) in folders.items()))
    engine = LocalInference(toml, root / "home")
    bandwidth = gemv_bandwidth()
    results: dict = {
        "torch_threads": torch.get_num_threads(),
        "new_tokens_per_prompt": NEW_TOKENS,
        "gemv_gb_per_s": round(bandwidth, 1),
    }
    print("GEMV weight streaming:", results["gemv_gb_per_s"], "GB/s", flush=True)
    for name, (folder, task) in folders.items():
        model_id = f"bench/{name}"
        sessions = engine.preload(model_id).runner.sessions
        past_inputs = sum(i.name.startswith("past_key_values") for s in sessions.values() for i in s.get_inputs())
        pipe = pipeline(task, model=str(folder))
        if task == "text-generation":
            parameters = {"do_sample": False, "max_new_tokens": NEW_TOKENS, "return_full_text": False}
            kwargs, key = dict(parameters), "generated_text"
        else:
            parameters = {"do_sample": False, "min_length": NEW_TOKENS, "max_length": NEW_TOKENS}
            kwargs, key = {**parameters, "max_new_tokens": None}, "summary_text"
            if name == "bart-greedy":
                parameters = kwargs = {**kwargs, "num_beams": 1}
        assert_same(ours(engine, model_id, parameters, key), theirs(pipe, kwargs, key), f"{name} texts")
        tokens = generated_tokens(pipe, kwargs)
        assert tokens == NEW_TOKENS * len(PROMPTS), f"{name}: {tokens} tokens, not {NEW_TOKENS} per prompt"
        bounds = [(gemv_bandwidth(), layer_gemv_bandwidth(sessions))] if name == "gpt2-greedy" else []
        clock = ReorderClock()
        try:
            pairs = [alternate(engine, model_id, parameters, pipe, kwargs, key) for _ in range(1 if QUICK else 5)]
        finally:
            clock.close()
        if bounds:  # measured beside the runs, before and after: this machine's memory speed drifts
            bounds.append((gemv_bandwidth(), layer_gemv_bandwidth(sessions)))
        ours_s, theirs_s = median([p[0] for p in pairs]), median([p[1] for p in pairs])
        results[name] = {
            "task": task,
            "num_beams": kwargs.get("num_beams", pipe.generation_config.num_beams),
            "generated_tokens": tokens,
            "localinfer_tokens_per_s": round(tokens / ours_s, 1),
            "pipeline_tokens_per_s": round(tokens / theirs_s, 1),
            "ratio": round(theirs_s / ours_s, 2),
            "past_key_value_inputs": past_inputs,
            "reorder_ms_per_call": round(1000 * clock.seconds / clock.calls, 3) if clock.calls else 0.0,
            "reorder_share_of_time": round(clock.seconds / sum(p[0] for p in pairs), 4),
        }
        if name == "gpt2-greedy":
            read = weight_bytes(sessions)
            streamed = read * tokens / ours_s / 1e9
            gemv, layers = (sum(b[i] for b in bounds) / len(bounds) for i in range(2))
            results[name]["weight_mb"] = round(read / 1e6, 1)
            results[name]["streamed_gb_per_s"] = round(streamed, 1)
            results[name]["gemv_gb_per_s_beside"] = round(gemv, 1)
            results[name]["fraction_of_bound"] = round(streamed / gemv, 3)
            results[name]["layer_gemv_gb_per_s"] = round(layers, 1)
            results[name]["fraction_of_layer_bound"] = round(streamed / layers, 3)
        print(name, json.dumps(results[name]), flush=True)
    path = save(results_name("generation"), results)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
