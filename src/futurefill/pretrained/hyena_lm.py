"""The Hyena language models that have public weights (HyenaDNA, the safari Hyena LMs), on
:mod:`futurefill.nn` so that they decode exactly with every online method.

Written from the published architecture (``shared/reference/MODELS.md``), in the names of the
public checkpoints so that loading them is a renaming of prefixes. For ids ``(batch, length)``::

    h = embed(ids); r = 0
    for each block:  r = h + r;  h = mixer(LN1(r));  r = h + r;  h = mlp(LN2(r))
    logits = lm_head(ln_f(h + r))                      mlp(x) = fc2(gelu_tanh(fc1(x)))

The mixer is the Hyena operator of order N >= 2 (N - 1 long convolutions)::

    x_0, .., x_{N-1}, v = split(short_filter(in_proj(u)))      N + 1 streams of d_model channels
    for o, x_i in enumerate(x_{N-1}, .., x_1):  v = k_o * (x_i ⊙ v) + D_o ⊙ (x_i ⊙ v)
    y = out_proj(x_0 ⊙ v)

with ``*`` the causal convolution and the implicit filters (``filter_fn``)::

    k[t, c] = FFN(z[t])[c] * (exp(-t_unit[t] |delta_c|) + shift)      t = 0 .. max_seq_len - 1

``z`` (positional features) and ``t_unit`` are the checkpoint's buffers, the FFN is
``Linear(emb_dim, F)``, ``Sin``, ``num_inner_mlps`` x (``Linear(F, F)``, ``Sin``),
``Linear(F, (N - 1) d_model, bias=False)``, every ``Sin`` being ``sin(freq ⊙ x)`` with one shared
``freq``. The filter is always evaluated on the first ``length`` rows of the ``max_seq_len`` grid,
so taps do not depend on the input's length (FutureFill's premise: a fixed filter).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from futurefill import nn as ffnn
from futurefill.model import embed_tokens

__all__ = ["FILTER_LAYOUTS", "HyenaLM", "HyenaLMConfig", "positional_features"]

# How the (N - 1) * d_model outputs of the filter FFN (and the D biases) split into orders:
# "order-major" (HyenaDNA's released inference code: index o * d_model + c) or "channel-major"
# (the safari training code: index c * (N - 1) + o). The two agree for order 2.
FILTER_LAYOUTS = ("order-major", "channel-major")


@dataclass(frozen=True)
class HyenaLMConfig:
    """Every hyper-parameter of a :class:`HyenaLM` that changes its numbers.

    ``vocab_size`` is the embedding's row count (the tokenizer's vocabulary padded up, as the
    checkpoints store it). ``block_norm_eps`` and ``final_norm_eps`` are separate because the
    Hugging Face port builds its block norms with PyTorch's default eps and only ``ln_f`` with
    ``layer_norm_epsilon``.
    """

    vocab_size: int
    d_model: int
    n_layer: int
    d_inner: int
    max_seq_len: int
    order: int = 2
    emb_dim: int = 3
    filter_order: int = 64
    num_inner_mlps: int = 2
    short_filter_order: int = 3
    activation_freq: float = 1.0
    modulate: bool = True
    modulation_shift: float = 0.05
    filter_layout: str = "order-major"
    use_bias: bool = True
    normalized: bool = False
    block_norm_eps: float = 1e-5
    final_norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "d_inner", "max_seq_len", "filter_order"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("short_filter_order", self.short_filter_order)
        if not isinstance(self.order, int) or isinstance(self.order, bool) or self.order < 2:
            raise ValueError(f"order must be an int >= 2, got {self.order!r}")
        if not isinstance(self.emb_dim, int) or self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be an odd int >= 3, got {self.emb_dim!r}")
        if not isinstance(self.num_inner_mlps, int) or self.num_inner_mlps < 0:
            raise ValueError(f"num_inner_mlps must be an int >= 0, got {self.num_inner_mlps!r}")
        if self.filter_layout not in FILTER_LAYOUTS:
            raise ValueError(
                f"filter_layout must be one of {FILTER_LAYOUTS}, got {self.filter_layout!r}"
            )
        for name in ("activation_freq", "modulation_shift", "block_norm_eps", "final_norm_eps"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("block_norm_eps", "final_norm_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def positional_features(emb_dim: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The filters' inputs: ``z`` ``(1, seq_len, emb_dim)`` and ``t_unit`` ``(1, seq_len, 1)``.

    ``t_unit = linspace(0, 1, seq_len)``; ``z = [t_unit, cos(f_j w), -sin(f_j w)]`` with
    ``w = 2 pi t / seq_len`` and ``(emb_dim - 1) / 2`` frequencies ``f = linspace(1e-4, bands - 1,
    bands)``: the real and imaginary parts of ``exp(-i f w)``. Checkpoints store both (loaded, not
    recomputed); this builds a fresh model's.
    """
    bands = (emb_dim - 1) // 2
    t_unit = torch.linspace(0, 1, seq_len)[None, :, None]
    w = 2 * math.pi * torch.linspace(0, seq_len - 1, seq_len)[None, :, None] / seq_len
    f = torch.linspace(1e-4, bands - 1, bands)[None, None]
    return torch.cat([t_unit, torch.cos(f * w), -torch.sin(f * w)], dim=-1), t_unit


class Sin(nn.Module):
    """``sin(freq ⊙ x)``; ``freq`` ``(1, features)``. One instance serves every activation of a
    filter FFN, so its ``freq`` appears under each of their names in the state dict."""

    def __init__(self, features: int, freq: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((1, features), float(freq)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class _Buffers(nn.Module):
    """A named holder of buffers (keeps the checkpoints' ``pos_emb.z``, ``modulation.deltas``)."""

    def __init__(self, **buffers: torch.Tensor):
        super().__init__()
        for name, value in buffers.items():
            self.register_buffer(name, value)


class HyenaFilter(nn.Module):
    """The implicit long filters of one operator and their ``D`` biases (``bias``).

    ``forward(length)`` gives all ``(N - 1) * d_model`` filters ``(length, (N - 1) d_model)``;
    :meth:`order_taps` the ``d_model`` filters of one order, ``(d_model, length)``.
    """

    def __init__(self, config: HyenaLMConfig):
        super().__init__()
        self.config = config
        channels = config.d_model * (config.order - 1)
        self.bias = nn.Parameter(torch.randn(channels))
        z, t_unit = positional_features(config.emb_dim, config.max_seq_len)
        self.pos_emb = _Buffers(z=z, t=t_unit)
        width, act = config.filter_order, Sin(config.filter_order, config.activation_freq)
        layers: list[nn.Module] = [nn.Linear(config.emb_dim, width), act]
        for _ in range(config.num_inner_mlps):
            layers += [nn.Linear(width, width), act]
        layers.append(nn.Linear(width, channels, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        fast, slow, target = 0.3, 1.5, 1e-2
        deltas = torch.linspace(math.log(target) / slow, math.log(target) / fast, channels)
        self.modulation = _Buffers(deltas=deltas[None, None])

    def forward(self, length: int) -> torch.Tensor:
        """``(length, (N - 1) * d_model)``: the filters' first ``length`` taps."""
        h = self.implicit_filter(self.pos_emb.z[0, :length])
        if self.config.modulate:
            decay = torch.exp(-self.pos_emb.t[0, :length] * self.modulation.deltas[0].abs())
            h = h * (decay + self.config.modulation_shift)
        if self.config.normalized:
            h = h / h.abs().sum(dim=-1, keepdim=True)
        return h

    def _select(self, x: torch.Tensor, o: int) -> torch.Tensor:
        """Order ``o``'s ``d_model`` entries of the last axis of ``x``."""
        if self.config.filter_layout == "order-major":
            d = self.config.d_model
            return x[..., o * d : (o + 1) * d]
        return x[..., o :: self.config.order - 1]

    def order_taps(self, o: int, length: int) -> torch.Tensor:
        """``(d_model, length)``: the long filters of order ``o``."""
        return self._select(self(length), o).T

    def order_bias(self, o: int) -> torch.Tensor | None:
        """``(d_model,)``: the ``D`` of order ``o`` (None without ``use_bias``)."""
        return self._select(self.bias, o) if self.config.use_bias else None


class HyenaOperator(nn.Module):
    """The Hyena mixer (see the module docstring): ``(batch, length, d_model)`` to the same."""

    def __init__(self, config: HyenaLMConfig):
        super().__init__()
        d, n = config.d_model, config.order
        self.d_model = d
        self.in_proj = nn.Linear(d, (n + 1) * d)
        self.short_filter = ffnn.ShortConv((n + 1) * d, config.short_filter_order)
        self.filter_fn = HyenaFilter(config)
        self.long = nn.ModuleList(
            ffnn.LongConv(d, config.max_seq_len, filter=functools.partial(self._taps, o))
            for o in range(n - 1)
        )
        self.out_proj = nn.Linear(d, d)

    def _taps(self, o: int, length: int) -> torch.Tensor:
        return self.filter_fn.order_taps(o, length)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        *x, v = self.short_filter(self.in_proj(u)).split(self.d_model, dim=-1)
        for o, x_i in enumerate(reversed(x[1:])):
            v = v * x_i
            bias = self.filter_fn.order_bias(o)
            y = self.long[o](v)
            v = y if bias is None else torch.addcmul(y, bias, v)
        return self.out_proj(v * x[0])


class Mlp(nn.Module):
    def __init__(self, config: HyenaLMConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_inner)
        self.fc2 = nn.Linear(config.d_inner, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm block with the residual carried beside the hidden state."""

    def __init__(self, config: HyenaLMConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.block_norm_eps)
        self.mixer = HyenaOperator(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.block_norm_eps)
        self.mlp = Mlp(config)

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden if residual is None else hidden + residual
        residual = self.mixer(self.norm1(residual)) + residual
        return self.mlp(self.norm2(residual)), residual


class Embeddings(nn.Module):
    def __init__(self, config: HyenaLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.d_model)


class Backbone(nn.Module):
    def __init__(self, config: HyenaLMConfig):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.final_norm_eps)


class HyenaLM(nn.Module):
    """A Hyena language model (HyenaDNA, safari): ids ``(batch, length)`` to logits
    ``(batch, length, vocab_size)``, ``length <= max_seq_len`` (longer is a ValueError: the
    original code silently truncates). Decodes with :func:`futurefill.generate` or inside
    :func:`futurefill.decoding` like any :mod:`futurefill.nn` model.

    Examples
    --------
    >>> config = HyenaLMConfig(vocab_size=16, d_model=8, n_layer=2, d_inner=32, max_seq_len=64)
    >>> HyenaLM(config)(torch.randint(0, 16, (2, 10))).shape
    torch.Size([2, 10, 16])
    """

    def __init__(self, config: HyenaLMConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight
        self.initialize()

    @torch.no_grad()
    def initialize(self, std: float = 0.02) -> None:
        """The public code's initialisation (GPT-2's scheme): every Linear (the filter FFN's
        included) and the embedding N(0, std), biases zero, and the projections back into the
        residual stream (``out_proj``, ``fc2``) N(0, std / sqrt(2 n_layer)). Positional features,
        decay rates, ``D`` (standard normal) and ``freq`` keep their construction values."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, param in self.named_parameters():
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.normal_(param, std=std / math.sqrt(2 * self.config.n_layer))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        embedding = self.backbone.embeddings.word_embeddings
        limit = "the model's max_seq_len {}"
        hidden = embed_tokens(embedding, ids, self.config.max_seq_len, limit)
        residual = None
        for block in self.backbone.layers:
            hidden, residual = block(hidden, residual)
        return self.lm_head(self.backbone.ln_f(hidden + residual))
