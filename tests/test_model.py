"""ConvLM: decoding through its forward in a session gives the parallel forward's logits; the
session life cycle on a whole model; save/load."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill import METHODS, ConvLM, ConvLMConfig, decoding, generate
from futurefill.model import MIXERS
from futurefill.nn.conv import ConvState
from futurefill.pretrained import load_pretrained
from reference import decode_chunks, rel_err

VOCAB, MAX_LEN = 32, 48
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def tiny_model(mixer: str, dtype=torch.float64, seed: int = 0, **overrides) -> ConvLM:
    torch.manual_seed(seed)
    values = dict(
        vocab_size=VOCAB,
        d_model=8,
        n_layers=2,
        max_len=MAX_LEN,
        mixer=mixer,
        mlp_ratio=2,
        num_eigh=6,
        hyena_filter_order=8,
        hyena_emb_dim=5,
    )
    values.update(overrides)
    model = ConvLM(ConvLMConfig(**values)).to(dtype)
    with torch.no_grad():
        model.embed.weight.normal_()  # unit-scale embeddings: logits far from ties
    return model


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mixer", MIXERS)
def test_teacher_forced_decoding_matches_forward(mixer, method, dtype):
    model = tiny_model(mixer, dtype)
    ids = random_ids(2, 23)
    with torch.no_grad():
        expected = model(ids)
    for prompt_len in (0, 9, 23):
        logits, _ = decode_chunks(model, ids, prompt_len, method)
        assert logits.dtype == dtype
        assert rel_err(logits, expected) < TOL[dtype], (prompt_len, rel_err(logits, expected))


@pytest.mark.parametrize("mixer", MIXERS)
def test_bfloat16_decoding_agrees_to_bfloat16_precision(mixer):
    """Half precisions run (engines compute in float32); agreement is at bfloat16 rounding."""
    model = tiny_model(mixer, torch.bfloat16)
    ids = random_ids(2, 20)
    with torch.no_grad():
        expected = model(ids).double()
    logits, _ = decode_chunks(model, ids, 8)
    assert logits.dtype == torch.bfloat16
    assert rel_err(logits.double(), expected) < 3e-2


@settings(max_examples=15)
@given(
    mixer=st.sampled_from(MIXERS),
    method=st.sampled_from(METHODS),
    batch=st.integers(1, 3),
    length=st.integers(1, 30),
    prompt_frac=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_teacher_forced_decoding_random(mixer, method, batch, length, prompt_frac, seed):
    model = tiny_model(mixer, seed=seed)
    ids = random_ids(batch, length, seed)
    prompt_len = round(prompt_frac * length)
    with torch.no_grad():
        expected = model(ids)
    logits, _ = decode_chunks(model, ids, prompt_len, method, max_len=MAX_LEN)
    assert rel_err(logits, expected) < 1e-9


def test_session_life_cycle():
    model = tiny_model("hyena")
    ids = random_ids(3, 12)
    with torch.no_grad(), decoding(model, batch_size=3, max_len=16, tile_len=2) as session:
        assert (session.batch_size, session.max_len, session.method) == (3, 16, "continuous")
        assert session.positions.tolist() == [0, 0, 0] and "positions=[0, 0, 0]" in repr(session)
        feed = session.feed
        first = torch.cat([feed(ids[:, :5])] + [feed(ids[:, t : t + 1]) for t in range(5, 12)], 1)
        assert session.positions.tolist() == [12, 12, 12]
        assert session.positions.dtype == torch.long and session.positions.device.type == "cpu"
        engines = [s.engine for s in session.states.values() if isinstance(s, ConvState)]
        assert len(engines) == 2 * 1  # 2 layers, order 2: 1 long convolution a layer
        assert {e.tile_len for e in engines} == {2}
        nbytes = session.nbytes
        assert nbytes > 0
        session.reset()
        assert session.positions.tolist() == [0, 0, 0] and session.nbytes == nbytes  # kept
        again = torch.cat([feed(ids[:, :5])] + [feed(ids[:, t : t + 1]) for t in range(5, 12)], 1)
        assert torch.equal(again, first)
        session.reset_rows([1])  # row 1 starts anew, rows 0 and 2 go on
        assert session.positions.tolist() == [12, 0, 12]
        row = torch.cat([feed(ids[1:2, :3], rows=[1]), feed(ids[1:2, 3:12], rows=[1])], 1)
        assert rel_err(row, first[1:2]) < 1e-9
        assert session.positions.tolist() == [12, 12, 12]
    assert "closed" in repr(session)
    with torch.no_grad():  # an ordinary module again
        assert rel_err(model(ids), first) < 1e-9


def test_feeding_past_the_session_length_raises_before_anything_moves():
    model = tiny_model("longconv")
    ids = random_ids(2, 5)
    with torch.no_grad():
        expected = model(ids)
    with torch.no_grad(), decoding(model, batch_size=2, max_len=5) as session:
        logits = [session.feed(ids[:, :3])]
        logits.append(session.feed(ids[:1, 3:5], rows=[0]))  # row 0 at max_len, row 1 at 3
        with pytest.raises(ValueError, match="at position 5 of the session's max_len=5: no room"):
            session.feed(torch.tensor([[1], [1]]))
        with pytest.raises(ValueError, match="no room for 3 more"):
            session.feed(torch.tensor([[1, 2, 3]]), rows=[1])
        assert session.positions.tolist() == [5, 3]
        logits.append(session.feed(ids[1:, 3:5], rows=[1]))  # row 1 goes on as if nothing
        session.reset_rows([0])  # a full row restarts
        again = session.feed(ids[:1], rows=[0])
    assert rel_err(torch.cat([logits[0][:1], logits[1]], 1), expected[:1]) < 1e-9
    assert rel_err(torch.cat([logits[0][1:], logits[2]], 1), expected[1:]) < 1e-9
    assert rel_err(again, expected[:1]) < 1e-9


def test_engine_options_reach_every_engine():
    model = tiny_model("stu")
    with (
        torch.no_grad(),
        decoding(model, batch_size=1, max_len=20, method="epoched", epoch_len=3) as session,
    ):
        session.feed(random_ids(1, 4))
        engines = [s.engine for s in session.states.values()]
        assert {e.epoch_len for engine in engines for e in engine.engines} == {3}
    with pytest.raises(ValueError, match="epoch_len applies"):
        decoding(model, batch_size=1, method="continuous", epoch_len=3)


def test_forward_has_gradients():
    model = tiny_model("stu_tensordot")
    model(random_ids(2, 10)).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tied_and_untied_heads():
    tied = tiny_model("longconv")
    assert tied.head.weight is tied.embed.weight
    untied = tiny_model("longconv", tie_embeddings=False)
    assert untied.head.weight is not untied.embed.weight


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_save_load_round_trip_is_bit_identical(tmp_path, mixer, dtype):
    model = tiny_model(mixer, dtype, tie_embeddings=mixer != "hyena")
    ids = random_ids(2, 20)
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_pretrained(tmp_path)
    assert loaded.config == model.config
    assert loaded.embed.weight.dtype == dtype
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(decode_chunks(loaded, ids, 7)[0], decode_chunks(model, ids, 7)[0])


def test_saved_config_is_plain_json(tmp_path):
    tiny_model("hyena", hyena_order=3).save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mixer"] == "hyena" and saved["hyena_order"] == 3 and saved["vocab_size"] == VOCAB


def test_stu_filters_are_float64_exact_after_casting_up():
    from futurefill.layers import spectral_filters

    model = tiny_model("stu").float().double()
    stu = model.blocks[0].mixer
    assert torch.equal(stu.filters[:6], spectral_filters(MAX_LEN, 6))


# ---------------------------------------------------------------------- errors


def test_config_errors():
    with pytest.raises(ValueError, match="unknown mixer 'mamba'"):
        ConvLMConfig(mixer="mamba")
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        ConvLMConfig(d_model=0)
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        ConvLMConfig(max_len=2.5)
    with pytest.raises(ValueError, match="num_eigh must be in"):
        ConvLMConfig(max_len=8, num_eigh=9)
    with pytest.raises(ValueError, match=r"unknown ConvLMConfig fields \['d_modle'\]"):
        ConvLMConfig.from_dict({"d_modle": 8})


def test_int32_ids_work():
    model = tiny_model("longconv")
    ids = random_ids(2, 9)
    with torch.no_grad():
        assert torch.equal(model(ids.int()), model(ids))


def test_bad_ids_are_rejected():
    model = tiny_model("longconv")
    with pytest.raises(TypeError, match="integer dtype"):
        model(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="integer dtype"):
        model(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 32\)"):
        model(torch.tensor([[1, 32]]))
    with pytest.raises(ValueError, match=r"token ids in \[-1, 1\]"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="shape \\(batch, length\\)"):
        model(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="exceeds max_len=48"):
        model(torch.zeros(1, MAX_LEN + 1, dtype=torch.long))
    ids = random_ids(2, 6)
    with torch.no_grad():
        expected = model(ids)
    with torch.no_grad(), decoding(model, batch_size=2, max_len=10) as session:
        logits = [session.feed(ids[:, :2])]
        rejected = [
            (lambda: session.feed(torch.zeros(2, 9, dtype=torch.long)), "no room for 9 more"),
            (
                lambda: session.feed(torch.zeros(3, 4, dtype=torch.long)),
                "the chunk has a batch of 3; batch_size=2",
            ),
            (lambda: session.feed(ids[:, 2:3], rows=[1]), "the chunk has a batch of 2"),
            (lambda: session.feed(ids[:, 2:3], rows=[0, 2]), r"rows must be ints in \[0, 2\)"),
            (lambda: session.feed(torch.zeros(2, 1)), "integer dtype"),
            (lambda: session.feed(torch.tensor([[0], [99]])), "outside the vocabulary"),
            (lambda: session.feed(torch.zeros(2, 0, dtype=torch.long)), "at least one position"),
            (lambda: model(ids[:, 2:3]), r"call the model through it \(session\.feed\)"),
        ]
        for call, match in rejected:
            with pytest.raises((TypeError, ValueError, RuntimeError), match=match):
                call()
            assert session.positions.tolist() == [2, 2]  # a rejected input changes nothing
        logits.append(session.feed(ids[:, 2:6]))
        assert session.positions.tolist() == [6, 6]
    assert rel_err(torch.cat(logits, dim=1), expected) < 1e-9  # as if it never happened


def test_bad_session_arguments_are_rejected():
    model = tiny_model("longconv")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        decoding(model, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        decoding(model, batch_size=2.7)
    with pytest.raises(ValueError, match="exceeds the model's max_len 48"):
        decoding(model, batch_size=1, max_len=MAX_LEN + 1)
    with pytest.raises(TypeError, match="max_len must be an int"):
        decoding(model, batch_size=1, max_len=3.9)
    with pytest.raises(ValueError, match="unknown method"):
        decoding(model, batch_size=1, method="fastest")


def test_a_dtype_change_during_a_session_is_reported_in_model_terms():
    model = tiny_model("longconv", torch.float32)
    ids = random_ids(1, 6)
    with torch.no_grad():
        expected = model(ids)
    with torch.no_grad(), decoding(model, batch_size=1, max_len=10) as session:
        logits = [session.feed(ids[:, :4])]
        model.double()
        with pytest.raises(RuntimeError, match="dtype or device changed during the session"):
            session.feed(ids[:, 4:5])
        assert session.positions.tolist() == [4]
        model.float()  # back: the session goes on as if the call never happened
        logits.append(session.feed(ids[:, 4:6]))
    assert rel_err(torch.cat(logits, dim=1), expected) < TOL[torch.float32]


@pytest.mark.parametrize(
    ("hybrid", "fields"),
    [
        ("flash_stu", {"attention_window": 5}),  # window below the prompt
        ("flash_stu", {"attention_window": 10}),  # at it
        ("flash_stu", {"attention_window": 64, "attention_heads": 2}),  # above everything
        ("striped_hyena", {}),  # rotary GQA
        ("striped_hyena", {"attention_kv_heads": None, "attention_every": 3}),  # MHA
    ],
)
def test_hybrids_decode_as_their_forward_with_every_method(hybrid, fields):
    from futurefill.testing import assert_decoding_matches_forward

    torch.manual_seed(3)
    config = ConvLMConfig.hybrid(
        hybrid, vocab_size=VOCAB, d_model=16, n_layers=4, max_len=64, num_eigh=6,
        hyena_filter_order=8, hyena_emb_dim=5, **fields,
    )  # fmt: skip
    model = ConvLM(config).double().eval()
    ids = torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(4))
    assert_decoding_matches_forward(model, ids, prompt_lens=(0, 1, 10, 20))
    kinds = [type(block.mixer).__name__ for block in model.blocks]
    every = config.attention_every
    assert kinds.count("Attention") == len(kinds) // every


def test_hybrid_generation_equals_recomputing_the_forward():
    torch.manual_seed(5)
    config = ConvLMConfig.hybrid(
        "flash_stu", vocab_size=VOCAB, d_model=16, n_layers=2, max_len=64, num_eigh=6,
        attention_window=4,
    )  # fmt: skip
    model = ConvLM(config).double().eval()
    with torch.no_grad():
        model.embed.weight.normal_()
    prompts = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(6))
    tokens = generate(model, prompts, 25, prompt_lengths=[7, 3])
    for row, length in enumerate((7, 3)):
        ids = prompts[row : row + 1, :length]
        for _ in range(25):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(tokens[row], ids[0, length:])


def test_unknown_hybrid_and_bad_attention_fields():
    with pytest.raises(ValueError, match="unknown hybrid 'mamba'"):
        ConvLMConfig.hybrid("mamba")
    with pytest.raises(ValueError, match="heads must divide d_model"):
        ConvLMConfig.hybrid("striped_hyena", d_model=30, attention_heads=4)
    with pytest.raises(ValueError, match="mlp must be 'gelu' or 'swiglu'"):
        ConvLMConfig(mlp="relu")
