"""Paired comparisons of a study: relaxed minus exact twin per seed, the t interval, and the
flat-curve criterion."""
from __future__ import annotations

import numpy as np
import pytest

from steerable_sr.study.paired import baselines, convergence, exact_twin, paired_differences, paired_markdown


def _runs(values: dict[str, list[float]]) -> list[dict]:
    return [{"kind": kind, "seed": seed, "test": {"mae": v}} for kind, vs in values.items() for seed, v in enumerate(vs)]


def test_a_relaxed_kind_is_paired_with_its_exact_twin():
    assert exact_twin("rgcnn") == "gcnn"
    assert exact_twin("rsteer") == "steer"
    assert exact_twin("rgcnn_separable") == "gcnn_separable"
    assert exact_twin("gcnn") is None and exact_twin("cnn") is None


def test_a_free_relaxed_kind_is_also_paired_with_its_held_form_and_a_held_kind_with_the_exact_twin():
    assert exact_twin("rgcnn_held") == "gcnn" and exact_twin("rgcnn_separable_held") == "gcnn_separable"
    assert baselines("rsteer") == ["steer", "rsteer_held"]
    assert baselines("rsteer_held") == ["steer"]
    assert baselines("steer") == [] and baselines("cnn") == []
    rng = np.random.default_rng(1)
    exact = rng.uniform(0.1, 0.3, 3)
    held = exact - 0.02 + rng.normal(0, 1e-3, 3)
    free = held - 0.005 + rng.normal(0, 1e-3, 3)
    pairs = {p["pair"]: p for p in paired_differences(_runs({"gcnn": list(exact), "rgcnn": list(free),
                                                                "rgcnn_held": list(held)}))}
    assert set(pairs) == {"rgcnn - gcnn", "rgcnn - rgcnn_held", "rgcnn_held - gcnn"}
    np.testing.assert_allclose(pairs["rgcnn - rgcnn_held"]["differences"], free - held, rtol=0, atol=1e-15)
    np.testing.assert_allclose(pairs["rgcnn_held - gcnn"]["differences"], held - exact, rtol=0, atol=1e-15)
    assert pairs["rgcnn - rgcnn_held"]["baseline_mean"] == pytest.approx(held.mean(), rel=1e-12)


def test_the_difference_is_taken_seed_by_seed():
    rng = np.random.default_rng(0)
    exact = rng.uniform(0.1, 0.3, 4)
    shift = rng.normal(0, 1e-3, 4) - 0.01
    pair, = paired_differences(_runs({"gcnn": list(exact), "rgcnn": list(exact + shift), "cnn": [0.5] * 4}))
    assert pair["pair"] == "rgcnn - gcnn"
    np.testing.assert_allclose(pair["differences"], shift, rtol=0, atol=1e-15)
    assert pair["mean"] == pytest.approx(shift.mean(), abs=1e-15)
    assert pair["std"] == pytest.approx(shift.std(ddof=1), rel=1e-12)
    # the seed spread of the exact kind is large, the paired one small: the pairing cancels it
    assert pair["baseline_std"] == pytest.approx(exact.std(ddof=1), rel=1e-12)


def test_the_interval_is_students_t_with_n_minus_one_degrees_of_freedom():
    diffs = np.array([-0.01, -0.02, -0.03])
    pair, = paired_differences(_runs({"steer": [0.2, 0.2, 0.2], "rsteer": list(0.2 + diffs)}))
    half = 4.302652729911275 * diffs.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert pair["low"] == pytest.approx(diffs.mean() - half, rel=1e-9)
    assert pair["high"] == pytest.approx(diffs.mean() + half, rel=1e-9)


def test_only_seeds_run_by_both_kinds_are_paired():
    runs = _runs({"gcnn": [0.2, 0.21], "rgcnn": [0.19, 0.2, 0.18]})
    pair, = paired_differences(runs)
    assert pair["seeds"] == [0, 1]
    assert paired_differences(_runs({"rgcnn": [0.2]})) == []


def test_a_curve_whose_last_fifth_improves_by_less_than_two_percent_is_flat():
    epochs = np.arange(20)
    assert convergence([{"val/mae": 0.2 + 0.1 * np.exp(-e)} for e in epochs])["flat"]
    falling = convergence([{"val/mae": 0.3 * 0.97 ** e} for e in epochs])
    assert not falling["flat"]
    assert falling["improvement"] == pytest.approx(1 - 0.97 ** 4, rel=1e-12)  # 4 = the last fifth of 20


def test_a_curve_of_fewer_than_five_epochs_is_not_called_flat():
    result = convergence([{"val/mae": 0.2}] * 4)
    assert not result["flat"] and np.isnan(result["improvement"])


def test_the_markdown_names_the_pair_and_the_runs_that_did_not_flatten():
    runs = _runs({"gcnn": [0.2, 0.21, 0.22], "rgcnn": [0.19, 0.2, 0.2]})
    for r in runs:
        r["curve"] = [{"val/mae": 0.3 * 0.9 ** e} for e in range(10)] if r["kind"] == "gcnn" else [{"val/mae": 0.2}] * 10
    text = paired_markdown(runs)
    assert "| rgcnn - gcnn |" in text
    assert "3 of 6 runs" in text and "gcnn seed 0" in text and "rgcnn seed" not in text.split("not flat")[1]
