"""Activation checkpointing (``checkpoint_blocks``): the same training step with less kept for backward.

Tiny models (2^3 -> 8^3, one field or channel per kind, the group O): the same layers and blocks as
the paper's, cheaper."""
import pytest
import torch
import torch.nn.functional as F

from steerable_sr.models import KINDS, build_model
from steerable_sr.testing import relative_error

TINY = {"group": "O", "hidden": 1}
pytestmark = pytest.mark.usefixtures("single_thread")


def _step(model, x, y):
    """Loss of one training-mode pass and backward, the parameter gradients, the buffers after it."""
    model.train().zero_grad(set_to_none=True)
    loss = F.l1_loss(model(x), y) + model.equivariance_penalty()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, {n: b.clone() for n, b in model.named_buffers()}


def _pair(kind):
    plain = build_model(kind, **TINY)
    checkpointed = build_model(kind, checkpoint_blocks=True, **TINY)
    checkpointed.load_state_dict(plain.state_dict())
    return plain, checkpointed


@pytest.mark.parametrize("slab_bytes", [None, 1], ids=["whole-volume", "one-plane-slabs"])
@pytest.mark.parametrize("kind", KINDS)
def test_checkpointing_gives_the_same_loss_gradients_and_running_statistics(kind, slab_bytes):
    plain, checkpointed = _pair(kind)
    if slab_bytes is not None:  # blocks recomputed one depth plane at a time (halos, carried planes)
        checkpointed.slab_bytes = slab_bytes
    x, y = torch.randn(2, 9, 2, 2, 2), torch.randn(2, 3, 8, 8, 8)
    loss, grads, buffers = _step(plain, x, y)
    loss_c, grads_c, buffers_c = _step(checkpointed, x, y)
    # The recomputation runs the same kernels on the same inputs: equal up to float32 round-off
    # (1e-6 relative leaves room for a reduction order that differs between the two passes).
    assert torch.allclose(loss_c, loss, rtol=1e-6, atol=0)
    assert grads.keys() == grads_c.keys() and buffers.keys() == buffers_c.keys()
    for name in grads:
        assert torch.allclose(grads_c[name], grads[name], rtol=1e-5, atol=1e-7), name
    for name in buffers:  # running statistics updated once, not once per forward run
        assert torch.allclose(buffers_c[name], buffers[name], rtol=1e-6, atol=1e-7), name


def test_checkpointing_keeps_fewer_activations_for_backward():
    # Activations: distinct saved tensors of the batch, (B, ...) (the expanded filters are kept either
    # way; a tensor saved by two layers, or as a view, is counted once).
    saved = {}
    x, y = torch.randn(2, 9, 2, 2, 2), torch.randn(2, 3, 8, 8, 8)

    def count(t):
        if t.dim() >= 3 and t.shape[0] == x.shape[0]:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    for model in _pair("gcnn"):
        storages = {}
        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            F.l1_loss(model.train()(x), y)
        saved[model.config.checkpoint_blocks] = sum(storages.values())
    assert saved[True] < saved[False] / 2


def test_recomputation_makes_no_second_copy_of_a_block_output():
    # Each block's last nonlinearity runs outside the checkpointed part: its output is the next
    # block's input, kept anyway, so no tensor that backward computes equals a block's output.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            computed.extend(t.detach() for t in (out if isinstance(out, (tuple, list)) else [out])
                            if isinstance(t, torch.Tensor))
            return out

    _, model = _pair("gcnn")
    outputs, computed = [], []
    last_activations = [model.lift[-1]] + [block.act2 for block in model.stages]
    hooks = [act.register_forward_hook(lambda _, __, out: outputs.append(out.detach())) for act in last_activations]
    loss = F.l1_loss(model.train()(torch.randn(2, 9, 2, 2, 2)), torch.randn(2, 3, 8, 8, 8))
    for hook in hooks:
        hook.remove()
    with Record():
        loss.backward()
    assert len(outputs) == 5 and computed
    for tensor in computed:
        for out in outputs:
            copy = tensor.untyped_storage().data_ptr() != out.untyped_storage().data_ptr()
            assert not (copy and tensor.shape == out.shape and torch.equal(tensor, out))


@pytest.mark.parametrize("block", [2, 3], ids=["upsampling", "residual"])
def test_backward_of_a_block_holds_two_activations_of_its_size(block):
    # checkpoint_in_slabs: besides its input and the incoming gradient, the block's backward holds at
    # once two tensors of its output size, h and one buffer carrying the gradients back to h (then h
    # and the input gradient); the rest is a depth slab at a time.
    # (torch.utils.checkpoint replays autograd's backward: about five at once.)
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    from steerable_sr.nn.recompute import checkpoint_in_slabs

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor) and t.shape == shape:
                    created.append(weakref.ref(t))
            alive = {t.untyped_storage().data_ptr() for t in (ref() for ref in created) if t is not None}
            peak[0] = max(peak[0], len(alive))
            return out

    _, model = _pair("rgcnn")
    layers = model.stages[block]
    first = layers[0].module
    n = 8 if first.transposed else 16  # the output is 16^3
    x = torch.randn(2, first.in_type.size, n, n, n, requires_grad=True)
    out = checkpoint_in_slabs(x, layers, chunk_bytes=1)
    grad, shape, created, peak = torch.randn_like(out), out.shape, [], [0]
    with Record():
        out.backward(grad)
    assert peak[0] == 2


def test_checkpointing_is_off_in_eval_mode_and_changes_no_output():
    plain, checkpointed = _pair("rsteer")
    x = torch.randn(1, 9, 2, 2, 2)
    with torch.no_grad():
        plain(x), checkpointed(x)  # running statistics from a training-mode pass, alike
        assert torch.equal(plain.eval()(x), checkpointed.eval()(x))


def test_checkpoint_blocks_must_be_a_boolean():
    with pytest.raises(ValueError, match="checkpoint_blocks must be true or false"):
        build_model("gcnn", checkpoint_blocks="yes")


def test_training_module_takes_checkpointing_as_a_model_override():
    from steerable_sr.training import SuperResolutionModule

    module = SuperResolutionModule(kind="cnn", model_overrides={"checkpoint_blocks": True})
    assert module.model.config.checkpoint_blocks and module.hparams.model_overrides == {"checkpoint_blocks": True}


@pytest.mark.parametrize("kind", ["gcnn", "rsteer"])
def test_checkpointing_under_bf16_autocast_matches_the_step_without_it(kind):
    # The recomputation runs under the forward's autocast state: bf16 convolutions, float32 statistics.
    # Both steps round to bf16 (8 bits of mantissa, relative step 2^-8 = 0.4%) in different places,
    # which a few layers compound: the gradient (all parameters) within 1% of its norm (measured: 0.1%).
    plain, checkpointed = _pair(kind)
    checkpointed.slab_bytes = 1
    x, y = torch.randn(2, 9, 2, 2, 2), torch.randn(2, 3, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads, _ = _step(plain, x, y)
        loss_c, grads_c, _ = _step(checkpointed, x, y)
    assert torch.allclose(loss_c, loss, rtol=1e-2)
    gradient, gradient_c = (torch.cat([g[name].flatten() for name in grads]) for g in (grads, grads_c))
    assert (gradient_c - gradient).norm() <= 1e-2 * gradient.norm()


@pytest.mark.parametrize("kind, separable, recompute", [
    ("cnn", False, "autograd"), ("gcnn", False, "slabs"), ("rgcnn", False, "slabs"), ("steer", False, "slabs"),
    ("rsteer", False, "slabs"), ("gcnn", True, "autograd"), ("rgcnn", True, "autograd")])
def test_each_block_is_recomputed_as_its_layers_declare(kind, separable, recompute):
    # Slabs for the blocks of dense escnn convolutions; autograd's own backward for plain torch layers,
    # separable convolutions and the lift.
    from steerable_sr.nn.checkpointing import Recompute, recompute_of

    model = build_model(kind, separable=separable, **TINY)
    assert recompute_of(model.lift) is Recompute.AUTOGRAD
    assert [recompute_of(block) for block in model.stages] == [Recompute(recompute)] * len(model.stages)


def test_a_block_with_a_layer_of_unknown_recomputation_is_refused():
    from steerable_sr.nn.block import ConvBlock
    from steerable_sr.nn.checkpointing import recompute_of

    layers = [torch.nn.Conv3d(2, 2, 3, padding=1), torch.nn.BatchNorm3d(2), torch.nn.Dropout(),
              torch.nn.Conv3d(2, 2, 3, padding=1), torch.nn.BatchNorm3d(2), torch.nn.ReLU()]
    with pytest.raises(TypeError, match="Dropout"):
        recompute_of(ConvBlock(*layers, upsample_skip=False, skip_before_norm=False))


@pytest.mark.parametrize("upsample_skip", [False, True], ids=["identity-skip", "trilinear-skip"])
@pytest.mark.parametrize("skip_before_norm", [False, True], ids=["after-norm", "before-norm"])
def test_a_new_block_declaration_is_recomputed_in_slabs_without_a_backward_of_its_own(upsample_skip,
                                                                                        skip_before_norm):
    # Any skip and join point of a ConvBlock: the slab recomputation reads the declaration and gives
    # the output, input and parameter gradients and running statistics of autograd through the
    # block's forward, to float32 round-off (reductions in another order: 1e-5 relative). The
    # parameter gradients are compared as one vector: a convolution's bias in front of a batch norm
    # has a gradient that is zero up to round-off.
    from steerable_sr.models import EquivariantLayers, ModelConfig
    from steerable_sr.nn.block import ConvBlock
    from steerable_sr.nn.recompute import checkpoint_in_slabs

    layers = EquivariantLayers(ModelConfig(kind="rsteer", group="O", hidden=1))
    t = layers.hidden

    def make():
        first = layers.up(t) if upsample_skip else layers.conv(t, t)
        return ConvBlock(first, layers.norm(t), layers.act(t), layers.conv(t, t), layers.norm(t), layers.act(t),
                         upsample_skip=upsample_skip, skip_before_norm=skip_before_norm).train()

    block, twin = make(), make()
    twin.load_state_dict(block.state_dict())
    x = torch.randn(2, t.size, 4, 4, 4)
    n = 8 if upsample_skip else 4
    grad = torch.randn(2, t.size, n, n, n)
    results = []
    for run, module in ((lambda x: block.pre_activation(x), block),
                        (lambda x: checkpoint_in_slabs(x, twin, chunk_bytes=1), twin)):
        x_ = x.clone().requires_grad_()
        out = run(x_)
        out.backward(grad)
        gradient = torch.cat([p.grad.flatten() for p in module.parameters()])
        running = [b for name, b in module.named_buffers() if name.endswith(("running_mean", "running_var"))]
        results.append([out.detach(), x_.grad, gradient, *running])
    for ours, reference in zip(results[1], results[0]):
        assert relative_error(ours, reference) < 1e-5
