"""What a scheduler is built from (:class:`SchedulerOptions`): the model and how it is served.
One picklable object, so that a Ray actor or Serve replica builds the same scheduler as the
command line does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from futurefill.serving.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES
from futurefill.serving.scheduler import DEFAULT_PREFILL_CHUNK, Scheduler

__all__ = ["BUNDLED_NAME", "SchedulerOptions"]

#: The API's id of the bundled demo model.
BUNDLED_NAME = "futurefill-pydoc-stu"


@dataclass(frozen=True)
class SchedulerOptions:
    """A checkpoint directory (None: the bundled model) and the scheduler's settings
    (:class:`~futurefill.serving.Scheduler`'s parameters; ``threads``: torch CPU threads)."""

    model: str | None = None
    model_name: str | None = None
    slots: int = 8
    queue_size: int = 64
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES
    method: str = "continuous"
    compile: bool = False
    threads: int = 1
    trust_pickle: bool = False

    @property
    def name(self) -> str:
        """The model's id in the API: ``model_name``, or the directory's name."""
        if self.model_name:
            return self.model_name
        return Path(self.model).resolve().name if self.model else BUNDLED_NAME

    def build(self, metrics=None, device: str | None = None) -> tuple[Scheduler, object]:
        """The model loaded (CheckpointError, FileNotFoundError or ValueError for a bad one),
        moved to ``device`` if given, and its scheduler built, not started: ``(scheduler,
        tokenizer)``."""
        import torch

        from futurefill.pretrained.tokenizers import load_with_tokenizer

        model, tokenizer, _ = load_with_tokenizer(self.model, trust_pickle=self.trust_pickle)
        if device is not None:
            model = model.to(device)
        torch.set_num_threads(self.threads)
        scheduler = Scheduler(
            model,
            tokenizer,
            slots=self.slots,
            method=self.method,
            compile=self.compile,
            queue_size=self.queue_size,
            prefill_chunk=self.prefill_chunk,
            prefix_cache_bytes=self.prefix_cache_bytes,
            metrics=metrics,
        )
        return scheduler, tokenizer
