"""Dynamic batching: the Batcher alone, then concurrent engine requests answered as each is answered alone."""

from __future__ import annotations

import io
import itertools
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from localinfer import BadRequestError, LocalInference
from localinfer.batching import Batcher
from tests.conftest import SENTENCES, assert_close, is_close
from tests.fixtures.tiny_models import write_models_toml

SAMPLES = Path(__file__).parent / "samples"


def _until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


# -- the Batcher alone -----------------------------------------------------------------------------------------------


class Recorder:
    """A run_many that records each batch; the first batch waits for `release` while `hold` is set."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.running = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, inputs: list[Any]) -> list[Any]:
        self.batches.append(list(inputs))
        self.running.set()
        assert self.release.wait(20)
        if any(item == "bad" for item in inputs):
            raise ValueError("a bad input")
        return [f"answer to {item}" for item in inputs]


def _submit_while_busy(batcher: Batcher, run_many: Recorder, first: Any, others: list[Any]) -> list[Any]:
    """`first` holds the model (its batch waits for `run_many.release`) while `others` queue in that order; then the
    model is released. Each request's answer, or the exception it raised."""

    def submit(item):
        try:
            return batcher.submit("key", item, run_many)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(1 + len(others)) as pool:
        futures = [pool.submit(submit, first)]
        assert run_many.running.wait(20)
        for count, item in enumerate(others, 1):
            futures.append(pool.submit(submit, item))
            _until(lambda count=count: batcher.queue_depth() == count)  # in arrival order
        run_many.release.set()
        return [future.result(timeout=20) for future in futures]


def test_a_lone_request_runs_at_once_whatever_the_wait():
    batcher, run_many = Batcher(max_batch_size=32, max_wait_s=5.0), Recorder()
    for item in ("a", "b"):
        started = time.perf_counter()
        assert batcher.submit("key", item, run_many) == f"answer to {item}"
        assert time.perf_counter() - started < 0.5
    assert run_many.batches == [["a"], ["b"]]


def test_requests_arriving_while_the_model_runs_form_the_next_batch_in_order():
    batcher, run_many = Batcher(max_batch_size=32, max_wait_s=0.0), Recorder(hold=True)
    answers = _submit_while_busy(batcher, run_many, "a", ["b", "c", "d"])
    assert answers == ["answer to a", "answer to b", "answer to c", "answer to d"]
    assert run_many.batches == [["a"], ["b", "c", "d"]]
    assert batcher.queue_depth() == 0


def test_batches_are_capped_at_max_batch_size():
    batcher, run_many = Batcher(max_batch_size=2, max_wait_s=0.0), Recorder(hold=True)
    answers = _submit_while_busy(batcher, run_many, 0, [1, 2, 3, 4, 5])
    assert answers == [f"answer to {i}" for i in range(6)]
    assert run_many.batches == [[0], [1, 2], [3, 4], [5]]


def test_keys_do_not_mix():
    batcher, run_many = Batcher(max_batch_size=32, max_wait_s=0.0), Recorder(hold=True)
    other = Recorder()
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(batcher.submit, "key", "a", run_many)
        assert run_many.running.wait(20)
        assert pool.submit(batcher.submit, "other key", "x", other).result(20) == "answer to x"  # not behind "a"
        run_many.release.set()
        assert held.result(20) == "answer to a"
    assert other.batches == [["x"]] and run_many.batches == [["a"]]


def test_a_failed_batch_is_retried_one_request_at_a_time():
    batcher, run_many = Batcher(max_batch_size=32, max_wait_s=0.0), Recorder(hold=True)
    answers = _submit_while_busy(batcher, run_many, "a", ["b", "bad", "d"])
    assert answers[:2] == ["answer to a", "answer to b"] and answers[3] == "answer to d"
    assert isinstance(answers[2], ValueError) and str(answers[2]) == "a bad input"
    assert run_many.batches == [["a"], ["b", "bad", "d"], ["b"], ["bad"], ["d"]]


def test_a_batch_waits_for_as_many_as_the_last_one_held():
    """After a batch of three, the next batch waits (up to max_wait) for three requests, not for the first alone."""
    batcher, run_many = Batcher(max_batch_size=32, max_wait_s=5.0), Recorder(hold=True)
    _submit_while_busy(batcher, run_many, "a", ["b", "c", "d"])
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batcher.submit, "key", "e", run_many)]
        time.sleep(0.05)  # "e" leads and waits for company
        futures += [pool.submit(batcher.submit, "key", item, run_many) for item in ("f", "g")]
        assert [f.result(20) for f in futures] == ["answer to e", "answer to f", "answer to g"]
    assert run_many.batches[-1] == ["e", "f", "g"]
    started = time.perf_counter()  # no company comes: the wait ends at max_wait, then a lone batch never waits
    assert Batcher(max_batch_size=32, max_wait_s=0.1).submit("key", "h", run_many) == "answer to h"
    assert time.perf_counter() - started < 0.5


def test_max_batch_size_below_two_runs_each_alone_concurrently():
    for size in (0, 1):
        batcher, run_many = Batcher(max_batch_size=size, max_wait_s=0.0), Recorder(hold=True)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(batcher.submit, "key", item, run_many) for item in "abc"]
            _until(lambda run_many=run_many: len(run_many.batches) == 3)  # all three run at once, none queued
            run_many.release.set()
            assert [f.result(20) for f in futures] == ["answer to a", "answer to b", "answer to c"]
        assert sorted(run_many.batches) == [["a"], ["b"], ["c"]]


def test_negative_settings_are_refused():
    with pytest.raises(ValueError):
        Batcher(max_batch_size=-1)
    with pytest.raises(ValueError):
        Batcher(max_wait_s=-0.001)


# -- the engine: concurrent requests against each alone ----------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(tiny, home, tmp_path_factory) -> tuple[LocalInference, LocalInference]:
    """A batching engine and one that runs every request alone; each its own result cache, both reading the session
    home's exports (a symlink) rather than exporting the tiny models again."""
    root = tmp_path_factory.mktemp("batching")
    toml = write_models_toml(root / "models.toml", tiny)
    (home / "exports").mkdir(parents=True, exist_ok=True)
    made = []
    for name, size in (("batched", 32), ("alone", 0)):
        (root / name).mkdir()
        (root / name / "exports").symlink_to(home / "exports", target_is_directory=True)
        made.append(LocalInference(toml, root / name, max_batch_size=size, max_batch_wait_ms=2.0))
    yield made[0], made[1]
    for engine in made:
        engine.close()


class Gate:
    """A model's runner, recording the batch size of each forward pass; while closed, a pass waits until it opens."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.passes: list[int] = []
        self.open = threading.Event()
        self.open.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)

    def run(self, feeds: dict[str, np.ndarray], *args: Any, **kwargs: Any) -> Any:
        self.passes.append(len(next(iter(feeds.values()))))
        assert self.open.wait(20)
        return self.runner.run(feeds, *args, **kwargs)


def _outcome(engine: LocalInference, model_id: str, payload: Any, task: str | None) -> Any:
    try:
        return engine.answer(model_id, payload, task=task)
    except Exception as exc:
        return exc


def together(
    engine: LocalInference,
    model_id: str,
    payloads: list[Any],
    task: str | None = None,
    *,
    leading: int = 1,
    while_queued: Any = None,
):
    """The payloads' answers (or errors) when the first `leading` hold the model (each in its forward pass) until
    all the others queue behind them (then `while_queued()` is called), and the batch size of each forward pass."""
    model = engine.preload(model_id, task=task)
    gate = model.runner = Gate(model.runner)
    gate.open.clear()
    try:
        with ThreadPoolExecutor(len(payloads)) as pool:
            futures = []
            for count, payload in enumerate(payloads[:leading], 1):
                futures.append(pool.submit(_outcome, engine, model_id, payload, task))
                _until(lambda count=count: len(gate.passes) == count)
            futures += [pool.submit(_outcome, engine, model_id, payload, task) for payload in payloads[leading:]]
            _until(lambda: engine.queue_depth(model_id) == len(payloads) - leading)
            if while_queued is not None:
                while_queued()
            gate.open.set()
            outcomes = [future.result(timeout=60) for future in futures]
    finally:
        model.runner = gate.runner
    return outcomes, gate.passes


def _uncached(inputs: Any, parameters: dict | None = None) -> dict:
    return {"inputs": inputs, "parameters": parameters or {}, "options": {"use_cache": False}}


def _image(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _tone(frequency: float, seconds: float = 0.5, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * frequency * t) * 0.3 + 0.05 * np.sin(2 * np.pi * 3 * frequency * t)) * 32767
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


NLI = {"candidate_labels": ["refund", "legal", "faq"]}
QA_CONTEXT = "My name is Clara and I live in Berkeley. Sarah lives in London and works at the bank."
CASES = {
    "feature-extraction (token features)": ("tiny/bert-base", None, [_uncached(s) for s in SENTENCES[:4]]),
    "feature-extraction (sentence embeddings)": (
        "tiny/st-mean-normalize",
        "feature-extraction",
        [_uncached(SENTENCES[0]), _uncached(SENTENCES[1:3]), _uncached(SENTENCES[3]), _uncached("a b c d e f g h")],
    ),
    "sentence-similarity": (
        "tiny/st-cls",
        None,
        [
            _uncached({"source_sentence": s, "sentences": [SENTENCES[(i + 1) % 4], "a happy dog"]})
            for i, s in enumerate(SENTENCES[:4])
        ],
    ),
    "text-classification": (
        "tiny/distilbert-sentiment",
        None,
        [
            _uncached("I like you. I love you"),
            _uncached(["I hate this", "It is fine, I guess, but the long ending drags on"]),
            _uncached({"text": "Is it good?", "text_pair": "It is wonderful"}),
            _uncached("Worst day ever"),
        ],
    ),
    "token-classification": (
        "tiny/bert-ner",
        None,
        [_uncached(s) for s in ["My name is Sarah and I live in London", "Jessica Parker", "Today is a sunny day"]]
        + [_uncached(["Clara lives in Berkeley", "unknown words: zebra quokka"])],
    ),
    "question-answering": (
        "tiny/bert-qa",
        None,
        [
            _uncached({"question": question, "context": QA_CONTEXT}, {"top_k": 2})
            for question in ("What's my name?", "Where does Sarah live?", "Who works at the bank?", "Where?")
        ],
    ),
    "zero-shot-classification": (
        "tiny/bert-nli",
        None,
        [_uncached(s, NLI) for s in SENTENCES[:3]] + [_uncached(["it is broken", "see you in court"], NLI)],
    ),
    "fill-mask": (
        "tiny/bert-mlm",
        None,
        [_uncached(f"{s} [MASK].") for s in SENTENCES[:3]] + [_uncached("The [MASK] is [MASK] today")],
    ),
    "image-classification": (
        "tiny/vit",
        None,
        [
            (SAMPLES / "plane.jpg").read_bytes(),
            _image(1, (40, 30)),
            (SAMPLES / "plane2.jpg").read_bytes(),
            _image(2, (17, 60)),
        ],
    ),
    "audio-classification": ("tiny/wav2vec2-classifier", None, [_tone(f) for f in (220.0, 440.0, 1000.0, 3000.0)]),
}


@pytest.mark.parametrize("case", CASES)
def test_concurrent_requests_answer_what_each_answers_alone(engines, case):
    batched, alone = engines
    model_id, task, payloads = CASES[case]
    expected = [alone.answer(model_id, payload, task=task).result for payload in payloads]
    for one, other in itertools.combinations(expected, 2):  # a request given a neighbour's answer would be seen
        assert not is_close(one, other, 1e-6)
    outcomes, passes = together(batched, model_id, payloads, task)
    for outcome, want in zip(outcomes, expected, strict=True):
        assert not isinstance(outcome, Exception), outcome
        assert_close(outcome.result, want, 1e-6)
        assert not outcome.cached
    assert len(passes) == 2  # the first request alone, then all the others in one forward pass


def test_clips_of_other_lengths_run_in_their_own_pass(engines):
    batched, alone = engines
    # frequencies no other test sends: a clip the batching engine has answered before is a cache hit, never queued
    clips = [_tone(330.0), _tone(247.0), _tone(440.0, seconds=0.7), _tone(1100.0)]
    outcomes, passes = together(batched, "tiny/wav2vec2-classifier", clips)
    for outcome, clip in zip(outcomes, clips, strict=True):
        assert_close(outcome.result, alone.query("tiny/wav2vec2-classifier", clip), 1e-6)
    assert sorted(passes[1:]) == [1, 2]  # behind the first: the two 0.5 s clips together, the 0.7 s one alone


def test_requests_with_other_parameters_are_not_batched_together(engines):
    batched, alone = engines
    tops = (1, 2, 1, 2, 1, 2)
    payloads = [_uncached(f"I like you {i} times", {"top_k": k}) for i, k in enumerate(tops)]
    outcomes, passes = together(batched, "tiny/distilbert-sentiment", payloads, leading=2)
    for outcome, payload in zip(outcomes, payloads, strict=True):
        assert_close(outcome.result, alone.answer("tiny/distilbert-sentiment", payload).result, 1e-6)
    assert [len(outcome.result[0]) for outcome in outcomes] == list(tops)
    assert sorted(passes) == [1, 1, 2, 2]  # the first of each parameter set, then one batch of each


def test_a_bad_request_among_good_ones_gets_its_own_error(engines):
    batched, alone = engines
    texts = ["Paris is the [MASK] of France.", "no mask token here", "The [MASK] is blue.", "A [MASK] day."]
    outcomes, passes = together(batched, "tiny/bert-mlm", [_uncached(t) for t in texts])
    assert isinstance(outcomes[1], BadRequestError) and outcomes[1].status == 400
    assert "no mask token" in outcomes[1].message
    for index in (0, 2, 3):
        assert_close(outcomes[index].result, alone.query("tiny/bert-mlm", _uncached(texts[index])), 1e-6)
    assert passes == [1, 1, 1]  # the batch of three failed as a whole (before its pass): the good two ran alone


def test_each_request_has_its_own_cache_entry_and_a_hit_never_queues(engines):
    batched, _ = engines
    model_id = "tiny/distilbert-sentiment"
    payloads = [{"inputs": f"cache entry number {i}"} for i in range(5)]
    first, passes = together(batched, model_id, payloads)
    assert [a.cached for a in first] == [False] * 5 and len(passes) == 2
    second = [batched.answer(model_id, payload) for payload in payloads]
    assert [a.cached for a in second] == [True] * 5
    assert [a.result for a in second] == [a.result for a in first]
    # While the model is held by a running batch, a cached request answers at once.
    model = batched.preload(model_id)
    gate = model.runner = Gate(model.runner)
    gate.open.clear()
    try:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(batched.answer, model_id, _uncached("holding the model"))
            _until(lambda: gate.passes)
            assert batched.answer(model_id, payloads[2]).cached
            gate.open.set()
            assert not held.result(20).cached
    finally:
        model.runner = gate.runner


def test_the_models_listing_reports_each_models_queue_depth(engines):
    from localinfer.server import _registry

    batched, _ = engines
    seen: dict[str, int] = {}

    def look() -> None:
        seen.update({entry["model_id"]: entry["queue_depth"] for entry in _registry(batched)})

    together(batched, "tiny/bert-base", [_uncached(s) for s in SENTENCES[:4]], while_queued=look)
    assert seen["tiny/bert-base"] == 3 and seen["tiny/bert-mlm"] == 0
    assert {entry["queue_depth"] for entry in _registry(batched)} == {0}


def test_a_lone_request_is_one_pass_without_a_wait(tiny, engines, tmp_path):
    batched, _ = engines
    patient = LocalInference(batched.models_file, batched.home, max_batch_wait_ms=5000)
    model = patient.preload("tiny/bert-base")
    gate = model.runner = Gate(model.runner)
    try:
        for sentence in SENTENCES[:3]:
            started = time.perf_counter()
            patient.answer("tiny/bert-base", _uncached(sentence))
            assert time.perf_counter() - started < 1.0
        assert gate.passes == [1, 1, 1]
    finally:
        patient.close()


# -- the server ------------------------------------------------------------------------------------------------------


def test_concurrent_http_requests_with_a_bad_one_and_the_queue_in_models(tiny, home, engines, tmp_path):
    from tests.test_server import Server

    _, alone = engines
    toml = write_models_toml(tmp_path / "models.toml", tiny)
    server = Server(toml, home, "--no-preload", "--max-batch-size", "8", "--max-batch-wait-ms", "5")
    texts = [f"Request number {i} is the [MASK] one." for i in range(15)] + ["no mask token here"]
    try:
        url = f"{server.url}/models/tiny/bert-mlm"
        headers = {"x-wait-for-model": "true", "x-use-cache": "false"}
        assert requests.post(url, json={"inputs": "a [MASK]"}, headers=headers, timeout=120).status_code == 200
        with ThreadPoolExecutor(len(texts)) as pool:
            responses = list(
                pool.map(lambda t: requests.post(url, json={"inputs": t}, headers=headers, timeout=60), texts)
            )
        listed = {entry["model_id"]: entry for entry in requests.get(f"{server.url}/models", timeout=10).json()}
    finally:
        server.stop()
    assert responses[-1].status_code == 400 and "no mask token" in responses[-1].json()["error"]
    for text, response in zip(texts[:-1], responses, strict=False):
        assert response.status_code == 200, response.text
        assert_close(response.json(), alone.query("tiny/bert-mlm", _uncached(text)), 1e-6)
    assert listed["tiny/bert-mlm"]["queue_depth"] == 0 and listed["tiny/bert-mlm"]["state"] == "ready"


def test_serve_refuses_negative_batch_settings(capsys):
    from localinfer.cli import main

    for flag in ("--max-batch-size", "--max-batch-wait-ms"):
        with pytest.raises(SystemExit):
            main(["serve", flag, "-1"])
        assert "must not be negative" in capsys.readouterr().err
