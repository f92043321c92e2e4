"""Tiled prediction (steerable_sr.tiling): the halo read from the network, tiles equal to the whole
volume for every kind, periodic halos, h5py volumes, memory estimates, whole volumes within a budget
(evaluate) and the user errors.

Tolerance of "equal": the tiled and the whole-volume pass compute every output voxel from the same
input values through the same layers; only the order in which a convolution kernel sums its ``27 C``
terms may change with the box's shape. float32 rounding (6e-8 relative per operation) accumulated over
the network's 13 layers of at most a few hundred terms stays below 1e-5 of the output's largest value,
the tolerance used; on CPU the two passes agree exactly.
"""
import math

import h5py
import pytest
import torch
import torch.nn.functional as F

from steerable_sr.models import KINDS, build_model
from steerable_sr.report import evaluate_model
from steerable_sr.tiling import (BoundedNetwork, auto_tile, available_memory, parse_memory, predict_tiled,
                                 receptive_field, tileable, tile_memory, work_ratio)
from steerable_sr.tiling.memory import TensorMemory
from steerable_sr.tiling.predict import axis_tiles

pytestmark = pytest.mark.usefixtures("single_thread")

RTOL = 1e-5


def with_statistics(kind: str, upscale: int = 2, **options):
    """``build_model(kind, hidden=1)`` (trilinear skip on unless ``options`` say otherwise) with batch-norm
    running statistics from one training-mode pass on a shifted random batch, in eval mode."""
    model = build_model(kind, upscale=upscale, **{"hidden": 1, **options})
    with torch.no_grad():
        model(2 * torch.randn(2, model.in_channels, 4, 4, 4) + 1)
    return model.eval()


@pytest.fixture(scope="module")
def models():
    """``models[kind]``: :func:`with_statistics` of every kind at upscale 2, built once."""
    torch.manual_seed(0)
    return {kind: with_statistics(kind) for kind in KINDS}


def whole(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def tiled(model, x: torch.Tensor, tile: int, **options) -> torch.Tensor:
    out = x.new_full((1, 3, *(model.upscale * n for n in x.shape[2:])), float("nan"))
    predict_tiled(model, x, out, tile=tile, **options)
    return out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ---- receptive field ----------------------------------------------------------------------------


@pytest.mark.parametrize("upscale, halo", [(2, 4), (4, 5), (8, 5), (16, 5)])
def test_receptive_field_of_the_default_topology(upscale, halo):
    """The walk gives the hand derivation (steerable_sr.tiling.receptive: 4 for s = 2, 5 for s >= 4)
    for the model, its export and the TorchScript export."""
    model = build_model("cnn", upscale=upscale, hidden=1)
    exported = model.export()
    assert receptive_field(model) == receptive_field(exported) == receptive_field(torch.jit.script(exported)) == halo


@pytest.mark.parametrize("kind, options", [(kind, {}) for kind in KINDS] + [("gcnn", {"separable": True})])
def test_receptive_field_is_the_topology_s_for_every_kind(kind, options):
    model = build_model(kind, hidden=1, **options)
    assert receptive_field(model) == receptive_field(model.export()) == 5


# ---- tiles equal the whole volume ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_tiles_equal_the_whole_volume(models, kind):
    """15^3 -> 30^3 in tiles of 2 low-resolution voxels (6, 2, 2, 5 per axis, boxes of 10 < 15): a first
    tile with the halo on its inner side only, middle tiles with exactly the halo on both sides, a
    shorter last tile whose box is shifted into the volume."""
    model = models[kind]
    x = torch.randn(1, model.in_channels, 15, 15, 15)
    assert relative_error(tiled(model, x, tile=4), whole(model, x)) <= RTOL


@pytest.mark.parametrize("kind", KINDS)
def test_periodic_tiles_equal_the_circularly_padded_whole_volume(models, kind):
    """6^3 in tiles of 4 and 2: boxes of 4 + 2 halo = 12 > 6 wrap around more than once."""
    model = models[kind]
    halo, s = receptive_field(model), model.upscale
    x = torch.randn(1, model.in_channels, 6, 6, 6)
    padded = whole(model, F.pad(x, (halo,) * 6, mode="circular"))
    reference = padded[(..., *[slice(s * halo, -s * halo)] * 3)]
    assert relative_error(tiled(model, x, tile=8, periodic=True), reference) <= RTOL


def test_a_halo_smaller_than_the_receptive_field_changes_the_output():
    """The halo is needed (no trilinear skip: the difference is the network's own): one voxel less
    changes the middle tile's output by more than 10x the tolerance (by ~1e-3 of the output: the
    farthest input voxel reaches the output through every layer's weights)."""
    model = with_statistics("cnn", hidden=4, trilinear_skip=False)
    x = torch.randn(1, model.in_channels, 14, 14, 14)
    reference = whole(model, x)
    assert relative_error(tiled(model, x, tile=10), reference) <= RTOL
    assert relative_error(tiled(model, x, tile=10, halo=receptive_field(model) - 1), reference) > 10 * RTOL


def test_h5py_source_and_chunked_target_at_upscale_4(tmp_path):
    """17^3 -> 68^3 (halo 5, tiles of 11 and 6, boxes of 16) from an h5py dataset into a chunked one."""
    model = with_statistics("cnn", upscale=4)
    x = torch.randn(1, model.in_channels, 17, 17, 17)
    with h5py.File(tmp_path / "volumes.h5", "w") as f:
        source = f.create_dataset("low", data=x[0].numpy())
        target = f.create_dataset("high", shape=(3, 68, 68, 68), dtype="f4", chunks=(3, 16, 16, 16))
        predict_tiled(model, source, target, tile=24)
        result = torch.from_numpy(target[...])
    assert relative_error(result, whole(model, x)[0]) <= RTOL


def test_the_torchscript_export_tiles_like_the_model():
    model = with_statistics("cnn")
    x = torch.randn(1, model.in_channels, 14, 14, 14)
    scripted = torch.jit.script(model.export())
    assert relative_error(tiled(scripted, x, tile=10), whole(model, x)) <= RTOL


@pytest.mark.parametrize("size, tile, halo, periodic, boxes", [
    (14, 5, 4, False, [13, 13]),  # tiles of 9 and 5: no halo beyond the volume's sides
    (15, 2, 4, False, [10, 10, 10, 10]),  # tiles of 6, 2, 2, 5
    (14, 10, 4, False, [14]),  # the whole volume: no halo
    (6, 4, 4, True, [12, 12]),  # periodic boxes always carry the halo
])
def test_work_ratio_counts_the_boxes_voxels(size, tile, halo, periodic, boxes):
    assert work_ratio(size, tile, halo, periodic) == pytest.approx((sum(boxes) / size) ** 3)


@pytest.mark.parametrize("size", range(1, 30))
@pytest.mark.parametrize("tile, halo", [(1, 0), (1, 4), (3, 5), (7, 2)])
def test_the_tiles_of_an_axis_cover_it_and_every_box_holds_its_halo(size, tile, halo):
    """Non-periodic: the tiles partition [0, n) in order, at most t wide inside the volume and t + h at
    its sides (or one tile, when one box holds the volume); every box is E = min(n, t + 2 h) wide, inside
    the volume, and holds its tile with the halo on each side (or the volume's side); no two boxes are
    the same."""
    tiles = axis_tiles(size, tile, halo, periodic=False)
    edge = min(size, tile + 2 * halo)
    assert [t.start for t in tiles] == [0] + [t.stop for t in tiles[:-1]] and tiles[-1].stop == size
    for t in tiles:
        assert t.box_edge == edge and 0 <= t.box_start and t.box_start + edge <= size
        assert t.box_start <= max(t.start - halo, 0) and min(t.stop + halo, size) <= t.box_start + edge
        assert t.stop - t.start <= tile + (halo if t.start == 0 or t.stop == size else 0) or edge == size
    assert len({t.box_start for t in tiles}) == len(tiles)


# ---- user errors --------------------------------------------------------------------------------


@pytest.fixture
def small():
    return with_statistics("cnn", upscale=4), torch.randn(1, 9, 6, 6, 6)


def _one_line_error(match: str, call) -> None:
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("tile", [6, 2, 0, -4])
def test_a_tile_that_is_not_a_positive_multiple_of_the_upscale_is_refused(small, tile):
    model, x = small
    _one_line_error("multiple of the upscale factor 4", lambda: tiled(model, x, tile=tile))


def test_a_model_in_training_mode_is_refused(small):
    model, x = small
    _one_line_error("eval mode", lambda: tiled(model.train(), x, tile=8))


def test_a_target_of_the_wrong_size_is_refused(small):
    model, x = small
    _one_line_error("must be 4 x 6 = 24", lambda: predict_tiled(model, x, torch.empty(1, 3, 20, 20, 20), tile=8))


def test_nan_in_the_source_is_refused_naming_its_box(small):
    model, x = small
    x[0, 0, 5, 5, 5] = float("nan")
    _one_line_error(r"NaN or Inf in the box \[0:6, 0:6, 0:6\]", lambda: tiled(model, x, tile=8))


# ---- memory -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [("2GB", 2 * 10 ** 9), ("512MiB", 512 * 2 ** 20), ("1.5 gib", 3 * 2 ** 29),
                                        ("4096", 4096), ("0.5kB", 500), ("1e3MB", 10 ** 9)])
def test_parse_memory(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["2XB", "GB", "", "-1GB", "0.1B", "2 GB extra"])
def test_parse_memory_refuses_what_is_not_a_size(text):
    _one_line_error("memory size", lambda: parse_memory(text))


def test_tensor_memory_is_the_peak_of_live_allocations():
    """Two 4 MiB tensors alive at once, then one freed and one made: peak 8 MiB. Views, in-place
    results and tensors made before the block do not count."""
    before = torch.zeros(2 ** 20)
    with TensorMemory() as memory:
        a, b = torch.empty(2 ** 20), torch.empty(2 ** 20)
        a.view(2, -1)[0].add_(1)
        before[:10].mul_(2)
        del a
        c = torch.zeros(2 ** 20)
    assert memory.peak == 2 * 4 * 2 ** 20
    del b, c


def test_the_estimate_bounds_the_tracked_peak_of_a_larger_box():
    """Measured on an 8^3 box, the estimate bounds the tracked peak of a 12^3 box (inputs included)."""
    model = with_statistics("gcnn")
    estimate = tile_memory(model, model.in_channels)
    x = torch.randn(1, model.in_channels, 12, 12, 12)
    with torch.no_grad(), TensorMemory() as memory:
        y = model(x)
    assert memory.peak + 2 * x.nbytes + y.nbytes <= estimate.peak(12)


@pytest.mark.parametrize("periodic", [False, True])
def test_auto_tile_takes_the_fewest_tiles_that_fit(periodic):
    """The tile's box fits the budget; one tile fewer per axis would not; a smaller tile would make more
    tiles (the boxes are as small as the count allows)."""
    model, size = with_statistics("cnn", hidden=4), 40
    halo, s = receptive_field(model), model.upscale
    estimate = tile_memory(model, model.in_channels)
    budget = int(estimate.peak(20))
    tile = auto_tile(model, model.in_channels, size, budget, periodic=periodic) // s

    def count(t):
        return len(axis_tiles(size, t, halo, periodic))

    fewer = min(t for t in range(1, size + 1) if count(t) < count(tile))
    assert estimate.peak(tile + 2 * halo) <= budget < estimate.peak(fewer + 2 * halo)
    assert count(tile - 1) > count(tile)


def test_auto_tile_takes_a_whole_volume_that_fits_as_one_tile():
    model = with_statistics("cnn")
    assert auto_tile(model, model.in_channels, 6, parse_memory("1GB")) == 12


def test_auto_tile_refuses_a_budget_below_the_smallest_tile():
    model = with_statistics("cnn")
    _one_line_error("too small", lambda: auto_tile(model, model.in_channels, 40, parse_memory("10kB")))


def test_available_memory_of_the_host_is_positive():
    assert available_memory("cpu") > 0


# ---- networks that tiling reads -----------------------------------------------------------------


def test_a_network_without_upsampling_is_not_tileable_and_has_no_receptive_field():
    """Tiling reads the upscale factor and the halo from transposed convolutions; a module without one
    (a plain convolution, or a network whose layers are not modules) is refused, not given halo 0."""
    conv = torch.nn.Conv3d(9, 3, 3, padding=1)
    assert tileable(with_statistics("cnn")) and not tileable(conv) and not tileable(lambda x: x)
    _one_line_error("no transposed convolution", lambda: receptive_field(conv))


# ---- whole volumes within a budget (evaluate) ---------------------------------------------------


@pytest.fixture
def over_budget():
    """A cnn, a batch of two 14^3 volumes and a budget that holds one box of 12^3 (tiles of 4 per axis)
    but not the batch whole."""
    model = with_statistics("cnn", hidden=4)
    x = torch.randn(2, model.in_channels, 14, 14, 14)
    return model, x, math.ceil(tile_memory(model, model.in_channels).peak(12))


def test_a_batch_over_budget_is_predicted_in_tiles_within_the_budget(over_budget):
    """The tracked peak stays within the budget (plus the output it returns), where the whole batch
    goes beyond it; the values equal the whole batch's."""
    model, x, budget = over_budget
    with torch.no_grad(), TensorMemory() as memory:
        reference = model(x)
    assert memory.peak > budget
    with torch.no_grad(), TensorMemory() as memory:
        y = BoundedNetwork(model, budget)(x)
    assert memory.peak <= budget + y.nbytes
    assert relative_error(y, reference) <= RTOL


def test_a_batch_within_budget_goes_through_the_model_whole(over_budget):
    model, x, _ = over_budget
    assert torch.equal(BoundedNetwork(model, parse_memory("1GB"))(x), whole(model, x))


def test_evaluate_over_budget_gives_the_report_of_the_whole_volumes(over_budget):
    """Metrics, spectra and equivariance errors of whole volumes predicted in tiles equal those of the
    whole batch to float round-off (sums of squares of values equal to 1e-5: 1e-4 relative at most)."""
    model, x, budget = over_budget
    batches = [{"low_res": x, "high_res": torch.randn(2, 3, 28, 28, 28)}]
    tiled = evaluate_model(model, batches, upscale=2, equivariance_elements=3, max_memory=budget)
    reference = evaluate_model(model, batches, upscale=2, equivariance_elements=3, max_memory=parse_memory("1GB"))
    for name in ("model", "truth"):
        assert tiled["metrics"][name] == pytest.approx(reference["metrics"][name], rel=1e-4)
    for name in ("max", "mean"):
        assert tiled["equivariance"][name] == pytest.approx(reference["equivariance"][name], rel=1e-4)
    for name, spectrum in reference["spectra"].items():
        assert tiled["spectra"][name] == pytest.approx(spectrum, rel=1e-4)


def test_a_network_whose_layers_are_hidden_tiles_from_its_declared_geometry(models):
    """An exported program or ONNX session shows no convolutions: it tiles from the geometry its
    export recorded (halo, upscale, memory), to the whole volume's output."""
    from steerable_sr.export import RuntimeModule, tiling_metadata
    from steerable_sr.tiling import TileGeometry

    plain = models["rsteer"].export().eval()
    hidden = RuntimeModule(plain.__call__).eval()
    assert not tileable(hidden)
    with pytest.raises(ValueError, match="no transposed convolution"):
        receptive_field(hidden)
    hidden.tile_geometry = TileGeometry(upscale=2, **tiling_metadata(plain, 9))
    assert tileable(hidden) and receptive_field(hidden) == receptive_field(plain)
    assert tile_memory(hidden, 9).bytes_per_voxel == hidden.tile_geometry.bytes_per_voxel
    x = torch.randn(1, 9, 9, 9, 9)
    out = torch.full((1, 3, 18, 18, 18), float("nan"))
    predict_tiled(hidden, x, out, tile=8)  # 4 low-resolution voxels: 3 tiles an axis
    assert relative_error(out, whole(plain, x)) <= RTOL
