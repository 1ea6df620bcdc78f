"""localinfer on Ray (`pip install 'localinfer[ray]'`): the map job on Ray Data, a predictor for your own Ray Data
pipelines, and `localinfer serve`'s application on Ray Serve replicas.

- `map_on_ray`: INPUT read by Ray Data (JSON Lines through `JsonLines`, a datasource that splits lines exactly as
  `localinfer.bulk` does; Parquet with `read_parquet`) into the object store before any actor starts, rows
  already in OUTPUT skipped (`split_at_indices`), `map_batches` over an actor pool whose actors each hold one
  engine, and the answers iterated in input order (`preserve_order`) into OUTPUT by the driver, with
  `localinfer.bulk`'s writer: the same lines, the same resuming, as without Ray.
- `Predictor(model_id, task=None, parameters=None)`: a callable class for `Dataset.map_batches`; it reads each
  batch's `inputs` column and adds `result` (JSON text), `error` and `status`.
- `deployment(...)` / `app` (for `serve run localinfer.ray:app models=... num_replicas=2`): a Serve deployment
  whose replicas each build `localinfer.server.create_app` over their own engine, the same application as
  `localinfer serve`, preloaded; replicas on one machine share the home's exports and result cache on disk.

Ray runs offline here: localinfer turns Ray's usage statistics off on import (`RAY_USAGE_STATS_ENABLED=0`,
localinfer/offline.py), a local cluster is started without its dashboard, and the workers inherit the driver's
environment. Models are exported once, by the driver, before any actor starts: actors only load exports (so a
worker can carry the runtime-only install when the exports are shipped with `localinfer export --out`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .bulk import answer_lines, completed_rows, count_rows, is_parquet, write_answers
from .engine import LocalInference
from .errors import MissingExtraError

try:
    import ray
    from ray.data.datasource import FileBasedDatasource
except ModuleNotFoundError as exc:  # the extra is not installed
    raise MissingExtraError(f"localinfer.ray needs Ray: pip install 'localinfer[ray]' ({exc})") from None


class JsonLines(FileBasedDatasource):
    """JSON Lines rows as `localinfer.bulk.read_rows` reads them, one `line` (bytes) per row: split on b"\\n" only
    (Ray's `read_text` splits on every Unicode line break, U+2028 inside a JSON string included, and drops empty
    lines, which are rows here)."""

    def _read_stream(self, f: Any, path: str) -> Iterator[Any]:
        import pyarrow as pa

        lines = f.readall().split(b"\n")
        if lines and lines[-1] == b"":  # the newline that ends the last line
            lines.pop()
        yield pa.table({"line": pa.array([line.rstrip(b"\r") for line in lines], type=pa.binary())})


def _engine(models: str | None, home: str | None, threads: int | None, **kwargs: Any) -> LocalInference:
    return LocalInference(models, home, threads=threads, **kwargs)


class Predictor:
    """For `Dataset.map_batches(Predictor, fn_constructor_kwargs={"model_id": ...}, concurrency=N,
    batch_format="pyarrow")`: one engine per actor (loaded when the actor starts); each batch's `inputs` column
    (and an optional `parameters` column) answered row by row as `query()` answers, batched by the engine.
    Adds `result` (the answer as JSON text, None on error), `error` (None on success) and `status` (200 or the
    error's status)."""

    def __init__(
        self,
        model_id: str,
        task: str | None = None,
        parameters: dict[str, Any] | None = None,
        *,
        models: str | None = None,
        home: str | None = None,
        threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model_id, self.task, self.parameters, self.batch_size = model_id, task, parameters, batch_size
        self.engine = _engine(models, home, threads, max_batch_size=batch_size)
        self.engine.preload(model_id, task=task)

    def lines(self, rows: list[Any]) -> list[bytes]:
        return list(
            answer_lines(
                self.engine,
                self.model_id,
                rows,
                task=self.task,
                parameters=self.parameters,
                batch_size=max(1, min(self.batch_size, len(rows))),
            )
        )

    def __call__(self, batch: Any) -> Any:
        rows = batch.select([name for name in ("inputs", "parameters") if name in batch.column_names]).to_pylist()
        answers = [orjson.loads(line) for line in self.lines(rows)]
        result = [orjson.dumps(a["result"]).decode() if "result" in a else None for a in answers]
        error = [a.get("error") if "result" not in a else None for a in answers]
        status = [200 if "result" in a else a["status"] for a in answers]
        return batch.append_column("result", [result]).append_column("error", [error]).append_column("status", [status])


class _LineMapper(Predictor):
    """The map job's actor: INPUT rows (JSON Lines `line`s, or Parquet rows) to OUTPUT lines."""

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        if "line" in batch.column_names:
            rows: list[Any] = batch.column("line").to_pylist()
        else:
            rows = batch.select([n for n in ("inputs", "parameters") if n in batch.column_names]).to_pylist()
        return {"line": np.array(self.lines(rows), dtype=object)}


def init(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to the Ray cluster at `address`, or start a local one (no dashboard), unless already connected."""
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def map_on_ray(
    model_id: str,
    input_path: Path | str,
    output: Path | str,
    *,
    task: str | None = None,
    parameters: dict[str, Any] | None = None,
    batch_size: int = 32,
    actors: int = 1,
    address: str | None = None,
    models: str | None = None,
    home: str | None = None,
    threads_per_actor: int = 1,
) -> dict[str, int]:
    """`localinfer.bulk.run_map` on Ray Data with `actors` engines: the same OUTPUT lines, in the same order."""
    input_path, output = Path(input_path).resolve(), Path(output)
    models = str(Path(models).resolve()) if models else None
    home = str(Path(home).resolve()) if home else None
    total = count_rows(input_path)
    done = completed_rows(output)
    # Export here, once: actors then only load the export (none of them races another to make it).
    driver = _engine(models, home, None)
    spec, _ = driver.resolve(model_id, task)
    if spec.backend == "onnx":
        driver.export(model_id, task=task)
    init(address)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    # The input is read (into the object store, spilled to disk when large) before any actor starts: the actors
    # may take every CPU of the cluster (2 on 2 CPUs), and a read task waiting for one would never start. Rows
    # already in OUTPUT are then skipped without being answered.
    if is_parquet(input_path):
        dataset = ray.data.read_parquet(str(input_path))
    else:
        dataset = ray.data.read_datasource(JsonLines(str(input_path)))
    dataset = dataset.split_at_indices([done])[1] if done else dataset.materialize()
    dataset = dataset.map_batches(
        _LineMapper,
        fn_constructor_args=(model_id, task, parameters),
        fn_constructor_kwargs={"models": models, "home": home, "threads": threads_per_actor, "batch_size": batch_size},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads_per_actor,
    )
    lines = (
        bytes(line) for batch in dataset.iter_batches(batch_size=None, batch_format="numpy") for line in batch["line"]
    )
    return write_answers(output, lines, total=total, done=done, every=batch_size)


def deployment(
    *,
    models: str | None = None,
    home: str | None = None,
    token: str | None = None,
    num_replicas: int | str = 1,
    autoscaling_config: dict[str, Any] | None = None,
    cpus_per_replica: float = 1,
    max_body_bytes: int | None = None,
    name: str = "localinfer",
) -> Any:
    """A Ray Serve application serving `localinfer serve`'s routes from `num_replicas` replicas (or autoscaled),
    each with its own engine over the shared home, its models preloaded. Run it with `serve.run(...)`."""
    from ray import serve

    from .server import DEFAULT_MAX_BODY, create_app

    models = str(Path(models).resolve()) if models else None
    home = str(Path(home).resolve()) if home else None
    threads = max(1, int(cpus_per_replica))
    body_limit = max_body_bytes or DEFAULT_MAX_BODY

    def build_app() -> Any:  # called in each replica: its own engine, the server's own application
        engine = _engine(models, home, threads, emulate_loading=True, allow_paths=False)
        return create_app(engine, token=token, max_body_bytes=body_limit)

    class Replica:
        pass

    options: dict[str, Any] = {"name": name, "ray_actor_options": {"num_cpus": cpus_per_replica}}
    if autoscaling_config:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = num_replicas
    return serve.deployment(**options)(serve.ingress(build_app)(Replica)).bind()


def app(args: dict[str, str]) -> Any:
    """`serve run localinfer.ray:app models=models.toml home=/srv/localinfer num_replicas=2 token=...`: arguments
    as `deployment` takes them (`min_replicas`/`max_replicas` for autoscaling instead of `num_replicas`)."""
    autoscaling = None
    if "min_replicas" in args or "max_replicas" in args:
        autoscaling = {
            "min_replicas": int(args.get("min_replicas", 1)),
            "max_replicas": int(args.get("max_replicas", 2)),
            "target_ongoing_requests": float(args.get("target_ongoing_requests", 8)),
        }
    return deployment(
        models=args.get("models"),
        home=args.get("home"),
        token=args.get("token"),
        num_replicas=int(args.get("num_replicas", 1)),
        autoscaling_config=autoscaling,
        cpus_per_replica=float(args.get("cpus_per_replica", 1)),
    )
