"""The evaluation report's slice panels (steerable_sr.report.slice_panels)."""
import torch

from steerable_sr.report import slice_panels


def test_curl_panel_of_a_non_periodic_crop_has_no_border_frame():
    n = 8
    x1 = torch.arange(n, dtype=torch.float64)
    field = torch.zeros(3, n, n, n, dtype=torch.float64)
    field[0] = x1.view(1, n, 1)  # u_0 = x_1: a uniform shear, |curl u| = 1 per grid unit everywhere
    speed, curl = slice_panels(field)
    assert speed.shape == (n, n) and curl.shape == (n - 2, n - 2)
    assert abs(curl - n).max() < 1e-12  # box units: grid units times n
