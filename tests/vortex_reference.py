"""Arc Institute's vortex (the Evo 2 / StripedHyena 2 inference code, ``pip install vtx``) as a
reference: tiny random-weight checkpoints in the real Evo 2 file format, loaded and run by
vortex's own model on the CPU, so tests can compare our logits and cached decoding against it.

What is here:

* :func:`vortex_available`, :func:`install_cpu_stubs`: the few stand-ins vortex needs to import
  and run without CUDA, flash-attention or Triton (see :func:`install_cpu_stubs`).
* :func:`scaled_config`: a public Evo 2 config (``fixtures/evo2_configs``, copied unchanged from
  github.com/ArcInstitute/evo2) scaled down to a few layers and a narrow width.
* :func:`checkpoint_state_dict`, :func:`write_checkpoint`: random weights in the layout of the
  released ``evo2_*.pt`` files (need neither vortex nor a GPU).
* :func:`load_vortex`, :func:`vortex_logits`, :func:`vortex_cached_decode`,
  :func:`vortex_recompute_greedy`: vortex's model, its forward and its own cached generation.

The file format (vortex ``model.py``/``utils.py``, evo2 ``models.py``):

* ``<name>.pt`` is one ``torch.save``d flat state dict (40B ships it as byte shards
  ``<name>.pt.part0, .part1, ...`` that evo2 concatenates), loaded with ``weights_only=True``
  (``io.BytesIO`` allow-listed). Keys are those of vortex's ``StripedHyena.state_dict()``.
* Attention ``inner_mha_cls.Wqkv.{weight,bias}`` rows are per head: row ``(h, j, d)`` for head
  ``h``, ``j`` in (q, k, v), ``d`` in the head. With ``column_split`` (all Evo 2 configs) vortex
  permutes them on load to its ``[Q; K; V]`` rows ``(j, h, d)``; see :func:`wqkv_to_checkpoint`.
* ``inner_mha_cls.rotary_emb.inv_freq`` is in the file (vortex re-registers it as a persistent
  buffer) and vortex uses the file's values, not a recomputation.
* FP8 checkpoints carry ``blocks.N.projections._extra_state`` (Transformer Engine FP8 metadata, an
  ``io.BytesIO`` holding a ``torch.save``d dict); vortex drops them without Transformer Engine.
* The real files also hold keys vortex ignores ("Extra keys in state_dict", evo2 issues #35, #36,
  #96): ``unembed.weight``, ``blocks.N.mixer.mixer.filter.t`` (7B), ``blocks.N.mixer.dense.`` and
  ``blocks.N.mixer.attn._extra_state`` (attention layers) and, in 40B, ``_extra_state`` of the
  ``mlp.l*``, ``out_filter_dense`` and ``Wqkv`` linears. These are not written here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import io
import logging
import math
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

CONFIG_DIR = Path(__file__).parent / "fixtures" / "evo2_configs"

#: Short names of the public Evo 2 models (and evo2's ``MODEL_NAMES``) -> config file.
CONFIG_FILES = {
    "7b": "evo2-7b-1m.yml",
    "7b_1m": "evo2-7b-1m.yml",
    "evo2_7b": "evo2-7b-1m.yml",
    "7b_base": "evo2-7b-8k.yml",
    "7b_8k": "evo2-7b-8k.yml",
    "evo2_7b_base": "evo2-7b-8k.yml",
    "7b_262k": "evo2-7b-262k.yml",
    "evo2_7b_262k": "evo2-7b-262k.yml",
    "1b": "evo2-1b-8k.yml",
    "1b_base": "evo2-1b-8k.yml",
    "evo2_1b_base": "evo2-1b-8k.yml",
    "20b": "evo2-20b-1m.yml",
    "evo2_20b": "evo2-20b-1m.yml",
    "40b": "evo2-40b-1m.yml",
    "evo2_40b": "evo2-40b-1m.yml",
    "40b_base": "evo2-40b-8k.yml",
    "40b_8k": "evo2-40b-8k.yml",
    "evo2_40b_base": "evo2-40b-8k.yml",
}

#: Config fields :func:`scaled_config` changes; every other field is the public config's.
SCALED_FIELDS = (
    "model_name",  # suffixed "-scaled"
    "vocab_size",
    "hidden_size",
    "num_filters",  # hidden_size * public num_filters / public hidden_size
    "num_layers",
    "hcs_layer_idxs",  # the public layer pattern truncated to num_layers
    "hcm_layer_idxs",
    "hcl_layer_idxs",
    "attn_layer_idxs",
    "hcs_filter_groups",  # same channels-per-group ratio, rounded to a divisor of hidden_size
    "hcm_filter_groups",
    "hcl_filter_groups",
    "num_attention_heads",
    "inner_mlp_size",  # same ratio to hidden_size, rounded to a multiple of 8
    "max_seqlen",
    "use_flash_attn",  # False: vortex's pure-torch attention
    "use_fp8_input_projections",  # False: needs Transformer Engine (evo2 does the same for 7B)
    "hcm_filter_length",  # only when given
)

LAYER_KINDS = {
    "hcs_layer_idxs": "hcs",
    "hcm_layer_idxs": "hcm",
    "hcl_layer_idxs": "hcl",
    "attn_layer_idxs": "attn",
}


# --------------------------------------------------------------------------- CPU stand-ins


def apply_rotary_torch(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    seqlen_offsets: int | torch.Tensor = 0,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    interleaved: bool = False,
    inplace: bool = False,
    conjugate: bool = False,
) -> torch.Tensor:
    """Pure-torch ``vortex.ops.embedding.rotary.apply_rotary`` (a Triton kernel there).

    ``x``: (batch, seqlen, nheads, headdim), or (total, nheads, headdim) with ``cu_seqlens``;
    ``cos``/``sin``: (seqlen_ro, rotary_dim / 2). Rotates the first ``rotary_dim`` features of
    the row at position ``t`` by the angles of row ``t + seqlen_offsets[b]`` of the table
    (rows past the table are left unrotated, as the kernel's masked loads do): halves
    (GPT-NeoX) when not ``interleaved``, even/odd pairs (GPT-J) otherwise; ``conjugate``
    rotates backwards. Like the kernel it computes in float32 (float64 for float64 input) and
    stores in ``x.dtype``, into ``x`` itself when ``inplace``.
    """
    if cu_seqlens is not None:  # variable-length rows packed along dim 0
        out = x if inplace else x.clone()
        for b in range(cu_seqlens.numel() - 1):
            start, end = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
            offset = (
                seqlen_offsets if isinstance(seqlen_offsets, int) else seqlen_offsets[b : b + 1]
            )
            apply_rotary_torch(
                out[None, start:end], cos, sin, offset, None, None, interleaved, True, conjugate
            )
        return out
    batch, seqlen, _, headdim = x.shape
    seqlen_ro, half = cos.shape
    rotary_dim = 2 * half
    assert sin.shape == cos.shape and rotary_dim <= headdim
    offsets = torch.as_tensor(seqlen_offsets, device=x.device).reshape(-1, 1)
    assert offsets.shape[0] in (1, batch)
    pos = offsets + torch.arange(seqlen, device=x.device)  # (batch or 1, seqlen)
    valid = (pos < seqlen_ro)[..., None, None]
    pos = pos.clamp(max=seqlen_ro - 1)
    compute = torch.promote_types(x.dtype, torch.float32)
    c = torch.where(valid, cos.to(compute)[pos][:, :, None], 1.0)  # (b, s, 1, half)
    s = torch.where(valid, sin.to(compute)[pos][:, :, None], 0.0)
    if conjugate:
        s = -s
    xr = x[..., :rotary_dim].to(compute)
    x0, x1 = (xr[..., 0::2], xr[..., 1::2]) if interleaved else (xr[..., :half], xr[..., half:])
    o0, o1 = x0 * c - x1 * s, x0 * s + x1 * c
    rotated = torch.stack((o0, o1), -1).flatten(-2) if interleaved else torch.cat((o0, o1), -1)
    out = x if inplace else x.clone()
    out[..., :rotary_dim] = rotated.to(x.dtype)
    return out


def _is_cpu(device: Any) -> bool:
    if isinstance(device, str):
        device = torch.device(device)
    return isinstance(device, torch.device) and device.type == "cpu"


class _CudaDeviceCpuNoop(getattr(torch.cuda.device, "original", torch.cuda.device)):
    """``torch.cuda.device`` that is a no-op for a CPU device (and unchanged otherwise)."""

    original = getattr(torch.cuda.device, "original", torch.cuda.device)

    def __init__(self, device: Any):
        self._cpu = _is_cpu(device)
        if not self._cpu:
            super().__init__(device)

    def __enter__(self):
        if not self._cpu:
            return super().__enter__()
        return None

    def __exit__(self, *exc: Any) -> bool:
        if not self._cpu:
            return super().__exit__(*exc)
        return False


def _import_vortex_logging_quietly() -> None:
    """Import ``vortex.logging``, undoing its effects outside vortex (see install_cpu_stubs)."""
    if "vortex.logging" in sys.modules:
        return
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    log_file = Path("activations_debug.log").resolve()
    existed = log_file.exists()
    import vortex.logging

    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        if isinstance(handler, logging.FileHandler):
            handler.close()
    root.setLevel(level)
    log_file = Path(vortex.logging.activations_file_handler.baseFilename)
    if not existed and log_file.exists() and log_file.stat().st_size == 0:
        log_file.unlink()


@functools.cache
def install_cpu_stubs() -> None:
    """Let vortex's StripedHyena import and run on a CPU-only torch. Idempotent.

    Found by trying (vtx 1.1.0, torch 2.13 CPU), only two are needed:

    1. ``vortex.model.rotary`` does ``from vortex.ops.embedding.rotary import apply_rotary``, a
       Triton kernel; importing it needs ``vortex.ops`` (whose ``__init__`` imports the compiled
       ``flash_attn_2_cuda``) and ``triton``. Where that import fails, a stand-in module of that
       name holding :func:`apply_rotary_torch` goes into ``sys.modules`` (Python then never
       imports ``vortex.ops``; ``vortex.model.attention`` already guards its own flash-attention
       import, and the model uses its torch attention with ``use_flash_attn: False``). Where it
       imports, its ``apply_rotary`` is replaced (Triton can't take CPU tensors), and in both
       cases so is the name ``vortex.model.rotary`` bound at import. So no ``flash_attn_2_cuda``
       stand-in is needed, nor any ``triton`` one (a fake ``triton`` would break torch.compile).
    2. ``StripedHyena.__init__`` builds each block inside ``torch.cuda.device("cpu")`` and
       ``ParallelGatedConvBlock.proj_norm`` wraps every projection in
       ``torch.cuda.device(x.device)``; torch raises ``ValueError: Expected a cuda device`` for a
       CPU device. Only where CUDA is unavailable, ``torch.cuda.device`` becomes a subclass that
       is a no-op for a CPU device and defers to torch for anything else.

    Not a stub but a clean-up: importing ``vortex.logging`` (which everything in vortex does)
    runs ``logging.basicConfig(level=INFO, handlers=[RichHandler])`` on the root logger and
    opens ``activations_debug.log`` in the working directory, attached to the root logger.
    When this is the first import of vortex, the root logger's level and handlers are restored
    and that file is closed and deleted if it is new and empty (vortex's loggers still work; its
    INFO records just aren't printed).

    Raises ImportError when vortex itself (or its own dependencies: einops, rich) is missing.
    """
    _import_vortex_logging_quietly()
    import vortex.model.utils  # noqa: F401  (ImportError here: vortex is not installed)

    ops_rotary = sys.modules.get("vortex.ops.embedding.rotary")
    if ops_rotary is None:
        try:
            import vortex.ops.embedding.rotary as ops_rotary
        except ImportError:
            ops_rotary = types.ModuleType("vortex.ops.embedding.rotary")
            ops_rotary.__doc__ = "CPU stand-in (tests/vortex_reference.py) for a Triton kernel."
            sys.modules["vortex.ops.embedding.rotary"] = ops_rotary
    ops_rotary.apply_rotary = apply_rotary_torch

    import vortex.model.rotary as model_rotary

    model_rotary.apply_rotary = apply_rotary_torch

    if not torch.cuda.is_available() and not hasattr(torch.cuda.device, "original"):
        torch.cuda.device = _CudaDeviceCpuNoop


@functools.cache
def vortex_available() -> bool:
    """Whether vortex (``pip install vtx``) imports, with :func:`install_cpu_stubs` installed."""
    try:
        install_cpu_stubs()
        import vortex.model.generation
        import vortex.model.model  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- configs


def public_config(name: str = "7b") -> dict:
    """A public Evo 2 config, as evo2 reads it (``yaml.safe_load``)."""
    filename = CONFIG_FILES.get(name, name if name.endswith(".yml") else f"{name}.yml")
    return yaml.safe_load((CONFIG_DIR / filename).read_text())


def layer_kinds(config: dict) -> list[str]:
    """The kind of each layer: ``hcs`` (SE), ``hcm`` (MR), ``hcl`` (LI) or ``attn``."""
    kinds = [None] * config["num_layers"]
    for key, kind in LAYER_KINDS.items():
        for i in config[key]:
            kinds[i] = kind
    assert None not in kinds, kinds
    return kinds


def _nearest_divisor(n: int, target: float) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - target), d))


def scaled_config(
    name: str = "7b",
    *,
    hidden_size: int = 64,
    num_layers: int = 8,
    num_heads: int = 4,
    vocab: int = 512,
    max_seqlen: int = 256,
    hcm_filter_length: int | None = None,
    **overrides: Any,
) -> dict:
    """A public Evo 2 config scaled down; the fields it changes are :data:`SCALED_FIELDS`.

    The layers are the first ``num_layers`` of the public model's, so their kinds keep its
    pattern (SE, MR, LI, attention, SE, MR, LI, SE, ...: 8 layers give hcs [0, 4, 7],
    hcm [1, 5], hcl [2, 6], attn [3]); the index lists are the config's ``*_layer_idxs``.
    Filter groups keep their channels per group (rounded to a divisor of ``hidden_size``), the
    MLP its width ratio. ``hcm_filter_length`` below 128 changes vortex's code path (no ``D``,
    direct convolution instead of FFT). ``overrides`` are set last, unchecked.
    """
    public = public_config(name)
    if num_layers > public["num_layers"]:
        raise ValueError(f"{name} has {public['num_layers']} layers, not {num_layers}")
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ValueError("hidden_size must be num_heads times an even head size")
    config = dict(public)
    ratio = hidden_size / public["hidden_size"]
    config.update(
        model_name=f"{public['model_name']}-scaled",
        vocab_size=vocab,
        hidden_size=hidden_size,
        num_filters=_nearest_divisor(hidden_size, public["num_filters"] * ratio),
        num_layers=num_layers,
        num_attention_heads=num_heads,
        inner_mlp_size=max(8, 8 * round(public["inner_mlp_size"] * ratio / 8)),
        max_seqlen=max_seqlen,
        use_flash_attn=False,
        use_fp8_input_projections=False,
    )
    for key in ("hcs_filter_groups", "hcm_filter_groups", "hcl_filter_groups"):
        config[key] = _nearest_divisor(hidden_size, public[key] * ratio)
    for key in LAYER_KINDS:
        config[key] = [i for i in public[key] if i < num_layers]
    if hcm_filter_length is not None:
        config["hcm_filter_length"] = hcm_filter_length
    config.update(overrides)
    return config


# --------------------------------------------------------------------------- the file format


def wqkv_to_checkpoint(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """vortex's ``Wqkv`` weight (3D, D) or bias (3D,), rows ``(j, h, d)`` = [Q; K; V] of heads,
    to the checkpoint's per-head rows ``(h, j, d)``: the inverse of the permutation in
    ``StripedHyena.custom_load_state_dict`` (done there when ``column_split``)."""
    rows = t.shape[0]
    head = rows // (3 * num_heads)
    return t.reshape(3, num_heads, head, *t.shape[1:]).transpose(0, 1).reshape(rows, *t.shape[1:])


def wqkv_from_checkpoint(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The checkpoint's per-head ``Wqkv`` rows ``(h, j, d)`` to vortex's ``(j, h, d)``."""
    rows = t.shape[0]
    head = rows // (3 * num_heads)
    return t.reshape(num_heads, 3, head, *t.shape[1:]).transpose(0, 1).reshape(rows, *t.shape[1:])


def rotary_inv_freq(config: dict) -> torch.Tensor:
    """The ``inv_freq`` buffer vortex computes: ``1 / base ** (arange(0, dim, 2) / dim)``."""
    dim = config["hidden_size"] // config["num_attention_heads"]
    base = float(config.get("rotary_emb_base", 1000000))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def _mlp_inner_size(config: dict) -> int:
    """``ParallelGatedMLP``'s inner width (``inner_mlp_size`` wins when set)."""
    multiple = config.get("inner_size_multiple_of", 64) * config.get("model_parallel_size", 1)
    inner = int(2 * config["hidden_size"] * 4 / 3)
    return config.get("inner_mlp_size", multiple * ((inner + multiple - 1) // multiple))


def checkpoint_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict of vortex's ``StripedHyena(config)``, as stored (in the
    checkpoint layout; ``Wqkv`` has the same shape in both). Computed from the config alone."""
    d = config["hidden_size"]
    heads = config["num_attention_heads"]
    heads_kv = heads // config.get("proj_groups", 1)
    head = d // heads
    inner = _mlp_inner_size(config)
    bias_qkv = config.get("qkv_proj_bias", True)
    shapes: dict[str, tuple[int, ...]] = {"embedding_layer.weight": (config["vocab_size"], d)}
    for i, kind in enumerate(layer_kinds(config)):
        p = f"blocks.{i}."
        shapes[p + "pre_norm.scale"] = (d,)
        shapes[p + "post_norm.scale"] = (d,)
        if kind == "attn":
            m = p + "inner_mha_cls."
            shapes[m + "Wqkv.weight"] = (head * (heads + 2 * heads_kv), d)
            if bias_qkv:
                shapes[m + "Wqkv.bias"] = (head * (heads + 2 * heads_kv),)
            shapes[m + "out_proj.weight"] = (d, d)
            if config.get("mha_out_proj_bias", True):
                shapes[m + "out_proj.bias"] = (d,)
            shapes[m + "rotary_emb.inv_freq"] = (head // 2,)
        else:
            f = p + "filter."
            shapes[f + "short_filter_weight"] = (3 * d, 1, config["short_filter_length"])
            if config["short_filter_bias"]:
                shapes[f + "short_filter_bias"] = (3 * d,)
            if kind == "hcl":
                shapes[f + "log_poles"] = (d, config["state_size"], 1)
                shapes[f + "residues"] = (d, config["state_size"])
                shapes[f + "D"] = (d,)
            else:
                length = config[f"{kind}_filter_length"]
                shapes[f + "h"] = (config[f"{kind}_filter_groups"], 1, length)
                if length >= 128:
                    shapes[f + "D"] = (d,)
            shapes[p + "projections.weight"] = (3 * d, d)
            if bias_qkv:
                shapes[p + "projections.bias"] = (3 * d,)
            shapes[p + "out_filter_dense.weight"] = (d, d)
            if config["hyena_out_proj_bias"]:
                shapes[p + "out_filter_dense.bias"] = (d,)
        shapes[p + "mlp.l1.weight"] = (inner, d)
        shapes[p + "mlp.l2.weight"] = (inner, d)
        shapes[p + "mlp.l3.weight"] = (d, inner)
    if config.get("final_norm", True):
        shapes["norm.scale"] = (d,)
    if not config["tie_embeddings"]:
        shapes["unembed.weight"] = (config["vocab_size"], d)
    return shapes


def checkpoint_state_dict(
    config: dict, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random weights for ``config`` in the checkpoint's layout (what :func:`write_checkpoint`
    saves, without ``_extra_state``), scaled so activations stay O(1) through the layers.

    Linear weights and FIR taps N(0, 1/fan_in); biases N(0, 0.1^2); norm scales 1 + N(0, 0.1^2);
    embedding N(0, 1) (tied unembedding: logits O(sqrt(hidden))); ``D`` N(0, 0.5^2);
    ``log_poles = -exp(N(0, 1)) - 0.05`` (real, negative: decaying modes; N(0, 1) log-poles as
    vortex initialises them make the long filters explode); ``residues`` N(0, 1) / state_size.
    ``inv_freq`` is vortex's own value, float32 whatever ``dtype``.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std=1.0, mean=0.0):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    state = {}
    heads = config["num_attention_heads"]
    for key, shape in checkpoint_shapes(config).items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "inv_freq":
            state[key] = rotary_inv_freq(config)
            continue
        if leaf == "scale":
            value = normal(shape, 0.1, 1.0)
        elif key == "embedding_layer.weight" or key == "unembed.weight":
            value = normal(shape)
        elif leaf == "bias" or leaf == "short_filter_bias":
            value = normal(shape, 0.1)
        elif leaf == "D":
            value = normal(shape, 0.5)
        elif leaf == "log_poles":
            value = -normal(shape).exp() - 0.05
        elif leaf == "residues":
            value = normal(shape) / shape[-1]
        elif leaf in ("short_filter_weight", "h"):
            value = normal(shape, shape[-1] ** -0.5)
        else:  # linear weights (out, in)
            value = normal(shape, shape[-1] ** -0.5)
        if "inner_mha_cls.Wqkv" in key and config.get("column_split", True):
            value = wqkv_to_checkpoint(value, heads)  # generated in vortex's layout
        state[key] = value.to(dtype)
    return state


@contextlib.contextmanager
def fake_transformer_engine() -> Iterator[types.ModuleType]:
    """``transformer_engine.common.recipe`` with picklable stand-ins of ``DelayedScaling``,
    ``Format`` and ``_FormatHelper`` (TE 2.x fields), in ``sys.modules`` only inside the block
    (the real module when Transformer Engine is installed), so that a pickle made inside
    references those globals exactly as a real FP8 checkpoint's extra state does."""
    try:
        import transformer_engine.common.recipe as real
    except ImportError:
        real = None
    if real is not None:
        yield real
        return
    names = ("transformer_engine", "transformer_engine.common", "transformer_engine.common.recipe")
    modules = {name: types.ModuleType(name) for name in names}
    recipe = modules[names[2]]

    class _FormatHelper(NamedTuple):
        max_fwd: float
        max_bwd: float

    class Format(enum.Enum):
        E4M3 = _FormatHelper(max_fwd=448, max_bwd=448)
        E5M2 = _FormatHelper(max_fwd=57344, max_bwd=57344)
        HYBRID = _FormatHelper(max_fwd=448, max_bwd=57344)

    @dataclasses.dataclass
    class DelayedScaling:
        margin: int = 0
        fp8_format: Format = Format.HYBRID
        amax_history_len: int = 1024
        amax_compute_algo: str = "max"
        scaling_factor_compute_algo: Any = None
        reduce_amax: bool = True
        fp8_dpa: bool = False
        fp8_mha: bool = False

    for cls in (_FormatHelper, Format, DelayedScaling):
        cls.__module__ = recipe.__name__
        cls.__qualname__ = cls.__name__
        setattr(recipe, cls.__name__, cls)
    modules[names[0]].common = modules[names[1]]
    modules[names[1]].recipe = recipe
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(modules)
    try:
        yield recipe
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def te_extra_state(style: str = "te2") -> io.BytesIO:
    """One Transformer Engine ``Linear._extra_state``: an ``io.BytesIO`` holding a
    ``torch.save``d dict of FP8 scaling metadata (forward: input, weight, output; backward:
    grad output, grad input). ``"te1"``: TE 1.x keys, no recipe (evo2_7b's; TE 2 then fails with
    ``KeyError: 'recipe'``, evo2 issue #35, which vortex patches); ``"te2"``: with
    ``"recipe": DelayedScaling(Format.HYBRID, amax_history_len=16, amax_compute_algo="max")``,
    the recipe vortex injects, whose classes vortex's ``load_checkpoint`` allow-lists."""
    history = 16
    state: dict[str, Any] = {
        "scale_fwd": torch.ones(3),
        "amax_history_fwd": torch.zeros(history, 3),
        "scale_bwd": torch.ones(2),
        "amax_history_bwd": torch.zeros(history, 2),
        "extra_fp8_variables": {"num_gemms": 1, "fp8_checkpoint": True},
    }
    with fake_transformer_engine() as recipe:
        if style == "te1":
            state["scale_inv_fwd"] = torch.ones(3)
            state["scale_inv_bwd"] = torch.ones(2)
        elif style == "te2":
            state["recipe"] = recipe.DelayedScaling(
                fp8_format=recipe.Format.HYBRID, amax_history_len=history, amax_compute_algo="max"
            )
        else:
            raise ValueError(f"unknown extra state style {style!r}")
        buffer = io.BytesIO()
        torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def write_checkpoint(
    directory: str | Path,
    config: dict,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    fp8_extra_state: bool | str = False,
    shards: int = 0,
    name: str = "evo2_tiny",
) -> Path:
    """Write ``config.yml`` (vortex's YAML) and ``<name>.pt`` (:func:`checkpoint_state_dict`)
    into ``directory``; returns it. ``fp8_extra_state`` (True or ``"te2"``, or ``"te1"``) adds
    ``blocks.N.projections._extra_state`` (:func:`te_extra_state`) for every Hyena block, as
    the FP8 checkpoints carry them. ``shards=N`` writes the raw bytes of the ``.pt`` split in
    order into ``<name>.pt.part0`` .. ``.part{N-1}`` instead, as Evo 2 40B ships."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    state: dict[str, Any] = checkpoint_state_dict(config, seed=seed, dtype=dtype)
    if fp8_extra_state:
        style = "te2" if fp8_extra_state is True else fp8_extra_state
        for i, kind in enumerate(layer_kinds(config)):
            if kind != "attn":
                state[f"blocks.{i}.projections._extra_state"] = te_extra_state(style)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    if shards:
        size = math.ceil(len(data) / shards)
        for k in range(shards):
            (directory / f"{name}.pt.part{k}").write_bytes(data[k * size : (k + 1) * size])
    else:
        (directory / f"{name}.pt").write_bytes(data)
    return directory


def read_checkpoint_bytes(directory: str | Path) -> bytes:
    """The ``.pt`` file's bytes in ``directory``, its ``.partN`` shards joined as evo2 does."""
    directory = Path(directory)
    files = sorted(directory.glob("*.pt"))
    if len(files) == 1:
        return files[0].read_bytes()
    parts = sorted(directory.glob("*.pt.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
    if files or not parts:
        raise FileNotFoundError(f"no single .pt file or .pt.partN shards in {directory}")
    return b"".join(part.read_bytes() for part in parts)


# --------------------------------------------------------------------------- vortex


def _safe_globals() -> list:
    """What vortex's ``load_checkpoint`` allow-lists for ``torch.load(weights_only=True)``."""
    allowed: list = [io.BytesIO]
    try:
        from transformer_engine.common.recipe import DelayedScaling, Format, _FormatHelper
    except ImportError:
        pass
    else:
        allowed += [DelayedScaling, Format, _FormatHelper]
    return allowed


def load_vortex(directory: str | Path, dtype: torch.dtype = torch.float32):
    """vortex's ``StripedHyena`` for a checkpoint directory, in eval mode.

    Built as evo2's ``Evo2.load_evo2_model`` does (``dotdict(yaml.safe_load(config.yml))``,
    ``use_fp8_input_projections`` dropped without Transformer Engine), on the CPU where CUDA is
    unavailable. The weights go in as vortex's ``load_checkpoint`` does it: ``torch.load``
    (``map_location="cpu"``, ``weights_only=True``, ``io.BytesIO`` allow-listed; shards joined
    first), then ``custom_load_state_dict`` (drops ``_extra_state`` without Transformer Engine,
    permutes ``Wqkv``). The one change: ``load_checkpoint`` casts every parameter to bfloat16 but
    ``log_poles``, ``residues`` and the ``projections`` (bfloat16 from construction) and keeps
    ``inv_freq`` float32; here the whole model is cast to ``dtype`` before and after loading
    (after: the permuted ``Wqkv`` is the file's tensor, in the file's dtype). With
    ``dtype=torch.bfloat16`` it is ``load_checkpoint``'s own mixed precision instead. vortex
    casts its convolutions and FFTs to float32 whatever ``dtype``.
    """
    install_cpu_stubs()
    from vortex.model.model import StripedHyena
    from vortex.model.utils import dotdict

    directory = Path(directory)
    config = dotdict(yaml.safe_load((directory / "config.yml").read_text()))
    if config.get("use_fp8_input_projections", False):
        try:
            import transformer_engine  # noqa: F401
        except ImportError:
            config.use_fp8_input_projections = False
    model = StripedHyena(config)
    data = read_checkpoint_bytes(directory)
    mixed = dtype == torch.bfloat16
    with torch.no_grad(), torch.serialization.safe_globals(_safe_globals()):
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if mixed:
            model.to_bfloat16_except_pr_lc(to_float32=True)
        else:
            model.to(dtype)
        model.custom_load_state_dict(state)
        if mixed:
            model.to_bfloat16_except_pr_lc()
        else:
            model.to(dtype)
    return model.eval()


def _device(model) -> torch.device:
    return model.embedding_layer.weight.device


def vortex_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """vortex's full, stateless forward: logits (batch, L, vocab) as float32 (float64 when the
    model is float64), on ``ids``'s device."""
    with torch.no_grad():
        logits, _ = model(ids.to(_device(model)))
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return logits.to(device=ids.device, dtype=dtype)


def vortex_cached_decode(
    model, prompt: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with vortex's own KV/FIR/IIR caches: vortex's ``Generator.generate``
    (``top_k=1``, ``cached_generation=True``): ``initialize_inference_params(P + steps)``, one
    forward over the prompt with the inference params (prefill), then one forward per token with
    every ``seqlen_offset`` set to P and then incremented, feeding back the argmax. Returns the
    tokens (batch, steps) and the float32 logits (batch, steps, vocab) each came from."""
    from vortex.model.generation import Generator
    from vortex.model.tokenizer import CharLevelTokenizer

    device = _device(model)
    vocab = model.embedding_layer.weight.shape[0]
    generator = Generator(model, CharLevelTokenizer(vocab), top_k=1, top_p=1.0, temperature=1.0)
    tokens, logits, _ = generator.generate(
        device=str(device),
        input_ids=prompt.to(device),
        num_tokens=steps,
        cached_generation=True,
        print_generation=False,
        verbose=False,
        stop_at_eos=False,
    )
    return tokens.to(prompt.device), logits.to(prompt.device)


def vortex_recompute_greedy(
    model, prompt: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding without caches (the ground truth): the full forward over prompt and
    tokens so far at every step, the next token vortex's ``sample(top_k=1)`` (argmax) of the
    last logits. Returns tokens (batch, steps) and logits (batch, steps, vocab)."""
    from vortex.model.sample import sample

    ids = prompt
    tokens, logits = [], []
    for _ in range(steps):
        last = vortex_logits(model, ids)[:, -1]
        token = sample(last.clone(), top_k=1)
        tokens.append(token)
        logits.append(last)
        ids = torch.cat([ids, token[:, None]], dim=1)
    return torch.stack(tokens, 1), torch.stack(logits, 1)
