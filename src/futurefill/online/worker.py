"""The background worker of the deamortized engines: one thread, started at the first job it
gets, taking slices of its engines' FutureFill jobs earliest deadline first, beside the decoding
thread (which takes slices too: to keep a job on pace, and at its deadline what is left). A
:class:`Job` is a FutureFill level's transform cut into slices
(:class:`~futurefill.fourstep.Pass`). A decoding session owns one worker for all its engines and
joins it when it closes; an engine made alone makes its own (see
:mod:`futurefill.online.deamortized`)."""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Callable

import torch

from futurefill.fourstep import Pass

__all__ = ["Job", "Worker"]


class Job:
    """A FutureFill job: passes of ``total`` slices in all (:class:`~futurefill.fourstep.Pass`),
    run in order; any thread may take the next slice of the current pass, and the next pass
    opens when every slice of this one has finished. The passes are built by the first take
    (``build``: their views and closures cost the decoding thread nothing at submission). Done
    when the last pass has finished, or when stopped (building or a slice failed, or the job
    was cancelled) and no slice of it is running.

    ``start`` and ``deadline`` are the engine's local positions of its submission and of the
    step that needs it; ``key`` orders the jobs of every engine of a :class:`Worker` (a global
    position). :meth:`take` and :meth:`finish` run with the worker's lock held; ``cancelled``
    may be set without it."""

    def __init__(
        self, build: Callable[[], list[Pass]], total: int, start: int, deadline: int, offset: int
    ):
        self.build: Callable[[], list[Pass]] | None = build
        self.passes: list[Pass] | None = None  # built by the first take
        self.current = 0  # the pass being run
        self.taken = self.returned = 0  # slices of it handed out, and finished
        self.total = total
        self.finished = 0
        self.start, self.deadline = start, deadline
        self.key = offset + deadline
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = threading.Event()

    def due(self) -> int:
        """The first position at which fewer than ``total * (position - start + 1) / slack``
        slices have finished: pacing the job evenly over its slack, one more is due there."""
        slack = self.deadline - self.start
        return self.start + -(-(self.finished + 1) * slack // self.total) - 1

    def take(self) -> tuple[Pass, int] | None:
        """The next slice of the current pass; None when all are handed out or it stopped
        (a stopped job with no slice running ends here)."""
        if self.done.is_set():
            return None
        if self.cancelled or self.error is not None:
            if self.returned == self.taken:
                self._end()
            return None
        if self.passes is None:
            try:
                self.passes = self.build()
            except BaseException as exc:  # handed to the decoding thread at the deadline
                self.error = exc
                self._end()
                return None
        work = self.passes[self.current]
        if self.taken == work.count:
            return None
        self.taken += 1
        return work, self.taken - 1

    def finish(self, error: BaseException | None) -> bool:
        """Count a finished slice; True when the job moved on (a new pass, or done)."""
        self.error = self.error or error
        self.returned += 1
        self.finished += 1
        if self.returned < self.taken:
            return False  # others still running
        if self.cancelled or self.error is not None:
            self._end()
            return True
        if self.returned < self.passes[self.current].count:
            return False
        self.current += 1
        self.taken = self.returned = 0
        if self.current == len(self.passes):
            self._end()
        return True

    def _end(self) -> None:
        self.build, self.passes = None, []  # the tensors its slices hold go with them
        self.done.set()


class Worker:
    """A background thread for deamortized engines' jobs: one thread, started at the first job
    it gets, taking slices of its engines' jobs, earliest deadline first, beside the decoding
    threads, which take slices too: to keep a job on pace (one slice per step at most) and,
    should the job still be unfinished, at its deadline.

    One thread with one intra-op thread, so jobs never compete with each other for cores. Torch
    releases the GIL inside its ops, so the two threads' FFTs overlap. It runs at the process's
    priority: lowered to the lowest (nice 19) the decoding thread waited longer, as the worker,
    preempted by any other process while it held the GIL, kept it from the decoding thread
    (docs/results/cpu-2core/tuning.md).

    Engines share one by taking it as their ``worker`` (one thread for all their jobs); an
    engine given none makes its own at its first job and closes it when it is collected.
    :meth:`close` ends the thread (also ``with Worker() as worker: ...``); a worker still open
    at interpreter exit is closed then (a thread inside a torch op while the interpreter
    finalizes aborts the process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._jobs: list[Job] = []  # by deadline
        self._thread: threading.Thread | None = None
        self._closed = False
        self._at_exit: weakref.finalize | None = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (its engines' jobs then run in their decoding
        threads)."""
        return self._closed

    def submit(self, job: Job) -> None:
        """Queue ``job`` (the thread started if it was not; none after :meth:`close`)."""
        with self._ready:
            bisect.insort(self._jobs, job, key=lambda j: j.key)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._loop, name="futurefill-deamortized", daemon=True
                )
                self._thread.start()
                # Closed at exit if still open: the finalizer holds the worker, as the thread
                # does, until the thread ends.
                self._at_exit = weakref.finalize(self, Worker.close, self)
            self._ready.notify()

    def _take(self) -> tuple[Job, Pass, int] | None:
        """The earliest deadline's next slice (lock held); finished jobs leave the list."""
        if any(job.done.is_set() for job in self._jobs):
            self._jobs[:] = [job for job in self._jobs if not job.done.is_set()]
        for job in self._jobs:
            got = job.take()
            if got is not None:
                return (job, *got)
        return None

    def run_one(self) -> bool:
        """In a decoding thread: run the earliest deadline's next slice; False if none."""
        with self._lock:
            got = self._take()
        if got is None:
            return False
        self._run(*got)
        return True

    def finish(self, job: Job) -> None:
        """In a decoding thread, at ``job``'s deadline: run its remaining slices there, waiting
        only while another thread runs the last ones of a pass."""
        while True:
            with self._ready:
                while (got := job.take()) is None:
                    if job.done.is_set():
                        return
                    self._ready.wait()
            self._run(job, *got)

    def _run(self, job: Job, work: Pass, index: int) -> None:
        """Run one slice in this thread. Inference mode (which is per thread): the engine's
        buffers may be inference tensors (made under ``generate``), which only it may update
        in place. An error is handed to the decoding thread at the job's deadline."""
        error = None
        try:
            with torch.inference_mode():
                work.run(index)
        except BaseException as exc:
            error = exc
        with self._ready:
            if job.finish(error):
                self._ready.notify_all()

    def _loop(self) -> None:
        torch.set_num_threads(1)
        while True:
            with self._ready:
                # A slice taken is run, even if close() ran meanwhile (in this thread, from a
                # finalizer run while the slice's job was built).
                while (got := None if self._closed else self._take()) is None:
                    if self._closed:
                        # Past its last torch op: nothing left to do at exit, and the worker
                        # may be collected (close() may not have joined: run in this thread).
                        self._at_exit.detach()
                        return
                    self._ready.wait()
            self._run(*got)

    def close(self) -> None:
        """End the thread: it takes no more slices, finishes the one it runs, and is joined.
        The jobs queued stay queued, and every job submitted later is queued too: their
        decoding threads run their slices, paced and at their deadlines, so the engines go on,
        exact. Closing again does nothing."""
        if self._thread is threading.current_thread():
            # A finalizer run by a collection in the thread itself, which may hold the lock:
            # it ends after its slice (the flag is read at every turn of its loop).
            self._closed = True
            return
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._thread else "idle"
        return f"Worker({state}, {len(self._jobs)} jobs queued)"
