"""A compiled decoder's step as graphs: the forward compiled once, the scheduled work once per
pattern (what it does), its rows and positions from a tensor (where); on CUDA both captured as
one CUDA graph per pattern and replayed through admissions and releases of rows. Every row gets
the forward's logits over its own sequence (float64), for every method."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch._dynamo.utils import counters

import futurefill.decoder as decoder_module
from futurefill import METHODS, Decoder
from reference import hybrid_lm, rel_err, tiny_lm

VOCAB = 32
OPTIONS = {
    "continuous": {"tile_len": 2},
    "deamortized": {"tile_len": 2},
    "epoched": {"epoch_len": 3},
    "naive": {},
}


def admissions_and_releases(decoder: Decoder, model, seed: int, events: int) -> set:
    """Random admissions (prompts in one or two pieces), compiled steps of every live row and
    releases; every logit checked against the forward of ``model`` over the row's own
    sequence. Returns the plan keys of the compiled steps and the layouts of the states'
    buffers they saw."""
    rng, device, slots = random.Random(seed), decoder.device, decoder.batch_size
    sequences: dict[int, list[int]] = {}
    keys, plan = set(), decoder.session._plan  # (the plans the steps get, recorded)
    layouts = set()

    def recorded(rows):
        keys.add((made := plan(rows)).key)
        layouts.add(decoder.session.traced_layout)
        return made

    decoder.session._plan = recorded
    for _ in range(events):
        free = [r for r in range(slots) if r not in sequences]
        action = rng.random()
        if free and (action < 0.25 or not sequences):
            row = rng.choice(free)
            prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 7))]
            cut = rng.randint(1, len(prompt))
            out = decoder.start(row, torch.tensor(prompt[:cut], device=device))
            if cut < len(prompt):
                out = decoder.extend(row, torch.tensor(prompt[cut:], device=device))
            sequences[row] = [*prompt, int(out.greedy[0])]
        elif sequences and action < 0.35:
            row = rng.choice(sorted(sequences))
            decoder.release(row)
            del sequences[row]
        else:
            live = sorted(r for r, seq in sequences.items() if len(seq) < decoder.max_len)
            if not live:
                continue
            ids = torch.tensor([sequences[r][-1] for r in live], device=device)
            out = decoder.step(ids, live)
            for i, row in enumerate(live):
                expected = model(torch.tensor([sequences[row]]))[0, -1]
                assert rel_err(out.logits[i].cpu(), expected) < 1e-9, (row, len(sequences[row]))
                sequences[row].append(int(out.greedy[i]))
    return keys, layouts


@pytest.mark.parametrize(
    ("method", "mixer"), [*((m, "hyena") for m in METHODS), ("continuous", "flash_stu")]
)
def test_compiled_rows_through_admissions_and_releases(method, mixer, device):
    """Rows admitted into free slots and released at any step (the scheduler's use), the
    compiled steps exact; for continuous the states' buffers never move, so that on CUDA each
    pattern's graph is captured once and replayed through every admission."""
    if device.type == "cuda" and method != "continuous":  # (their exactness: compiled generate)
        pytest.skip("on CUDA the per-row methods' graphs are captured anew at each admission")
    model = tiny_lm(mixer, seed=1) if mixer == "hyena" else hybrid_lm(mixer)
    reference = copy.deepcopy(model)
    model.to(device)
    options = OPTIONS[method]
    with Decoder(
        model, batch_size=3, max_len=40, method=method, compile=True, **options
    ) as decoder:
        keys, layouts = admissions_and_releases(decoder, reference, seed=3, events=70)
        if method == "continuous":  # (the others' work runs on the host)
            levels = {pattern[1] for key in keys for _, _, pattern, _, _ in key}
            assert {2, 4, 8} <= levels
            assert len(layouts) == 1  # the buffers never moved: graphs captured once
            assert decoder._compiled.captures <= len(keys)  # (0 on the CPU: no graphs)


def test_one_compiled_function_per_pattern_on_the_cpu():
    """Lockstep rows to 64 positions with tiles of 4: the forward compiled once, the scheduled
    work once for each of its 5 patterns (levels 4 .. 32, the last tile), and a second decoder
    of another length compiles nothing."""
    model = tiny_lm("hyena", seed=2, max_len=64)
    ids = torch.randint(0, VOCAB, (2, 1), generator=torch.Generator().manual_seed(1))
    frames = counters["frames"]["total"]
    for max_len in (64, 40):
        with Decoder(model, batch_size=2, max_len=max_len, compile=True, tile_len=4) as decoder:
            out = decoder.prefill(ids)
            for _ in range(max_len - 1):
                out = decoder.step(out.greedy)
        if max_len == 64:
            assert counters["frames"]["total"] - frames == 1 + 5
            frames = counters["frames"]["total"]
    assert counters["frames"]["total"] == frames


@pytest.mark.parametrize("method", METHODS)
def test_a_decoder_prefilled_again_compiles_nothing(method):
    """An engine's buffers made by a prefill in inference mode are ordinary tensors, as the first
    ones were: the compiled step's guards hold for the next prefill of the same decoder."""
    model = tiny_lm("hyena", seed=3)
    ids = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(2))
    with Decoder(model, batch_size=1, max_len=24, method=method, compile=True) as decoder:
        for round in range(3):
            if round == 1:
                frames = counters["frames"]["total"]
            out = decoder.prefill(ids)
            for _ in range(12):
                out = decoder.step(out.greedy)
    assert counters["frames"]["total"] == frames


CAPTURED: list = []  # the keys StandInGraph captured


class StandInGraph:
    """What :class:`~futurefill.decoder.CompiledStep` captures as a CUDA graph, on the CPU: the
    forward and the scheduled work bound at "capture" to the plan's buffers then (as a graph
    binds their addresses), run again at each replay."""

    def __init__(self, forward, positions, schedule, plan, ids, pool):
        self.forward, self.positions, self.schedule = forward, positions, schedule
        self.key, self.buffers = plan.key, plan.buffers
        CAPTURED.append(plan.key)

    def replay(self, ids, plan):
        assert plan.key == self.key
        output = self.forward(ids, self.positions)
        if plan.key:
            self.schedule(plan.host_args(), self.buffers)
        return output


@pytest.mark.parametrize("method", ["continuous", "epoched"])
def test_the_graph_path_keeps_its_graphs_while_the_buffers_stay(method, monkeypatch):
    """CompiledStep's CUDA path on the CPU, a stand-in for the graphs: a key runs once
    uncompiled-into-a-graph, is captured at its next step and replayed after; continuous's
    graphs are captured once per key through admissions and releases, the per-row engines'
    anew when a prefill moves their buffers; every logit the forward's."""
    monkeypatch.setattr(decoder_module, "_StepGraph", StandInGraph)
    CAPTURED.clear()
    model = tiny_lm("hyena", seed=4)
    reference = copy.deepcopy(model)
    with Decoder(
        model, batch_size=3, max_len=40, method=method, compile=True, **OPTIONS[method]
    ) as decoder:
        decoder._compiled._pool = ()  # (the CUDA path: a pool of graphs)
        keys, layouts = admissions_and_releases(decoder, reference, seed=5, events=70)
    captured = CAPTURED
    assert () in captured and set(captured) <= keys  # (a key met once is never captured)
    if method == "continuous":  # each key captured once
        assert len(layouts) == 1 and len(set(captured)) == len(captured)
    else:  # a row's prefill moved its engine's buffers: the graphs were captured again
        assert len(layouts) > 1 and captured.count(()) > 1
