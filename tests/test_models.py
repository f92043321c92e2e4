"""Super-resolution networks: exact equivariance end to end, export, gradients, bad input.

Inputs are 4^3 -> 16^3: the same strides and layers as the paper's 16^3 -> 64^3, cheaper."""
import subprocess
import sys

import pytest
import torch

from steerable_sr.models import KIND_SPECS, KINDS, build_model
from steerable_sr.testing import assert_equivariant, assert_not_equivariant, relative_error

EQUIVARIANT_KINDS = [kind for kind, spec in KIND_SPECS.items() if spec.field_family != "plain"]


@pytest.fixture(scope="module")
def trained_statistics_models(model_with_statistics):
    """One model per kind, batch-norm statistics from a training-mode pass, without the trilinear skip."""
    return {kind: model_with_statistics(kind) for kind in KINDS}


@pytest.mark.parametrize("kind", EQUIVARIANT_KINDS)
def test_equivariant_kinds_are_exactly_equivariant_to_oh(kind, trained_statistics_models):
    assert_equivariant(trained_statistics_models[kind], torch.randn(1, 9, 4, 4, 4), "Oh")


@pytest.mark.parametrize("kind", EQUIVARIANT_KINDS)
def test_rotation_group_o_works_too(kind):
    model = build_model(kind, group="O", trilinear_skip=False).eval()
    assert_equivariant(model, torch.randn(1, 9, 4, 4, 4), "O")


def test_plain_cnn_is_not_equivariant_to_any_element_but_the_identity(trained_statistics_models):
    assert_not_equivariant(trained_statistics_models["cnn"], torch.randn(1, 9, 4, 4, 4), "Oh")


@pytest.mark.parametrize("kind", ["cnn", "rsteer"])
def test_trilinear_skip_starts_near_the_trilinear_baseline(kind):
    model = build_model(kind).eval()
    x = torch.randn(2, 9, 4, 4, 4)
    baseline = torch.nn.functional.interpolate(x[:, 3:6], scale_factor=4.0, mode="trilinear", align_corners=False)
    with torch.no_grad():
        assert relative_error(model(x), baseline) < 0.1


def test_trilinear_skip_keeps_an_equivariant_kind_equivariant():
    assert_equivariant(build_model("rsteer").eval(), torch.randn(1, 9, 4, 4, 4), "Oh")


def test_blocks_compute_the_documented_maps():
    # docs/conventions.md, "Network topology": the UpBlock's skip joins before its last norm, the
    # ResBlock's after it. Training mode (batch statistics), so that the two placements differ.
    model = build_model("cnn").train()
    up, res = model.stages[0], model.stages[1]
    x = torch.randn(2, model.config.hidden, 4, 4, 4)
    trilinear = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(up(x), up.act2(up.norm2(up.conv(up.act1(up.norm1(up.up(x)))) + trilinear)))
        y = up(x)
        assert torch.allclose(res(y), res.act2(y + res.norm2(res.conv2(res.act1(res.norm1(res.conv1(y)))))))


def test_output_shape_follows_upscale():
    model = build_model("steer", upscale=2, frames=2).eval()
    assert model(torch.randn(3, 6, 5, 5, 5)).shape == (3, 3, 10, 10, 10)


@pytest.mark.parametrize("kind", KINDS)
def test_export_is_plain_torch_with_the_same_output(kind, trained_statistics_models):
    model = trained_statistics_models[kind]
    exported = model.export()
    assert all(type(m).__module__.startswith(("torch.", "steerable_sr.models", "steerable_sr.fields"))
               for m in exported.modules())
    assert not any("escnn" in type(m).__module__ for m in exported.modules())
    x = torch.randn(2, 9, 4, 4, 4)
    with torch.no_grad():
        assert relative_error(exported(x), model(x)) <= 1e-5
        assert relative_error(torch.jit.script(exported)(x), model(x)) <= 1e-5


def test_exported_module_reloads_without_escnn(tmp_path):
    model = build_model("rsteer")
    model.lift[0].module.set_relaxed_weights_on_group(torch.randn(2, 48))  # a non-trivial relaxed layer
    model.eval()
    x = torch.randn(1, 9, 4, 4, 4)
    with torch.no_grad():
        expected = model(x)
    torch.jit.save(torch.jit.script(model.export()), tmp_path / "model.pt")
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    script = (
        "import sys; sys.modules['escnn'] = None; sys.modules['steerable_sr'] = None\n"
        "import torch\n"
        f"m = torch.jit.load({str(tmp_path / 'model.pt')!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "y = m(io['x'])\n"
        "err = ((y - io['y']).norm() / io['y'].norm()).item()\n"
        "assert err <= 1e-5, err\n"
        "assert 'escnn' not in str(m.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    model = build_model(kind)
    for _, layer in model.relaxed_layers():
        layer.set_relaxed_weights_on_group(torch.randn(layer.relaxed.num_filter_banks, 48))
    loss = model(torch.randn(2, 9, 4, 4, 4)).square().mean() + model.equivariance_penalty()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_presets_match_budgets_across_kinds():
    counts = {kind: build_model(kind).num_parameters() for kind in KINDS}
    assert all(100_000 <= n <= 160_000 for n in counts.values()), counts
    assert 3_000_000 <= build_model("gcnn", preset="paper").num_parameters() <= 4_000_000


def test_layer_table_lists_every_convolution_and_the_total():
    model = build_model("rgcnn")
    table = model.layer_table()
    assert table.count("OctahedralConv") == 10 and f"**{model.num_parameters():,}**" in table


@pytest.mark.parametrize("call, match", [
    (lambda: build_model("resnet"), "allowed values: cnn, gcnn, rgcnn, steer, rsteer"),
    (lambda: build_model("gcnn", group="SO3"), "allowed values: Oh, O"),
    (lambda: build_model("gcnn", upscale=3), "power of two"),
    (lambda: build_model("gcnn", preset="huge"), "unknown preset"),
    (lambda: build_model("gcnn", hidden=0), "hidden must be an integer >= 1"),
    (lambda: build_model("gcnn", width=3), "unknown model options"),
])
def test_bad_configuration_is_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("shape, match", [
    ((1, 6, 4, 4, 4), r"expected input \(B, 9, n, n, n\)"),
    ((1, 9, 4, 4, 5), "cubic"),
    ((1, 9, 1, 1, 1), "n >= 2"),
    ((9, 4, 4, 4), r"expected input \(B, 9, n, n, n\)"),
])
def test_bad_input_shapes_are_rejected(shape, match, trained_statistics_models):
    for kind in ("cnn", "gcnn"):
        with pytest.raises(ValueError, match=match):
            trained_statistics_models[kind](torch.randn(*shape))
