"""The independent float64 references every fast path is checked against, and test inputs."""

from __future__ import annotations

import numpy as np
import torch


def reference_conv(u: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Causal convolution in float64 with numpy.convolve: u (B, D, L), h (D, F) -> (B, D, L)."""
    u = np.asarray(u, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    length = u.shape[-1]
    out = np.empty(u.shape, dtype=np.float64)
    for b in range(u.shape[0]):
        for d in range(u.shape[1]):
            out[b, d] = np.convolve(u[b, d], h[d])[:length]
    return out


def decaying_filter(channels: int, filter_len: int, dtype=torch.float64, seed: int = 0):
    """Random filters with a slow decay, as long-convolution models learn them."""
    gen = torch.Generator().manual_seed(seed)
    decay = 1.0 / (1.0 + 0.05 * torch.arange(filter_len, dtype=torch.float64))
    h = torch.randn(channels, filter_len, generator=gen, dtype=torch.float64) * decay
    return h.to(dtype)


def random_input(batch: int, channels: int, length: int, dtype=torch.float64, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, length, generator=gen, dtype=torch.float64).to(dtype)


def rel_err(actual, expected) -> float:
    """Largest absolute difference relative to the largest reference magnitude (tensors on any
    device, or arrays)."""
    actual, expected = (
        x.detach().cpu().double() if isinstance(x, torch.Tensor) else x for x in (actual, expected)
    )
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(initial=0.0), 1e-300)
    return float(np.abs(actual - expected).max(initial=0.0) / scale)


def reference_feedback(
    u0: np.ndarray, h: np.ndarray, length: int, prompt: np.ndarray | None = None
):
    """Plain-loop float64 generation with feedback ``u[t+1] = tanh(y[t])``.

    u0 (B, D): first generated input (used when there is no prompt); prompt (B, D, P) or None.
    Returns (inputs, outputs), each (B, D, length): the whole sequence, prompt included.
    """
    h = np.asarray(h, dtype=np.float64)
    batch, channels = u0.shape
    u = np.zeros((batch, channels, length))
    y = np.zeros((batch, channels, length))
    start = 0
    if prompt is not None:
        start = prompt.shape[-1]
        u[..., :start] = prompt
    for t in range(length):
        if t >= start:
            u[..., t] = u0 if t == 0 else np.tanh(y[..., t - 1])
        y[..., t] = np.einsum("bds,ds->bd", u[..., : t + 1], h[:, t::-1])
    return u, y


def decode_chunks(
    module, x, prompt_len: int, method: str = "continuous", *, max_len=None, chunk: int = 1, **opts
):
    """Decode ``x`` (batch, T, ...) through ``module`` in a fresh session: ``x[:, :prompt_len]``
    as one chunk (none if 0), then chunks of ``chunk`` positions. Returns the outputs joined
    along dim 1 and the session (closed)."""
    from futurefill import decoding

    length = x.shape[1]
    with (
        torch.no_grad(),
        decoding(
            module, batch_size=x.shape[0], max_len=max_len or length, method=method, **opts
        ) as session,
    ):
        outputs = [session.feed(x[:, :prompt_len])] if prompt_len else []
        for t in range(prompt_len, length, chunk):
            outputs.append(session.feed(x[:, t : t + chunk]))
        assert session.positions.tolist() == [length] * x.shape[0]
    return torch.cat(outputs, dim=1), session


def tiny_lm(mixer: str = "hyena", seed: int = 0, max_len: int = 64, vocab: int = 32):
    """A float64 ConvLM of width 8 and 2 layers, its embedding and head unit-scale and untied
    (varied greedy tokens, not copies of the last one): the decoders' tests' model."""
    from futurefill import ConvLM, ConvLMConfig

    torch.manual_seed(seed)
    config = ConvLMConfig(
        vocab_size=vocab,
        d_model=8,
        n_layers=2,
        max_len=max_len,
        mixer=mixer,
        hyena_filter_order=8,
        hyena_emb_dim=5,
        num_eigh=6,
        tie_embeddings=False,
    )
    model = ConvLM(config).double().eval()
    with torch.no_grad():
        model.embed.weight.normal_()
        model.head.weight.normal_()
    return model


def hybrid_lm(shape: str, vocab: int = 32):
    """A float64 hybrid ConvLM of width 16 and 2 layers (``flash_stu`` with a sliding window of
    5, or ``striped_hyena``): attention caches and rotary positions beside the convolutions."""
    from futurefill import ConvLM, ConvLMConfig

    torch.manual_seed(4)
    window = 5 if shape == "flash_stu" else None
    config = ConvLMConfig.hybrid(
        shape, vocab_size=vocab, d_model=16, n_layers=2, max_len=64, attention_window=window
    )
    return ConvLM(config).double().eval()


def alone(model, prompt: str, n: int, temperature: float = 1.0, seed: int | None = None) -> str:
    """The text generate() gives ``prompt`` by itself with the bundled byte model: greedy, or
    sampled at ``temperature`` from a generator seeded with ``seed`` (a server's request with
    that seed). What every serving test compares a completion with."""
    from futurefill import generate
    from futurefill.demo.data import decode, encode

    options = {}
    if seed is not None:
        options = {
            "do_sample": True,
            "temperature": temperature,
            "generator": torch.Generator().manual_seed(seed),
        }
    return decode(generate(model, encode(prompt)[None], n, **options)[0])
