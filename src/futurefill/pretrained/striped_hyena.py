"""StripedHyena: Evo 2 (StripedHyena 2) and Evo 1 (StripedHyena 1), on :mod:`futurefill.nn`.

Written from the published architecture (Arc Institute's Evo 2, Together's StripedHyena), so
that these models decode through their own ``forward`` with every method, rows at their own
positions, and exactly from prompts of any length. For ids ``(batch, length)``::

    x = embed(ids)
    for each block:  x = mixer(pre_norm(x)) + x;  x = mlp(post_norm(x)) + x
    logits = norm(x) @ embed.weight.T                     (or an unembedding of its own)

    norm(x) = scale * x / (||x||_2 / sqrt(d) + eps)        (eps added to the RMS)
    mlp(x)  = l3(act(l1 x) * l2 x)      act: GELU, or the identity after block 0 (Evo 2)

A block's mixer is one of:

* **Hyena** (three kinds): ``z = projections(x)`` (3d channels), a 3-tap causal depthwise
  ``featurizer``, then ``x2, x1, v = z`` (thirds) and ``y = x2 * filter(x1 * v)``, then
  ``out_filter_dense``. The filter is
  - SE (``hcs``): an explicit 7-tap FIR (one filter per group of channels);
  - MR (``hcm``): an explicit 128-tap FIR per group, plus ``D * (x1 v)``;
  - LI (``hcl``): a long filter in modal form, ``h[c, t] = Re sum_k R[c, k] exp(lp[c, k] t)``
    (``state_size`` poles per channel, real in Evo 2, complex in Evo 1), plus ``D * (x1 v)``.
* **attention** (``attn``): rotary multi-head attention (positions divided by
  ``rotary_scale`` in the long-context models), a key/value cache in a session.

The checkpoints split the projection's 3d outputs in their own orders (per head, interleaved,
x1 and x2 swapped); the loader (:mod:`futurefill.pretrained.evo`) permutes the rows once so
that here they are always ``[x2 | x1 | v]``.

Decoding state per row: the featurizer's last 2 inputs, the FIRs' last 6 or 127, the LI
filter's engine (O(state) with ``method="modal"``), the attention cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from futurefill import nn as ffnn
from futurefill.layers.attention import Attention
from futurefill.model import embed_tokens
from futurefill.online import ModalFilter

__all__ = ["BLOCK_KINDS", "StripedHyena", "StripedHyenaConfig"]

#: The block kinds, in the order of their config fields ``<kind>_layer_idxs``.
BLOCK_KINDS = ("hcs", "hcm", "hcl", "attn")
ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "identity": lambda x: x}
HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class StripedHyenaConfig:
    """Every hyper-parameter of a :class:`StripedHyena` that changes its numbers.

    ``hcs_layer_idxs``, ``hcm_layer_idxs``, ``hcl_layer_idxs`` and ``attn_layer_idxs`` say
    which block each layer is; together they name every layer once. ``complex_poles``: the LI
    filters' poles and residues are complex (Evo 1) rather than real (Evo 2). ``max_len``
    bounds the sequences (prompt plus generated) a session decodes.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    inner_mlp_size: int
    max_len: int
    hcs_layer_idxs: tuple[int, ...] = ()
    hcm_layer_idxs: tuple[int, ...] = ()
    hcl_layer_idxs: tuple[int, ...] = ()
    attn_layer_idxs: tuple[int, ...] = ()
    hcs_filter_length: int = 7
    hcm_filter_length: int = 128
    short_filter_length: int = 3
    short_filter_bias: bool = False
    state_size: int = 16
    complex_poles: bool = False
    mlp_activation: str = "gelu"
    evo2_style_activations: bool = False
    qkv_proj_bias: bool = True
    mha_out_proj_bias: bool = True
    hyena_out_proj_bias: bool = True
    rotary_emb_base: float = 10000.0
    rotary_scale: float = 1.0
    eps: float = 1e-6
    tie_embeddings: bool = True
    final_norm: bool = True

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_attention_heads",
            "inner_mlp_size",
            "max_len",
            "hcs_filter_length",
            "hcm_filter_length",
            "short_filter_length",
            "state_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size "
                f"({self.hidden_size})"
            )
        seen: dict[int, str] = {}
        for kind in BLOCK_KINDS:
            field = f"{kind}_layer_idxs"
            for index in getattr(self, field):
                if not isinstance(index, int) or not 0 <= index < self.num_layers:
                    raise ValueError(
                        f"{field} holds {index!r}: layer indices are ints in "
                        f"[0, num_layers={self.num_layers})"
                    )
                if index in seen:
                    raise ValueError(f"layer {index} is in both {seen[index]} and {field}")
                seen[index] = field
        missing = sorted(set(range(self.num_layers)) - set(seen))
        if missing:
            fields = ", ".join(f"{kind}_layer_idxs" for kind in BLOCK_KINDS)
            raise ValueError(f"layers {missing} are in none of {fields}")
        if self.mlp_activation not in ACTIVATIONS:
            raise ValueError(
                f"mlp_activation must be one of {sorted(ACTIVATIONS)}, got {self.mlp_activation!r}"
            )
        for name in ("eps", "rotary_emb_base", "rotary_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")

    def kind(self, layer: int) -> str:
        """The block kind of ``layer``: one of :data:`BLOCK_KINDS`."""
        return next(k for k in BLOCK_KINDS if layer in getattr(self, f"{k}_layer_idxs"))


class RMSNorm(nn.Module):
    """``scale * x / (||x||_2 / sqrt(d) + eps)`` over the last dimension (eps added to the
    root mean square, as StripedHyena does, not inside the root)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.norm(2, dim=-1, keepdim=True) * x.shape[-1] ** -0.5
        return self.scale * (x / (rms + self.eps))


class GatedMLP(nn.Module):
    """``l3(act(l1 x) * l2 x)``, no biases."""

    def __init__(self, dim: int, inner: int, activation: str):
        super().__init__()
        self.activation = activation
        self.l1 = nn.Linear(dim, inner, bias=False)
        self.l2 = nn.Linear(dim, inner, bias=False)
        self.l3 = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(ACTIVATIONS[self.activation](self.l1(x)) * self.l2(x))


class ExplicitFilter(nn.Module):
    """SE / MR: an explicit causal FIR per channel (``fir.weight[:, j]`` multiplies the input j
    steps back; the checkpoints' per-group filters are repeated over their groups' channels),
    plus ``D * u`` when ``skip``. A session keeps the last ``taps - 1`` inputs of every row."""

    def __init__(self, channels: int, taps: int, skip: bool):
        super().__init__()
        self.fir = ffnn.ShortConv(channels, taps, bias=False)
        self.D = nn.Parameter(torch.zeros(channels)) if skip else None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        y = self.fir(u)
        return y if self.D is None else torch.addcmul(y, self.D, u)


class ModalHyenaFilter(nn.Module):
    """LI: a long filter in modal form, ``h[c, t] = Re sum_k residues[c, k] exp(log_poles[c, k]
    t)``, plus ``D * u``: a :class:`~futurefill.nn.LongConv` whose taps are materialised from
    the poles (block by block) and which declares its modal form, so that ``method="modal"``
    decodes it by its recurrence.

    Poles and residues are real ``(channels, state)`` (Evo 2) or complex ones stored as (real,
    imaginary) pairs ``(channels, state, 2)`` (Evo 1). They stay in float32 when the model is
    cast to a half precision (a bfloat16 log-pole has 3 significant digits: ``exp(t lp)`` would
    be off by far more than a rounding at t in the thousands).
    """

    def __init__(self, channels: int, state: int, max_len: int, complex_poles: bool):
        super().__init__()
        shape = (channels, state, 2) if complex_poles else (channels, state)
        self.log_poles = nn.Parameter(torch.full(shape, -1.0))
        self.residues = nn.Parameter(torch.zeros(shape))
        self.conv = ffnn.LongConv(
            channels, max_len, filter=self.taps, modal=self.modal_filter, skip=True
        )

    def modal_filter(self) -> ModalFilter:
        def value(p: torch.Tensor) -> torch.Tensor:
            return torch.view_as_complex(p.detach().contiguous()) if p.dim() == 3 else p.detach()

        return ModalFilter(value(self.log_poles), value(self.residues))

    def taps(self, length: int) -> torch.Tensor:
        """The first ``length`` taps ``(channels, length)`` in the dtype of the model's
        activations (``D``'s)."""
        return self.modal_filter().taps(length, dtype=self.conv.skip.dtype)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.conv(u)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        kept = {name: p.data for name, p in self._parameters.items()}
        super()._apply(fn, recurse)
        for name, p in self._parameters.items():
            if p.dtype in HALF:  # back to the full-precision values, on the new device
                p.data = kept[name].to(device=p.device, dtype=torch.float32)
        return self


class HyenaBlock(nn.Module):
    """A Hyena block: the mixer of the module docstring and the MLP, each with its residual."""

    def __init__(self, config: StripedHyenaConfig, layer: int):
        super().__init__()
        d, kind = config.hidden_size, config.kind(layer)
        self.pre_norm = RMSNorm(d, config.eps)
        self.post_norm = RMSNorm(d, config.eps)
        self.projections = nn.Linear(d, 3 * d, bias=config.qkv_proj_bias)
        self.featurizer = ffnn.ShortConv(
            3 * d, config.short_filter_length, bias=config.short_filter_bias
        )
        if kind == "hcl":
            self.filter: nn.Module = ModalHyenaFilter(
                d, config.state_size, config.max_len, config.complex_poles
            )
        else:
            taps = config.hcs_filter_length if kind == "hcs" else config.hcm_filter_length
            # vortex's rule: the D term goes with the long (>= 128-tap) FIRs
            self.filter = ExplicitFilter(d, taps, skip=taps >= 128)
        self.out_filter_dense = nn.Linear(d, d, bias=config.hyena_out_proj_bias)
        self.mlp = GatedMLP(d, config.inner_mlp_size, block_activation(config, layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.featurizer(self.projections(self.pre_norm(x)))
        x2, x1, v = z.chunk(3, dim=-1)
        x = self.out_filter_dense(x2 * self.filter(x1 * v)) + x
        return self.mlp(self.post_norm(x)) + x


class AttentionBlock(nn.Module):
    """Rotary multi-head attention and the MLP, each with its residual."""

    def __init__(self, config: StripedHyenaConfig, layer: int):
        super().__init__()
        d = config.hidden_size
        self.pre_norm = RMSNorm(d, config.eps)
        self.post_norm = RMSNorm(d, config.eps)
        self.attention = Attention(
            d,
            config.num_attention_heads,
            rotary=float(config.rotary_emb_base),
            rotary_scale=float(config.rotary_scale),
            bias=config.qkv_proj_bias,
            out_bias=config.mha_out_proj_bias,
        )
        self.mlp = GatedMLP(d, config.inner_mlp_size, block_activation(config, layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.pre_norm(x)) + x
        return self.mlp(self.post_norm(x)) + x


def block_activation(config: StripedHyenaConfig, layer: int) -> str:
    """The MLP activation of ``layer``: Evo 2 keeps it in block 0 only."""
    return "identity" if config.evo2_style_activations and layer > 0 else config.mlp_activation


class StripedHyena(nn.Module):
    """Evo 2 / Evo 1: ids ``(batch, length)`` to logits ``(batch, length, vocab_size)``,
    ``length <= max_len``. Decodes with :func:`futurefill.generate` (every method; ``"modal"``
    runs the LI filters by their recurrence) or inside :func:`futurefill.decoding`.

    Examples
    --------
    >>> config = StripedHyenaConfig(
    ...     vocab_size=16, hidden_size=8, num_layers=4, num_attention_heads=2,
    ...     inner_mlp_size=16, max_len=64, hcs_layer_idxs=(0,), hcm_layer_idxs=(1,),
    ...     hcl_layer_idxs=(2,), attn_layer_idxs=(3,), hcm_filter_length=16)
    >>> StripedHyena(config)(torch.randint(0, 16, (2, 10))).shape
    torch.Size([2, 10, 16])
    """

    def __init__(self, config: StripedHyenaConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(
            AttentionBlock(config, i) if config.kind(i) == "attn" else HyenaBlock(config, i)
            for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.eps) if config.final_norm else None
        self.unembed = (
            None
            if config.tie_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = embed_tokens(self.embedding, ids, self.config.max_len, "the model's max_len {}")
        for block in self.blocks:
            x = block(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.unembed is None:
            return x @ self.embedding.weight.T
        return self.unembed(x)
