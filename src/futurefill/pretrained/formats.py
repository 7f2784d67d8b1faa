"""Checkpoint layouts: which one a directory holds, its configuration, its weights under our names.

==============  ===========================================  ===================================
format          files                                         weights' keys
==============  ===========================================  ===================================
futurefill      config.json + model.safetensors (ConvLM)      ours
hyenadna-hf     config.json (model_type "hyenadna") +         ``hyena.backbone.*``, ``lm_head.*``
                model.safetensors or pytorch_model.bin
hyenadna        config.json (with a ``layer`` dict) +         Lightning: ``state_dict`` of
                weights.ckpt                                  ``model.backbone.*``
safari          a YAML or JSON config (``model_config``, or   ``backbone.*`` (a state dict), or
                the LM's fields) + one .ckpt/.pt/.pth/.bin    Lightning as above
==============  ===========================================  ===================================

Semantics that differ between the public code bases and change numbers, honoured per format:
the exponential modulation's ``shift`` (0.05 in HyenaDNA's released inference code, 0.0 in the
safari training code), the split of the filter FFN's outputs into orders (matters for order >= 3,
see :data:`~futurefill.pretrained.hyena_lm.FILTER_LAYOUTS`), the ``use_bias`` and ``normalized``
flags (read by safari, ignored by HyenaDNA's code), the LayerNorm eps of the blocks (the HF port
uses PyTorch's default there), and the short filter (the HF port pads by 2, causal only for
kernel 3). Gradient-checkpointing names (``.mixer.layer.``, ``.mlp.layer.``) are accepted, and
the shared Sin ``freq`` may be stored under one name only.

``.ckpt``/``.pt``/``.bin`` files are pickles: they are opened with ``torch.load(weights_only=True)``
(tensors and plain containers only); a Lightning checkpoint that holds other objects needs
``trust_pickle=True``, which runs the file's code, so only for files you trust.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from futurefill.model import CONFIG_FILE, WEIGHTS_FILE, ConvLM, ConvLMConfig
from futurefill.pretrained.evo import check_weights, is_vortex_config, load_evo1, load_evo2
from futurefill.pretrained.hyena_lm import HYENALM_MODEL_TYPE, HyenaLM, HyenaLMConfig

__all__ = [
    "FORMATS",
    "CheckpointError",
    "bundled_checkpoint_dir",
    "detect_format",
    "load_pretrained",
]

FORMATS = ("futurefill", HYENALM_MODEL_TYPE, "hyenadna-hf", "hyenadna", "safari", "evo2", "evo1")
EVO1_MODEL_TYPE = "stripedhyena"  # the model_type of Evo 1's config.json
BUNDLED_CHECKPOINT = "pydoc-stu"  # under futurefill/checkpoints/
# safetensors' dtype names -> torch's, for the floating dtypes a model may be saved in.
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Options of the public Hyena operator that no released checkpoint uses and this loader does not
# implement: (config key, the value it must have).
UNSUPPORTED_LAYER_OPTIONS = {
    "num_heads": 1,
    "inner_factor": 1,
    "num_blocks": 1,
    "outer_mixing": False,
    "post_order_ffn": False,
    "activation": "id",
    "linear_mixer": False,
    "bidirectional": False,
    "filter_cls": "hyena-filter",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def detect_format(path: str | Path) -> str:
    """The :data:`FORMATS` entry of the checkpoint directory ``path`` (from its files)."""
    directory = _directory(path)
    config_json = directory / "config.json"
    if config_json.is_file():
        config = read_mapping(config_json)
        model_type = config.get("model_type")
        if model_type == "hyenadna":
            return "hyenadna-hf"
        if model_type == HYENALM_MODEL_TYPE:
            return HYENALM_MODEL_TYPE
        if model_type == EVO1_MODEL_TYPE:
            return "evo1"
        if model_type is not None:
            raise CheckpointError(
                f"{config_json}: model_type {model_type!r} is not supported (supported: "
                f"'hyenadna', {HYENALM_MODEL_TYPE!r}, {EVO1_MODEL_TYPE!r} (Evo 1), the "
                "HyenaDNA/safari training configs, a vortex YAML (Evo 2), or a futurefill ConvLM)"
            )
        if (directory / "model.safetensors").is_file() and "layer" not in config:
            return "futurefill"
        if isinstance(config.get("layer"), dict) and (directory / "weights.ckpt").is_file():
            return "hyenadna"
        if isinstance(config.get("layer"), dict) or "model_config" in config:
            return "safari"
        raise CheckpointError(
            f"{config_json}: not a known checkpoint config (expected model_type 'hyenadna', a "
            "'layer' dict, or a futurefill ConvLM config with model.safetensors)"
        )
    files = _yaml_configs(directory)
    if files:
        if len(files) == 1 and is_vortex_config(read_mapping(files[0])):
            return "evo2"
        return "safari"
    raise CheckpointError(
        f"{directory}: no config.json (or safari / vortex YAML config) in the directory"
    )


def bundled_checkpoint_dir() -> Path:
    """The directory of the checkpoint that ships with the package (a ConvLM trained on Python
    documentation, byte-level)."""
    return Path(str(resources.files("futurefill") / "checkpoints" / BUNDLED_CHECKPOINT))


def load_pretrained(
    path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    format: str | None = None,
    trust_pickle: bool = False,
) -> torch.nn.Module:
    """The model in the checkpoint directory ``path`` (local; nothing is downloaded), in eval mode.

    Parameters
    ----------
    path : directory in one of the :data:`FORMATS` (detected from its files unless ``format``);
        default the bundled checkpoint (:func:`bundled_checkpoint_dir`).
    device, dtype : where and in which floating dtype to put the model (default: CPU, the
        checkpoint's dtype).
    trust_pickle : open pickled weights with ``weights_only=False`` (see the module docstring).

    Returns
    -------
    A :class:`~futurefill.model.ConvLM` (format ``futurefill``) or a
    :class:`~futurefill.pretrained.hyena_lm.HyenaLM`; either decodes with
    :func:`futurefill.generate` and every method.

    Raises
    ------
    CheckpointError
        Missing, truncated or corrupt files, an unknown ``model_type``, missing or unexpected
        weights, a weight whose shape disagrees with the config, a config field out of range.
    """
    directory = _directory(bundled_checkpoint_dir() if path is None else path)
    if format is None:
        format = detect_format(directory)
    elif format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "futurefill":
        model = _load_convlm(directory)
    elif format in ("evo2", "evo1"):
        model = _load_evo(directory, format)
    else:
        config, config_file = _read_config(directory, format)
        state, weights_file = _read_weights(directory, format, trust_pickle)
        model = _build(config, config_file, state, weights_file)
    model = model.to(device=device, dtype=dtype)
    return model.eval()


# --------------------------------------------------------------------------- files


def _directory(path: str | Path) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    return directory


def read_mapping(file: Path) -> dict:
    """The mapping a JSON (or, by suffix, YAML) file holds; CheckpointError naming the file."""
    kind = "YAML" if file.suffix in (".yaml", ".yml") else "JSON"
    try:
        text = file.read_text(encoding="utf-8")
        value = yaml.safe_load(text) if kind == "YAML" else json.loads(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{file} is not valid {kind}: {exc}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{file} must hold a {kind} mapping")
    return value


def _yaml_configs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _load_convlm(directory: Path) -> ConvLM:
    """A :class:`~futurefill.model.ConvLM` written by its ``save``, in its saved dtype."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"checkpoint file not found: {directory / name}")
    raw = read_mapping(directory / CONFIG_FILE)
    missing = [name for name in ConvLMConfig.REQUIRED if name not in raw]
    if missing:  # ConvLM.save writes every field: anything less is not its config
        raise CheckpointError(
            f"checkpoint config {directory / CONFIG_FILE} is missing fields {missing} (a "
            "ConvLM's config.json, as ConvLM.save writes it, names them all)"
        )
    try:
        config = ConvLMConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint config {directory / CONFIG_FILE} is invalid: {exc}"
        ) from None
    file = directory / WEIGHTS_FILE
    try:
        with safe_open(str(file), "pt") as weights:
            dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is truncated or corrupt: {exc}") from exc
    if len(dtypes) != 1:
        raise CheckpointError(f"{file} mixes dtypes {sorted(dtypes)}")
    dtype = dtypes.pop()
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(
            f"{file} holds {dtype} tensors; a model's weights are floating point "
            f"({', '.join(SAFETENSORS_DTYPES)})"
        )
    model = ConvLM(config).to(dtype=SAFETENSORS_DTYPES[dtype])
    try:
        load_model(model, str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is truncated or corrupt: {exc}") from exc
    except RuntimeError as exc:
        raise CheckpointError(
            f"{file}: weights do not match {CONFIG_FILE}: {str(exc).splitlines()[-1].strip()}"
        ) from None
    return model


def _load_evo(directory: Path, format: str) -> torch.nn.Module:
    try:
        if format == "evo1":
            return load_evo1(directory)
        files = _yaml_configs(directory)
        if len(files) != 1:
            raise ValueError(f"{directory}: expected one vortex YAML config, found {len(files)}")
        return load_evo2(directory, files[0])
    except (ValueError, FileNotFoundError) as exc:
        raise CheckpointError(str(exc)) from None


def _read_config(directory: Path, format: str) -> tuple[HyenaLMConfig, Path]:
    file = directory / "config.json"
    if format == "safari" and not file.is_file():
        files = _yaml_configs(directory)
        if len(files) != 1:
            raise CheckpointError(
                f"{directory}: expected one config.json or YAML config, found {len(files)}"
            )
        file = files[0]
    elif not file.is_file():
        raise CheckpointError(f"checkpoint file not found: {file}")
    raw = read_mapping(file)
    try:
        if format == HYENALM_MODEL_TYPE:
            fields = {k: v for k, v in raw.items() if k != "model_type"}
            return HyenaLMConfig(**fields), file
        if format == "hyenadna-hf":
            return _hf_config(raw), file
        return _training_config(raw.get("model_config", raw), format), file
    except (KeyError, TypeError, ValueError) as exc:
        message = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        if isinstance(exc, TypeError) and "unexpected keyword" in message:
            message = f"unknown field: {message.split('argument ')[-1]}"
        raise CheckpointError(f"{file}: {message}") from None


def _backbone_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every layout names alike: the vocabulary padded as the checkpoints store it
    (up to a multiple of ``pad_vocab_size_multiple``), width, depth, and the MLP width
    (4 x width when unset)."""
    vocab, multiple = raw["vocab_size"], raw.get("pad_vocab_size_multiple", 1)
    for name, value in (("vocab_size", vocab), ("pad_vocab_size_multiple", multiple)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    d_model, d_inner = raw["d_model"], raw.get("d_inner")
    if d_inner is None and isinstance(d_model, int):
        d_inner = 4 * d_model
    return {
        "vocab_size": math.ceil(vocab / multiple) * multiple,
        "d_model": d_model,
        "n_layers": _positive_int(raw, "n_layer"),
        "d_inner": d_inner,
    }


def _positive_int(raw: Mapping[str, Any], key: str) -> int:
    """``raw[key]``, a checkpoint's field under its own name: an int >= 1, or a ValueError."""
    value = raw[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} must be an int >= 1, got {value!r}")
    return value


def _hf_config(raw: Mapping[str, Any]) -> HyenaLMConfig:
    """The HF port: its code builds the filter for order 2 only and pads the short filter by 2."""
    if raw.get("hyena_order", 2) != 2:
        raise ValueError(
            f"hyena_order must be 2 for the HF port (its filter has d_model outputs), "
            f"got {raw['hyena_order']!r}"
        )
    if raw.get("short_filter_order", 3) != 3:
        raise ValueError(
            "short_filter_order must be 3 for the HF port (its code pads the short filter by 2), "
            f"got {raw['short_filter_order']!r}"
        )
    if raw.get("train_freq", True) not in (True, False):
        raise ValueError(f"train_freq must be true or false, got {raw['train_freq']!r}")
    return HyenaLMConfig(
        **_backbone_fields(raw),
        max_len=_positive_int(raw, "max_seq_len"),
        order=2,
        emb_dim=raw.get("emb_dim", 3),
        filter_order=raw.get("filter_order", 64),
        num_inner_mlps=raw.get("num_inner_mlps", 2),
        short_filter_order=3,
        activation_freq=raw.get("activation_freq", 1.0),
        modulate=True,
        modulation_shift=0.05,
        filter_layout="order-major",
        use_bias=True,
        normalized=False,
        block_norm_eps=1e-5,
        final_norm_eps=raw.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=False,
    )


def _training_config(raw: Mapping[str, Any], format: str) -> HyenaLMConfig:
    """HyenaDNA's release (read by its standalone code) or safari's (read by its training code)."""
    layer = raw["layer"]
    if not isinstance(layer, dict):
        raise TypeError(f"layer must be a mapping, got {type(layer).__name__}")
    if layer.get("_name_", "hyena") != "hyena":
        raise ValueError(f"layer._name_ must be 'hyena', got {layer['_name_']!r}")
    if raw.get("attn_layer_idx"):
        raise ValueError("attn_layer_idx: attention layers are not supported")
    safari = format == "safari"
    if safari:
        for key, value in UNSUPPORTED_LAYER_OPTIONS.items():
            if layer.get(key, value) != value:
                raise ValueError(f"layer.{key}={layer[key]!r} is not supported (only {value!r})")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    return HyenaLMConfig(
        **_backbone_fields(raw),
        max_len=_positive_int(layer, "l_max"),
        order=layer.get("order", 2),
        emb_dim=layer.get("emb_dim", 3),
        filter_order=layer.get("filter_order", 64),
        num_inner_mlps=layer.get("num_inner_mlps", 2),
        short_filter_order=layer.get("short_filter_order", 3) if safari else 3,
        activation_freq=layer.get("w", 1.0),
        modulate=layer.get("modulate", True),
        modulation_shift=layer.get("shift", 0.0 if safari else 0.05),
        filter_layout="channel-major" if safari else "order-major",
        use_bias=layer.get("bias", True) if safari else True,
        normalized=layer.get("normalized", False) if safari else False,
        block_norm_eps=eps,
        final_norm_eps=eps,
        tie_embeddings=True,
    )


def _weights_file(directory: Path, format: str) -> Path:
    if format == HYENALM_MODEL_TYPE:
        file = directory / "model.safetensors"
        if not file.is_file():
            raise CheckpointError(f"checkpoint file not found: {file}")
        return file
    if format == "hyenadna-hf":
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (directory / name).is_file():
                return directory / name
        raise CheckpointError(
            f"checkpoint file not found: {directory / 'model.safetensors'} (or pytorch_model.bin)"
        )
    if format == "hyenadna":
        file = directory / "weights.ckpt"
        if not file.is_file():
            raise CheckpointError(f"checkpoint file not found: {file}")
        return file
    files = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if len(files) != 1:
        kinds = "/".join(PICKLE_SUFFIXES)
        raise CheckpointError(f"{directory}: expected one {kinds} weights file, found {len(files)}")
    return files[0]


def _read_weights(directory: Path, format: str, trust_pickle: bool) -> tuple[dict, Path]:
    """The weights under our names (``backbone.*``, ``lm_head.weight``) and their file."""
    file = _weights_file(directory, format)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{file} is truncated or corrupt: {exc}") from exc
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=not trust_pickle)
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{file} is a pickle that holds objects besides tensors (a Lightning "
                "checkpoint's training state, for instance), and unpickling those runs code "
                "from the file; if you trust it, load with trust_pickle=True (--trust-pickle "
                "on the command line)"
            ) from None
        except (AttributeError, ImportError) as exc:  # trusted, but its classes are not here
            raise CheckpointError(
                f"{file} is a pickle of objects whose code is not importable here ({exc}); "
                "load it where that code is, and save the model with model.save(directory)"
            ) from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
            raise CheckpointError(f"{file} is truncated or corrupt: {exc}") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{file} does not hold a state dict of tensors")
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^(hyena|model)\.", "", key)
        key = re.sub(r"\.(mixer|mlp)\.layer\.", r".\1.", key)
        renamed[key] = value
    return renamed, file


# --------------------------------------------------------------------------- weights -> model


def _build(config: HyenaLMConfig, config_file: Path, state: dict, weights_file: Path) -> HyenaLM:
    embed_key, head_key = "backbone.embeddings.word_embeddings.weight", "lm_head.weight"
    if config.tie_embeddings and head_key in state and embed_key in state:
        if not torch.equal(state[head_key], state[embed_key]):
            config = dataclasses.replace(config, tie_embeddings=False)
    dtype = state[embed_key].dtype if embed_key in state else torch.float32
    if not dtype.is_floating_point:
        raise CheckpointError(
            f"{weights_file} holds {str(dtype).removeprefix('torch.')} weights; a model's "
            "weights are floating point"
        )
    with torch.device("meta"):
        expected = HyenaLM(config).state_dict()
    for name in [k for k in expected if k.endswith(".freq")]:
        if name not in state:
            state[name] = _shared_freq(state, name, config, dtype)
    if config.tie_embeddings:
        state.pop(head_key, None)
        expected.pop(head_key, None)
    for key, value in state.items():
        if key.endswith("mixer.short_filter.weight") and value.dim() == 3:
            state[key] = value[:, 0].flip(-1)  # nn.Conv1d (C, 1, k) -> ours (C, k), taps back
    unexpected = [k for k in state if k not in expected]
    try:
        check_weights(expected, state, unexpected, str(weights_file), config_file.name)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    model = HyenaLM(config).to(dtype)
    model.load_state_dict(state, strict=not config.tie_embeddings)
    return model


def _shared_freq(state: dict, name: str, config: HyenaLMConfig, dtype: torch.dtype) -> torch.Tensor:
    """A Sin ``freq`` stored under another name of the same filter, or the config's constant
    (a checkpoint trained with ``train_freq=False`` stores none)."""
    prefix = name[: name.index("implicit_filter.") + len("implicit_filter.")]
    for key, value in state.items():
        if key.startswith(prefix) and key.endswith(".freq"):
            return value
    return torch.full((1, config.filter_order), float(config.activation_freq), dtype=dtype)
