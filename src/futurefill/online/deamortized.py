"""Deamortized Continuous-FutureFill: bounded work at every step (derivation below; also
docs/algorithms.md).

Continuous-FutureFill runs the FFT of a finished block of size b before the very next output, so
one step in b stalls for it. Here every FFT job gets b steps of slack. With tiles of b0 inputs
(a power of two) and, for every level b = b0, 2 b0, 4 b0, ..., b-blocks I = [I b, (I+1) b)::

    direct:   output t adds h[t-i] u_i for every input i of its tile and of the tile before
              (each input is pushed into the rest of its tile and the whole next tile)
    level b:  a finished block I adds its contribution to outputs [(I+2) b, (I+4) b) if I is
              even, [(I+2) b, (I+3) b) if I is odd (lags b+1 .. 4b-1, and b+1 .. 3b-1)

Every pair (input i, output t >= i) is covered exactly once: pairs within one tile or two
adjacent tiles directly, every other one by the unique level b with floor(t/b) - floor(i/b) in
{2, 3} and floor(t/2b) - floor(i/2b) = 1. Block I is complete after step (I+1) b - 1 and its
first output is (I+2) b, so its job can run while the next b steps go on, and the step waits
for it only at that deadline.

The jobs as run: every block's job writes one target, the block two on, with one FFT pair of
size 2b. For a pair of blocks (I even, I+1 odd) and X = rfft(x, 2b), G1 = rfft(h[b : 3b]),
G2 = rfft(h[2b : 4b])::

    job of I:    y[I+2] = irfft(X_I G1)[b : 2b]                  and keep X_I
    job of I+1:  y[I+3] = irfft(X_{I+1} G1 + X_I G2)[b : 2b]     (X_I as kept)

(entries b .. 2b-1 of a size-2b circular convolution of b inputs with 2b taps are free of
aliasing). Per 2b steps a level does four transforms of 2b points where Continuous-FutureFill
does two: 2x its FFT work, spread over the steps instead of spiked (the even block's job
as one size-4b FFT pair, as first written, was 3x). At most one job per level is in
flight; each level writes its own ring of two b-blocks, read one tile at a time at tile starts,
so a job never writes where the main thread reads, and every output sums the same parts in the
same order whoever ran them (results are deterministic).

After a prompt of length P, the prompt's contribution to the K = max_len - P outputs after it is
kept (one FFT, as in Continuous-FutureFill) and the schedule runs over the generated inputs only.
Memory O(K): the generated inputs, the prompt part, the rings (2b per level, 4K in all), one
kept spectrum and one four-step scratch per level (about b complex values a channel each).

Who runs a job. A small one (at most SMALL_JOB_POINTS = batch x channels x FFT size) runs at
its block's end, in one call, as in Continuous-FutureFill. A larger one is cut into slices of
about SLICE_POINTS values (:class:`~futurefill.fourstep.SlicedConv`: groups of channels, or
for a channel whose transform is larger, the three passes of a four-step FFT), built by the
first thread to take one. A background thread (:class:`Worker`: the engine's own, or one that
engines share) takes slices of its engines' jobs, earliest deadline first; the decoding
thread takes one at a step when a job falls behind an even pace over its slack, and at the
deadline finishes what is left. A slice holds references to the tensors it writes, so none is
freed under it; collecting or resetting an engine cancels its jobs (collecting it also closes
its own worker). A job that raises re-raises at its deadline step; the engine then needs
``reset()``.

The slice sizes and the small-job threshold were chosen from measurements on a 2-core CPU
(docs/results/cpu-2core/tuning.md): the largest steps there are not the schedule's own but plain
steps or one slice preempted by the machine's other load.

On CUDA no thread is needed: a job is queued on a side stream (one per device) behind an event
of the decoding stream, in one call (no slices: the GPU overlaps it with the steps' kernels), and
its deadline step makes the decoding stream wait for the job's event. Neither blocks the host:
no step synchronizes with the device, so the step's bound is what the GPU gives. The buffers a
job touches are recorded on the side stream, so the allocator reuses none of them before it ends.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import ClassVar

import torch

from futurefill.fftconv import prompt_conv
from futurefill.fourstep import Pass, SlicedConv, run_passes
from futurefill.online.base import ScheduledWork
from futurefill.online.continuous import TiledEngine
from futurefill.online.worker import Job, Worker

# Jobs are cut into slices of about SLICE_POINTS complex values (futurefill.fourstep); a job of
# at most SMALL_JOB_POINTS (batch x channels x FFT size) runs at its block's end in one call.
# Chosen from the measurements in the module docstring.
SLICE_POINTS = 1 << 16
SMALL_JOB_POINTS = 1 << 12


def _levels(b0: int, remaining: int) -> list[int]:
    """The block sizes b whose jobs reach an output: b0, 2 b0, ... while 2b < remaining."""
    levels, b = [], b0
    while 2 * b < remaining:
        levels.append(b)
        b *= 2
    return levels


class DeamortizedConv(TiledEngine):
    """Online causal convolution with bounded work per step. See :class:`OnlineConvEngine`.

    Parameters
    ----------
    tile_len : int, optional
        The direct-computation tile b0, a power of two; default
        :func:`~futurefill.online.continuous.default_tile_len`.
    worker : Worker, optional
        The background thread that takes slices of the engine's FFT jobs (on CPU), which
        engines may share; by default the engine makes its own at its first such job and
        closes it when the engine is collected. A constructor argument, not a knob of the
        method (not in :attr:`options`).
    """

    method = "deamortized"
    uses_worker: ClassVar[bool] = True
    shared_attributes = ("h", "_h_head", "_h_rests", "_plans", "_worker", "_side_stream")
    window_tiles = 2
    summary = (
        "O(L log^2 L) time, every step bounded, O(K) memory: continuous with its FFT jobs "
        "(2x the work) run ahead of their deadlines, b steps of slack each (tile_len b0)"
    )

    def __init__(
        self,
        h: torch.Tensor,
        *,
        max_len: int | None = None,
        batch_size: int = 1,
        tile_len: int | None = None,
        worker: Worker | None = None,
    ):
        if worker is not None and not isinstance(worker, Worker):
            raise TypeError(f"worker must be a Worker or None, got {type(worker).__name__}")
        self._worker = worker  # None: the engine's own, made at its first job (_get_worker)
        super().__init__(h, max_len=max_len, batch_size=batch_size, tile_len=tile_len)

    def copy(self) -> DeamortizedConv:
        """See :meth:`OnlineConvEngine.copy`; the copy's jobs are cancelled when it is collected,
        as the original's."""
        engine = super().copy()
        weakref.finalize(engine, _cancel, engine._jobs)
        return engine

    def _settle(self) -> None:
        """Finish every job in flight (their outputs are then in the rings)."""
        for b in [*self._jobs, *self._events]:
            self._join(b)
        self._pace_at = self._remaining

    def _get_worker(self) -> Worker:
        """The worker its jobs go to; made at the first (a thread only a CPU job needs), and
        closed when the engine is collected (the finalizer holds the worker, not the engine)."""
        if self._worker is None:
            worker = self._worker = Worker()
            weakref.finalize(self, worker.close)
        return self._worker

    def _setup(self) -> None:
        self._plans: dict[int, SlicedConv] = {}  # per level b
        self._kept: dict[int, torch.Tensor] = {}  # per level, an even block's spectrum
        self._scratch: dict[int, torch.Tensor] = {}  # per level, for four-step jobs
        self._jobs: dict[int, Job] = {}
        # CUDA: the side stream the jobs run on, and per level the event of the job in flight.
        self._side_stream = _side_stream(self.device)
        self._events: dict[int, torch.cuda.Event] = {}
        weakref.finalize(self, _cancel, self._jobs)
        self._failed: BaseException | None = None

    # ----------------------------------------------------------------- buffers

    def _allocate(self, remaining: int) -> None:
        """Buffers, rings and level spectra for ``remaining`` more steps."""
        self._join_all()
        b0, batch, channels = self.tile_len, self.batch_size, self.channels
        length = -(-remaining // b0) * b0  # whole tiles
        self._remaining = remaining
        self._offset = self.max_len - remaining  # global position of local step 0
        self._x = self._zeros(batch, channels, length)  # generated inputs, for the jobs
        # Outputs of the current tile and the next, time-major; the step's views built once.
        self._direct = self._zeros(2 * b0, batch, channels)
        self._tile_views(self._direct)
        levels = _levels(b0, remaining)
        self._prompt: torch.Tensor | None = None  # the prompt's part of every output (K, B, D)
        # Every level's ring of two b-blocks (time-major), as tiles of one buffer: level b's
        # are tiles first[b] .. first[b] + 2b/b0 - 1.
        tiles = [2 * b // b0 for b in levels]
        self._first = dict(zip(levels, itertools.accumulate(tiles, initial=0), strict=False))
        self._ring_tiles = self._zeros(sum(tiles), b0, batch, channels)
        self._plans = {b: self._plans.get(b) or self._plan(b) for b in levels}
        # One job per level in flight at a time: one scratch and one kept spectrum per level,
        # kept (allocating and freeing hundreds of MB at the block ends of the largest levels
        # costs milliseconds).
        self._kept, self._scratch = {}, {}
        for b, plan in self._plans.items():
            size = plan.spectrum_size
            dtype = plan.spectrum.dtype
            self._kept[b] = torch.empty(size, dtype=dtype, device=self.device)
            if plan.four_step:
                self._scratch[b] = torch.empty(size, dtype=dtype, device=self.device)
        self._pace_at = remaining  # no job in flight
        self._failed = None

    def _plan(self, b: int) -> SlicedConv:
        """Level b's jobs: FFT size 2b, filter segments h[b : 3b] (the block's own share of
        the target, two blocks on) and h[2b : 4b] (its even partner's, three blocks on). On
        CUDA a job is one slice (one rfft/irfft pair, queued on the side stream)."""
        g = self.h.new_zeros(2, self.channels, 2 * b)
        for term, lag in enumerate((b, 2 * b)):
            segment = self.h[:, lag : min(lag + 2 * b, self.max_len)]
            g[term, :, : segment.shape[-1]] = segment
        points = None if self._side_stream is not None else SLICE_POINTS
        return SlicedConv(g, 2 * b, self.batch_size, points)

    def _reset(self) -> None:
        self._allocate(self.max_len)

    def _buffers(self) -> list[torch.Tensor]:
        spectra = [t for plan in self._plans.values() for t in plan.tensors()]
        levels = [self._ring_tiles, *self._kept.values(), *self._scratch.values(), *spectra]
        prompt = [] if self._prompt is None else [self._prompt]
        return [self._x, self._direct, self._x_tile, self._h_head, *prompt, *levels]

    # ----------------------------------------------------------------- prompt and steps

    def _prefill(self, u: torch.Tensor) -> torch.Tensor:
        prompt_len = u.shape[-1]
        remaining = self.max_len - prompt_len
        y, future = prompt_conv(u, self.h[:, : self.max_len], remaining)
        self._allocate(remaining)
        self._prompt = future.permute(2, 0, 1).contiguous()
        self._load_tile(0)
        return y

    def _extend(self, u: torch.Tensor) -> torch.Tensor | None:
        """Right after a prefill (or an extension), as Continuous-FutureFill's: the chunk's
        outputs are the prompt's kept part plus its own convolution, and its contribution to
        what follows joins the prompt's part."""
        if self._position != self._offset or self._prompt is None:
            return None
        n, remaining = u.shape[-1], self._remaining
        known = self._prompt.clone()  # (K, B, D): every earlier input's part of what follows
        y, future = prompt_conv(u, self.h[:, : self.max_len], remaining - n)
        self._allocate(remaining - n)
        self._prompt = (known[n:] + future.permute(2, 0, 1)).contiguous()
        self._load_tile(0)
        return y + known[:n].permute(1, 2, 0)

    def _step(self, u_t: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        self._check_failed()
        if self._position - self._offset >= self._pace_at:
            self._pace()
        return super()._step(u_t, out)

    def advance(self) -> DeamortizedTileEnd | None:
        """After :meth:`step_traced`: one position on, and a slice run if a job is behind its
        pace; the tile's end is the work returned."""
        self._check_failed()
        work = super().advance()
        if self._position - self._offset >= self._pace_at:
            self._pace()
        return work

    def _check_failed(self) -> None:
        if self._failed is not None:
            raise RuntimeError(
                f"a FutureFill job of this engine failed: call reset() ({self._failed!r})"
            )

    def _pace(self) -> None:
        """A job behind its even pace (the worker has not kept up): run one queued slice, the
        earliest deadline's, in this step. One slice at most: a step's extra work is bounded."""
        jobs = self._jobs.values()
        pace_at = min((job.due() for job in jobs), default=self._remaining)
        if jobs and pace_at <= self._position - self._offset:
            self._worker.run_one()
            pace_at = min((job.due() for job in jobs), default=self._remaining)  # one more done
        self._pace_at = pace_at

    def _tile_end(self, seen: int) -> DeamortizedTileEnd:
        return DeamortizedTileEnd(self, seen)

    def _end_tile(self, seen: int) -> None:
        """After input ``seen - 1`` completed a tile: file it, join the jobs due now, start the
        jobs of the blocks it completed, and set up the next tile's outputs."""
        b0 = self.tile_len
        self._x[..., seen - b0 : seen].copy_(self._x_tile.permute(1, 2, 0))
        self._direct[:b0].copy_(self._direct[b0:])  # the next tile becomes the current one
        self._direct[b0:].zero_()
        if seen >= self._remaining:
            return
        for b in self._plans:
            if seen % b:
                break  # levels ascend: seen is a multiple of none of the larger ones either
            block = seen // b  # the block starting now; block - 1 has just been completed
            self._join(b)  # the job of block - 2: its first outputs are block's
            if (block + 1) * b < self._remaining:  # the target block block + 1 exists
                job = self._submit(b, block - 1)
                if job is not None:
                    self._jobs[b] = job
        self._load_tile(seen)

    def _load_tile(self, start: int) -> None:
        """Add the prompt's and the levels' parts of outputs ``start .. start + b0 - 1`` (every
        job writing them has been joined)."""
        b0 = self.tile_len
        current = self._direct[:b0]
        if self._prompt is not None:
            stop = min(start + b0, self._remaining)
            current[: stop - start].add_(self._prompt[start:stop])
        tiles = []
        for b, first in self._first.items():
            block = start // b
            if block < 2:
                break  # the first outputs a level-b job reaches are those of block 2
            tiles.append(first + (block % 2 * b + start % b) // b0)
        if tiles:  # three ops for all levels (per-op overhead dominates these small adds); no
            # index tensor, which on CUDA would be a host-to-device copy at every tile
            current.add_(torch.stack([self._ring_tiles[t] for t in tiles]).sum(dim=0))

    # ----------------------------------------------------------------- the jobs

    def _submit(self, b: int, block: int) -> Job | None:
        """Queue the level-b job of ``block``: its share of block + 2, written into the ring's
        slot of that block; an odd block's job adds its even partner's share (block - 1 to
        block + 2, from the spectrum the partner's job kept)."""
        x = self._x[..., block * b : (block + 1) * b]  # (B, D, b)
        first = self._first[b] + (block + 2) % 2 * b // self.tile_len  # the target's slot
        out = self._ring_tiles[first : first + b // self.tile_len].flatten(0, 1).permute(1, 2, 0)
        kept, even = self._kept[b], block % 2 == 0
        plan, scratch = self._plans[b], self._scratch.get(b)

        def passes() -> list[Pass]:  # views of the buffers, never the engine: a queued job
            if even:  # must not keep it alive (collecting it cancels its jobs)
                return plan.passes(x, b, out, keep=kept, scratch=scratch)
            return plan.passes(x, b, out, previous=kept, scratch=scratch)

        if not plan.four_step and 2 * x.numel() <= SMALL_JOB_POINTS:
            run_passes(passes())  # small: now, in one call (no job, no slices)
            return None
        if self._side_stream is not None:
            self._events[b] = self._queue_on_side_stream(passes, scratch)
            return None
        start = (block + 1) * b  # local positions: now, and the first output it reaches
        job = Job(passes, sum(plan.counts), start, start + b, self._offset)
        self._get_worker().submit(job)
        self._pace_at = min(self._pace_at, job.due())
        return job

    def _queue_on_side_stream(
        self, passes: Callable[[], list[Pass]], scratch: torch.Tensor | None
    ) -> torch.cuda.Event:
        """Queue a job on the side stream after the decoding stream's work so far; its event."""
        side, main = self._side_stream, torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            run_passes(passes())
            done = torch.cuda.Event()
            done.record(side)
        buffers = [self._x, self._ring_tiles, *self._kept.values()]
        for buffer in buffers if scratch is None else [*buffers, scratch]:
            buffer.record_stream(side)
        return done

    def _join(self, b: int) -> None:
        """Wait for the level-b job due now, running queued slices meanwhile (on CUDA: the
        decoding stream waits for its event; the host does not)."""
        event = self._events.pop(b, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        job = self._jobs.pop(b, None)
        if job is None:
            return
        self._wait(job)
        if job.error is not None:
            self._failed = job.error
            raise job.error

    def _join_all(self) -> None:
        """Cancel every job in flight (before buffers are replaced) and wait for it to stop."""
        _cancel(self._jobs)
        for job in self._jobs.values():
            self._wait(job)
        self._jobs.clear()
        for b in list(self._events):
            self._join(b)

    def _wait(self, job: Job) -> None:
        """Until ``job`` is done (its remaining slices run in this thread)."""
        self._worker.finish(job)


class DeamortizedTileEnd(ScheduledWork):
    """A deamortized engine's tile end after ``seen`` local inputs: its jobs' joins and
    submissions (each engine's own: nothing to batch across engines)."""

    def __init__(self, engine: DeamortizedConv, seen: int):
        self.engine, self.seen = engine, seen

    def run(self) -> None:
        self.engine._end_tile(self.seen)


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The stream the deamortized jobs of ``device`` run on (one per CUDA device); None on CPU."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    device = torch.device("cuda", index)
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


def _cancel(jobs: dict[int, Job]) -> None:
    """Stop jobs (an engine reset or collected): they hand out no more slices, and end when none
    is running. No lock: a finalizer may run while this thread holds it."""
    for job in jobs.values():
        job.cancelled = True
