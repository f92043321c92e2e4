"""Stage-wise tiled prediction (steerable_sr.tiling.staged): every stage in tiles with its own halo, the
fields between stages in scratch files, equal to the whole-volume pass for every kind.

Tolerance of "equal": that of tests/test_tiling.py, 1e-5 of the output's largest value. Each stage
computes every voxel from the same input values through the same layers as the whole pass; only the
order of a convolution's sums may change with the box's shape, and the fields between stages are
stored in the network's own dtype (float32), so nothing is rounded that the whole pass keeps.
"""
import h5py
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from steerable_sr.models import KINDS, build_model
from steerable_sr.tiling import network_stages, predict_staged, receptive_field, scratch_bytes
from steerable_sr.tiling.volumes import PhysicalUnits

pytestmark = pytest.mark.usefixtures("single_thread")

RTOL = 1e-5
#: Small enough that every stage from the first upsampling on needs several tiles on an 11^3 input.
BUDGET = 3 * 10 ** 6


#: The networks of these tests: upscale 4, one hidden channel per field, the trilinear skip on.
NETWORK = {"upscale": 4, "hidden": 1, "trilinear_skip": True}


@pytest.fixture(scope="module")
def models(model_with_statistics):
    torch.manual_seed(0)
    return {kind: model_with_statistics(kind, **NETWORK) for kind in KINDS}


def staged(model, x: torch.Tensor, scratch, **options) -> tuple[torch.Tensor, list[int]]:
    out = x.new_full((3, *(4 * n for n in x.shape[-3:])), float("nan"))
    tiles = predict_staged(model, x[0], out, max_memory=BUDGET, scratch=scratch, **options)
    return out[None], tiles


def whole(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("kind", KINDS)
def test_stages_in_tiles_equal_the_whole_volume(models, kind, tmp_path):
    """11^3 -> 44^3: the stages on the 22^3 and 44^3 grids run in several tiles that do not divide them."""
    model = models[kind]
    x = torch.randn(1, model.in_channels, 11, 11, 11)
    out, tiles = staged(model, x, tmp_path)
    grids = [11, 22, 22, 44, 44, 44]
    assert any(tile < grid for tile, grid in zip(tiles, grids))
    assert relative_error(out, whole(model, x)) <= RTOL


@pytest.mark.parametrize("kind, options", [
    ("gcnn", {"separable": True}), ("rsteer", {"group": "O"}), ("cnn", {"upscale": 2}), ("steer", {"upscale": 8}),
    ("cnn", {"trilinear_skip": False}), ("cnn", {"frames": 1})])
def test_stages_of_other_networks_equal_the_whole_volume(kind, options, tmp_path, model_with_statistics):
    """Separable convolutions, the rotation group O, 1 or 3 upsampling stages, no skip, one frame."""
    model = model_with_statistics(kind, **{**NETWORK, **options})
    x = torch.randn(1, model.in_channels, 7, 7, 7)
    reference = whole(model, x)
    out = torch.full_like(reference[0], float("nan"))
    predict_staged(model, x[0], out, max_memory=2 * 10 ** 6, scratch=tmp_path)
    assert relative_error(out[None], reference) <= RTOL


@pytest.mark.parametrize("kind", ["cnn", "rsteer"])
def test_periodic_stages_equal_the_circularly_padded_whole_volume(models, kind, tmp_path):
    model = models[kind]
    halo = receptive_field(model)
    x = torch.randn(1, model.in_channels, 9, 9, 9)
    padded = whole(model, F.pad(x, (halo,) * 6, mode="circular"))
    reference = padded[(..., *[slice(4 * halo, -4 * halo)] * 3)]
    out, _ = staged(model, x, tmp_path, periodic=True)
    assert relative_error(out, reference) <= RTOL


def test_the_torchscript_export_in_physical_units_runs_stage_by_stage_like_the_model(models, tmp_path):
    """The velocity scale divides the first stage's input and multiplies the head and the skip."""
    model = models["rgcnn"]
    network = PhysicalUnits(torch.jit.script(model.export()), 2.5).eval()
    x = 3 * torch.randn(1, model.in_channels, 11, 11, 11) + 1
    out, _ = staged(network, x, tmp_path)
    assert relative_error(out, whole(model, x / 2.5) * 2.5) <= RTOL


def test_each_stage_carries_the_halo_of_its_own_layers(models):
    """lift and head: one 3^3 convolution (1); an UpBlock: the transposed convolution and the
    convolution after it, 1 voxel of its input grid; a ResBlock: two 3^3 convolutions (2); the skip:
    trilinear (1). The network's own halo is 5 low-resolution voxels."""
    stages = network_stages(models["cnn"])
    assert [s.tile_geometry.halo for s in stages.stages] == [1, 1, 2, 1, 2, 1]
    assert stages.upscales == (1, 2, 1, 2, 1, 1)
    assert stages.skip.tile_geometry.halo == 1 and stages.skip.tile_geometry.upscale == 4


def test_scratch_bytes_is_the_largest_pair_of_fields_between_stages(models):
    """rsteer with hidden 1: 20 channels after every stage but the head; at 11^3 the two 44^3 fields
    of the last ResBlock (its input and output) are the largest pair."""
    stages = network_stages(models["rsteer"])
    assert stages.channels == (9, 20, 20, 20, 20, 20, 3)
    assert scratch_bytes(stages, 11) == 2 * 20 * 44 ** 3 * 4


def test_scratch_files_are_removed_also_when_a_box_holds_nan(models, tmp_path):
    model = models["cnn"]
    x = torch.randn(1, model.in_channels, 11, 11, 11)
    x[0, 0, 10, 10, 10] = float("nan")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(ValueError, match="NaN or Inf"):
        staged(model, x, scratch)
    assert list(scratch.iterdir()) == []


def test_an_h5py_target_receives_the_skip_added_to_the_head(models, tmp_path):
    model = models["steer"]
    x = torch.randn(1, model.in_channels, 7, 7, 7)
    with h5py.File(tmp_path / "out.h5", "w") as f:
        target = f.create_dataset("high", shape=(3, 28, 28, 28), dtype="f4", chunks=(3, 8, 8, 8))
        predict_staged(model, x[0], target, max_memory=BUDGET, scratch=tmp_path)
        result = torch.from_numpy(target[...])
    assert relative_error(result[None], whole(model, x)) <= RTOL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_a_network_without_stages_is_refused(tmp_path):
    net = nn.Sequential(nn.ConvTranspose3d(9, 3, 4, stride=2, padding=1)).eval()
    assert network_stages(net) is None
    with pytest.raises(ValueError, match="stage-wise prediction needs a network of steerable_sr.models"):
        predict_staged(net, torch.zeros(9, 4, 4, 4), torch.zeros(3, 8, 8, 8), max_memory=BUDGET, scratch=tmp_path)


def test_a_model_in_training_mode_is_refused(tmp_path):
    model = build_model("cnn", upscale=2, hidden=1)
    with pytest.raises(ValueError, match="eval mode"):
        predict_staged(model, torch.zeros(9, 4, 4, 4), torch.zeros(3, 8, 8, 8), max_memory=BUDGET, scratch=tmp_path)
