"""`localinfer map` (localinfer/bulk.py) and its Ray Data run (localinfer/ray.py): every row answered as `query()`
answers it alone, in input order, bad rows as their own error lines, and a job cut off mid-write completed by a
re-run with every row exactly once. The same tests run without Ray and on a local Ray cluster the test starts (2
CPUs, no dashboard); `tests/test_ray_serve.py` covers the Serve deployment."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from localinfer import LocalInference
from localinfer.bulk import LineWriter, completed_rows, count_rows, payload_of, read_rows, run_map
from tests.compare import assert_close

MODEL = "tiny/distilbert-sentiment"
WORDS = "the tower is tall happy sad Paris river person night music good bad old new".split()


def sentences(count: int) -> list[str]:
    """Varied sentences: each row's answer differs from its neighbours' (the order is checked by value)."""
    rng = random.Random(count)
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 12))) for _ in range(count)]


def write_input(path: Path, count: int, bad: dict[int, bytes] | None = None) -> list[bytes]:
    """JSON Lines of bare inputs and payload objects (with parameters), `bad` rows replaced as given."""
    lines = []
    for i, text in enumerate(sentences(count)):
        row = {"inputs": text, "parameters": {"top_k": 1 + i % 2}} if i % 3 == 0 else text
        lines.append(orjson.dumps(row))
    for index, line in (bad or {}).items():
        lines[index] = line
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


BAD = {5: b"not json", 17: b"", 40: b'{"inputs": 5}', 41: b'{"inputs": "x", "parameters": {"top_k": -1}}'}


@pytest.fixture(scope="module")
def own_home(engine, home, tmp_path_factory) -> Path:
    """A home of its own (its own result cache: the expected side never hands the job its answers), sharing the
    session's exports."""
    own = tmp_path_factory.mktemp("map-home")
    (home / "exports").mkdir(parents=True, exist_ok=True)
    (own / "exports").symlink_to(home / "exports", target_is_directory=True)
    return own


def expected_lines(engine: LocalInference, lines: list[bytes]) -> list[dict]:
    """What `query()` answers each row alone (or its error), row by row, on the session's engine."""
    from localinfer.errors import InferenceError

    out = []
    for line in lines:
        try:
            out.append({"result": engine.query(MODEL, payload_of(line))})
        except InferenceError as exc:
            out.append({**exc.body, "status": exc.status})
    return out


def assert_same_lines(output: Path, expected: list[dict]) -> None:
    got = [json.loads(line) for line in output.read_bytes().splitlines()]
    assert len(got) == len(expected)
    for index, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        assert ours.keys() == theirs.keys(), (index, ours, theirs)
        if "result" in theirs:
            assert_close(ours["result"], theirs["result"])
        else:
            assert ours == theirs


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(params=["local", "ray"])
def runner(request, engine, own_home):
    """Runs a map job as `localinfer map` does, without Ray or with `--ray` (2 actors)."""
    if request.param == "local":
        job_engine = LocalInference(engine.models_file, own_home)

        def run(input_path: Path, output: Path, **kwargs):
            return run_map(job_engine, MODEL, input_path, output, **kwargs)

    else:
        request.getfixturevalue("ray_cluster")
        from localinfer.ray import map_on_ray

        def run(input_path: Path, output: Path, **kwargs):
            return map_on_ray(
                MODEL, input_path, output, actors=2, models=str(engine.models_file), home=str(own_home), **kwargs
            )

    run.kind = request.param
    return run


def test_rows_answered_in_order_as_query_answers_them(runner, engine, tmp_path):
    lines = write_input(tmp_path / "in.jsonl", 2000 if runner.kind == "ray" else 600, BAD)
    expected = expected_lines(engine, lines)
    assert len({json.dumps(e) for e in expected}) > len(expected) * 0.9  # rows answer differently: order shows
    assert [e.get("status") for e in expected if "error" in e] == [400, 400, 400, 400]
    summary = runner(tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_size=16)
    assert summary == {"rows": len(lines), "answered": len(lines), "errors": 4, "skipped": 0}
    assert_same_lines(tmp_path / "out.jsonl", expected)
    # A second run finds every row answered and does nothing.
    again = runner(tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_size=16)
    assert again["answered"] == 0 and again["skipped"] == len(lines)


def test_job_parameters_under_the_rows_own(runner, engine, tmp_path):
    lines = write_input(tmp_path / "in.jsonl", 60)
    runner(tmp_path / "in.jsonl", tmp_path / "out.jsonl", parameters={"top_k": 2, "function_to_apply": "sigmoid"})
    expected = []
    for line in lines:
        payload = payload_of(line, {"top_k": 2, "function_to_apply": "sigmoid"})
        expected.append({"result": engine.query(MODEL, payload)})
    assert_same_lines(tmp_path / "out.jsonl", expected)
    assert expected != expected_lines(engine, lines)  # the job's parameters change the answers


class Crash(Exception):
    pass


def test_cut_off_mid_write_then_resumed(runner, engine, tmp_path, monkeypatch):
    """The job dies while writing a line (after some batches reached the disk): the re-run cuts the partial
    line, answers the rest, and every row is in the output exactly once."""
    lines = write_input(tmp_path / "in.jsonl", 300, BAD)
    written = 0
    original = LineWriter.write

    def dying(self, line: bytes) -> None:
        nonlocal written
        written += 1
        if written == 137:
            self.file.write(line[: len(line) // 2])  # half a line reaches the file
            self.sync()
            raise Crash
        original(self, line)

    monkeypatch.setattr(LineWriter, "write", dying)
    with pytest.raises(Crash):
        runner(tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_size=8)
    monkeypatch.setattr(LineWriter, "write", original)
    assert not (tmp_path / "out.jsonl").read_bytes().endswith(b"\n")  # the partial line is there
    assert completed_rows(tmp_path / "out.jsonl") == 136
    summary = runner(tmp_path / "in.jsonl", tmp_path / "out.jsonl", batch_size=8)
    assert summary["skipped"] == 136 and summary["answered"] == len(lines) - 136
    assert_same_lines(tmp_path / "out.jsonl", expected_lines(engine, lines))


def test_parquet_input(runner, engine, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = sentences(50)
    parameters = [json.dumps({"top_k": 2}) if i % 4 == 0 else None for i in range(50)]
    pq.write_table(pa.table({"inputs": texts, "parameters": parameters}), tmp_path / "in.parquet", row_group_size=16)
    runner(tmp_path / "in.parquet", tmp_path / "out.jsonl", batch_size=8)
    expected = [
        {"result": engine.query(MODEL, {"inputs": t, "parameters": json.loads(p)} if p else t)}
        for t, p in zip(texts, parameters, strict=True)
    ]
    assert_same_lines(tmp_path / "out.jsonl", expected)


def test_rows_of_a_file_counted_and_read_alike(tmp_path):
    """Row boundaries: only b"\\n" ends a row (a JSON string may hold U+2028), an empty line is a row, a last line
    without a newline is a row, a CRLF line's CR is not part of it."""
    data = '"a\u2028b"\n\n{"inputs": "c"}\r\n"d"'.encode()
    (tmp_path / "in.jsonl").write_bytes(data)
    assert count_rows(tmp_path / "in.jsonl") == 4
    rows = list(read_rows(tmp_path / "in.jsonl"))
    assert rows == ['"a\u2028b"'.encode(), b"", b'{"inputs": "c"}', b'"d"']
    assert list(read_rows(tmp_path / "in.jsonl", skip=2)) == rows[2:]
    pytest.importorskip("ray")
    from localinfer.ray import JsonLines

    class File:
        def readall(self):
            return data

    table = next(JsonLines(str(tmp_path / "in.jsonl"))._read_stream(File(), "in.jsonl"))
    assert table.column("line").to_pylist() == rows


def test_killed_process_resumes(engine, own_home, tmp_path):
    """A real `localinfer map` killed with SIGKILL mid-job, then run again: every row exactly once."""
    lines = write_input(tmp_path / "in.jsonl", 3000, BAD)
    command = [
        sys.executable, "-m", "localinfer", "-q", "--models", str(engine.models_file), "--home", str(own_home),
        "map", MODEL, str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), "--batch-size", "8",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        out = tmp_path / "out.jsonl"
        if out.exists() and out.stat().st_size > 20000:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the job ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = completed_rows(tmp_path / "out.jsonl")
    assert 0 < done < len(lines)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(finished.stdout)
    assert summary["skipped"] == done and summary["answered"] == len(lines) - done
    assert_same_lines(tmp_path / "out.jsonl", expected_lines(engine, lines))


def test_cli_refuses_bad_job_settings(engine, own_home, tmp_path):
    (tmp_path / "in.jsonl").write_text('"a"\n')
    base = ["--models", str(engine.models_file), "--home", str(own_home), "map", MODEL, str(tmp_path / "in.jsonl")]
    from localinfer.cli import main

    assert main([*base, str(tmp_path / "o1.jsonl"), "--batch-size", "0"]) == 1
    assert main([*base, str(tmp_path / "o2.jsonl"), "--parameters", "[1]"]) == 1
    assert main(["--models", str(engine.models_file), "map", "tiny/nope", str(tmp_path / "in.jsonl"), "o3"]) == 1
