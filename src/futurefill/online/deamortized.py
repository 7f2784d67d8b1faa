"""Deamortized Continuous-FutureFill (FUTUREFILL.md section 4b): bounded work at every step.

Continuous-FutureFill runs the FFT of a finished block of size b before the very next output, so
one step in b stalls for it. Here every FFT job gets b steps of slack. With tiles of b0 inputs
(a power of two) and, for every level b = b0, 2 b0, 4 b0, ..., b-blocks I = [I b, (I+1) b)::

    direct:   output t adds h[t-i] u_i for every input i of its tile and of the tile before
              (each input is pushed into the rest of its tile and the whole next tile)
    level b:  a finished block I adds its contribution to outputs [(I+2) b, (I+4) b) if I is
              even, [(I+2) b, (I+3) b) if I is odd: one FFT of size 4b (input b, filter h[:4b])

Every pair (input i, output t >= i) is covered exactly once: pairs within one tile or two
adjacent tiles directly, every other one by the unique level b with floor(t/b) - floor(i/b) in
{2, 3} and floor(t/2b) - floor(i/2b) = 1. Block I is complete after step (I+1) b - 1 and its
first output is (I+2) b, so its job runs on a worker thread (torch releases the GIL inside its
ops) while the next b steps go on, and the step waits for it only at that deadline. At most one
job per level is in flight; each level accumulates into its own ring of four b-blocks, read one
tile at a time at tile starts and cleared after its block has been read, so a job never writes
where the main thread reads. Per 2b steps a level does 6b FFT points where
Continuous-FutureFill does 2b: about 3x its FFT work, spread over the steps instead of spiked.

After a prompt of length P, the prompt's contribution to the K = max_len - P outputs after it is
kept (one FFT, as in Continuous-FutureFill) and the schedule runs over the generated inputs only.
Memory O(K): the generated inputs, the prompt part, the rings (4b per level, 8K in all).

Worker threads: one per level that can run (log2(K / b0)), idle between jobs, shut down when the
engine is collected; a job holds references to the buffers it writes, so none is freed under
it. A job that raises re-raises at its deadline step; the engine then needs ``reset()``.
On CUDA the jobs are issued from the worker threads on the default stream (correct, but not
overlapped with the main thread's kernels; a side stream per level is future work).
"""

from __future__ import annotations

import weakref
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from futurefill.fftconv import prompt_conv
from futurefill.online.base import OnlineConvEngine
from futurefill.online.continuous import check_tile_len, default_tile_len


def _levels(b0: int, remaining: int) -> list[int]:
    """The block sizes b whose jobs reach an output: b0, 2 b0, ... while 2b < remaining."""
    levels, b = [], b0
    while 2 * b < remaining:
        levels.append(b)
        b *= 2
    return levels


class DeamortizedConv(OnlineConvEngine):
    """Online causal convolution with bounded work per step. See :class:`OnlineConvEngine`.

    Parameters
    ----------
    tile_len : int, optional
        The direct-computation tile b0, a power of two; default
        :func:`~futurefill.online.continuous.default_tile_len`.
    """

    method = "deamortized"

    def __init__(
        self,
        h: torch.Tensor,
        *,
        max_len: int | None = None,
        batch_size: int = 1,
        tile_len: int | None = None,
    ):
        super().__init__(h, max_len=max_len, batch_size=batch_size)
        if tile_len is None:
            tile_len = default_tile_len(self.channels, self.batch_size, self.device)
        self.tile_len = b0 = check_tile_len(tile_len)
        head = self._zeros(2 * b0, 1, self.channels)
        width = min(2 * b0, self.max_len)
        head[:width, 0].copy_(self.h[:, :width].t())
        self._h_head = head  # (2 b0, 1, D): what an input adds to its tile and the next
        self._spectra: dict[int, torch.Tensor] = {}
        self._jobs: dict[int, Future] = {}
        workers = max(1, len(_levels(b0, self.max_len)))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="futurefill-deamortized")
        weakref.finalize(self, self._pool.shutdown, wait=False)
        self._failed: BaseException | None = None
        self._reset()

    # ----------------------------------------------------------------- buffers

    def _allocate(self, remaining: int) -> None:
        """Buffers, rings and level spectra for ``remaining`` more steps."""
        self._join_all()
        b0, batch, channels = self.tile_len, self.batch_size, self.channels
        padded = -(-remaining // b0) * b0  # whole tiles
        self._remaining = remaining
        self._offset = self.max_len - remaining  # global position of local step 0
        self._x = self._zeros(batch, channels, padded)  # generated inputs, for the jobs
        self._prompt: torch.Tensor | None = None  # the prompt's part of every output
        # Outputs of the current tile and the next, time-major; the step's views built once.
        self._direct = self._zeros(2 * b0, batch, channels)
        self._x_tile = self._zeros(b0, batch, channels)
        self._x_rows = list(self._x_tile.unbind(0))
        self._d_rows = list(self._direct[:b0].unbind(0))
        self._d_rests = [self._direct[j:] for j in range(b0)]
        self._h_rests = [self._h_head[: 2 * b0 - j] for j in range(b0)]
        levels = _levels(b0, remaining)
        self._rings = {b: self._zeros(batch, channels, 4 * b) for b in levels}
        self._spectra = {b: self._spectra.get(b) for b in levels}
        for b in levels:
            if self._spectra[b] is None:
                self._spectra[b] = torch.fft.rfft(self.h[:, : min(4 * b, self.max_len)], n=4 * b)
        self._failed = None

    def _reset(self) -> None:
        self._allocate(self.max_len)

    def _buffers(self) -> list[torch.Tensor]:
        prompt = [] if self._prompt is None else [self._prompt]
        levels = [*self._rings.values(), *self._spectra.values()]
        return [self._x, self._direct, self._x_tile, self._h_head, *prompt, *levels]

    # ----------------------------------------------------------------- prompt and steps

    def _prefill(self, u: torch.Tensor) -> torch.Tensor:
        prompt_len = u.shape[-1]
        remaining = self.max_len - prompt_len
        y, future = prompt_conv(u, self.h[:, : self.max_len], remaining)
        self._allocate(remaining)
        self._prompt = future  # (B, D, K)
        self._load_tile(0)
        return y

    def _step(self, u_t: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        if self._failed is not None:
            raise RuntimeError(
                f"a FutureFill job of this engine failed: call reset() ({self._failed!r})"
            )
        j = (self._position - self._offset) % self.tile_len
        self._x_rows[j].copy_(u_t)
        self._d_rests[j].addcmul_(self._h_rests[j], u_t)
        y = self._d_rows[j].clone() if out is None else out.copy_(self._d_rows[j])
        self._position += 1
        if j == self.tile_len - 1:
            self._end_tile(self._position - self._offset)
        return y

    def _end_tile(self, seen: int) -> None:
        """After input ``seen - 1`` completed a tile: file it, join the jobs due now, start the
        jobs of the blocks it completed, and set up the next tile's outputs."""
        b0 = self.tile_len
        self._x[..., seen - b0 : seen].copy_(self._x_tile.permute(1, 2, 0))
        self._direct[:b0].copy_(self._direct[b0:])  # the next tile becomes the current one
        self._direct[b0:].zero_()
        if seen >= self._remaining:
            return
        for b, ring in self._rings.items():
            if seen % b:
                break  # levels ascend: seen is a multiple of none of the larger ones either
            block = seen // b  # the block starting now; block - 1 has just been completed
            self._join(b)  # the job of block - 2: its first outputs are block's
            done = (block - 1) % 4 * b
            ring[..., done : done + b].zero_()  # block - 1 has been read: free its slot
            if block * b + b < self._remaining:  # its first output (block + 1) b exists
                self._jobs[b] = self._pool.submit(self._job, b, block - 1)
        self._load_tile(seen)

    def _load_tile(self, start: int) -> None:
        """Add the prompt's and the levels' parts of outputs ``start .. start + b0 - 1``."""
        b0 = self.tile_len
        current = self._direct[:b0]
        if self._prompt is not None:
            stop = min(start + b0, self._remaining)
            current[: stop - start] += self._prompt[..., start:stop].permute(2, 0, 1)
        for b, ring in self._rings.items():
            block = start // b
            if block < 2:
                break  # the first outputs a level-b job reaches are those of block 2
            offset = block % 4 * b + start % b
            current += ring[..., offset : offset + b0].permute(2, 0, 1)

    # ----------------------------------------------------------------- the jobs

    def _job(self, b: int, block: int) -> None:
        """On a worker: block ``block`` of size b -> its share of blocks block+2 (and block+3
        if even), added into the level's ring. Linear convolution entries 2b .. 4b-1 of the
        block with h[:4b] are free of aliasing at FFT size 4b (the full length is 5b - 1)."""
        x = self._x[..., block * b : (block + 1) * b]
        y = torch.fft.irfft(torch.fft.rfft(x, n=4 * b) * self._spectra[b], n=4 * b)
        ring = self._rings[b]
        for k in range(2 if block % 2 == 0 else 1):
            target = block + 2 + k
            if target * b >= self._remaining:
                break
            slot = target % 4 * b
            ring[..., slot : slot + b] += y[..., (2 + k) * b : (3 + k) * b]

    def _join(self, b: int) -> None:
        job = self._jobs.pop(b, None)
        if job is None:
            return
        try:
            job.result()
        except BaseException as exc:
            self._failed = exc
            raise

    def _join_all(self) -> None:
        """Wait for every job in flight (before buffers are replaced), errors dropped."""
        for job in self._jobs.values():
            job.exception()
        self._jobs = {}
