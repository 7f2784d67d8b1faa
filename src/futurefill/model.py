"""ConvLM: a small language model whose sequence mixing is long convolutions, with cached decoding.

Read top to bottom: the config, the MLP, a residual block, the decoding cache, the model.

::

    ids (batch, length) -> embedding -> n_layers x [x + mixer(norm(x)); x + mlp(norm(x))]
                        -> norm -> lm head -> logits (batch, length, vocab_size)

The mixer is chosen by ``config.mixer`` (:mod:`futurefill.layers`). Three ways to run:

* ``model(ids)``: the whole sequence in parallel, long convolutions by FFT (training, scoring);
* ``cache = model.setup_cache(batch, max_len, method)``, then ``model.prefill(prompt, cache)``
  (one parallel pass that seeds every layer's online engine) and ``model.step(ids_t, cache)``
  (one token per sequence, each layer's engines stepped once): generation;
* :func:`futurefill.generate` wraps the second.

All three give the same logits to rounding, for every engine method.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from futurefill.layers import STU, Hyena, LongConv, Mixer, MixerCache
from futurefill.online.base import OnlineConvEngine

__all__ = ["MIXERS", "ConvLM", "ConvLMCache", "ConvLMConfig", "check_token_ids"]

MIXERS = ("longconv", "stu", "stu_tensordot", "hyena")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class ConvLMConfig:
    """Hyper-parameters of a :class:`ConvLM` (saved as ``config.json``)."""

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    max_len: int = 2048  # filter length = longest sequence the model can process
    mixer: str = "stu_tensordot"  # "longconv" | "stu" | "stu_tensordot" | "hyena"
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * d_model
    num_eigh: int = 24  # STU: number of spectral filters
    hyena_order: int = 2  # Hyena: number of long convolutions (and gates) per layer
    hyena_filter_hidden: int = 64  # Hyena: width of the implicit-filter FFN
    hyena_pos_dim: int = 17  # Hyena: positional features (odd): time + 8 cos/sin pairs
    short_kernel: int = 3  # Hyena: kernel of the short depthwise convolution
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # the LM head reuses the token embedding matrix

    def __post_init__(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(f"unknown mixer {self.mixer!r}; expected one of {MIXERS}")
        positive = (
            "vocab_size",
            "d_model",
            "n_layers",
            "max_len",
            "mlp_ratio",
            "hyena_order",
            "hyena_filter_hidden",
            "short_kernel",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.mixer.startswith("stu") and not 1 <= self.num_eigh <= self.max_len:
            raise ValueError(
                f"num_eigh must be in [1, max_len={self.max_len}], got {self.num_eigh}"
            )

    @classmethod
    def from_dict(cls, values: dict) -> ConvLMConfig:
        """Build from a dict, rejecting unknown keys (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ConvLMConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)


def make_mixer(config: ConvLMConfig) -> Mixer:
    """The sequence-mixing layer named by ``config.mixer``."""
    d, length = config.d_model, config.max_len
    if config.mixer == "longconv":
        return LongConv(d, length)
    if config.mixer in ("stu", "stu_tensordot"):
        return STU(d, length, config.num_eigh, tensordot=config.mixer == "stu_tensordot")
    return Hyena(
        d,
        length,
        config.hyena_order,
        filter_hidden=config.hyena_filter_hidden,
        pos_dim=config.hyena_pos_dim,
        short_kernel=config.short_kernel,
    )


class MLP(nn.Module):
    """``(..., d_model) -> (..., d_model)``: Linear, GELU, Linear."""

    def __init__(self, d_model: int, ratio: int):
        super().__init__()
        self.up = nn.Linear(d_model, ratio * d_model)
        self.act = nn.GELU()
        self.down = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: ConvLMConfig):
        super().__init__()
        self.mixer_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = make_mixer(config)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config.d_model, config.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, d_model) -> (batch, length, d_model)``."""
        x = x + self.mixer(self.mixer_norm(x))
        return x + self.mlp(self.mlp_norm(x))

    def prefill(self, x: torch.Tensor, cache: MixerCache) -> torch.Tensor:
        """``(batch, P, d_model) -> (batch, P, d_model)``, seeding the mixer's cache."""
        x = x + self.mixer.prefill(self.mixer_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x_t: torch.Tensor, cache: MixerCache) -> torch.Tensor:
        """``(batch, d_model) -> (batch, d_model)``, one token."""
        x_t = x_t + self.mixer.step(self.mixer_norm(x_t), cache)
        return x_t + self.mlp(self.mlp_norm(x_t))


class ConvLMCache:
    """Decoding state of a :class:`ConvLM`: one :class:`MixerCache` per layer.

    Built by :meth:`ConvLM.setup_cache` for a fixed (batch_size, max_len, method); every buffer
    is allocated there (the continuous engine sizes its own at prefill). Life cycle::

        cache = model.setup_cache(batch_size, max_len, "continuous")
        logits = model.prefill(prompt, cache)   # optional, first; (B, P) -> (B, P, vocab)
        logits_t = model.step(ids_t, cache)     # (B,) -> (B, vocab), up to max_len tokens in all
        cache.reset()                           # start a new batch of sequences

    The cache holds a snapshot of every layer's long filters: build a new one after the model's
    weights change (training) or after moving the model to another device or dtype.

    Attributes
    ----------
    layers : list of MixerCache, one per block.
    batch_size, max_len, method : as given to ``setup_cache``.
    dtype, device : those of the model when the cache was built.
    position : int, tokens consumed so far (prompt included).
    """

    def __init__(
        self,
        layers: list[MixerCache],
        *,
        batch_size: int,
        max_len: int,
        method: str,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.layers = layers
        self.batch_size = batch_size
        self.max_len = max_len
        self.method = method
        self.dtype = dtype
        self.device = device
        self.position = 0

    @property
    def engines(self) -> list[OnlineConvEngine]:
        """Every online engine of every layer, in the order a step calls them."""
        return [engine for layer in self.layers for engine in layer.engines]

    @property
    def nbytes(self) -> int:
        """Bytes held by all the layers' engines and buffers."""
        return sum(layer.nbytes for layer in self.layers)

    def reset(self) -> None:
        """Forget the sequences: back to position 0, ready for ``prefill`` or ``step``."""
        for layer in self.layers:
            layer.reset()
        self.position = 0

    def __repr__(self) -> str:
        return (
            f"ConvLMCache(layers={len(self.layers)}, batch_size={self.batch_size}, "
            f"max_len={self.max_len}, method={self.method!r}, position={self.position}, "
            f"nbytes={self.nbytes})"
        )


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str = "ids") -> None:
    """TypeError unless ``ids`` is an int64 or int32 tensor; ValueError if an id is outside
    ``[0, vocab_size)`` (one device sync)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"{name} must have an integer dtype (torch.long or torch.int), got {ids.dtype}"
        )
    if bool(((ids < 0) | (ids >= vocab_size)).any()):
        raise ValueError(
            f"{name} has token ids in [{int(ids.min())}, {int(ids.max())}], outside the "
            f"vocabulary [0, {vocab_size})"
        )


class ConvLM(nn.Module):
    """Convolutional language model (see the module docstring).

    Parameters
    ----------
    config : ConvLMConfig

    Examples
    --------
    >>> model = ConvLM(ConvLMConfig(d_model=16, n_layers=2, max_len=64))
    >>> logits = model(torch.randint(0, 256, (2, 10)))                  # (2, 10, 256)
    >>> cache = model.setup_cache(batch_size=2, max_len=32)
    >>> last = model.prefill(torch.randint(0, 256, (2, 10)), cache)[:, -1]  # (2, 256)
    >>> nxt = model.step(last.argmax(-1), cache)                            # (2, 256)
    """

    def __init__(self, config: ConvLMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    # ------------------------------------------------------------------ parallel

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits for every position: ``(batch, length) -> (batch, length, vocab_size)``.

        ``length <= config.max_len``; ids must be integers in ``[0, vocab_size)``.
        """
        self._check_sequence(ids, self.config.max_len)
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    # ------------------------------------------------------------------ cached decoding

    def setup_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        method: str = "continuous",
        **engine_options: int,
    ) -> ConvLMCache:
        """Allocate the decoding state for ``batch_size`` sequences of up to ``max_len`` tokens.

        Parameters
        ----------
        batch_size : int
        max_len : int, optional
            Longest sequence (prompt plus fed tokens); default and maximum ``config.max_len``.
        method : {"continuous", "epoched", "naive"}
            The online convolution engine of every layer (see :mod:`futurefill.online`).
        **engine_options
            ``epoch_len`` (epoched) or ``tile_len`` (continuous), passed to every engine.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        max_len = self.config.max_len if max_len is None else max_len
        if isinstance(max_len, bool) or not isinstance(max_len, int):
            raise TypeError(f"max_len must be an int, got {type(max_len).__name__}")
        if not 1 <= max_len <= self.config.max_len:
            raise ValueError(
                f"max_len must be in [1, config.max_len={self.config.max_len}], got {max_len}"
            )
        layers = [
            block.mixer.setup_cache(batch_size, max_len, method, **engine_options)
            for block in self.blocks
        ]
        weight = self.embed.weight
        return ConvLMCache(
            layers,
            batch_size=batch_size,
            max_len=max_len,
            method=method,
            dtype=weight.dtype,
            device=weight.device,
        )

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, cache: ConvLMCache) -> torch.Tensor:
        """Consume prompts in one parallel pass; seed every layer's engine.

        Parameters
        ----------
        ids : LongTensor, shape (cache.batch_size, P), ``1 <= P <= cache.max_len``.
        cache : ConvLMCache at position 0 (fresh or reset).

        Returns
        -------
        Tensor, shape (batch, P, vocab_size): the logits ``forward(ids)`` gives, to rounding.
        """
        if cache.position != 0:
            raise RuntimeError(
                f"prefill must come first: the cache is at position {cache.position}; "
                "call cache.reset() to start new sequences"
            )
        self._check_sequence(ids, cache.max_len)
        if ids.shape[0] != cache.batch_size:
            raise ValueError(
                f"ids has batch {ids.shape[0]}, but the cache was built for batch_size="
                f"{cache.batch_size}"
            )
        if ids.shape[1] < 1:
            raise ValueError("prefill needs at least one token per sequence")
        x = self.embed(ids)
        for block, layer in zip(self.blocks, cache.layers, strict=True):
            x = block.prefill(x, layer)
        cache.position = ids.shape[1]
        return self.head(self.norm(x))

    @torch.no_grad()
    def step(
        self, ids_t: torch.Tensor, cache: ConvLMCache, *, check_ids: bool = True
    ) -> torch.Tensor:
        """Consume one token per sequence and return the logits for the next one.

        Parameters
        ----------
        ids_t : LongTensor, shape (cache.batch_size,), the token at position ``cache.position``.
        cache : ConvLMCache, below its ``max_len``.
        check_ids : bool
            Check that the ids are in the vocabulary (one device sync on GPUs). :func:`generate`
            turns it off: the ids it samples are in range by construction.

        Returns
        -------
        Tensor, shape (batch, vocab_size): the logits ``forward`` gives at this position.
        """
        if not isinstance(ids_t, torch.Tensor) or ids_t.shape != (cache.batch_size,):
            shape = tuple(ids_t.shape) if isinstance(ids_t, torch.Tensor) else type(ids_t).__name__
            raise ValueError(f"ids_t must have shape (batch_size={cache.batch_size},), got {shape}")
        if check_ids:
            check_token_ids(ids_t, self.config.vocab_size, "ids_t")
        if cache.position >= cache.max_len:
            raise RuntimeError(f"the cache is full (max_len={cache.max_len}); call cache.reset()")
        x_t = self.embed(ids_t)
        for block, layer in zip(self.blocks, cache.layers, strict=True):
            x_t = block.step(x_t, layer)
        cache.position += 1
        return self.head(self.norm(x_t))

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (weights in their dtype) to a directory.

        Buffers (STU filters, Hyena positional features) are saved too, so a loaded model gives
        bit-identical outputs on the same hardware.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        if self.config.tie_embeddings:
            del state["head.weight"]  # the same tensor as embed.weight
        save_file(state, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device | None = None) -> ConvLM:
        """A model saved by :meth:`save`, on ``map_location`` (default CPU), in its saved dtype."""
        directory = Path(directory)
        config = ConvLMConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
        device = torch.device("cpu" if map_location is None else map_location)
        state = load_file(str(directory / WEIGHTS_FILE), device=str(device))
        dtypes = {t.dtype for t in state.values()}
        if len(dtypes) != 1:
            raise ValueError(f"{directory / WEIGHTS_FILE} mixes dtypes {sorted(map(str, dtypes))}")
        model = cls(config).to(device=device, dtype=dtypes.pop())
        if config.tie_embeddings:
            state["head.weight"] = state["embed.weight"]
        model.load_state_dict(state)
        return model

    # ------------------------------------------------------------------ checks

    def _check_sequence(self, ids: torch.Tensor, max_len: int) -> None:
        check_token_ids(ids, self.config.vocab_size)
        if ids.dim() != 2:
            raise ValueError(f"ids must have shape (batch, length), got {tuple(ids.shape)}")
        if ids.shape[1] > max_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_len={max_len}")
        if ids.device != self.embed.weight.device:
            raise ValueError(f"ids are on {ids.device}, the model on {self.embed.weight.device}")
