"""Backbones train one tiny epoch; the deep linear head's layer inputs and partial products are consistent."""

import pytest
import torch

from nclab.models import MLP, VGG16, DeepLinearHead, NCNet, ResNet18, build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- head bookkeeping
@pytest.mark.parametrize("depth", [1, 2, 3, 6])
@pytest.mark.parametrize("bias", [True, False])
def test_head_inputs_weights_and_partial_products(depth, bias):
    head = DeepLinearHead(in_features=7, depth=depth, width=5, num_classes=4, bias=bias).double()
    h = torch.randn(9, 7, dtype=torch.float64)
    logits, inputs = head.forward_with_inputs(h)
    assert torch.allclose(logits, head(h)) and logits.shape == (9, 4)
    assert head.widths == (7,) + (5,) * (depth - 1) and len(head.linears) == depth == len(inputs)
    W = head.weights()
    dims = [*head.widths, 4]
    assert [tuple(w.shape) for w in W] == [(dims[j + 1], dims[j]) for j in range(depth)]
    assert all(w is layer.weight for w, layer in zip(W, head.linears))
    assert (head.bias is not None) == bias and all(layer.bias is None for layer in head.linears[:-1])
    b = head.bias if bias else 0
    products = head.partial_products()  # W_M..W_j, shape (K, d_j)
    assert [tuple(p.shape) for p in products] == [(4, d) for d in head.widths]
    for j in range(depth):  # H_j = W_{j-1}..W_1 h, and W_M..W_j H_j + b = logits for every j
        expected = h
        for w in W[:j]:
            expected = expected @ w.T
        assert torch.allclose(inputs[j], expected)
        assert torch.allclose(inputs[j] @ products[j].T + b, logits)
    assert inputs[0] is h


def test_head_per_layer_widths_and_errors():
    head = DeepLinearHead(16, 4, [8, 2, 8], 3, bias=False)  # a bottleneck of width 2
    assert head.widths == (16, 8, 2, 8) and head.partial_products()[0].shape == (3, 16)
    with pytest.raises(ValueError, match="3 hidden widths for depth 4"):
        DeepLinearHead(16, 4, [8, 8], 3)
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        DeepLinearHead(16, 0, 8, 3)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        DeepLinearHead(16, 2, 8, 1)
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        DeepLinearHead(16, 2, 0, 3)


# ---------------------------------------------------------------- backbones: one tiny epoch each
def one_epoch(model, X, y, batch=2):
    """SGD over X in mini-batches; returns the losses."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for i in range(0, len(X), batch):
        loss = torch.nn.functional.cross_entropy(model(X[i : i + batch]), y[i : i + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "arch, in_shape", [("mlp", (1, 8, 8)), ("mlp", (3, 32, 32)), ("resnet18", (3, 16, 16)), ("vgg16", (3, 32, 32))]
)
def test_backbone_with_deep_head_trains_one_epoch(arch, in_shape):
    model = build_model(arch, in_shape, num_classes=10, head_depth=3, head_width=32, bias=True)
    X, y = torch.randn(4, *in_shape), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    losses = one_epoch(model, X, y)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # every parameter got a gradient
    model.eval()
    with torch.no_grad():
        h = model.features(X[:1])  # eval mode: batch norm takes a single sample
        logits, inputs = model.forward_with_inputs(X[:1])
    assert h.shape == (1, model.head.widths[0]) and torch.allclose(inputs[0], h)
    assert torch.allclose(logits, model(X[:1]).detach())


def test_backbone_feature_sizes_and_input_channels():
    assert ResNet18(in_channels=1)(torch.randn(2, 1, 12, 12)).shape == (2, 512)
    assert VGG16(in_channels=1, batch_norm=False)(torch.randn(2, 1, 40, 48)).shape == (2, 512)
    mlp = MLP(in_features=12, width=6, depth=2, batch_norm=False)
    assert mlp(torch.randn(3, 3, 2, 2)).shape == (3, 6) and mlp.out_features == 6
    assert sum(isinstance(m, torch.nn.Linear) for m in MLP(12, 6).modules()) == 6  # the paper's 6 layers
    assert sum(isinstance(m, torch.nn.Conv2d) for m in VGG16().modules()) == 13
    with pytest.raises(ValueError, match="at least 32x32, got 28x28"):
        VGG16()(torch.randn(2, 3, 28, 28))


def test_build_model_options_and_errors():
    model = build_model("mlp", (1, 8, 8), 4, head_depth=2, head_width=16, bias=False, mlp_width=24, mlp_depth=3)
    assert isinstance(model, NCNet) and model.backbone.out_features == 24 and model.head.widths == (24, 16)
    assert model.head.bias is None
    with pytest.raises(ValueError, match="unknown arch 'resnet50'"):
        build_model("resnet50", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="in_shape must be three positive integers"):
        build_model("mlp", (784,), 10)
    with pytest.raises(ValueError, match="vgg16 needs inputs of at least 32x32, got 28x28"):
        build_model("vgg16", (1, 28, 28), 10)
