"""The `localinfer` command: query, list and export models. A thin adapter over LocalInference."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .batching import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_WAIT_MS
from .engine import LocalInference
from .errors import BadRequestError, InferenceError
from .limits import Limits
from .registry import PRECISIONS


def _payload(data: str) -> Any:
    """`--data`: JSON text, or `@path` for a file's bytes (JSON, text or a media file)."""
    if data.startswith("@"):
        return Path(data[1:]).expanduser().read_bytes()
    return data.encode("utf-8")


def _not_negative(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" message
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localinfer", description=__doc__)
    parser.add_argument("--models", help="models.toml to use (default: $LOCALINFER_MODELS, ./models.toml, packaged)")
    parser.add_argument("--home", help="where exports and the result cache live (default: $LOCALINFER_HOME)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    bounds = parser.add_argument_group("request bounds (beyond one, a request answers 4xx naming it)")
    for field in dataclasses.fields(Limits):
        bounds.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), help=f"default {field.default}"
        )
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("query", help="answer one request and print its JSON")
    ask.add_argument("model_id")
    ask.add_argument("--data", required=True, help="the payload: JSON, or @FILE (JSON, text or a media file)")
    ask.add_argument("--task", help="override the model's task")
    commands.add_parser("models", help="list the registry: task, backend, whether an export exists")
    export = commands.add_parser("export", help="export a model to ONNX ahead of time")
    export.add_argument("model_id")
    export.add_argument(
        "--out", help="write a self-contained folder (ONNX, tokenizer and processor files, manifest) to ship"
    )
    export.add_argument("--task", help="override the model's task")
    export.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 (default) or int8: quantised, its drift from fp32 measured and recorded (overrides models.toml)",
    )
    bulk = commands.add_parser(
        "map", help="answer every row of a JSON Lines or Parquet file into a JSON Lines file (resumable)"
    )
    bulk.add_argument("model_id")
    bulk.add_argument("input", help="JSON Lines (a payload or a bare input per line) or .parquet (an inputs column)")
    bulk.add_argument("output", help="JSON Lines: one {result} or {error, status} per row; a re-run resumes it")
    bulk.add_argument("--task", help="override the model's task")
    bulk.add_argument("--parameters", type=json.loads, help="JSON parameters for every row (a row's own win)")
    bulk.add_argument("--batch-size", type=int, default=32, help="rows answered together (default 32)")
    bulk.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on Ray Data: the cluster at ADDRESS, else a local one",
    )
    bulk.add_argument("--actors", type=int, default=1, help="with --ray: engines (Ray actors) answering rows")
    serve = commands.add_parser("serve", help="serve the hosted Inference API's routes over HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--token",
        default=os.environ.get("LOCALINFER_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' (default: $LOCALINFER_TOKEN; none: any token)",
    )
    serve.add_argument("--no-preload", action="store_true", help="load models on first request, not at start-up")
    serve.add_argument("--max-body-size", type=int, default=50 * 1024 * 1024, help="bytes; larger bodies are 413")
    serve.add_argument(
        "--max-batch-size",
        type=_not_negative(int),
        default=DEFAULT_MAX_BATCH_SIZE,
        help="concurrent requests of one model, task and parameters run as one batch of at most this many "
        f"(0 or 1: each alone; default {DEFAULT_MAX_BATCH_SIZE})",
    )
    serve.add_argument(
        "--max-batch-wait-ms",
        type=_not_negative(float),
        default=DEFAULT_MAX_BATCH_WAIT_MS,
        help="how long a batch may wait to fill, after its first request arrived (0: never; a lone request never "
        f"waits; default {DEFAULT_MAX_BATCH_WAIT_MS:g})",
    )
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="localinfer: %(message)s", stream=sys.stderr
    )
    for noisy in ("transformers", "optimum", "torch", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    limits = Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits) if getattr(args, f.name)})
    try:
        if args.command == "serve":  # as the hosted API: 503 while a model loads, unless wait_for_model
            from .server import serve

            engine = LocalInference(
                args.models,
                args.home,
                emulate_loading=True,
                allow_paths=False,
                limits=limits,
                max_batch_size=args.max_batch_size,
                max_batch_wait_ms=args.max_batch_wait_ms,
            )
            serve(
                engine,
                host=args.host,
                port=args.port,
                token=args.token,
                max_body_bytes=args.max_body_size,
                preload=not args.no_preload,
            )
            return 0
        batching = {"max_batch_size": args.batch_size} if args.command == "map" else {}  # the job's batches
        engine = LocalInference(args.models, args.home, limits=limits, **batching)
        if args.command == "map":
            print(json.dumps(_map(args, engine)))
        elif args.command == "query":
            result = engine.query(args.model_id, _payload(args.data), task=args.task)
            print(json.dumps(result, ensure_ascii=False))
        elif args.command == "models":
            _list_models(engine)
        elif args.out:
            print(engine.export_to(args.model_id, args.out, task=args.task, precision=args.precision))
        else:
            print(engine.export(args.model_id, task=args.task, precision=args.precision))
    except InferenceError as exc:
        print(json.dumps(exc.body, ensure_ascii=False))
        return 1
    except OSError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    return 0


def _map(args: argparse.Namespace, engine: LocalInference) -> dict[str, int]:
    """`localinfer map`: on this machine, or on Ray with --ray."""
    if args.batch_size < 1 or (args.parameters is not None and not isinstance(args.parameters, dict)):
        raise BadRequestError("--batch-size must be at least 1 and --parameters a JSON object")
    job = {"task": args.task, "parameters": args.parameters, "batch_size": args.batch_size}
    if args.ray is None:
        from .bulk import run_map

        return run_map(engine, args.model_id, args.input, args.output, **job)
    from .ray import map_on_ray

    where = {"actors": args.actors, "address": args.ray or None, "models": args.models, "home": args.home}
    return map_on_ray(args.model_id, args.input, args.output, **job, **where)


def _list_models(engine: LocalInference) -> None:
    print(f"{'model':48} {'task':24} {'backend':8} {'precision':9} exported")
    for model_id in engine.registry.ids():
        try:
            spec, handler = engine.resolve(model_id)
            precision = engine.precision_of(model_id)
            exported = "yes" if spec.backend == "onnx" and engine.onnx_dir(spec, handler).is_dir() else "no"
            drift = engine.drift(model_id)
            if drift:
                exported += f"  drift: {format_drift(drift)}"
            task, backend = handler.name, spec.backend
        except InferenceError as exc:
            task, backend, precision, exported = "?", "?", "?", f"error: {exc.message}"
        print(f"{model_id:48} {task:24} {backend:8} {precision:9} {exported}")


def format_drift(drift: dict[str, Any]) -> str:
    """A drift record on one line: its measures, over how many probes."""
    shown = [f"{key.replace('_', ' ')} {value}" for key, value in drift.items() if key not in ("task", "probes")]
    return f"{', '.join(shown)} ({drift.get('probes', '?')} probes)"
