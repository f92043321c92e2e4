"""Flow statistics and the symmetry of a finite sample (steerable_sr.data.statistics)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from steerable_sr import groups
from steerable_sr.data.statistics import (dataset_statistics, frame_moments, moment_statistics, resolved_part,
                                          sample_symmetry, transform_statistics)
from steerable_sr.groups import subgroup_elements, subgroup_name


def _random_field(frames: int = 8, n: int = 8, seed: int = 0) -> torch.Tensor:
    """White-noise velocity frames ``(frames, 3, n, n, n)`` in double precision."""
    return torch.randn(frames, 3, n, n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_statistics_of_a_transformed_field_follow_the_tensor_laws():
    u = _random_field()
    u[:, 1] = u[:, 1] + 0.5 * u[:, 1].pow(2)  # skewed, with a nonzero mean square asymmetry
    stats = moment_statistics(frame_moments(u))
    for k in (1, 5, 13, 24, 30, 47):
        R = groups.group_matrices("Oh")[k].double()
        moved = moment_statistics(frame_moments(groups.act(u, R, "vector")))
        expected = transform_statistics(stats, R)
        for name in stats:
            assert torch.allclose(moved[name], expected[name], atol=1e-12), (k, name)


def test_an_exactly_d2h_symmetric_anisotropic_sample_keeps_d2h():
    u = _random_field()
    mats = groups.group_matrices("Oh").double()
    u = sum(groups.act(u, mats[k], "vector") for k in subgroup_elements("D2h")) / 8
    u = u * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64).view(1, 3, 1, 1, 1)  # diagonal: keeps D2h
    result = sample_symmetry(frame_moments(u))
    assert result["sample_keeps"] == "D2h"
    assert max(max(np.asarray(v)[subgroup_elements("D2h")]) for v in result["odd_parts"].values()) < 1e-12


def test_a_skewed_component_loses_the_flip_of_its_axis():
    u = _random_field(frames=16)
    u[:, 1] = u[:, 1] + 0.3 * (u[:, 1].pow(2) - 1)
    result = sample_symmetry(frame_moments(u))
    flip_y = groups.element_index(np.diag([1.0, -1.0, 1.0]))
    skew_y = result["statistics"]["third_moment"][1][1][1]
    assert skew_y > 0.5
    assert result["odd_parts"]["third_moment"][flip_y] >= skew_y - 1e-12
    assert flip_y not in result["kept_elements"] and flip_y not in result["sample_keeps_elements"]


def test_the_resolved_part_commutes_with_the_group():
    # Block means and trilinear weights are sums of the same voxels in another order: round-off only.
    u = _random_field(frames=2, n=8)
    for k in (1, 5, 13, 24, 30, 47):
        R = groups.group_matrices("Oh")[k].double()
        moved = resolved_part(groups.act(u, R, "vector"))
        assert torch.allclose(moved, groups.act(resolved_part(u), R, "vector"), atol=1e-12), k


def test_the_resolved_part_wraps_around_the_periodic_box():
    # A shift by whole blocks moves the low-resolution grid onto itself; with clamped edges it would not commute.
    u = _random_field(frames=2, n=12)
    for shift, axis in ((4, 2), (-8, 3), (4, 4)):
        shifted = resolved_part(torch.roll(u, shift, dims=axis))
        assert torch.allclose(shifted, torch.roll(resolved_part(u), shift, dims=axis), atol=1e-12)


def test_long_waves_are_resolved_and_the_shortest_are_not():
    n = 32
    x = (torch.arange(n, dtype=torch.float64) + 0.5) * 2 * torch.pi / n
    long_wave = torch.zeros(1, 3, n, n, n, dtype=torch.float64)
    long_wave[0, 1] = torch.sin(x).view(n, 1, 1)  # u_y(x): one wavelength over the box
    unresolved = long_wave - resolved_part(long_wave)
    # block mean attenuates by sin(pi f / n) / (f sin(pi / n)) = 0.987; trilinear error O((2 pi f / n)^2 / 8)
    assert unresolved.pow(2).sum() < 0.01 * long_wave.pow(2).sum()
    shortest = torch.zeros_like(long_wave)
    shortest[0, 2] = torch.cos(x * n / 2).view(1, n, 1)  # u_z(y) = +-1 alternating: every block mean is 0
    assert resolved_part(shortest).abs().max() < 1e-12


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    from steerable_sr.data.generate import generate_dataset

    path = tmp_path_factory.mktemp("stats") / "toy.h5"
    generate_dataset(path, n=8, frames=14, spinup=0.2, progress=False)
    return path


def test_dataset_statistics_report_skewness_correlations_and_the_sample_symmetry(toy_data):
    stats = dataset_statistics(str(toy_data))
    assert stats["frames"] == 4 and abs(sum(stats["energy_fractions"]) - 1) < 1e-12
    assert len(stats["velocity_skewness"]) == 3 and len(stats["cross_correlation"]) == 3
    assert np.asarray(stats["derivative_skewness"]).shape == (3, 3) and len(stats["odd_parts"]["third_moment"]) == 48
    assert stats["sample_keeps"] == subgroup_name(stats["sample_keeps_elements"])


def test_dataset_statistics_of_each_part_of_the_frames(toy_data):
    whole, small = dataset_statistics(str(toy_data)), dataset_statistics(str(toy_data), part="unresolved")
    assert whole["part"] == "whole" and small["part"] == "unresolved" and small["frames"] == whole["frames"]
    assert 0 <= small["anisotropy"] <= (2 / 3) ** 0.5 and small["anisotropy"] != whole["anisotropy"]
    with pytest.raises(ValueError, match="part must be one of whole, resolved, unresolved, got 'small'"):
        dataset_statistics(str(toy_data), part="small")


def test_the_statistics_by_part_script_prints_a_row_per_part_and_refuses_a_missing_file(toy_data, capsys):
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "statistics_by_part.py"))
    assert script["main"]([str(toy_data)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {toy_data} |")]
    assert [row.split(" | ")[1] for row in rows] == ["whole", "resolved", "unresolved"]
    assert script["main"]([str(toy_data), str(toy_data.parent / "missing.h5")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no such file" in captured.err and "missing.h5" in captured.err
