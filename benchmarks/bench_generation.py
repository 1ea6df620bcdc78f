"""Generation benchmark (issue 4): greedy tokens per second, localinfer (ONNX Runtime, past key/values) against the
transformers pipeline (PyTorch), same model and prompts, in one run.

Run: python benchmarks/bench_generation.py    (writes benchmarks/results/generation.json)
     python benchmarks/bench_generation.py --quick    (2-layer models, 8 tokens: proves it runs, times nothing)

Models: random GPT-2 small (12 layers, 768 wide) for text-generation and random BART-base-sized (6+6 layers,
768 wide, 12 heads, feed-forward 3072) for summarization, with a 400-token vocabulary (the one trained for the
tests, so that every generated id decodes; the real ones have 50257 and 50265, so their output layers are
bigger). Speed does not depend on the weights; random weights only make the text meaningless.
Both sides generate the same tokens (asserted).
"""

from __future__ import annotations

import json
import sys
import tempfile
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
    return {"text-generation": gpt2_dir, "summarization": bart_dir}


def ours(engine, task: str, parameters: dict, key: str) -> list[str]:
    payloads = [{"inputs": p, "parameters": parameters, "options": {"use_cache": False}} for p in PROMPTS]
    return [engine.query(f"bench/{task}", payload)[0][key] for payload in payloads]


def theirs(pipe, kwargs: dict, key: str) -> list[str]:
    return [pipe(p, **kwargs)[0][key] for p in PROMPTS]


def alternate(engine, task: str, parameters: dict, pipe, kwargs: dict, key: str) -> tuple[float, float]:
    """One timed run of each, back to back, so that the machine's drift hits both alike."""
    return (
        timed(lambda: ours(engine, task, parameters, key), repeat=1, warmup=0)[0],
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
    toml.write_text("".join(f'[models."bench/{t}"]\npath = "{f}"\ntask = "{t}"\n\n' for t, f in folders.items()))
    engine = LocalInference(toml, root / "home")
    results: dict = {"torch_threads": torch.get_num_threads(), "new_tokens_per_prompt": NEW_TOKENS}
    for task, folder in folders.items():
        generator = engine.preload(f"bench/{task}").runner.model
        sessions = [generator.session] if task == "text-generation" else [generator.decoder.session]
        past_inputs = sum(i.name.startswith("past_key_values") for s in sessions for i in s.get_inputs())
        pipe = pipeline(task, model=str(folder))
        if task == "text-generation":
            parameters = {"do_sample": False, "max_new_tokens": NEW_TOKENS, "return_full_text": False}
            kwargs, key = dict(parameters), "generated_text"
        else:
            parameters = {"do_sample": False, "min_length": NEW_TOKENS, "max_length": NEW_TOKENS}
            kwargs, key = {**parameters, "max_new_tokens": None}, "summary_text"
        assert_same(ours(engine, task, parameters, key), theirs(pipe, kwargs, key), f"{task} texts")
        tokens = generated_tokens(pipe, kwargs)
        assert tokens == NEW_TOKENS * len(PROMPTS), f"{task}: {tokens} tokens, not {NEW_TOKENS} per prompt"
        pairs = [alternate(engine, task, parameters, pipe, kwargs, key) for _ in range(1 if QUICK else 5)]
        ours_s, theirs_s = median([p[0] for p in pairs]), median([p[1] for p in pairs])
        results[task] = {
            "generated_tokens": tokens,
            "localinfer_tokens_per_s": round(tokens / ours_s, 1),
            "pipeline_tokens_per_s": round(tokens / theirs_s, 1),
            "ratio": round(theirs_s / ours_s, 2),
            "kv_cache": {"use_cache": bool(generator.use_cache), "past_key_value_inputs": past_inputs},
        }
        print(task, json.dumps(results[task]), flush=True)
    path = save(results_name("generation"), results)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
