"""Bulk inference over a file: `localinfer map MODEL INPUT OUTPUT`, on this machine or on Ray (localinfer/ray.py).

INPUT is JSON Lines (each line a payload object with `inputs` and optional `parameters` and `options`, or a bare
input value: a string, or a task's input object such as QA's `{"question", "context"}`) or Parquet (an `inputs`
column, and optionally a `parameters` column of JSON text or structs). OUTPUT is JSON Lines, one line per input
row in input order: `{"result": ...}`, or the error `query()` raises with its status, `{"error": "...", "status":
N}`. A bad row is recorded and the job goes on.

Resuming: OUTPUT's complete lines are rows already answered. A line is written with its newline in one write and
the file is flushed and synced after each batch, so a crash leaves at most one partial last line; a re-run cuts it
off and continues with the first row without a complete line, so every row is answered exactly once.

Batching: rows go through `LocalInference.answer` one by one, from `batch_size` threads, so each row answers
exactly what `query()` answers it alone (its own parameters, errors and cache entry) while the engine's request
batching (localinfer/batching.py, when the engine has it enabled) runs the rows that wait together as one forward
pass: the splitting of batched answers per task lives in one place, not here.
"""

from __future__ import annotations

import base64
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .engine import LocalInference
from .errors import BadRequestError, InferenceError, MissingExtraError

PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def count_rows(path: Path) -> int:
    """How many rows INPUT holds: lines of a JSON Lines file (a last line without a newline counts), a Parquet
    file's rows from its footer."""
    if is_parquet(path):
        return _parquet(path).metadata.num_rows
    lines, last = 0, b"\n"
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def read_rows(path: Path, skip: int = 0) -> Iterator[Any]:
    """INPUT's rows from row `skip` on: each a JSON Lines line's bytes (parsed by `payload_of`, so that a line
    that is not JSON is that row's error), or a Parquet row as a dict."""
    if is_parquet(path):
        yield from _parquet_rows(path, skip)
        return
    with path.open("rb") as file:
        for index, line in enumerate(file):
            if index >= skip:
                yield line.rstrip(b"\r\n")


def _parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise MissingExtraError("reading Parquet needs pyarrow: pip install 'localinfer[ray]' (or pyarrow)") from None
    return pq.ParquetFile(path)


def _parquet_rows(path: Path, skip: int) -> Iterator[dict[str, Any]]:
    file = _parquet(path)
    names = file.schema_arrow.names
    if "inputs" not in names:
        raise BadRequestError(f"{path}: a Parquet input needs an `inputs` column (it has {', '.join(names)})")
    columns = [name for name in ("inputs", "parameters") if name in names]
    seen = 0
    for batch in file.iter_batches(batch_size=4096, columns=columns):
        if seen + batch.num_rows <= skip:
            seen += batch.num_rows
            continue
        rows = batch.to_pylist()
        yield from rows[max(0, skip - seen) :]
        seen += batch.num_rows


def payload_of(row: Any, parameters: dict[str, Any] | None = None) -> Any:
    """The `query()` payload of one INPUT row, with the job's `parameters` beneath the row's own."""
    if isinstance(row, bytes):
        if not row.strip():
            raise BadRequestError("empty line: expected a JSON payload or input")
        try:
            row = orjson.loads(row)
        except orjson.JSONDecodeError as exc:
            raise BadRequestError(f"the line is not JSON: {exc}") from None
    elif isinstance(row, dict) and "inputs" in row:  # a Parquet row
        row = {key: value for key, value in row.items() if value is not None}
        if isinstance(row.get("parameters"), str):
            try:
                row["parameters"] = orjson.loads(row["parameters"])
            except orjson.JSONDecodeError as exc:
                raise BadRequestError(f"parameters: not JSON: {exc}") from None
        if isinstance(row["inputs"], bytes):  # a media file: the payload's base64 form carries parameters
            if not row.get("parameters") and not parameters:
                return row["inputs"]
            row["inputs"] = base64.b64encode(row["inputs"]).decode("ascii")
    if not parameters:
        return row
    if isinstance(row, dict) and "inputs" in row:
        own = row.get("parameters")
        merged = {**parameters, **own} if isinstance(own, dict) else own if own is not None else parameters
        return {**row, "parameters": merged}
    return {"inputs": row, "parameters": parameters}


def answer_line(engine: LocalInference, model_id: str, row: Any, *, task: str | None, parameters: Any) -> bytes:
    """One OUTPUT line (with its newline) for one INPUT row: its result or its error."""
    try:
        result = {"result": engine.query(model_id, payload_of(row, parameters), task=task)}
    except InferenceError as exc:
        result = {**exc.body, "status": exc.status}
    except Exception as exc:  # noqa: BLE001 - a row's failure is that row's answer, never the job's end
        result = {"error": f"unexpected failure: {type(exc).__name__}: {exc}", "status": 500}
    return orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def answer_lines(
    engine: LocalInference,
    model_id: str,
    rows: Iterable[Any],
    *,
    task: str | None = None,
    parameters: dict[str, Any] | None = None,
    batch_size: int = 32,
) -> Iterator[bytes]:
    """OUTPUT lines for `rows`, in order, computed `batch_size` at a time (and up to twice that in flight, so
    the next batch gathers while one runs)."""
    with ThreadPoolExecutor(max_workers=batch_size, thread_name_prefix="localinfer-map") as pool:
        pending: deque[Future[bytes]] = deque()
        for row in rows:
            pending.append(pool.submit(answer_line, engine, model_id, row, task=task, parameters=parameters))
            if len(pending) >= 2 * batch_size:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def completed_rows(output: Path) -> int:
    """Rows OUTPUT already answers: its complete lines. A partial last line (a crash mid-write) is cut off."""
    if not output.exists():
        return 0
    lines, end = 0, 0
    with output.open("rb") as file:
        offset = 0
        while chunk := file.read(1 << 20):
            count = chunk.count(b"\n")
            if count:
                lines += count
                end = offset + chunk.rindex(b"\n") + 1
            offset += len(chunk)
    if end != offset:
        with output.open("r+b") as file:
            file.truncate(end)
    return lines


class LineWriter:
    """Appends OUTPUT lines; flushed and synced to disk every `every` lines and on close."""

    def __init__(self, output: Path, every: int = 32) -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        self.file: BinaryIO = output.open("ab")
        self.every, self.unsynced = every, 0

    def write(self, line: bytes) -> None:
        self.file.write(line)
        self.unsynced += 1
        if self.unsynced >= self.every:
            self.sync()

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.unsynced = 0

    def close(self) -> None:
        self.sync()
        self.file.close()

    def __enter__(self) -> LineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, done: int) -> Any:
    """A progress bar with rows per second on a terminal (stderr), nothing otherwise."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="row", dynamic_ncols=True, disable=None, smoothing=0.1)


def write_answers(output: Path, lines: Iterable[bytes], *, total: int, done: int, every: int = 32) -> dict[str, int]:
    """Append OUTPUT `lines` (the answers to the rows after the `done` already there) with a progress bar; the
    job's summary."""
    answered = errors = 0
    with LineWriter(output, every=every) as writer, progress(total, done) as bar:
        for line in lines:
            writer.write(line)
            answered += 1
            errors += line.startswith(b'{"error"')
            bar.update(1)
    return {"rows": total, "answered": answered, "errors": errors, "skipped": done}


def run_map(
    engine: LocalInference,
    model_id: str,
    input_path: Path | str,
    output: Path | str,
    *,
    task: str | None = None,
    parameters: dict[str, Any] | None = None,
    batch_size: int = 32,
) -> dict[str, int]:
    """Answer every INPUT row into OUTPUT (resuming after its complete lines); the rows answered now and errors."""
    input_path, output = Path(input_path), Path(output)
    total = count_rows(input_path)
    done = completed_rows(output)
    engine.preload(model_id, task=task)  # load (and export) once, before the threads ask for it
    rows = read_rows(input_path, skip=done)
    lines = answer_lines(engine, model_id, rows, task=task, parameters=parameters, batch_size=batch_size)
    return write_answers(output, lines, total=total, done=done, every=batch_size)
