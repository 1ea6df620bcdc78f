"""The generation tasks answer without torch, optimum or sentence-transformers: a child process in which they
cannot be imported (as in the runtime-only install) answers what this process's engine answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys
for name in ("torch", "optimum", "sentence_transformers"):
    sys.modules[name] = None  # import raises ImportError, as where they are not installed
import localinfer
engine = localinfer.LocalInference(sys.argv[1], sys.argv[2])
queries = json.loads(sys.argv[3])
# the result cache is the parent's: each answer is computed here
fresh = {"use_cache": False}
answers = [engine.query(model, {**payload, "options": fresh}, task=task) for model, payload, task in queries]
model, payload, _ = queries[0]
pieces = list(engine.stream(model, payload))
loaded = sorted(n for n in ("torch", "optimum", "sentence_transformers") if sys.modules.get(n) is not None)
print(json.dumps({"answers": answers, "pieces": pieces, "loaded": loaded}))
"""

GREEDY = {"do_sample": False}
QUERIES = [
    ("tiny/gpt2", {"inputs": "That is a happy", "parameters": {**GREEDY, "max_new_tokens": 6}}, "text-generation"),
    ("tiny/gpt2", {"inputs": "That is a happy", "parameters": {"seed": 4, "max_new_tokens": 6}}, "text-generation"),
    ("tiny/bart", {"inputs": "Today is a sunny day", "parameters": GREEDY}, "summarization"),
    ("tiny/t5", {"inputs": "Today is a sunny day", "parameters": GREEDY}, "translation"),
    ("tiny/marian", {"inputs": "Today is a sunny day", "parameters": GREEDY}, "translation"),
    ("tiny/t5", {"inputs": "Today is a sunny day", "parameters": GREEDY}, "text2text-generation"),
    ("tiny/gpt2-chat", {"inputs": {"text": "Which city?"}, "parameters": GREEDY}, "conversational"),
    ("tiny/blenderbot-small", {"inputs": {"text": "Which city?"}, "parameters": GREEDY}, "conversational"),
    ("tiny/tapex", {"inputs": {"query": "How many stars?", "table": {"Stars": ["36542", "4512"]}}}, None),
]


def test_generation_tasks_answer_without_torch(engine):
    expected = [engine.query(model, payload, task=task) for model, payload, task in QUERIES]  # exports them too
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(engine.models_file), str(engine.home), json.dumps(QUERIES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    child = json.loads(run.stdout.strip().splitlines()[-1])
    assert child["loaded"] == []
    assert child["answers"] == expected
    assert (
        "".join(child["pieces"])
        == engine.query(
            QUERIES[0][0], {**QUERIES[0][1], "parameters": {**QUERIES[0][1]["parameters"], "return_full_text": False}}
        )[0]["generated_text"]
    )
