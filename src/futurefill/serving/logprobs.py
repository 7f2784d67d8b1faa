"""Log-probabilities as the OpenAI completions API reports them (``choices[i].logprobs``), and
their computation from a model's logits.

For each token: its text (``tokens``), its log-probability under the model
(``token_logprobs``: ``log_softmax`` of the logits it was chosen from, before temperature,
top-k/top-p or banned tokens, as vLLM reports by default), the ``k`` most likely tokens'
(``top_logprobs``: a dict token text -> log-probability, the chosen token always included, so
``k + 1`` entries where it is not among the ``k``) and where its text starts in the choice's
text (``text_offset``, in characters). A prompt's first token has no log-probability (None).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Logprobs", "TokenScores", "score_tokens"]


@dataclass
class Logprobs:
    """The ``logprobs`` object of a choice (or of a streamed chunk: the tokens it covers)."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, other: Logprobs) -> None:
        self.tokens += other.tokens
        self.token_logprobs += other.token_logprobs
        self.top_logprobs += other.top_logprobs
        self.text_offset += other.text_offset

    def as_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }


@dataclass(frozen=True)
class TokenScores:
    """Host values for tokens: each chosen token's log-probability, and the ``k`` most likely
    ``(id, log-probability)`` pairs (largest first) where ``k`` was asked."""

    chosen: list[float]
    top: list[list[tuple[int, float]]]


def score_tokens(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> TokenScores:
    """``logits`` ``(m, vocab)``, the ``chosen`` ids ``(m,)``: their log-probabilities and the
    ``k`` (>= 0) most likely tokens' of each row, in one host transfer each. Computed in float64
    for float64 logits, else float32."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logprobs = torch.log_softmax(logits.to(dtype), dim=-1)
    picked = logprobs.gather(-1, chosen.long()[:, None])[:, 0].tolist()
    if k == 0:
        return TokenScores(picked, [[] for _ in picked])
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
    rows = zip(ids.tolist(), values.tolist(), strict=True)
    return TokenScores(picked, [list(zip(i, v, strict=True)) for i, v in rows])
