"""Flow statistics and the symmetry of a finite sample (steerable_sr.data.statistics)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from steerable_sr import groups
from steerable_sr.data.statistics import (dataset_statistics, frame_moments, moment_statistics, sample_symmetry,
                                          transform_statistics)
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
