"""Dynamic batching: concurrent requests for the same model, task and parameters answered by one forward pass.

There is no batching thread: the first request of an idle queue runs at once, in its own thread, and becomes the
queue's leader. Requests that arrive while the leader's batch runs wait in the queue; when the batch is done, the
leader hands the queue to the oldest of them, which takes up to `max_batch_size` waiting requests as the next batch.
So a lone request is never delayed, the model never idles while requests wait, and batches grow with the load, as
with Text Embeddings Inference's queue (core/src/infer.rs `batching_task`, core/src/queue.rs `next_batch`: the
next batch is whatever queued while the model ran). Unlike Ray Serve's `@serve.batch`, no batch waits a fixed
time for company: a batch waits (at most `max_wait_s` after its oldest request arrived) only for as many requests
as the queue's previous batch held, so N clients that answer each other's pace form batches of N, and a lone
client never waits.

A batch that fails as a whole is run again one request at a time, so that a bad request gets its own error and
cannot fail its neighbours.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("localinfer")

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_BATCH_WAIT_MS = 2.0
# Idle queues kept (each remembers its last batch size); beyond it the least recently used idle ones are dropped.
_MAX_IDLE_QUEUES = 256

RunMany = Callable[[list[Any]], list[Any]]


class _Request:
    """One request's inputs and, once its batch ran, its answer or its error."""

    __slots__ = ("inputs", "arrived", "wake", "lead", "finished", "answer", "error")

    def __init__(self, inputs: Any) -> None:
        self.inputs = inputs
        self.arrived = time.monotonic()
        self.wake = threading.Event()  # set when the answer is in, or when this request's thread is to lead
        self.lead = False
        self.finished = False
        self.answer: Any = None
        self.error: BaseException | None = None


class _Queue:
    """The requests of one key waiting for the model, and whether a batch of them runs."""

    __slots__ = ("waiting", "busy", "last_batch")

    def __init__(self) -> None:
        self.waiting: list[_Request] = []
        self.busy = False  # a leader is filling, running or about to take a batch; else nothing waits
        self.last_batch = 1


class Batcher:
    """Gathers concurrent calls with equal keys into one `run_many` over their inputs.

    `submit(key, inputs, run_many)` blocks its caller until its answer is in: `run_many(list of inputs)` must answer
    one result per input, in order, each what the input would answer alone. `max_batch_size` bounds the requests of
    one batch (below 2: no batching, every call runs alone); `max_wait_s` bounds how long a batch waits to fill.
    """

    def __init__(
        self, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_wait_s: float = DEFAULT_MAX_BATCH_WAIT_MS / 1e3
    ) -> None:
        if max_batch_size < 0 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_wait_s must not be negative")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._condition = threading.Condition()
        self._queues: OrderedDict[Hashable, _Queue] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    def submit(self, key: Hashable, inputs: Any, run_many: RunMany) -> Any:
        """The answer to `inputs`, computed with the other requests of `key` that wait with it; raises its error."""
        if not self.enabled:
            return run_many([inputs])[0]
        request = _Request(inputs)
        with self._condition:
            queue = self._queue(key)
            queue.waiting.append(request)
            if not queue.busy:
                queue.busy = request.lead = True  # an idle queue: this request runs now
            else:
                self._condition.notify_all()  # a leader may be waiting for its batch to fill
        if not request.lead:
            request.wake.wait()
        if not request.finished:  # this thread leads the next batch, its own request in it
            self._lead(queue, run_many)
        if request.error is not None:
            raise request.error
        return request.answer

    def queue_depth(self, matches: Callable[[Hashable], bool] = lambda key: True) -> int:
        """Requests waiting for their model (not yet in a running batch) under the keys that match."""
        with self._condition:
            return sum(len(queue.waiting) for key, queue in self._queues.items() if matches(key))

    def _queue(self, key: Hashable) -> _Queue:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
            idle = [k for k, q in self._queues.items() if not q.busy and q is not queue]
            for old in idle[: max(0, len(idle) - _MAX_IDLE_QUEUES)]:
                del self._queues[old]
        else:
            self._queues.move_to_end(key)
        return queue

    def _lead(self, queue: _Queue, run_many: RunMany) -> None:
        """Take the next batch from the queue (this thread's request first), run it, hand the queue on."""
        with self._condition:
            # Wait for as many requests as the previous batch held, never past the oldest's arrival + max_wait.
            wanted = min(self.max_batch_size, queue.last_batch)
            deadline = queue.waiting[0].arrived + self.max_wait_s
            while len(queue.waiting) < wanted and (left := deadline - time.monotonic()) > 0:
                self._condition.wait(left)
            batch = queue.waiting[: self.max_batch_size]
            del queue.waiting[: len(batch)]
        try:
            _run(batch, run_many)
        finally:
            with self._condition:
                queue.last_batch = len(batch)
                for request in batch:
                    if not request.finished:  # run_many raised something beyond Exception (an interrupt)
                        request.error = RuntimeError("the batch was interrupted")
                        request.finished = True
                successor = queue.waiting[0] if queue.waiting else None
                if successor is not None:
                    successor.lead = True
                else:
                    queue.busy = False
            for request in batch:
                request.wake.set()
            if successor is not None:
                successor.wake.set()


def _run(batch: list[_Request], run_many: RunMany) -> None:
    """Answer every request of the batch: together, else (the batch failed) each alone with its own error."""
    try:
        answers = run_many([request.inputs for request in batch])
        if len(answers) != len(batch):
            raise RuntimeError(f"a batch of {len(batch)} requests answered {len(answers)} results")
    except Exception as exc:
        if len(batch) == 1:
            batch[0].error, batch[0].finished = exc, True
            return
        log.debug("a batch of %d failed (%s); running its requests one by one", len(batch), exc)
        for request in batch:
            try:
                request.answer = run_many([request.inputs])[0]
            except Exception as alone:
                request.error = alone
            request.finished = True
        return
    for request, answer in zip(batch, answers, strict=True):
        request.answer, request.finished = answer, True
