"""The Hyena language models that have public weights (HyenaDNA, the safari Hyena LMs), on
:mod:`futurefill.nn` so that they decode exactly with every online method.

Written from the published architecture, in the names of the public checkpoints so that loading
them is a renaming of prefixes. For ids ``(batch, length)``::

    h = embed(ids); r = 0
    for each block:  r = h + r;  h = mixer(LN1(r));  r = h + r;  h = mlp(LN2(r))
    logits = lm_head(ln_f(h + r))                      mlp(x) = fc2(gelu_tanh(fc1(x)))

The mixer is the Hyena operator (:class:`futurefill.layers.Hyena`, the one implementation).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from futurefill.layers.hyena import Hyena, HyenaConfig, check_finite
from futurefill.model import embed_tokens, write_checkpoint

__all__ = ["HYENALM_MODEL_TYPE", "HyenaLM", "HyenaLMConfig"]

HYENALM_MODEL_TYPE = "futurefill-hyenalm"  # the model_type of HyenaLM.save's config.json


@dataclass(frozen=True)
class HyenaLMConfig:
    """Every hyper-parameter of a :class:`HyenaLM` that changes its numbers.

    ``vocab_size`` is the embedding's row count (the tokenizer's vocabulary padded up, as the
    checkpoints store it). ``block_norm_eps`` and ``final_norm_eps`` are separate because the
    Hugging Face port builds its block norms with PyTorch's default eps and only ``ln_f`` with
    ``layer_norm_epsilon``. The mixer's fields are :class:`~futurefill.layers.HyenaConfig`'s.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    d_inner: int
    max_len: int
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
        for name in ("vocab_size", "n_layers", "d_inner"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.hyena  # noqa: B018 (checks the mixer's fields)
        for name in ("block_norm_eps", "final_norm_eps"):
            check_finite(name, getattr(self, name))
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def hyena(self) -> HyenaConfig:
        """The mixer's configuration."""
        names = {f.name for f in dataclasses.fields(HyenaConfig)}
        return HyenaConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


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
        self.mixer = Hyena(config.hyena)
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
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.final_norm_eps)


class HyenaLM(nn.Module):
    """A Hyena language model (HyenaDNA, safari): ids ``(batch, length)`` to logits
    ``(batch, length, vocab_size)``, ``length <= max_len`` (longer is a ValueError: the
    original code silently truncates). Decodes with :func:`futurefill.generate` or inside
    :func:`futurefill.decoding` like any :mod:`futurefill.nn` model.

    Examples
    --------
    >>> config = HyenaLMConfig(vocab_size=16, d_model=8, n_layers=2, d_inner=32, max_len=64)
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
        residual stream (``out_proj``, ``fc2``) N(0, std / sqrt(2 n_layers)). Positional features,
        decay rates, ``D`` (standard normal) and ``freq`` keep their construction values."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, param in self.named_parameters():
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.normal_(param, std=std / math.sqrt(2 * self.config.n_layers))

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (format ``futurefill-hyenalm``), which
        :func:`~futurefill.pretrained.load_pretrained` reads: a pickled checkpoint converted once
        loads without ``trust_pickle``."""
        config = {"model_type": HYENALM_MODEL_TYPE, **dataclasses.asdict(self.config)}
        return write_checkpoint(self, config, directory)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        embedding = self.backbone.embeddings.word_embeddings
        hidden = embed_tokens(embedding, ids, self.config.max_len, "the model's max_len {}")
        residual = None
        for block in self.backbone.layers:
            hidden, residual = block(hidden, residual)
        return self.lm_head(self.backbone.ln_f(hidden + residual))
