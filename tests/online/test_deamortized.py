"""The deamortized engine's life cycle with FFT jobs in flight on worker threads: reset, a new
prefill, a job that raises, collection of the engine, determinism, workers shared and closed;
and its schedule's coverage."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from futurefill import OnlineConv
from futurefill.fourstep import Pass
from futurefill.online import check_engine_options, deamortized
from futurefill.online.deamortized import DeamortizedConv, Worker, _levels
from reference import decaying_filter, random_input, reference_conv, reference_feedback, rel_err

L, B, D = 300, 2, 3


@pytest.fixture(autouse=True)
def jobs_in_the_background(monkeypatch):
    """Every level's job through the background (at these sizes all would be small enough to
    run at their block's end in one call; tests/online/test_exactness.py covers that path)."""
    monkeypatch.setattr(deamortized, "SMALL_JOB_POINTS", 0)


def run(engine: DeamortizedConv, u: torch.Tensor, prompt_len: int, stop: int | None = None):
    outputs = [engine.prefill(u[..., :prompt_len])] if prompt_len else []
    for t in range(prompt_len, u.shape[-1] if stop is None else stop):
        outputs.append(engine.step(u[..., t]).unsqueeze(-1))
    return torch.cat(outputs, dim=-1)


def engine(tile_len: int = 2, worker: Worker | None = None) -> DeamortizedConv:
    return DeamortizedConv(decaying_filter(D, L), batch_size=B, tile_len=tile_len, worker=worker)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "futurefill-deamortized"]


def feedback_loop(convs: list[DeamortizedConv], u0: torch.Tensor, length: int, during=None):
    """Every engine in its own loop ``u[t+1] = tanh(y[t])``, their steps interleaved; each
    one's outputs. ``during(t)`` runs after the engines' step t."""
    inputs, outputs = [u0] * len(convs), [[] for _ in convs]
    for t in range(length):
        for i, conv in enumerate(convs):
            y_t = conv.step(inputs[i])
            outputs[i].append(y_t)
            inputs[i] = torch.tanh(y_t)
        if during is not None:
            during(t)
    return [torch.stack(y, dim=-1) for y in outputs]


def test_every_pair_is_covered_once():
    """The deamortized schedule (online/deamortized.py's module docstring) as the engine runs
    it, counted pair by pair (no filter, no rounding): the direct part, and level b's job of
    block c writing block c + 2 with the block's own inputs and, for an odd c, its even
    partner's (block c - 1)."""
    for b0 in (1, 2, 4):
        n = 200
        count = np.zeros((n, n), dtype=int)  # [input, output]
        for i in range(n):
            for t in range(i, n):
                if t // b0 - i // b0 <= 1:
                    count[i, t] += 1
        for b in _levels(b0, n):
            for c in range(n // b):
                targets = slice((c + 2) * b, min((c + 3) * b, n))
                count[c * b : (c + 1) * b, targets] += 1
                if c % 2:
                    count[(c - 1) * b : c * b, targets] += 1
        assert (np.triu(count) == np.triu(np.ones_like(count))).all(), b0
        assert not np.tril(count, -1).any(), b0


def test_jobs_run_on_the_background_worker_and_are_joined_at_their_deadline():
    conv = engine(tile_len=4)
    u = random_input(B, D, L)
    run(conv, u, 0, stop=100)
    assert conv._jobs, "a job should be in flight between its block's end and its deadline"
    thread = conv._worker._thread  # the engine's own worker, made at its first job
    assert thread.is_alive() and thread in worker_threads()


@pytest.mark.parametrize("prompt_len", [0, 1, 57])
def test_reset_and_a_new_prefill_with_jobs_in_flight(prompt_len):
    conv = engine()
    u1, u2 = random_input(B, D, L, seed=1), random_input(B, D, L, seed=2)
    run(conv, u1, 0, stop=131)  # mid-sequence, jobs in flight
    conv.reset()
    y = run(conv, u2, prompt_len)
    assert rel_err(y, reference_conv(u2, decaying_filter(D, L))) < 1e-10
    conv.reset()
    y = run(conv, u1, 0)
    assert rel_err(y, reference_conv(u1, decaying_filter(D, L))) < 1e-10


def test_outputs_are_deterministic():
    u = random_input(B, D, L)
    first = run(engine(), u, 10)
    assert all(torch.equal(run(engine(), u, 10), first) for _ in range(3))


@pytest.mark.parametrize("points", [24, 10**6])
def test_the_outputs_do_not_depend_on_which_thread_ran_a_slice(monkeypatch, points):
    """The same bits when the worker never sees a job (the decoding thread runs every slice,
    paced or at its deadline): an FFT library's result may depend on how many transforms one
    call batches, so a slice must be the same ops whoever runs it."""
    monkeypatch.setattr(deamortized, "SLICE_POINTS", points)
    u = random_input(B, D, L)
    with_worker = run(engine(), u, 10)
    with Worker() as closed:  # a closed worker's jobs run in the decoding thread
        pass
    assert torch.equal(run(engine(worker=closed), u, 10), with_worker)
    assert closed._thread is None


def test_a_failing_job_raises_at_its_deadline_then_until_reset(monkeypatch):
    conv = engine(tile_len=2)
    u = random_input(B, D, L)
    submit = Worker.submit

    def failing(worker, job):
        def fail(_: int):
            raise FloatingPointError("injected")

        if job.key == 20:
            build = job.build
            job.build = lambda: [Pass(p.count, fail) for p in build()]
        submit(worker, job)

    monkeypatch.setattr(Worker, "submit", failing)
    with pytest.raises(FloatingPointError, match="injected"):
        run(conv, u, 0)
    assert conv.position == 20  # the deadline of the failing jobs
    with pytest.raises(RuntimeError, match="a FutureFill job of this engine failed"):
        conv.step(u[..., 20])
    monkeypatch.undo()
    conv.reset()
    assert rel_err(run(conv, u, 0), reference_conv(u, decaying_filter(D, L))) < 1e-10


def test_a_job_whose_slices_cannot_be_built_raises_at_its_deadline(monkeypatch):
    """Building the passes (done by the first thread to take a slice) fails: the job ends, the
    worker lives on, and the error reaches the decoding thread at the job's deadline."""
    conv = engine(tile_len=2)
    u = random_input(B, D, L)
    submit = Worker.submit

    def unbuildable(worker, job):
        if job.key == 20:

            def build():
                raise MemoryError("injected")

            job.build = build
        submit(worker, job)

    monkeypatch.setattr(Worker, "submit", unbuildable)
    with pytest.raises(MemoryError, match="injected"):
        run(conv, u, 0)
    assert conv.position == 20
    monkeypatch.undo()
    conv.reset()
    assert rel_err(run(conv, u, 0), reference_conv(u, decaying_filter(D, L))) < 1e-10
    assert conv._worker._thread.is_alive()


def test_collecting_engines_with_jobs_in_flight_leaks_nothing():
    """A queued job must not keep its engine alive (its passes are built from views of the
    engine's buffers, never from the engine): collecting the engine cancels the job."""
    with Worker() as worker:
        for _ in range(3):
            conv = DeamortizedConv(
                decaying_filter(64, 4096), batch_size=1, tile_len=1, worker=worker
            )
            run(conv, random_input(1, 64, 4096), 0, stop=2048 + 5)  # a 1024-block job in flight
            jobs = list(conv._jobs.values())
            assert jobs
            with worker._lock:  # the worker finishes no slice meanwhile
                del conv
                gc.collect()
                assert all(job.cancelled for job in jobs)  # their queued slices are skipped
            for job in jobs:
                assert job.done.wait(timeout=30)
        assert worker._thread.is_alive()  # one thread for the three engines


EXIT_WITH_JOBS_IN_FLIGHT = """
import torch
from futurefill.online import make_engine
from futurefill.online.deamortized import DeamortizedConv, Worker
own = make_engine(torch.randn(64, 2**16), "deamortized")  # its own worker
shared = DeamortizedConv(torch.randn(64, 2**16), worker=Worker())  # a worker never closed
for engine in (own, shared):
    engine.prefill(torch.randn(1, 64, 2**15))
for t in range(2**14 + 69):
    own.step(torch.randn(1, 64))
    shared.step(torch.randn(1, 64))
assert own._jobs and shared._jobs and own._worker is not shared._worker
"""


def test_the_interpreter_exits_cleanly_with_jobs_in_flight():
    """A worker inside a torch op while the interpreter finalizes aborts the process (exit 134,
    "terminate called without an active exception"): at exit every worker still open, an
    engine's own or one never closed, is closed first. Without that, one of three such runs
    aborted on a 2-core VM (three of four with one engine of 2**15 + 69 steps)."""
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-c", EXIT_WITH_JOBS_IN_FLIGHT], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-500:]
        assert "terminate called" not in run.stderr


def test_engines_sharing_a_worker_are_exact_in_a_feedback_loop(monkeypatch):
    """Two engines, one worker: one thread takes both engines' slices, earliest deadline
    first, and each engine's outputs are the float64 reference's."""
    monkeypatch.setattr(deamortized, "SLICE_POINTS", 16)
    length = 203
    filters = [decaying_filter(D, length, seed=seed) for seed in (0, 1)]
    u0 = random_input(B, D, 1)[..., 0]
    both_in_flight = []
    with Worker() as worker:
        convs = [DeamortizedConv(h, batch_size=B, tile_len=1, worker=worker) for h in filters]
        outputs = feedback_loop(
            convs, u0, length, during=lambda t: both_in_flight.append(all(c._jobs for c in convs))
        )
        assert all(conv._worker is worker for conv in convs)
        assert worker._thread.is_alive()
    assert any(both_in_flight), "both engines' jobs should be on the worker at once"
    for h, y in zip(filters, outputs, strict=True):
        _, y_ref = reference_feedback(u0.numpy(), h.numpy(), length)
        assert rel_err(y, y_ref) < 1e-10


@pytest.mark.parametrize("closed_at", [0, 60, 140])
def test_closing_a_worker_joins_its_thread_and_its_engines_go_on_exact(monkeypatch, closed_at):
    """Closed before the first job, or mid-sequence with jobs in flight: the thread ends (the
    slice it runs finished), and the jobs queued and to come run in the decoding thread,
    paced and at their deadlines, with the same outputs."""
    monkeypatch.setattr(deamortized, "SLICE_POINTS", 16)
    length = 203
    filters = [decaying_filter(D, length, seed=seed) for seed in (0, 1)]
    u0 = random_input(B, D, 1)[..., 0]
    worker = Worker()
    convs = [DeamortizedConv(h, batch_size=B, tile_len=1, worker=worker) for h in filters]
    threads = []

    def close(t: int) -> None:
        if t + 1 == closed_at:
            assert any(conv._jobs for conv in convs), "jobs should be in flight at the close"
            threads.append(worker._thread)
            worker.close()

    if closed_at == 0:
        worker.close()
    outputs = feedback_loop(convs, u0, length, during=close)
    assert worker.closed
    if closed_at == 0:
        assert worker._thread is None  # never started
    else:
        assert threads[0] is not None and not threads[0].is_alive()
        assert worker._thread is threads[0]  # not restarted by the jobs submitted later
    for h, y in zip(filters, outputs, strict=True):
        _, y_ref = reference_feedback(u0.numpy(), h.numpy(), length)
        assert rel_err(y, y_ref) < 1e-10
    convs[0].reset()  # and after a reset
    y = feedback_loop(convs[:1], u0, length)[0]
    assert rel_err(y, reference_feedback(u0.numpy(), filters[0].numpy(), length)[1]) < 1e-10


def test_closing_twice_and_as_a_context_manager():
    with Worker() as worker:
        conv = engine(tile_len=2, worker=worker)
        run(conv, random_input(B, D, L), 0, stop=100)
        thread = worker._thread
        assert thread.is_alive()
    assert worker.closed and not thread.is_alive()
    worker.close()
    worker.close()
    assert not thread.is_alive()
    Worker().close()  # never started: nothing to join
    assert "closed" in repr(worker)


def test_a_worker_closed_from_its_own_thread_ends_after_its_slice(monkeypatch):
    """close() run by the worker's own thread (as a finalizer run by a collection there would,
    maybe while building a job's slices with the lock held) neither waits for the lock nor joins
    the thread itself: the thread ends after its slice, the engine goes on, exact."""
    monkeypatch.setattr(deamortized, "SLICE_POINTS", 16)
    submit, closed_in = Worker.submit, []

    def closing_while_built(worker, job):
        build = job.build

        def built_then_close():
            if threading.current_thread() is worker._thread and not closed_in:
                closed_in.append(threading.current_thread())
                worker.close()  # the lock held: job.take() builds under it
            return build()

        job.build = built_then_close
        submit(worker, job)

    monkeypatch.setattr(Worker, "submit", closing_while_built)
    length = 203
    h = decaying_filter(D, length)
    u0 = random_input(B, D, 1)[..., 0]
    worker = Worker()
    conv = DeamortizedConv(h, batch_size=B, tile_len=1, worker=worker)
    (y,) = feedback_loop([conv], u0, length)
    assert closed_in and worker.closed
    closed_in[0].join(timeout=120)
    assert not closed_in[0].is_alive()
    assert not worker._at_exit.alive  # nothing left to close at exit
    assert rel_err(y, reference_feedback(u0.numpy(), h.numpy(), length)[1]) < 1e-10


def test_collecting_an_engine_ends_its_own_worker():
    """No worker given: the engine makes its own at its first job (none before, none for
    engines with no job on a thread), and collecting the engine ends its thread. The finalizer
    holds the worker, not the engine; the engine is collected with jobs in flight."""
    conv = engine(tile_len=2)
    assert conv._worker is None
    run(conv, random_input(B, D, L), 0, stop=131)
    assert conv._jobs
    thread, collected = conv._worker._thread, weakref.ref(conv)
    assert thread.is_alive()
    del conv
    gc.collect()
    assert collected() is None
    deadline = time.monotonic() + 120  # generous: the machine may be loaded
    while thread in threading.enumerate() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread not in threading.enumerate()


def test_a_worker_is_a_constructor_argument_not_a_knob():
    assert DeamortizedConv.uses_worker
    assert "worker" not in DeamortizedConv.options
    assert check_engine_options("deamortized", {"tile_len": 4}) == {"tile_len": 4}
    with pytest.raises(TypeError, match="unknown engine option 'worker'"):
        check_engine_options("deamortized", {"worker": Worker()})
    with pytest.raises(TypeError, match="worker must be a Worker"):
        DeamortizedConv(decaying_filter(D, L), worker="thread")


def test_half_precision_and_out_buffer():
    h = decaying_filter(D, 100)
    u = random_input(B, D, 100)
    conv = OnlineConv(h.to(torch.bfloat16), method="deamortized", batch_size=B, tile_len=2)
    reference = OnlineConv(h.to(torch.bfloat16), method="continuous", batch_size=B, tile_len=2)
    out = torch.empty(B, D, dtype=torch.bfloat16)
    for t in range(100):
        u_t = u[..., t].to(torch.bfloat16)
        expected = reference.step(u_t)
        conv.step(u_t, out=out)
        assert (
            out.double() - expected.double()
        ).abs().max() <= 4e-2 * expected.double().abs().max()


@pytest.mark.parametrize("points", [1, 24, 200])
@pytest.mark.parametrize("prompt_len", [0, 1, 57])
def test_jobs_cut_into_four_step_passes_are_exact(monkeypatch, points, prompt_len):
    """Slices of a few points: every level's job runs as the three passes of a four-step FFT,
    paced over its slack (odd length, batch 2, 3 channels, float64)."""
    monkeypatch.setattr(deamortized, "SLICE_POINTS", points)
    length = 301
    conv = DeamortizedConv(decaying_filter(D, length), batch_size=B, tile_len=2)
    assert conv._plans[64].four_step
    u = random_input(B, D, length)
    y = run(conv, u, prompt_len)
    assert rel_err(y, reference_conv(u, decaying_filter(D, length))) < 1e-10


def test_four_step_passes_in_a_feedback_loop(monkeypatch):
    monkeypatch.setattr(deamortized, "SLICE_POINTS", 16)
    length = 203
    h = decaying_filter(D, length)
    u0 = random_input(B, D, 1)[..., 0]
    _, y_ref = reference_feedback(u0.numpy(), h.numpy(), length)
    conv = DeamortizedConv(h, batch_size=B, tile_len=1)
    u_t, outputs = u0, []
    for _ in range(length):
        y_t = conv.step(u_t)
        outputs.append(y_t)
        u_t = torch.tanh(y_t)
    assert rel_err(torch.stack(outputs, dim=-1), y_ref) < 1e-10
