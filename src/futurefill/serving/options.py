"""What a scheduler is built from (:class:`SchedulerOptions`): the model and how it is served.
One picklable object, so that a Ray actor or Serve replica builds the same scheduler as the
command line does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from futurefill.serving.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES
from futurefill.serving.scheduler import DEFAULT_PREFILL_CHUNK, Scheduler

__all__ = ["BUNDLED_NAME", "SchedulerOptions", "check_int"]

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

    def __post_init__(self) -> None:
        """ValueError naming a field whose value is out of range (the command line checks its
        options itself; a Serve config file or Python code reach here unchecked)."""
        from futurefill.online import ENGINES

        for name, low in [
            ("slots", 1),
            ("queue_size", 0),
            ("prefill_chunk", 1),
            ("prefix_cache_bytes", 0),
            ("threads", 1),
        ]:
            check_int(name, getattr(self, name), low)
        if self.slots > 1024:
            raise ValueError(f"slots must be an integer in [1, 1024], got {self.slots}")
        if self.method not in ENGINES:
            raise ValueError(f"method must be one of {', '.join(ENGINES)}, got {self.method!r}")
        for name in ("model", "model_name"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        for name in ("compile", "trust_pickle"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

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


def check_int(name: str, value: object, low: int) -> None:
    """ValueError unless ``value`` is an int (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
