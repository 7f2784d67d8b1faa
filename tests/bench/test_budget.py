"""Budget projection, the budget gate, ratios at the largest size, fitted slopes."""

import math

import pytest

from futurefill.bench import budget


def test_fit_slope_recovers_power_law():
    sizes = [2**k for k in range(6, 12)]
    assert budget.fit_slope(sizes, [3e-6 * n**2 for n in sizes]) == pytest.approx(2.0)
    assert budget.fit_slope(sizes, [n * math.log2(n) ** 2 for n in sizes]) < 1.6
    assert budget.fit_slope([64], [1.0]) is None


def test_project_time_is_conservative():
    assert budget.project_time([], [], 128) is None
    # One point: quadratic growth.
    assert budget.project_time([100], [1.0], 200) == pytest.approx(4.0)
    # Two points: the local exponent, clamped to at least 1.
    assert budget.project_time([100, 200], [1.0, 8.0], 400) == pytest.approx(64.0)
    assert budget.project_time([100, 200], [1.0, 1.0], 400) == pytest.approx(2.0)


def test_ratios_at_largest_common_size():
    rows = [
        {"method": "naive", "L": 64, "status": "ok", "total_s": 4.0},
        {"method": "naive", "L": 128, "status": "skipped (projected 9 s > budget 1 s)"},
        {"method": "continuous", "L": 64, "status": "ok", "total_s": 1.0},
        {"method": "continuous", "L": 128, "status": "ok", "total_s": 2.0},
    ]
    (r,) = budget.ratios_at_largest(rows, [("naive", "continuous")], ("L",))
    assert r["L"] == 64 and r["ratio"] == pytest.approx(4.0)


def test_budget_gate_skips_projected_and_stops_failed_series():
    gate = budget.BudgetGate(budget=10.0)
    assert gate.check("a", 100) is None  # nothing measured yet: run
    gate.record("a", 100, {"status": "ok", "t": 1.0}, what="a", at="L=100", time_key="t")
    assert gate.check("a", 200) is None  # projected 4 s (quadratic from one point)
    skipped = gate.check("a", 400)  # projected 16 s
    assert skipped["status"].startswith("skipped (projected 16") and skipped["repeats"] == 0
    assert skipped["projected_s"] == pytest.approx(16.0)
    gate.record("b", 100, {"status": "FAILED (x)"}, what="b", at="L=100", time_key="t")
    assert gate.check("b", 200) == {"status": "not run (failed at L=100)", "repeats": 0}
    assert gate.failures == ["b at L=100: FAILED (x)"]
