"""ConvLM: a small language model whose sequence mixing is long convolutions.

Read top to bottom: the config, the MLP, a residual block, the model.

::

    ids (batch, length) -> embedding -> n_layers x [x + mixer(norm(x)); x + mlp(norm(x))]
                        -> norm -> lm head -> logits (batch, length, vocab_size)

The mixer is chosen by ``config.mixer`` (:mod:`futurefill.layers`). There is one forward: outside
a decoding session it maps whole sequences (training, scoring); inside one
(:func:`futurefill.decoding`) it continues them chunk by chunk through every layer's online
engine, which is what :func:`futurefill.generate` does. Both give the same logits to rounding,
for every engine method.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn

from futurefill.layers import STU, Attention, Hyena, HyenaConfig, LongConvMixer

__all__ = [
    "HYBRIDS",
    "MIXERS",
    "ConvLM",
    "ConvLMConfig",
    "check_token_dtype",
    "check_token_ids",
    "write_checkpoint",
]

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
    # Hyena (futurefill.layers.HyenaConfig's fields of the same names, without "hyena_"):
    hyena_order: int = 2  # order N: N + 1 streams, N - 1 long convolutions
    hyena_filter_order: int = 64  # width of the implicit filters' FFN
    hyena_emb_dim: int = 17  # positional features (odd): time + 8 cos/sin pairs
    hyena_short_filter_order: int = 3  # kernel of the short depthwise convolution
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # the LM head reuses the token embedding matrix
    mlp: str = "gelu"  # "gelu": Linear, GELU, Linear; "swiglu": down(silu(gate x) * up x)
    # Hybrids (futurefill.layers.Attention): every attention_every-th block is attention.
    attention_every: int = 0  # 0: none; 2: blocks 1, 3, 5, ... (Flash STU, StripedHyena)
    attention_heads: int = 4
    attention_kv_heads: int | None = None  # grouped-query attention when fewer than the heads
    attention_window: int | None = None  # sliding window
    attention_alibi: float | None = None  # ALiBi slopes times this factor (Flash STU: 0.25)
    attention_softcap: float | None = None
    attention_rotary: float | None = None  # rotary embeddings' base (StripedHyena: 10000)

    REQUIRED: ClassVar[tuple[str, ...]] = ("vocab_size", "d_model", "n_layers", "max_len", "mixer")

    def __post_init__(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(f"unknown mixer {self.mixer!r}; expected one of {MIXERS}")
        positive = (
            "vocab_size",
            "d_model",
            "n_layers",
            "max_len",
            "mlp_ratio",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.mixer.startswith("stu") and not 1 <= self.num_eigh <= self.max_len:
            raise ValueError(
                f"num_eigh must be in [1, max_len={self.max_len}], got {self.num_eigh}"
            )
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if not isinstance(self.attention_every, int) or self.attention_every < 0:
            raise ValueError(f"attention_every must be an int >= 0, got {self.attention_every!r}")
        if self.attention_every:
            self.attention()  # checks the attention's fields
        if self.mixer == "hyena":
            try:
                self.hyena  # noqa: B018 (checks the mixer's fields)
            except ValueError as error:
                raise ValueError(f"hyena_{error}") from None

    def attention(self) -> Attention:
        """A new attention mixer of this config (ValueError for fields that do not fit)."""
        return Attention(
            self.d_model,
            self.attention_heads,
            self.attention_kv_heads,
            window=self.attention_window,
            alibi=self.attention_alibi,
            softcap=self.attention_softcap,
            rotary=self.attention_rotary,
        )

    @classmethod
    def hybrid(cls, name: str, **fields) -> ConvLMConfig:
        """A hybrid's shape (:data:`HYBRIDS`), with ``fields`` on top."""
        if name not in HYBRIDS:
            raise ValueError(f"unknown hybrid {name!r}; expected one of {tuple(HYBRIDS)}")
        return cls(**{**HYBRIDS[name], **fields})

    @property
    def hyena(self) -> HyenaConfig:
        """The Hyena mixer's configuration."""
        return HyenaConfig(
            d_model=self.d_model,
            max_len=self.max_len,
            order=self.hyena_order,
            emb_dim=self.hyena_emb_dim,
            filter_order=self.hyena_filter_order,
            short_filter_order=self.hyena_short_filter_order,
        )

    @classmethod
    def from_dict(cls, values: dict) -> ConvLMConfig:
        """Build from a dict, rejecting unknown keys (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ConvLMConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)


# The hybrids' shapes (as published; width and depth left to the caller):
# Flash STU (hazan-lab/flash-stu): STU layers alternating with sliding-window attention with
# ALiBi (slopes times 0.25) and logit soft-capping, SwiGLU MLPs, RMSNorm, tied embeddings;
# StripedHyena (Evo 1): Hyena blocks with rotary grouped-query attention every other block.
HYBRIDS = {
    "flash_stu": {
        "mixer": "stu_tensordot",
        "attention_every": 2,
        "attention_window": 512,
        "attention_alibi": 0.25,
        "attention_softcap": 50.0,
        "mlp": "swiglu",
        "tie_embeddings": True,
    },
    "striped_hyena": {
        "mixer": "hyena",
        "attention_every": 2,
        "attention_kv_heads": 2,
        "attention_rotary": 10000.0,
        "mlp": "swiglu",
    },
}


def make_mixer(config: ConvLMConfig, index: int = 0) -> nn.Module:
    """The sequence-mixing layer of block ``index``: attention every ``attention_every``-th
    block of a hybrid, else the one named by ``config.mixer``."""
    if config.attention_every and (index + 1) % config.attention_every == 0:
        return config.attention()
    d, length = config.d_model, config.max_len
    if config.mixer == "longconv":
        return LongConvMixer(d, length)
    if config.mixer in ("stu", "stu_tensordot"):
        return STU(d, length, config.num_eigh, tensordot=config.mixer == "stu_tensordot")
    return Hyena(config.hyena)


class MLP(nn.Module):
    """``(..., d_model) -> (..., d_model)``: Linear, GELU, Linear; or SwiGLU,
    ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, d_model: int, ratio: int, kind: str = "gelu"):
        super().__init__()
        self.up = nn.Linear(d_model, ratio * d_model)
        self.act = nn.GELU()
        self.gate = nn.Linear(d_model, ratio * d_model) if kind == "swiglu" else None
        self.down = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: ConvLMConfig, index: int = 0):
        super().__init__()
        self.mixer_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = make_mixer(config, index)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config.d_model, config.mlp_ratio, config.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, d_model) -> (batch, length, d_model)``."""
        x = x + self.mixer(self.mixer_norm(x))
        return x + self.mlp(self.mlp_norm(x))


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str = "ids") -> None:
    """TypeError unless ``ids`` is an int64 or int32 tensor; ValueError if an id is outside
    ``[0, vocab_size)`` (one reduction and one device sync)."""
    check_token_dtype(ids, name)
    if ids.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(ids))
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{name} has token ids in [{low}, {high}], outside the vocabulary [0, {vocab_size})"
        )


def check_token_dtype(ids: torch.Tensor, name: str = "ids") -> None:
    """TypeError unless ``ids`` is an int64 or int32 tensor (reads no data)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"{name} must have an integer dtype (torch.long or torch.int), got {ids.dtype}"
        )


def embed_tokens(
    embedding: nn.Embedding, ids: torch.Tensor, max_len: int, limit: str
) -> torch.Tensor:
    """``embedding(ids)`` ``(batch, length, dim)`` after the checks a language model's forward
    owes its caller: integer ids of shape ``(batch, length)``, ``length <= max_len`` (``limit``,
    formatted with it, names the bound in the error), on the embedding's device, inside the
    vocabulary. On the CPU the embedding's own bounds check finds a bad id (no extra pass over
    the ids, no sync per token); elsewhere (CUDA reports it only as a device-side assert) the
    ids of a chunk of several positions are checked first, on the host (one sync: a prompt),
    and those of one position (a decoding step, where a host check would stall every token)
    on the device: a bad id fails the next synchronization with a device-side assertion."""
    check_token_dtype(ids)
    if ids.dim() != 2:
        raise ValueError(f"ids must have shape (batch, length), got {tuple(ids.shape)}")
    if ids.shape[1] > max_len:
        raise ValueError(f"sequence length {ids.shape[1]} exceeds {limit.format(max_len)}")
    weight = embedding.weight
    if ids.device != weight.device:
        raise ValueError(f"ids are on {ids.device}, the model on {weight.device}")
    if ids.device.type != "cpu":
        if ids.shape[1] == 1:
            inside = (ids >= 0) & (ids < embedding.num_embeddings)
            torch._assert_async(inside.all(), "token id outside the vocabulary")
        else:
            check_token_ids(ids, embedding.num_embeddings)
        return embedding(ids)
    try:
        return embedding(ids)
    except IndexError:
        check_token_ids(ids, embedding.num_embeddings)
        raise


class ConvLM(nn.Module):
    """Convolutional language model (see the module docstring).

    Parameters
    ----------
    config : ConvLMConfig

    Examples
    --------
    >>> from futurefill import decoding
    >>> model = ConvLM(ConvLMConfig(d_model=16, n_layers=2, max_len=64))
    >>> logits = model(torch.randint(0, 256, (2, 10)))                  # (2, 10, 256)
    >>> with decoding(model, batch_size=2, max_len=32) as session:
    ...     last = session.feed(torch.randint(0, 256, (2, 10)))[:, -1]    # (2, 256)
    ...     nxt = session.feed(last.argmax(-1)[:, None])                  # (2, 1, 256)
    """

    def __init__(self, config: ConvLMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits for every position: ``(batch, length) -> (batch, length, vocab_size)``.

        ``length <= config.max_len``; ids must be integers in ``[0, vocab_size)``. In a decoding
        session, ``ids`` are the next ``length`` tokens of every sequence.
        """
        x = embed_tokens(self.embed, ids, self.config.max_len, "max_len={}")
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights and buffers in their dtype)
        to ``directory``, which :func:`futurefill.load_pretrained` reads back bit-identical."""
        return write_checkpoint(self, asdict(self.config), directory)


def write_checkpoint(model: nn.Module, config: dict, directory: str | Path) -> Path:
    """``config`` as ``config.json`` and ``model``'s state (buffers included, a tensor shared
    under several names stored once: ``safetensors.torch.save_model``) as ``model.safetensors``
    in ``directory`` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory
