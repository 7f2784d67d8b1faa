"""The benchmarks by name and their presets: named sets of option values (``--preset``).

:data:`BENCHMARKS` maps each ``futurefill bench`` subcommand (but ``serve`` and ``all``) to its
:class:`~futurefill.bench.common.Benchmark`; :data:`PRESETS` maps a preset's name to the values it
gives each benchmark's config fields. An option given beside ``--preset`` wins over the preset,
which wins over the field's default.
"""

from __future__ import annotations

from typing import Any

from futurefill.bench import fork, layer, model

__all__ = ["BENCHMARKS", "PRESETS", "pow2"]


def pow2(lo: int, hi: int) -> tuple[int, ...]:
    """``2**lo, ..., 2**hi``."""
    return tuple(2**k for k in range(lo, hi + 1))


BENCHMARKS = {b.name: b for b in (layer.LAYER, layer.PROMPT, model.MODEL, model.CONTEXT, fork.FORK)}


# Presets. quick: `make demo`, well under a minute and a half on two CPU cores.
# full: the FutureFill methods reach L = 2^18 (128 channels, batch 1, float32, every core); naive
# and recompute stop where one run is projected past the budget (naive reaches 2^16 on 2 cores).
# Its prompt grid reaches P = 2^16; its context sweep decodes K = 256 tokens after prompts of up
# to 2^15 tokens (the ConvLM of the project target); its fork run draws 16 samples of 256 tokens
# from one prompt of 2^15 DNA tokens (the HyenaDNA-small-32k shape: the fork options' defaults;
# about 10 minutes on 2 cores, the budget leaving separate and repeated at one run each), and
# through `futurefill serve` too (the server way: a cold request, a prefix-cache hit, then the 16
# samples; about 2 minutes more). The quick preset leaves the server out.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "layer": {"lengths": pow2(8, 12), "repeats": 3, "budget": 2.0, "warmup_len": 128},
        "prompt": {"prompt_lens": (256, 2048), "gen_lens": (256, 1024), "budget": 2.0},
        "model": {
            "lengths": pow2(6, 8),
            "mixers": ("stu_tensordot", "hyena"),
            "repeats": 1,
            "budget": 3.0,
        },
        "context": {"prompt_lens": (128, 512), "new_tokens": 32, "repeats": 1, "budget": 3.0},
        "fork": {"prompt_lens": (1024,), "new_tokens": 32, "samples": 4, "repeats": 1},
    },
    "full": {
        "layer": {"lengths": pow2(8, 18), "repeats": 3, "budget": 250.0, "slope_from": 2**12},
        "prompt": {
            "prompt_lens": (1024, 4096, 16384, 65536),
            "gen_lens": (1024, 4096, 16384),
            "budget": 200.0,
        },
        "model": {"lengths": pow2(7, 13), "repeats": 1, "budget": 60.0},
        "context": {
            "prompt_lens": (2**10, 2**12, 2**14, 2**15),
            "new_tokens": 256,
            "methods": ("naive", "epoched", "continuous"),
            "mixers": ("stu_tensordot",),
            "d_model": 128,
            "n_layers": 4,
            "repeats": 3,
            "budget": 60.0,
        },
        "fork": {
            "prompt_lens": (32768,),
            "new_tokens": 256,
            "samples": 16,
            "methods": (*fork.WAYS, "server"),
            "budget": 300.0,
        },
    },
    # A HyenaDNA-large-1m-shaped model (random weights) decoding after long DNA prompts, against
    # recompute (a full forward per token: the Hugging Face port's generate()). Its tolerance is
    # wider than float32's 1e-4 for the reason given beside it.
    "hyenadna": {
        "context": {
            "prompt_lens": pow2(12, 17),  # 2^18 needs more than this machine's 24 GiB
            "new_tokens": 16,
            "methods": ("naive", "epoched", "continuous", "compiled", "recompute"),
            "mixers": ("hyenadna",),
            "d_model": 256,
            "n_layers": 8,
            "vocab_size": 16,
            "repeats": 1,
            "budget": 400.0,
            # The float32 forward itself (every method alike: its prefill FFT) is 5.7e-5 from
            # float64 at P = 2^15, 8.1e-5 at 2^16, 1.06e-4 at 2^17: growing like sqrt(P).
            "tol": 3e-4,
        },
    },
}
