"""Interception benchmark (issue 15): the per-call cost of answering `requests.post(<hosted API URL>)` in-process
through `localinfer.testing.intercept`, against a direct `query()` of the same payload, in one run.

Run: python benchmarks/bench_intercept.py    (writes benchmarks/results/intercept.json)
     python benchmarks/bench_intercept.py --quick    (a few calls: proves it runs, times nothing)

Both sides answer from the result cache (the payload is asked once before timing), so the model's run does not
hide the cost being measured: what interception adds is requests' session and request preparation, the adapter,
the route, the header options, JSON encoding of the answer and decoding by `response.json()`. Also timed:
`InferenceClient(model=<id>).sentence_similarity` (its Hub lookups are memoised by huggingface_hub after the first
call), and the interceptor's own share: `Interceptor.respond` on the body bytes (route, engine call, the response's
JSON and headers) without requests around it. The answers are asserted equal before the figures are reported.
Median microseconds per call.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checks import QUICK, assert_same, results_name  # noqa: E402
from common import median, save, timed  # noqa: E402

from localinfer import LocalInference  # noqa: E402
from localinfer.engine import PACKAGED_MODELS  # noqa: E402
from localinfer.testing import intercept  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
URL = f"https://api-inference.huggingface.co/models/{MINILM}"
SENTENCES = ["That is a happy dog", "That is a very happy person", "Today is a sunny day"]
PAYLOAD = {"inputs": {"source_sentence": "That is a happy person", "sentences": SENTENCES}}
REPEAT = 20 if QUICK else 2000
ROUNDS = 1 if QUICK else 5


def main() -> None:
    import orjson
    import requests  # after localinfer: huggingface_hub is imported offline
    from huggingface_hub import InferenceClient

    engine = LocalInference(PACKAGED_MODELS)  # MiniLM, the real weights
    session = requests.Session()
    client = InferenceClient(model=MINILM)
    with intercept(engine) as api:
        direct = engine.query(MINILM, PAYLOAD)  # computes once: every call below is a cache hit
        assert_same(session.post(URL, json=PAYLOAD).json(), direct, "requests.Session.post")
        assert_same(requests.post(URL, json=PAYLOAD).json(), direct, "requests.post")
        assert_same(client.sentence_similarity("That is a happy person", SENTENCES), direct, "InferenceClient")
        assert all(call.status == 200 for call in api.calls)
        body, headers = orjson.dumps(PAYLOAD), {"content-type": "application/json"}
        assert_same(orjson.loads(api.respond("POST", URL, headers, body).body), direct, "Interceptor.respond")
        figures: dict[str, list[float]] = {
            "query": [],
            "respond": [],
            "session_post": [],
            "requests_post": [],
            "client": [],
        }
        for _ in range(ROUNDS):  # interleaved, so that a noisy neighbour slows every side alike
            figures["query"] += timed(lambda: engine.query(MINILM, PAYLOAD), repeat=REPEAT)
            figures["respond"] += timed(
                lambda: orjson.loads(api.respond("POST", URL, headers, body).body), repeat=REPEAT
            )
            figures["session_post"] += timed(lambda: session.post(URL, json=PAYLOAD).json(), repeat=REPEAT)
            figures["requests_post"] += timed(lambda: requests.post(URL, json=PAYLOAD).json(), repeat=REPEAT)
            figures["client"] += timed(
                lambda: client.sentence_similarity("That is a happy person", SENTENCES), repeat=REPEAT // 4
            )
    us = {name: round(median(times) * 1e6, 1) for name, times in figures.items()}
    results = {
        "median_us": us,
        "overhead_us": {name: round(us[name] - us["query"], 1) for name in us if name != "query"},
        "calls_per_side": REPEAT * ROUNDS,
    }
    print(results)
    print(f"wrote {save(results_name('intercept'), results)}")


if __name__ == "__main__":
    main()
