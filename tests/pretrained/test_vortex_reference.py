"""The vortex reference harness itself (tests/vortex_reference.py): the checkpoints it writes
load into Arc Institute's vortex exactly, and vortex runs and decodes on the CPU."""

from __future__ import annotations

import io
import os
import sys

import pytest
import torch
import yaml

import vortex_reference as vr

pytestmark = pytest.mark.skipif(not vr.vortex_available(), reason="vortex (vtx) not installed")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.fixture(scope="module")
def config() -> dict:
    return vr.scaled_config("7b", hidden_size=32, num_heads=2)


@pytest.fixture(scope="module")
def checkpoint(config, tmp_path_factory):
    return vr.write_checkpoint(tmp_path_factory.mktemp("evo2"), config, seed=1)


@pytest.fixture(scope="module")
def model(checkpoint):
    return vr.load_vortex(checkpoint)


def _load_state(directory) -> dict:
    with torch.serialization.safe_globals([io.BytesIO]):
        return torch.load(io.BytesIO(vr.read_checkpoint_bytes(directory)), weights_only=True)


def test_scaled_config_keeps_the_public_pattern_and_fields():
    public = vr.public_config("7b")
    config = vr.scaled_config()
    assert vr.layer_kinds(config) == ["hcs", "hcm", "hcl", "attn", "hcs", "hcm", "hcl", "hcs"]
    assert config["hidden_size"] % config["hcm_filter_groups"] == 0
    assert config["hidden_size"] // config["hcm_filter_groups"] == 16  # 4096 / 256
    changed = {k for k in public if public[k] != config[k]}
    assert changed <= set(vr.SCALED_FIELDS)
    for name in ("1b", "7b_base", "7b_262k", "20b", "40b", "40b_base"):
        scaled = vr.scaled_config(name, hidden_size=48, num_heads=3)
        assert set(vr.layer_kinds(scaled)) == {"hcs", "hcm", "hcl", "attn"}
        assert 48 % scaled["hcs_filter_groups"] == 0


def test_checkpoint_keys_and_shapes_are_vortex_state_dict(config, checkpoint, capsys):
    from vortex.model.model import StripedHyena
    from vortex.model.utils import dotdict

    model = StripedHyena(dotdict(yaml.safe_load((checkpoint / "config.yml").read_text())))
    state = _load_state(checkpoint)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert vr.checkpoint_shapes(config) == expected
    capsys.readouterr()
    vr.load_vortex(checkpoint)
    printed = capsys.readouterr().out
    assert "Keys missing" not in printed and "Extra keys" not in printed


def test_wqkv_is_permuted_from_the_per_head_layout_and_the_rest_loads_as_is(
    config, checkpoint, model
):
    state = _load_state(checkpoint)
    loaded = model.state_dict()
    (attn,) = config["attn_layer_idxs"]
    key = f"blocks.{attn}.inner_mha_cls.Wqkv.weight"
    heads = config["num_attention_heads"]
    assert torch.equal(loaded[key], vr.wqkv_from_checkpoint(state[key], heads))
    assert not torch.equal(loaded[key], state[key])
    assert torch.equal(vr.wqkv_to_checkpoint(loaded[key], heads), state[key])
    for k, v in state.items():
        if k != key:
            assert torch.equal(loaded[k], v), k
    assert {p.dtype for p in model.state_dict().values()} == {torch.float32}


def test_full_forward_is_finite(model):
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    logits = vr.vortex_logits(model, ids)
    assert logits.shape == (2, 24, 512) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert 1 < logits.std() < 100


@pytest.mark.parametrize("prompt_len", [6, 8])
def test_cached_decode_matches_recompute(model, prompt_len):
    prompt = torch.randint(0, 512, (2, prompt_len), generator=torch.Generator().manual_seed(2))
    tokens, logits = vr.vortex_cached_decode(model, prompt, 8)
    expected_tokens, expected_logits = vr.vortex_recompute_greedy(model, prompt, 8)
    assert tokens.shape == (2, 8) and logits.shape == (2, 8, 512)
    assert torch.equal(tokens, expected_tokens)
    assert rel_err(logits, expected_logits) < 1e-4


@pytest.mark.parametrize("prompt_len", [2, 5])
def test_vortex_cache_is_wrong_for_prompts_shorter_than_six(model, prompt_len):
    """vortex's bug, documented: ``HyenaInferenceEngine.step_fir`` uses taps
    ``weight[..., :cache + 1]`` of an unflipped (conv1d-ordered) FIR filter shorter than 128,
    right only once the cache holds ``length - 1`` inputs: the 7-tap Hyena-SE filters need a
    prompt of at least 6 tokens (the 3-tap featurizer filters, 2). The prefill's logits are
    right; those of the decoded tokens are not, even against the full forward over the very
    tokens the cache decoded (teacher forcing)."""
    prompt = torch.randint(0, 512, (1, prompt_len), generator=torch.Generator().manual_seed(3))
    tokens, cached = vr.vortex_cached_decode(model, prompt, 4)
    full = vr.vortex_logits(model, torch.cat([prompt, tokens[:, :-1]], 1))[:, prompt_len - 1 :]
    assert rel_err(cached[:, :1], full[:, :1]) < 1e-4
    assert rel_err(cached, full) > 1e-3
    _, recomputed = vr.vortex_recompute_greedy(model, prompt, 4)
    assert rel_err(cached, recomputed) > 1e-3


def test_shards_and_fp8_extra_state_load(config, checkpoint, model, tmp_path, capsys):
    ids = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(4))
    expected = vr.vortex_logits(model, ids)
    hyena = [i for i, kind in enumerate(vr.layer_kinds(config)) if kind != "attn"]
    extra = {f"blocks.{i}.projections._extra_state" for i in hyena}
    for style, shards in (("te2", 3), ("te1", 0)):
        directory = vr.write_checkpoint(
            tmp_path / style, config, seed=1, fp8_extra_state=style, shards=shards
        )
        names = sorted(os.listdir(directory))
        if shards:
            assert names == ["config.yml"] + [f"evo2_tiny.pt.part{k}" for k in range(shards)]
        state = _load_state(directory)
        assert {k for k in state if k.endswith("_extra_state")} == extra
        value = state[min(extra)]
        assert isinstance(value, io.BytesIO)
        nested = torch.serialization.get_unsafe_globals_in_checkpoint(value)
        recipe = "transformer_engine.common.recipe."
        names = {recipe + n for n in ("DelayedScaling", "Format", "_FormatHelper")}
        assert set(nested) == (names if style == "te2" else set())
        capsys.readouterr()
        loaded = vr.load_vortex(directory)
        printed = capsys.readouterr().out
        assert "Keys missing" not in printed  # the extra states are dropped without TE
        assert torch.equal(vr.vortex_logits(loaded, ids), expected)
    if len(vr._safe_globals()) == 1:  # no Transformer Engine: its stand-in is gone again
        assert "transformer_engine" not in sys.modules


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_stand_in_matches_vortex_torch_rotary(interleaved):
    from vortex.model.rotary import apply_rotary_emb_torch

    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 2, 16, generator=g)
    angles = torch.outer(torch.arange(20.0), torch.rand(6, generator=g))  # rotary_dim 12 < 16
    cos, sin = angles.cos(), angles.sin()
    offsets = torch.tensor([0, 4, 13])  # row 2 runs past the table: rows 20.. unrotated
    out = vr.apply_rotary_torch(x, cos, sin, offsets, interleaved=interleaved)
    for b, offset in enumerate(offsets.tolist()):
        n = min(7, 20 - offset)
        table = cos[offset : offset + n], sin[offset : offset + n]
        rows = apply_rotary_emb_torch(x[b : b + 1, :n], *table, interleaved)
        torch.testing.assert_close(out[b : b + 1, :n], rows)
        torch.testing.assert_close(out[b, n:], x[b, n:])
    same = vr.apply_rotary_torch(x, cos, sin, 4, interleaved=interleaved)
    torch.testing.assert_close(same[1], out[1])
    y = x.clone()
    assert vr.apply_rotary_torch(y, cos, sin, 4, interleaved=interleaved, inplace=True) is y
    torch.testing.assert_close(y, same)
    back = vr.apply_rotary_torch(y, cos, sin, 4, interleaved=interleaved, conjugate=True)
    torch.testing.assert_close(back, x)
    packed = torch.cat([x[0], x[1, :5]])  # variable lengths 7 and 5, offsets 0 and 4
    cu_seqlens = torch.tensor([0, 7, 12])
    varlen = vr.apply_rotary_torch(packed, cos, sin, offsets[:2], cu_seqlens, 7, interleaved)
    torch.testing.assert_close(varlen, torch.cat([out[0], out[1, :5]]))
