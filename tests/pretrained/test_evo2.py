"""Evo 2 checkpoints (vortex's file format) against vortex itself, run on the CPU on tiny
random-weight checkpoints written in the real layout (tests/vortex_reference.py)."""

from __future__ import annotations

import pytest
import torch
import yaml

import futurefill
import vortex_reference as vr
from futurefill.online import ENGINES
from futurefill.pretrained import CheckpointError, detect_format, load_pretrained
from futurefill.pretrained.evo import evo2_config
from futurefill.pretrained.striped_hyena import StripedHyena
from futurefill.testing import assert_decoding_matches_forward

pytestmark = pytest.mark.skipif(not vr.vortex_available(), reason="vortex (vtx) not installed")

FLOAT32_RTOL = 1e-4  # relative to the logits' scale


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The 7B pattern scaled down (SE, MR, LI, attention, ...; 8 layers, width 64)."""
    return vr.write_checkpoint(tmp_path_factory.mktemp("evo2"), vr.scaled_config("7b"), seed=1)


@pytest.fixture(scope="module")
def vortex_model(checkpoint):
    return vr.load_vortex(checkpoint)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_pretrained(checkpoint)


def test_the_directory_is_detected_as_evo2(checkpoint):
    assert detect_format(checkpoint) == "evo2"
    assert isinstance(load_pretrained(checkpoint), StripedHyena)


@pytest.mark.parametrize(
    "layout",
    [
        {},  # the public models' layout: interleaved, thirds, no flip, per-head Wqkv
        {"interleave": False, "column_split_hyena": True, "hyena_flip_x1x2": True},
        {"column_split": False, "qkv_proj_bias": True, "short_filter_bias": True},
        {"hcm_filter_length": 16, "evo2_style_activations": False, "mlp_activation": "silu"},
    ],
    ids=["public", "per-head-flipped", "plain-wqkv-biases", "short-mr-silu"],
)
def test_logits_match_vortex(tmp_path, layout):
    config = vr.scaled_config("7b", **layout)
    vr.write_checkpoint(tmp_path, config, seed=2)
    ids = torch.randint(0, 512, (2, 37), generator=torch.Generator().manual_seed(0))
    expected = vr.vortex_logits(vr.load_vortex(tmp_path), ids)
    with torch.no_grad():
        ours = load_pretrained(tmp_path)(ids)
    assert relative_error(ours, expected) < FLOAT32_RTOL


@pytest.mark.parametrize("name", ["1b", "40b"])
def test_other_public_shapes_match_vortex(tmp_path, name):
    config = vr.scaled_config(name, num_layers=8, hidden_size=48, num_heads=4)
    vr.write_checkpoint(tmp_path, config, seed=3)
    ids = torch.randint(0, 512, (1, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = load_pretrained(tmp_path)(ids)
    assert relative_error(ours, vr.vortex_logits(vr.load_vortex(tmp_path), ids)) < FLOAT32_RTOL


def test_float64_is_vortex_to_float32_rounding(checkpoint, vortex_model):
    ids = torch.randint(0, 512, (2, 33), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = load_pretrained(checkpoint, dtype=torch.float64)(ids)
    assert ours.dtype == torch.float64
    assert relative_error(ours, vr.vortex_logits(vortex_model, ids)) < FLOAT32_RTOL


def test_bfloat16_keeps_poles_in_float32_and_stays_close(checkpoint, vortex_model):
    model = load_pretrained(checkpoint, dtype=torch.bfloat16)
    poles = [p for name, p in model.named_parameters() if name.endswith("log_poles")]
    assert poles and all(p.dtype == torch.float32 for p in poles)
    ids = torch.randint(0, 512, (1, 25), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(ids)
    assert ours.dtype == torch.bfloat16
    assert relative_error(ours, vr.vortex_logits(vortex_model, ids)) < 0.1  # bf16: 8 bits


@pytest.mark.parametrize("prompt_len", [1, 2, 3, 5, 6, 7, 13, 40])
def test_greedy_decoding_equals_vortex_recomputed(model, vortex_model, prompt_len):
    """Each token equals recomputing vortex's full forward at every step, including after the
    prompts shorter than 6 tokens where vortex's own cache goes wrong."""
    prompt = torch.randint(0, 512, (1, prompt_len), generator=torch.Generator().manual_seed(4))
    steps = 8
    expected, _ = vr.vortex_recompute_greedy(vortex_model, prompt, steps)
    for method in ("modal", "continuous"):
        out = futurefill.generate(model, prompt, max_new_tokens=steps, method=method)
        assert out.tolist() == expected.tolist(), method


def test_vortex_cache_is_wrong_after_a_short_prompt(model, vortex_model):
    """What the issue reported, kept as a fact of the reference: vortex's cached logits after a
    2-token prompt are far from its own full forward; ours are the forward's to rounding."""
    prompt = torch.randint(0, 512, (1, 2), generator=torch.Generator().manual_seed(5))
    tokens, cached = vr.vortex_cached_decode(vortex_model, prompt, 2)
    full = vr.vortex_logits(vortex_model, torch.cat([prompt, tokens[:, :1]], dim=1))[:, -1]
    assert relative_error(cached[:, 1], full) > 1e-3
    with futurefill.decoding(model, batch_size=1, max_len=8, method="modal") as session:
        session.feed(prompt)
        ours = session.feed(tokens[:, :1])[:, -1]
    assert relative_error(ours, full) < FLOAT32_RTOL


def test_decoding_matches_the_forward_with_every_method(model):
    ids = torch.randint(0, 512, (3, 30), generator=torch.Generator().manual_seed(6))
    assert_decoding_matches_forward(model, ids, methods=tuple(ENGINES), prompt_lens=[1, 4, 17])


def test_a_ragged_batch_equals_each_row_alone(model):
    prompts = [
        torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(n)) for n in (1, 9, 4)
    ]
    padded = torch.zeros(3, 9, dtype=torch.long)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = p
    lengths = [len(p) for p in prompts]
    together = futurefill.generate(
        model, padded, prompt_lengths=lengths, max_new_tokens=6, method="modal"
    )
    for i, p in enumerate(prompts):
        alone = futurefill.generate(model, p[None], max_new_tokens=6, method="modal")
        assert together[i].tolist() == alone[0].tolist()


def test_compiled_steps_give_the_same_tokens(model):
    prompt = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(7))
    eager = futurefill.generate(model, prompt, max_new_tokens=6, method="modal")
    compiled = futurefill.generate(model, prompt, max_new_tokens=6, method="modal", compile=True)
    assert torch.equal(eager, compiled)


@pytest.mark.parametrize("extra", [False, "te1", "te2"])
def test_shards_and_fp8_extra_state_load(tmp_path, checkpoint, model, extra):
    config = yaml.safe_load((checkpoint / "config.yml").read_text())
    vr.write_checkpoint(tmp_path, config, seed=1, shards=3, fp8_extra_state=extra)
    assert sorted(p.name for p in tmp_path.glob("*.part*"))[0].endswith(".pt.part0")
    loaded = load_pretrained(tmp_path)
    for (name, a), (_, b) in zip(
        loaded.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", ["1b", "7b", "40b"])
def test_public_configs_build_on_the_meta_device(name):
    """The full-size models: every checkpoint name and shape vortex's layout gives has its
    place in ours, and nothing of ours is left without one."""
    from futurefill.pretrained.evo import build, evo2_weights

    raw = vr.public_config(name)
    config = evo2_config(raw)
    state = {k: torch.empty(s, device="meta") for k, s in vr.checkpoint_shapes(raw).items()}
    ours, unused = evo2_weights(state, raw, config)
    assert unused == []
    model = build(config, ours, [], name, name)
    assert sum(p.numel() for p in model.parameters()) > 1e9


def write_config(directory, **changes):
    config = yaml.safe_load((directory / "config.yml").read_text())
    config.update(changes)
    (directory / "config.yml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hcs_layer_idxs": [0, 4]}, r"layers \[7\] are in none of"),
        ({"hcm_layer_idxs": [1, 5, 4]}, "layer 4 is in both"),
        ({"attn_layer_idxs": [3, 8]}, "attn_layer_idxs holds 8"),
        ({"hcs_filter_groups": 5}, "hcs_filter_groups must be an int dividing hidden_size=64"),
        ({"proj_groups": 2}, "proj_groups=2 is not supported"),
        ({"inner_mlp_size": 32}, "has shape"),
    ],
)
def test_inconsistent_configs_are_refused_naming_the_field(tmp_path, checkpoint, changes, message):
    for file in checkpoint.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    write_config(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(tmp_path)


def test_unknown_pickled_objects_are_refused(tmp_path, checkpoint):
    import argparse

    (tmp_path / "config.yml").write_bytes((checkpoint / "config.yml").read_bytes())
    state = torch.load(next(checkpoint.glob("*.pt")), weights_only=True)
    state["blocks.0.projections._extra_state"] = argparse.Namespace(a=1)  # not allow-listed
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="not a Transformer Engine"):
        load_pretrained(tmp_path)


def test_missing_or_broken_weights_are_refused(tmp_path, checkpoint):
    (tmp_path / "config.yml").write_bytes((checkpoint / "config.yml").read_bytes())
    with pytest.raises(CheckpointError, match=r"no \.pt weights file"):
        load_pretrained(tmp_path)
    data = next(checkpoint.glob("*.pt")).read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pretrained(tmp_path)
    (tmp_path / "w.pt").unlink()
    (tmp_path / "w.pt.part0").write_bytes(data[:100])
    (tmp_path / "w.pt.part2").write_bytes(data[100:])
    with pytest.raises(CheckpointError, match="none missing"):
        load_pretrained(tmp_path)


def test_sampling_is_the_same_with_the_recurrence_and_futurefill(model):
    prompts = torch.randint(0, 512, (2, 11), generator=torch.Generator().manual_seed(8))
    outs = [
        futurefill.generate(
            model,
            prompts,
            max_new_tokens=12,
            method=method,
            do_sample=True,
            temperature=0.9,
            top_k=50,
            prompt_lengths=[11, 3],
            generator=torch.Generator().manual_seed(0),
        )
        for method in ("modal", "continuous", "naive")
    ]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_the_keys_vortex_ignores_in_real_checkpoints_load(tmp_path, checkpoint, model):
    """The public files carry keys vortex's model lacks (reported in evo2's issues): a tied
    unembedding, savanna's training-time names under blocks.N.mixer., the LI filters' t."""
    (tmp_path / "config.yml").write_bytes((checkpoint / "config.yml").read_bytes())
    state = torch.load(next(checkpoint.glob("*.pt")), weights_only=True)
    state["unembed.weight"] = state["embedding_layer.weight"].clone()
    state["blocks.2.mixer.mixer.filter.t"] = torch.arange(8.0)[None, None]
    state["blocks.3.mixer.dense._extra_state"] = None
    torch.save(state, tmp_path / "w.pt")
    loaded = load_pretrained(tmp_path)
    for (name, a), (_, b) in zip(
        loaded.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_mixed_dtypes_loads_in_its_embeddings_dtype(tmp_path, checkpoint):
    """Evo 2's files are bfloat16 with float32 poles, residues and (7B) MR filters: the model
    comes in the embedding's dtype, its poles and residues kept float32, and runs."""
    (tmp_path / "config.yml").write_bytes((checkpoint / "config.yml").read_bytes())
    state = torch.load(next(checkpoint.glob("*.pt")), weights_only=True)
    state = {
        k: v if k.endswith(("log_poles", "residues", "filter.h")) else v.bfloat16()
        for k, v in state.items()
    }
    torch.save(state, tmp_path / "w.pt")
    model = load_pretrained(tmp_path)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    kept = {n for n in dtypes if n.endswith(("log_poles", "residues"))}
    assert kept and all(dtypes[n] == torch.float32 for n in kept)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if n not in kept)
    with torch.no_grad():
        assert model(torch.randint(0, 512, (1, 9))).dtype == torch.bfloat16
