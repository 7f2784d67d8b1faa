"""``futurefill bench model`` and ``bench context``: runs, writes valid files, records skips, fails
on wrong logits, compares greedy tokens across methods."""

import pytest
import torch

pytest.importorskip("futurefill.model")

from futurefill.bench import model as model_bench

SHAPE = "--d-model 8 --n-layers 1 --vocab-size 16 --warmup-len 4"
TINY = tuple(f"bench model --lengths 8 16 32 --mixers longconv hyena {SHAPE}".split())


class _Off:
    """Logits off by ``rel`` of their size, in the prefill and every step (the argmax, hence the
    tokens, unchanged)."""

    def __init__(self, stepper, rel):
        self.stepper, self.rel = stepper, rel

    @property
    def nbytes(self):
        return self.stepper.nbytes

    def prefill(self, ids):
        return self._off(self.stepper.prefill(ids))

    def step(self, ids_t):
        return self._off(self.stepper.step(ids_t))

    def _off(self, out):
        return out._replace(logits=out.logits * (1 + self.rel))

    def close(self):
        self.stepper.close()


def test_model_runs_and_writes_json_csv_png(bench, out_dir):
    assert bench.run_cli(*TINY, "--repeats", "2", "--out", str(out_dir)) == 0
    report = bench.read_json(out_dir / "model.json")
    rows = report["rows"]
    assert len(rows) == 2 * 3 * len(model_bench.MODEL_METHODS)
    for r in rows:
        assert r["status"] == "ok", r
        assert r["tokens_per_s"] > 0 and r["peak_cache_bytes"] > 0
        assert r["max_rel_err"] <= r["tol"]
        # every token timed: the per-token latency of generation
        assert 0 < r["step_median_s"] <= r["step_p999_s"] <= r["step_max_s"] < r["total_s"] * 2
        assert 1 <= r["step_max_at"] < r["L"] and len(r["trace"]) == r["L"] - 1
        assert r["first_token_s"] > 0
    assert set(report["slopes"]) == {"longconv", "hyena"}
    assert {(r["mixer"], r["numerator"], r["denominator"]) for r in report["ratios"]} >= {
        ("hyena", "naive", "continuous")
    }
    csv_rows = bench.read_csv(out_dir / "model.csv")
    assert len(csv_rows) == len(rows) and all(float(r["tokens_per_s"]) > 0 for r in csv_rows)
    assert bench.read_csv(out_dir / "model_per_position.csv")
    assert "### mixer hyena" in (out_dir / "model_table.md").read_text()
    for name in (
        "model_tokens_per_s",
        "model_time_per_token",
        "model_cache_bytes",
        "model_step_latency",
    ):
        bench.assert_png(out_dir / f"{name}.png")


def test_model_skips_over_budget_and_records_it(bench, out_dir):
    code = bench.run_cli(
        *TINY, "--methods", "recompute", "--budget", "1e-9", "--out", str(out_dir), "--no-plots"
    )
    assert code == 0
    rows = bench.read_json(out_dir / "model.json")["rows"]
    assert [r["status"] == "ok" for r in rows] == [True, False, False] * 2
    assert all(r["status"].startswith("skipped (projected") for r in rows if r["L"] > 8)


def test_model_agreement_check_fails_loudly_on_wrong_method(bench, out_dir, monkeypatch, capsys):
    make = model_bench.MODEL_STEPPERS["epoched"]
    monkeypatch.setitem(
        model_bench.MODEL_STEPPERS, "epoched", lambda m, n, b: _Off(make(m, n, b), 1e-3)
    )
    code = bench.run_cli(*TINY, "--methods", "naive", "epoched", "--out", str(out_dir))
    assert code == 1
    assert "AGREEMENT CHECK FAILED" in capsys.readouterr().err
    status = {
        (r["mixer"], r["method"], r["L"]): r["status"]
        for r in bench.read_json(out_dir / "model.json")["rows"]
    }
    assert status[("longconv", "epoched", 8)].startswith("FAILED")
    assert status[("hyena", "epoched", 32)].startswith("not run")
    assert status[("hyena", "naive", 32)] == "ok"


def test_model_float64_tight_tolerance(bench, out_dir):
    code = bench.run_cli(
        *TINY, "--methods", "continuous", "--dtype", "float64", "--out", str(out_dir), "--no-plots"
    )
    assert code == 0
    report = bench.read_json(out_dir / "model.json")
    assert report["tol"] == 1e-9 and report["max_rel_err"] < 1e-12


def test_compiled_steppers_agree_with_the_float64_forward(bench, out_dir):
    """Every compiled stepper (continuous, epoched and deamortized engines) through the harness,
    past several tile ends and epoch refills."""
    compiled = ("compiled", "compiled-epoched", "compiled-deamortized")
    argv = (*TINY[:3], "32", "--mixers", "longconv", *TINY[9:], "--methods", *compiled)
    assert bench.run_cli(*argv, "--out", str(out_dir)) == 0
    rows = bench.read_json(out_dir / "model.json")["rows"]
    assert {r["method"] for r in rows} == set(compiled)
    assert all(r["status"] == "ok" and r["max_rel_err"] <= r["tol"] for r in rows)


CONTEXT_TINY = tuple(
    f"bench context --prompt-lens 8 16 32 --new-tokens 8 --mixers longconv {SHAPE}".split()
)


def test_context_runs_and_writes_json_csv_png(bench, out_dir):
    methods = ("naive", "epoched", "continuous", "recompute")
    code = bench.run_cli(
        *CONTEXT_TINY, "--methods", *methods, "--repeats", "2", "--out", str(out_dir)
    )
    assert code == 0
    report = bench.read_json(out_dir / "context.json")
    rows = report["rows"]
    assert [(r["P"], r["method"]) for r in rows] == [(p, m) for p in (8, 16, 32) for m in methods]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["K"] == 8 and r["tokens_per_s"] > 0 and r["prefill_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(8 / r["decode_s"])
        assert r["peak_cache_bytes"] >= r["cache_bytes_after_prefill"] > 0
        assert r["max_rel_err"] <= r["tol"] and r["tokens_match"] is True
        assert [c[:2] for c in r["chunks"]] == [[r["P"], r["P"] + 8]]
    # The naive cache grows with the context; the continuous one does not depend on it.
    naive = {r["P"]: r["cache_bytes_after_prefill"] for r in rows if r["method"] == "naive"}
    assert naive[8] < naive[16] < naive[32]
    ratios = {(r["numerator"], r["denominator"]): r for r in report["ratios"]}
    assert ratios[("naive", "continuous")]["P"] == 32
    assert ratios[("naive", "epoched")]["ratio"] > 0
    csv_rows = bench.read_csv(out_dir / "context.csv")
    assert len(csv_rows) == len(rows) and all(float(r["tokens_per_s"]) > 0 for r in csv_rows)
    table = (out_dir / "context_table.md").read_text()
    assert (
        "### mixer longconv" in table
        and "naive/continuous decode time at the largest size" in table
    )
    for name in ("context_tokens_per_s", "context_prefill_time", "context_cache_bytes"):
        bench.assert_png(out_dir / f"{name}.png")


def test_context_skips_over_budget_and_records_it(bench, out_dir):
    code = bench.run_cli(
        *CONTEXT_TINY, "--methods", "naive", "--budget", "1e-9", "--out", str(out_dir), "--no-plots"
    )
    assert code == 0
    rows = bench.read_json(out_dir / "context.json")["rows"]
    assert [r["status"] == "ok" for r in rows] == [True, False, False]
    assert all(r["status"].startswith("skipped (projected") for r in rows[1:])
    assert all(r["projected_s"] > 1e-9 and r["repeats"] == 0 for r in rows[1:])
    assert bench.read_csv(out_dir / "context.csv")[1]["status"].startswith("skipped")


def test_context_agreement_check_fails_loudly_on_wrong_method(bench, out_dir, monkeypatch, capsys):
    make = model_bench.MODEL_STEPPERS["epoched"]
    monkeypatch.setitem(
        model_bench.MODEL_STEPPERS, "epoched", lambda m, n, b: _Off(make(m, n, b), 1e-3)
    )
    code = bench.run_cli(*CONTEXT_TINY, "--out", str(out_dir), "--no-plots")
    assert code == 1
    assert "AGREEMENT CHECK FAILED" in capsys.readouterr().err
    report = bench.read_json(out_dir / "context.json")
    status = {(r["method"], r["P"]): r["status"] for r in report["rows"]}
    assert status[("epoched", 8)].startswith("FAILED")
    assert all(status[("epoched", p)].startswith("not run") for p in (16, 32))
    assert status[("naive", 32)] == "ok" and status[("continuous", 32)] == "ok"
    assert report["failures"] and "epoched at P=8" in report["failures"][0]


def test_compare_tokens_tells_ties_from_disagreements():
    reference = torch.zeros(1, 5, 4, dtype=torch.float64)  # P = 2, K = 3: positions 0 .. 4
    reference[0, :, 0] = 1.0  # token 0 wins everywhere by a margin of 1 ...
    reference[0, 3, 1] = 1.0 - 1e-6  # ... except at position 3 (step 2), a tie
    expected = torch.tensor([[0, 0, 0, 0]])
    assert model_bench.compare_tokens(expected, expected, reference, 2, 1e-4) == {
        "tokens_match": True
    }
    tie = model_bench.compare_tokens(torch.tensor([[0, 0, 1, 1]]), expected, reference, 2, 1e-4)
    assert tie["tokens_match"] is False and tie["first_token_diff"] == 2 and tie["tie"]
    wrong = model_bench.compare_tokens(torch.tensor([[0, 2, 0, 0]]), expected, reference, 2, 1e-4)
    assert wrong["first_token_diff"] == 1 and not wrong["tie"]
    assert wrong["token_gap"] == pytest.approx(1.0)


def test_runs_shorter_than_the_stu_filter_bank(bench, out_dir):
    """An STU needs filters of at least its 24 spectral filters' length: runs of 1 and 5 tokens
    still get a model (a longer one), not an error."""
    argv = "bench model --lengths 1 5 --mixers stu_tensordot stu --methods naive continuous"
    assert bench.run_cli(*argv.split(), *SHAPE.split(), "--out", str(out_dir), "--no-plots") == 0
    rows = bench.read_json(out_dir / "model.json")["rows"]
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
