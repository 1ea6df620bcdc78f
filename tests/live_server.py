"""`localinfer serve`'s app on a real uvicorn server on 127.0.0.1, run in a thread of the test process, so that a
test can compare it with the same session engine's exports and look inside the process (count decoding steps)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from localinfer.engine import LocalInference
from localinfer.server import create_app


class LiveServer:
    def __init__(self, engine: LocalInference, **app_options) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(engine, preload=False, **app_options)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
