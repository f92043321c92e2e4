"""The evaluation report (steerable_sr.report): slice panels, and a report for every crop size."""
import json

import numpy as np
import pytest
import torch

from steerable_sr import metrics
from steerable_sr.report import evaluate_model, slice_panels, write_report


def test_curl_panel_of_a_non_periodic_crop_has_no_border_frame():
    n = 8
    x1 = torch.arange(n, dtype=torch.float64)
    field = torch.zeros(3, n, n, n, dtype=torch.float64)
    field[0] = x1.view(1, n, 1)  # u_0 = x_1: a uniform shear, |curl u| = 1 per grid unit everywhere
    speed, curl = slice_panels(field)
    assert speed.shape == (n, n) and curl.shape == (n - 2, n - 2)
    assert abs(curl - n).max() < 1e-12  # box units: grid units times n


class Trilinear(torch.nn.Module):
    """The trilinear baseline as a network (exactly O_h-equivariant, no weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return metrics.trilinear(x)


@pytest.mark.parametrize("crop", [4, 8, 12])
def test_every_crop_that_fit_accepts_gives_a_report(tmp_path, crop):
    """Crops are multiples of 4 (inputs 1^3, 2^3, 3^3): too small for a curl panel or spectrum bands,
    still a full report."""
    batches = [{"low_res": torch.randn(2, 9, crop // 4, crop // 4, crop // 4),
                "high_res": torch.randn(2, 3, crop, crop, crop)}]
    result = evaluate_model(Trilinear(), batches, equivariance_elements=2)
    out = write_report(tmp_path / "report", result, {"kind": "trilinear"})
    assert {p.name for p in out.iterdir()} == {"metrics.json", "metrics.md", "spectra.png", "slice.png"}
    assert json.loads((out / "metrics.json").read_text())["samples"] == 2


@pytest.mark.parametrize("n", [1, 2])
def test_a_field_without_interior_voxels_has_a_blank_curl_panel(n):
    speed, curl = slice_panels(torch.randn(3, n, n, n, dtype=torch.float64))
    assert speed.shape == (n, n) and curl.shape == (n, n) and np.isnan(curl).all()
