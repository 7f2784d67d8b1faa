"""Write a HyenaLM in each public checkpoint layout, with its real key names and config."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from futurefill.pretrained import HyenaLM, HyenaLMConfig


def random_hyena_lm(seed: int = 0, dtype=torch.float64, **overrides) -> HyenaLM:
    """A small HyenaLM with every weight random (norms, biases and ``freq`` included)."""
    config = HyenaLMConfig(
        **{
            "vocab_size": 16,
            "d_model": 8,
            "n_layers": 2,
            "d_inner": 24,
            "max_len": 48,
            "emb_dim": 5,
            "filter_order": 8,
            "num_inner_mlps": 1,
            "activation_freq": 3.0,
            **overrides,
        }
    )
    torch.manual_seed(seed)
    model = HyenaLM(config).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if "embeddings" in name else p.shape[-1] ** -0.5
            value = torch.randn_like(p) * scale
            p.copy_(value + config.activation_freq if name.endswith(".freq") else value)
    return model.eval()


def _their_state(model: HyenaLM) -> dict[str, torch.Tensor]:
    """Our state dict with the public code's tensor layouts (nn.Conv1d short filters)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("short_filter.weight"):
            value = value.flip(-1)[:, None]  # ours (C, k), taps back -> nn.Conv1d (C, 1, k)
        state[key] = value.detach().clone().contiguous()
    return state


def _layer_config(config: HyenaLMConfig) -> dict:
    return {
        "_name_": "hyena",
        "emb_dim": config.emb_dim,
        "filter_order": config.filter_order,
        "local_order": 3,
        "l_max": config.max_len,
        "modulate": config.modulate,
        "w": config.activation_freq,
        "order": config.order,
        "num_inner_mlps": config.num_inner_mlps,
    }


def write_hf(model: HyenaLM, directory: Path, *, all_freq_names=False, weights="safetensors"):
    """The LongSafari ``-hf`` layout (order 2)."""
    c = model.config
    directory.mkdir(parents=True, exist_ok=True)
    state, kept = {}, set()
    for key, value in _their_state(model).items():
        if key.endswith(".freq") and not all_freq_names:
            filter_name = key.split(".implicit_filter.")[0]
            if filter_name in kept:
                continue
            kept.add(filter_name)
        state[f"hyena.{key}" if key.startswith("backbone.") else key] = value
    if weights == "safetensors":
        save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    config = {
        "model_type": "hyenadna",
        "vocab_size": c.vocab_size,
        "d_model": c.d_model,
        "d_inner": c.d_inner,
        "n_layer": c.n_layers,
        "max_seq_len": c.max_len,
        "emb_dim": c.emb_dim,
        "filter_order": c.filter_order,
        "short_filter_order": 3,
        "hyena_order": 2,
        "num_inner_mlps": c.num_inner_mlps,
        "activation_freq": c.activation_freq,
        "train_freq": True,
        "use_bias": True,
        "layer_norm_epsilon": c.final_norm_eps,
        "pad_vocab_size_multiple": 8,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def write_hyenadna(model: HyenaLM, directory: Path, *, checkpoint_names=False):
    """The original release: config.json with a ``layer`` dict, Lightning ``weights.ckpt``."""
    c = model.config
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in _their_state(model).items():
        key = f"model.{key}"
        if checkpoint_names:
            key = key.replace(".mixer.", ".mixer.layer.").replace(".mlp.", ".mlp.layer.")
        state[key] = value
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10}, directory / "weights.ckpt")
    config = {
        "d_model": c.d_model,
        "n_layer": c.n_layers,
        "d_inner": c.d_inner,
        "vocab_size": c.vocab_size,
        "resid_dropout": 0.0,
        "embed_dropout": 0.1,
        "residual_in_fp32": True,
        "pad_vocab_size_multiple": 8,
        "layer": _layer_config(c),
        **({"checkpoint_mixer": True, "checkpoint_mlp": True} if checkpoint_names else {}),
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def write_safari(model: HyenaLM, directory: Path, **layer_options):
    """safari: a YAML eval config (``model_config``) and a plain state dict ``model.ckpt``."""
    c = model.config
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(_their_state(model), directory / "model.ckpt")
    model_config = {
        "_name_": "lm",
        "d_model": c.d_model,
        "d_inner": c.d_inner,
        "n_layer": c.n_layers,
        "vocab_size": c.vocab_size,
        "layer_norm_epsilon": c.final_norm_eps,
        "layer": {**_layer_config(c), **layer_options},
        "pad_vocab_size_multiple": 8,
    }
    text = yaml.safe_dump({"tokenizer_name": "gpt2", "model_config": model_config})
    (directory / "hyena_small.yaml").write_text(text)
    return directory
