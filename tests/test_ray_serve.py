"""`localinfer.ray.deployment`: `localinfer serve`'s application on 2 Ray Serve replicas (a local cluster the test
starts: 2 CPUs, no dashboard) answers InferenceClient calls as the engine answers them in-process, and errors in
the hosted API's shape."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.compare import assert_close
from tests.fixtures.inference_client_calls import client_calls, to_json
from tests.fixtures.tiny_models import write_models_toml

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SAMPLES = Path(__file__).parent / "samples"
CLIENT_CALLS = client_calls(SAMPLES)


@pytest.fixture(scope="module")
def served(engine, tiny, home, tmp_path_factory):
    """The deployment with 2 replicas over the models the client calls use (each exported once, beforehand)."""
    from localinfer.ray import deployment

    root = tmp_path_factory.mktemp("serve")
    used = sorted({call.model for call in CLIENT_CALLS.values()} | {"tiny/distilbert-sentiment"})
    toml = write_models_toml(
        root / "models.toml",
        {m.removeprefix("tiny/"): tiny[m.removeprefix("tiny/")] for m in used if m.startswith("tiny/")},
    )
    for model_id in used:
        engine.export(model_id)
    own = root / "home"  # its own result cache; the session's exports
    own.mkdir()
    (home / "exports").mkdir(parents=True, exist_ok=True)
    (own / "exports").symlink_to(home / "exports", target_is_directory=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        deployment(models=str(toml), home=str(own), num_replicas=2, cpus_per_replica=0.5),
        name="localinfer",
        route_prefix="/",
    )
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def client_results(served) -> dict:
    """Each InferenceClient method's result against the replicas, run where HF_HUB_OFFLINE is unset (as a user's;
    tests/test_server.py runs the same script against `localinfer serve`)."""
    script = Path(__file__).parent / "fixtures" / "inference_client_calls.py"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run(
        [sys.executable, str(script), served, str(SAMPLES)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_replicas_running(served):
    status = serve.status().applications["localinfer"]
    assert status.status == "RUNNING"
    (replicas,) = [d.replica_states for d in status.deployments.values()]
    assert replicas.get("RUNNING") == 2


def test_inference_client_answers_as_the_engine(client_results, engine):
    """Every one of the 15 InferenceClient methods (their comparisons are proven able to fail in test_server.py):
    what the client makes of the replicas' answers equals the engine's in-process answer, reshaped alike."""
    assert set(client_results) == set(CLIENT_CALLS)
    for method, call in CLIENT_CALLS.items():
        result = client_results[method]
        assert not (isinstance(result, str) and result.startswith("ERROR")), (method, result)
        assert_close(result, to_json(call.shape(engine.query(call.model, call.payload))), 1e-5, method)


def test_errors_in_the_hosted_shape(served):
    wait = {"x-wait-for-model": "true"}
    bad = requests.post(f"{served}/models/tiny/distilbert-sentiment", json={"inputs": 5}, headers=wait, timeout=60)
    assert bad.status_code == 400 and "inputs" in bad.json()["error"]
    missing = requests.post(f"{served}/models/tiny/nope", json={"inputs": "a"}, timeout=60)
    assert missing.status_code == 404 and "error" in missing.json()
    listed = requests.get(f"{served}/models", timeout=60).json()
    assert any(entry["model_id"] == "tiny/distilbert-sentiment" for entry in listed)
