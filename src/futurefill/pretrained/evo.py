"""Evo 2 and Evo 1 checkpoints read into a :class:`~futurefill.pretrained.StripedHyena`.

**Evo 1** (StripedHyena 1; Hugging Face ``togethercomputer/evo-1-8k-base``, ``evo-1-131k-base``,
revision ``1.1_fix``): ``config.json`` (``model_type: stripedhyena``) and safetensors
(``model.safetensors``, or shards named by ``model.safetensors.index.json``) with ``backbone.``
keys. Every Hyena layer (``hyena_layer_idxs``) has the 3-tap featurizer (with bias) and a long
filter of complex poles and residues stored as (real, imaginary) pairs ``(d, S, 1, 2)``: the
poles ``p`` themselves, taken here as ``log p`` once (``h[t] = Re sum R p^t``). Its ``Wqkv`` rows
are ``[Q; K; V]`` already; its projections are split per head (``column_split_hyena``).

**Evo 2**: an Evo 2 directory holds the vortex YAML config (``hidden_size``,
``hcs_layer_idxs``, ...: told apart from a safari YAML by those fields) and the weights as one
``torch.save``d state dict ``*.pt``, or that file's bytes split in order over ``*.pt.part0 ..
.partN`` (the 40B models), read here as one stream without joining them on disk.

The file's layout and ours differ where the original code rearranges on the fly; each is a
fixed permutation applied once here:

=========================================  ===============================================
checkpoint                                  here
=========================================  ===============================================
``projections.weight`` (3d, d) rows         rows reordered to ``[x2 | x1 | v]``: vortex
(and ``filter.short_filter_weight``)        interleaves them (``interleave``), splits them per
                                            head (``column_split_hyena``) or in thirds, and
                                            swaps x1 and x2 (``hyena_flip_x1x2``)
``filter.short_filter_weight`` (3d, 1, 3)   ``featurizer.weight`` (3d, 3), taps reversed
                                            (conv1d correlates: tap 2 multiplies the current
                                            input)
``filter.h`` (groups, 1, taps)              ``filter.fir.weight`` (d, taps), each group's filter
                                            repeated over its d / groups channels; reversed
                                            below 128 taps (vortex correlates those, the SE's
                                            7), as is from 128 (vortex convolves those by FFT,
                                            the MR's 128, with a ``D`` term)
``filter.log_poles`` (d, S, 1)              ``filter.log_poles`` (d, S)
``filter.D``                                ``filter.D`` (MR) or ``filter.conv.skip`` (LI)
``inner_mha_cls.Wqkv`` (3d, d)              ``attention.q`` and ``attention.kv``: with
                                            ``column_split`` the rows are per head ``[q, k, v]``
                                            (vortex permutes them to ``[Q; K; V]`` on load)
``inner_mha_cls.out_proj``                  ``attention.out``
``embedding_layer.weight``                  ``embedding.weight`` (tied unembedding)
``*._extra_state``, ``rotary_emb.inv_freq``  dropped: Transformer Engine's FP8 metadata (the
                                            FP8 projections run in the model's dtype here) and
                                            the rotary frequencies (recomputed from
                                            ``rotary_emb_base`` in float64)
=========================================  ===============================================

The FP8 checkpoints (1B, 20B, 40B) pickle Transformer Engine objects beside the tensors; they
load with ``weights_only=True`` and without Transformer Engine: ``io.BytesIO`` is allowed and
TE's recipe classes resolve to an inert stand-in that runs no code.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from futurefill.pretrained.striped_hyena import BLOCK_KINDS, StripedHyena, StripedHyenaConfig

__all__ = [
    "ShardedFile",
    "build",
    "check_weights",
    "checkpoint_weights",
    "evo1_config",
    "evo2_config",
    "evo2_weights",
    "is_vortex_config",
    "load_evo1",
    "load_evo2",
    "read_pt",
    "weight_files",
]

# What a Transformer Engine checkpoint pickles besides tensors: (module, class) names.
TE_GLOBALS = (
    ("transformer_engine.common.recipe", "DelayedScaling"),
    ("transformer_engine.common.recipe", "Format"),
    ("transformer_engine.common.recipe", "_FormatHelper"),
)
# vortex options this loader does not implement, and the value they must have.
UNSUPPORTED = {"proj_groups": 1, "smeared_gqa": False, "use_laughing_hyena": False}


def is_vortex_config(raw: Mapping[str, Any]) -> bool:
    """Whether a YAML mapping is a vortex (StripedHyena 2) config rather than a safari one."""
    return "hidden_size" in raw and any(f"{kind}_layer_idxs" in raw for kind in BLOCK_KINDS)


def shared_fields(raw: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The fields Evo 2's and Evo 1's configs name alike, with ``defaults`` (their code's) for
    the ones a file may lack; a ValueError for an option this loader does not implement."""
    for key, value in UNSUPPORTED.items():
        if raw.get(key, value) != value:
            raise ValueError(f"{key}={raw[key]!r} is not supported (only {value!r})")
    d = raw["hidden_size"]
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise ValueError(f"hidden_size must be an int >= 1, got {d!r}")
    inner = raw.get("inner_mlp_size")
    if inner is None:  # their code's default: 8/3 d rounded up to the multiple
        multiple = raw.get("inner_size_multiple_of", 64) * raw.get("model_parallel_size", 1)
        inner = multiple * math.ceil(int(2 * d * 4 / 3) / multiple)
    interpolated = raw.get("use_interpolated_rotary_pos_emb", False)
    fields = {key: raw.get(key, value) for key, value in defaults.items()}
    for key in ("short_filter_bias", "qkv_proj_bias", "mha_out_proj_bias", "tie_embeddings"):
        fields[key] = bool(fields[key])
    return {
        **fields,
        "vocab_size": raw["vocab_size"],
        "hidden_size": d,
        "num_layers": raw["num_layers"],
        "num_attention_heads": raw["num_attention_heads"],
        "inner_mlp_size": inner,
        "max_len": raw.get("max_seqlen", 8192),
        "attn_layer_idxs": _indices(raw, "attn_layer_idxs"),
        "rotary_scale": raw.get("rotary_emb_scaling_factor", 1.0) if interpolated else 1.0,
        "final_norm": bool(raw.get("final_norm", True)),
    }


def evo2_config(raw: Mapping[str, Any]) -> StripedHyenaConfig:
    """Our config from a vortex YAML mapping (ValueError/KeyError naming the field)."""
    defaults = {
        "hcs_filter_length": 7,
        "hcm_filter_length": 128,
        "short_filter_length": 3,
        "short_filter_bias": False,
        "state_size": 16,
        "mlp_activation": "gelu",
        "qkv_proj_bias": True,
        "mha_out_proj_bias": True,
        "rotary_emb_base": 1000000,
        "eps": 1e-5,
        "tie_embeddings": True,
    }
    fields = shared_fields(raw, defaults)
    d = fields["hidden_size"]
    for kind in ("hcs", "hcm"):
        groups = raw.get(f"{kind}_filter_groups", d)
        if raw.get(f"{kind}_layer_idxs") and (
            not isinstance(groups, int) or groups < 1 or d % groups
        ):
            raise ValueError(
                f"{kind}_filter_groups must be an int dividing hidden_size={d}, got {groups!r}"
            )
    return StripedHyenaConfig(
        **fields,
        **{f"{k}_layer_idxs": _indices(raw, f"{k}_layer_idxs") for k in BLOCK_KINDS[:3]},
        evo2_style_activations=bool(raw.get("evo2_style_activations", False)),
        hyena_out_proj_bias=bool(raw.get("hyena_out_proj_bias", True)),
    )


def evo1_config(raw: Mapping[str, Any]) -> StripedHyenaConfig:
    """Our config from an Evo 1 ``config.json`` mapping: one Hyena kind (``hyena_layer_idxs``,
    complex modal filters), biases on every projection but the MLP's."""
    defaults = {
        "short_filter_length": 3,
        "short_filter_bias": True,
        "mlp_activation": "silu",
        "qkv_proj_bias": True,
        "mha_out_proj_bias": True,
        "rotary_emb_base": 10000,
        "eps": 1e-5,
        "tie_embeddings": True,
    }
    return StripedHyenaConfig(
        **shared_fields(raw, defaults),
        hcl_layer_idxs=_indices(raw, "hyena_layer_idxs"),
        state_size=raw["state_size"],
        complex_poles=True,
        hyena_out_proj_bias=True,
    )


def _indices(raw: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = raw.get(key, [])
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key} must be a list of layer indices, got {value!r}")
    return tuple(value)


class ShardedFile(io.RawIOBase):
    """The files ``parts`` read as one file, in order (seekable; nothing joined on disk)."""

    def __init__(self, parts: list[Path]):
        super().__init__()
        self.files = [open(part, "rb") for part in parts]  # closed in close()
        self.sizes = [part.stat().st_size for part in parts]
        self.starts = [sum(self.sizes[:i]) for i in range(len(parts))]
        self.size, self.offset = sum(self.sizes), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.offset

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.offset, io.SEEK_END: self.size}[whence]
        self.offset = base + offset
        return self.offset

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        view, done = memoryview(buffer).cast("B"), 0
        while done < len(view) and self.offset < self.size:
            index = max(i for i, start in enumerate(self.starts) if start <= self.offset)
            file = self.files[index]
            file.seek(self.offset - self.starts[index])
            want = min(len(view) - done, self.starts[index] + self.sizes[index] - self.offset)
            got = file.readinto(view[done : done + want])
            if not got:
                break
            done += got
            self.offset += got
        return done

    def close(self) -> None:
        for file in self.files:
            file.close()
        super().close()


class _Inert:
    """What a Transformer Engine object in a checkpoint unpickles to: nothing runs."""

    def __init__(self, *args: object, **kwargs: object):
        pass

    def __setstate__(self, state: object) -> None:
        pass


def read_pt(files: list[Path]) -> dict[str, Any]:
    """The state dict in a ``.pt`` (one file, or its byte shards in order), loaded with
    ``weights_only=True`` (tensors, containers, ``io.BytesIO``, and Transformer Engine's recipe
    objects as inert stand-ins). Raises what ``torch.load`` raises."""
    allowed = [io.BytesIO, *((_Inert, f"{module}.{name}") for module, name in TE_GLOBALS)]
    with torch.serialization.safe_globals(allowed):
        if len(files) == 1:
            return torch.load(files[0], map_location="cpu", weights_only=True, mmap=True)
        with ShardedFile(files) as stream:
            return torch.load(stream, map_location="cpu", weights_only=True)


def listed(keys: list[str], shown: int = 4) -> str:
    """The first ``shown`` of ``keys`` and how many more, for an error message."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def weight_files(directory: Path) -> list[Path]:
    """The ``.pt`` of an Evo 2 directory, or its shards ``.pt.part0 ..`` in order; a
    FileNotFoundError or ValueError saying what is there instead."""
    single = sorted(p for p in directory.glob("*.pt") if p.is_file())
    shards = sorted(
        (p for p in directory.glob("*.pt.part*") if re.fullmatch(r".*\.pt\.part\d+", p.name)),
        key=lambda p: (p.name.rsplit(".part", 1)[0], int(p.name.rsplit(".part", 1)[1])),
    )
    if single and shards:
        raise ValueError(f"{directory}: both a .pt and .pt.partN shards; keep one")
    if len(single) > 1:
        raise ValueError(f"{directory}: {len(single)} .pt files; expected one")
    if single:
        return single
    if not shards:
        raise FileNotFoundError(f"{directory}: no .pt weights file (or .pt.part0 .. shards)")
    stems = {p.name.rsplit(".part", 1)[0] for p in shards}
    numbers = [int(p.name.rsplit(".part", 1)[1]) for p in shards]
    if len(stems) > 1 or numbers != list(range(len(shards))):
        raise ValueError(
            f"{directory}: shards must be one file's .part0 .. .partN with none missing, found "
            f"{', '.join(p.name for p in shards)}"
        )
    return shards


def hyena_row_order(raw: Mapping[str, Any], d: int, heads: int) -> torch.Tensor:
    """The checkpoint's projection rows in our order ``[x2 | x1 | v]`` (see the module
    docstring): ``ours = theirs[order]``."""
    index = torch.arange(3 * d)
    if raw.get("interleave", False):
        index = torch.cat([index[0::3], index[1::3], index[2::3]])
    if raw.get("column_split_hyena", True):
        per_head = index.view(heads, 3, d // heads)
        x2, x1, v = (per_head[:, i].reshape(-1) for i in range(3))
    else:
        x2, x1, v = index.chunk(3)
    if raw.get("hyena_flip_x1x2", False):
        x1, x2 = x2, x1
    return torch.cat([x2, x1, v])


def attention_row_order(raw: Mapping[str, Any], d: int, heads: int) -> torch.Tensor:
    """The checkpoint's ``Wqkv`` rows in the order ``[Q; K; V]`` (per-head ``[q, k, v]`` rows
    with ``column_split``)."""
    index = torch.arange(3 * d)
    if not raw.get("column_split", True):
        return index
    return index.view(heads, 3, d // heads).transpose(0, 1).reshape(-1)


def checkpoint_weights(
    state: Mapping[str, Any],
    config: StripedHyenaConfig,
    hyena_order: torch.Tensor,
    attention_order: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The checkpoint's tensors (Evo 2's or Evo 1's names, ``backbone.`` stripped) under our
    names and layouts, and the checkpoint keys that had no place. Dropped by design (what the
    original code ignores too): Transformer Engine's ``_extra_state``, the rotary
    ``inv_freq``, ``unembed.weight`` when the embeddings are tied, and savanna's training-time
    leftovers under ``blocks.N.mixer.`` and ``filter.t``."""
    ours: dict[str, torch.Tensor] = {}
    unused = []
    for key, value in state.items():
        key = key.removeprefix("backbone.")
        if (
            key.endswith(("._extra_state", "rotary_emb.inv_freq", ".filter.t"))
            or re.fullmatch(r"blocks\.\d+\.mixer\..*", key)
            or (key == "unembed.weight" and config.tie_embeddings)
        ):
            continue
        if not isinstance(value, torch.Tensor):
            unused.append(key)
            continue
        if _place(key, config, value, hyena_order, attention_order, ours) is None:
            unused.append(key)
    return ours, unused


def evo2_weights(
    state: Mapping[str, Any], raw: Mapping[str, Any], config: StripedHyenaConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """:func:`checkpoint_weights` of an Evo 2 checkpoint with vortex config ``raw``."""
    d, heads = config.hidden_size, config.num_attention_heads
    orders = hyena_row_order(raw, d, heads), attention_row_order(raw, d, heads)
    return checkpoint_weights(state, config, *orders)


def _place(
    key: str,
    config: StripedHyenaConfig,
    value: torch.Tensor,
    hyena_order: torch.Tensor,
    attention_order: torch.Tensor,
    ours: dict[str, torch.Tensor],
) -> str | None:
    """Put the checkpoint tensor ``key`` into ``ours`` under our name (in our layout); its
    name, or None when it belongs nowhere."""
    d = config.hidden_size
    if key == "embedding_layer.weight":
        ours["embedding.weight"] = value
    elif key in ("norm.scale", "unembed.weight"):
        ours[key] = value
    else:
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if match is None or int(match[1]) >= config.num_layers:
            return None
        layer, rest = int(match[1]), match[2]
        prefix = f"blocks.{layer}."
        kind = config.kind(layer)
        rows3 = value.dim() >= 1 and value.shape[0] == 3 * d
        if rest in ("pre_norm.scale", "post_norm.scale") or rest.startswith("mlp.l"):
            ours[prefix + rest] = value
        elif kind == "attn":
            if rest.startswith("inner_mha_cls.Wqkv.") and rows3:
                value = value[attention_order]
                kind_ = rest.rsplit(".", 1)[1]
                ours[prefix + f"attention.q.{kind_}"] = value[:d]
                ours[prefix + f"attention.kv.{kind_}"] = value[d:]
            elif rest.startswith("inner_mha_cls.out_proj."):
                ours[prefix + "attention.out." + rest.rsplit(".", 1)[1]] = value
            else:
                return None
        elif rest.startswith("projections.") and rows3:
            ours[prefix + rest] = value[hyena_order]
        elif rest.startswith("out_filter_dense."):
            ours[prefix + rest] = value
        elif rest == "filter.short_filter_weight" and rows3 and value.dim() == 3:
            ours[prefix + "featurizer.weight"] = value[hyena_order, 0].flip(-1)
        elif rest == "filter.short_filter_bias" and rows3:
            ours[prefix + "featurizer.bias"] = value[hyena_order]
        elif kind in ("hcs", "hcm") and rest == "filter.h" and value.dim() == 3:
            groups = value.shape[0]
            if d % groups:
                raise ValueError(f"{key}: {groups} filters do not divide hidden_size={d}")
            taps = value[:, 0].repeat_interleave(d // groups, dim=0)
            # vortex correlates a FIR of fewer than 128 taps (conv1d) and convolves a longer
            # one (FFT): the first is stored reversed
            ours[prefix + "filter.fir.weight"] = taps.flip(-1) if taps.shape[1] < 128 else taps
        elif kind == "hcm" and rest == "filter.D":
            ours[prefix + "filter.D"] = value
        elif kind == "hcl" and rest == "filter.log_poles":  # Evo 2: real, (d, S, 1)
            ours[prefix + "filter.log_poles"] = value[..., 0] if value.dim() == 3 else value
        elif kind == "hcl" and rest == "filter.poles" and value.dim() == 4:  # Evo 1: p, complex
            p = torch.view_as_complex(value[:, :, 0].double().contiguous())
            ours[prefix + "filter.log_poles"] = torch.view_as_real(p.log()).to(value.dtype)
        elif kind == "hcl" and rest == "filter.residues":  # (d, S) real or (d, S, 1, 2)
            ours[prefix + "filter.residues"] = value[:, :, 0] if value.dim() == 4 else value
        elif kind == "hcl" and rest == "filter.D":
            ours[prefix + "filter.conv.skip"] = value
        else:
            return None
    return key


def check_weights(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    unexpected: list[str],
    source: str,
    config_name: str,
) -> None:
    """A ValueError naming the weights ``state`` lacks and the ``unexpected`` ones, or else the
    first whose shape differs from what ``config_name`` gives (every loader's check)."""
    missing = [k for k in expected if k not in state]
    if missing or unexpected:
        parts = [f"missing {listed(missing)}"] if missing else []
        parts += [f"unexpected {listed(unexpected)}"] if unexpected else []
        raise ValueError(f"{source}: weights do not match the model: {'; '.join(parts)}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, but {config_name} gives "
                f"{tuple(value.shape)}"
            )


def build(
    config: StripedHyenaConfig,
    state: dict[str, torch.Tensor],
    unexpected: list[str],
    source: str,
    config_name: str,
) -> StripedHyena:
    """The model with ``state`` (our names) loaded, in the embedding's dtype; a ValueError
    from :func:`check_weights` (or for weights that are not floating point) before anything
    is built."""
    with torch.device("meta"):
        model = StripedHyena(config)
    expected = model.state_dict()
    check_weights(expected, state, unexpected, source, config_name)
    dtypes = {v.dtype for v in state.values()}
    if not all(dtype.is_floating_point for dtype in dtypes):
        raise ValueError(f"{source}: weights of dtypes {sorted(map(str, dtypes))}; floating only")
    model.load_state_dict({k: state[k] for k in expected}, assign=True)
    return model.to(state["embedding.weight"].dtype)  # (poles and residues stay float32)


def read_config(
    file: Path, parse: Callable[[Mapping[str, Any]], StripedHyenaConfig]
) -> tuple[dict, StripedHyenaConfig]:
    """The mapping in ``file`` and our config from it by ``parse``; a ValueError naming the file
    and the field."""
    from futurefill.pretrained.formats import read_mapping

    raw = read_mapping(file)
    try:
        return raw, parse(raw)
    except KeyError as exc:
        raise ValueError(f"{file}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{file}: {exc}") from None


def files_name(files: list[Path]) -> str:
    """One file's name, or the first and last of shards."""
    return files[0].name if len(files) == 1 else f"{files[0].name} .. {files[-1].name}"


def load_evo1(directory: Path) -> StripedHyena:
    """The Evo 1 model of ``directory`` (``config.json`` and safetensors), in the embedding's
    dtype; a ValueError naming the file and the problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    raw, config = read_config(directory / "config.json", evo1_config)
    files = safetensors_files(directory)
    source = files_name(files)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{file.name} is truncated or corrupt: {exc}") from None
    d, heads = config.hidden_size, config.num_attention_heads
    orders = hyena_row_order(raw, d, heads), torch.arange(3 * d)  # Wqkv: [Q; K; V] already
    ours, unused = checkpoint_weights(state, config, *orders)
    return build(config, ours, unused, source, "config.json")


def safetensors_files(directory: Path) -> list[Path]:
    """``model.safetensors``, or the shards ``model.safetensors.index.json`` names."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        from futurefill.pretrained.formats import read_mapping

        weight_map = read_mapping(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no weight_map")
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        files = [directory / "model.safetensors"]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {file}")
    return files


def load_evo2(directory: Path, config_file: Path) -> StripedHyena:
    """The Evo 2 model of ``directory`` (its vortex YAML ``config_file`` and ``.pt`` weights),
    in the embedding's dtype; a ValueError naming the file and the problem."""
    raw, config = read_config(config_file, evo2_config)
    files = weight_files(directory)
    source = files_name(files)
    try:
        state = read_pt(files)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{source} holds objects besides tensors that are not a Transformer Engine "
            f"checkpoint's; not loaded (unpickling them would run code from the file): {exc}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{source} is truncated or corrupt: {exc}") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} does not hold a state dict")
    ours, unused = evo2_weights(state, raw, config)
    return build(config, ours, unused, source, config_file.name)
