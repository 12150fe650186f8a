"""Residual blocks (skip connections): gradients vs central differences (float64), forward and
backward against PyTorch's ResNet basic block, save/load of nested architectures, and every
setting (mode, backend, dtype, seeds, caches) reaching the layers inside."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_layers import check_layer_gradients

import fastconv
from fastconv import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, ReLU, Residual, Sequential
from fastconv.layers import MAX_RESIDUAL_NESTING


def _basic_block(c_in: int, c_out: int, stride: int, seed: int, dtype=np.float64) -> Residual:
    """ResNet's basic block: conv3x3-BN-ReLU-conv3x3-BN, a 1x1 conv + BN projection when the shape changes."""
    body = [Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, rng=seed, dtype=dtype),
            BatchNorm2d(c_out, dtype=dtype), ReLU(),
            Conv2d(c_out, c_out, 3, padding=1, bias=False, rng=seed + 1, dtype=dtype), BatchNorm2d(c_out, dtype=dtype)]
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = [Conv2d(c_in, c_out, 1, stride=stride, bias=False, rng=seed + 2, dtype=dtype),
                    BatchNorm2d(c_out, dtype=dtype)]  # fmt: skip
    return Residual(body, shortcut)


def _randomise_batchnorm(block: Residual, rng: np.random.Generator) -> None:
    """Non-trivial BN scales, shifts and running statistics (the defaults 1 and 0 would hide errors)."""
    for layer in block.children():
        if isinstance(layer, BatchNorm2d):
            layer.weight.data[...] = rng.uniform(0.5, 1.5, layer.weight.data.shape)
            layer.bias.data[...] = rng.standard_normal(layer.bias.data.shape)
            layer.running_mean[...] = rng.standard_normal(layer.running_mean.shape) * 0.1
            layer.running_var[...] = rng.uniform(0.5, 2.0, layer.running_var.shape)


@pytest.mark.parametrize("c_in, c_out, stride", [(3, 3, 1), (2, 4, 2), (3, 2, 1)])
def test_residual_gradients_match_central_differences(rng, c_in, c_out, stride):
    block = _basic_block(c_in, c_out, stride, seed=1)
    _randomise_batchnorm(block, rng)
    check_layer_gradients(block, rng.standard_normal((3, c_in, 6, 5)), rng)
    names = [name for name, _ in block.named_parameters()]
    assert len(names) == len(set(names)) and all(n.startswith(("body.", "shortcut.")) for n in names)
    assert [p.name for p in block.parameters()] == names


@pytest.mark.parametrize("training", [True, False])
def test_residual_matches_pytorch_basic_block(rng, training):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    block = _basic_block(4, 6, 2, seed=3)
    _randomise_batchnorm(block, rng)
    body, short = block.body.layers, block.shortcut.layers
    ref_body = nn.Sequential(nn.Conv2d(4, 6, 3, 2, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                             nn.Conv2d(6, 6, 3, 1, 1, bias=False), nn.BatchNorm2d(6)).double()  # fmt: skip
    ref_short = nn.Sequential(nn.Conv2d(4, 6, 1, 2, bias=False), nn.BatchNorm2d(6)).double()
    for ours, theirs in zip(list(body) + list(short), list(ref_body) + list(ref_short)):
        if isinstance(ours, Conv2d):
            theirs.weight.data = torch.tensor(ours.weight.data)
        elif isinstance(ours, BatchNorm2d):
            theirs.weight.data, theirs.bias.data = torch.tensor(ours.weight.data), torch.tensor(ours.bias.data)
            theirs.running_mean.data = torch.tensor(ours.running_mean)
            theirs.running_var.data = torch.tensor(ours.running_var)
    block.train(training)
    ref_body.train(training)
    ref_short.train(training)
    x = rng.standard_normal((3, 4, 7, 6))
    xt = torch.tensor(x, requires_grad=True)
    yt = ref_body(xt) + ref_short(xt)
    y = block.forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    for p in block.parameters():
        p.zero_grad()
    np.testing.assert_allclose(block.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    theirs = [p for m in list(ref_body) + list(ref_short) for p in m.parameters()]
    assert len(theirs) == len(block.parameters())
    for p, t in zip(block.parameters(), theirs):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=p.name)
    if training:  # running statistics updated as PyTorch does (momentum 0.1, unbiased variance)
        for ours, t in zip([m for m in list(body) + list(short) if isinstance(m, BatchNorm2d)],
                           [m for m in list(ref_body) + list(ref_short) if isinstance(m, nn.BatchNorm2d)]):  # fmt: skip
            np.testing.assert_allclose(ours.running_mean, t.running_mean.numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(ours.running_var, t.running_var.numpy(), rtol=1e-10, atol=1e-12)


def _small_resnet(seed: int = 0) -> Sequential:
    inner = Residual([Conv2d(4, 4, 3, padding=1, rng=seed + 5), ReLU(), Dropout(0.3, seed=seed)])
    return Sequential(
        Conv2d(3, 4, 3, padding=1, rng=seed), BatchNorm2d(4), ReLU(),
        _basic_block(4, 4, 1, seed=seed + 1, dtype=np.float32), ReLU(),
        Residual([inner, BatchNorm2d(4)]),  # a block inside a block
        _basic_block(4, 8, 2, seed=seed + 7, dtype=np.float32), ReLU(),
        Flatten(), Linear(8 * 4 * 4, 1, rng=seed + 9),
    )  # fmt: skip


def test_model_with_residual_blocks_saves_and_loads_nested_architectures(tmp_path, rng):
    model = _small_resnet()
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    model.train()
    for _ in range(2):  # BN running statistics move away from their defaults
        model.forward(x)
    keys = list(model.state_dict())
    assert "5.body.0.body.0.weight" in keys and "6.shortcut.1.running_var" in keys and len(keys) == len(set(keys))
    assert [p.name for p in model.parameters()] == [k for k, _ in model.named_parameters()]
    model.save(tmp_path / "m.npz")
    again = fastconv.load(tmp_path / "m.npz")
    model.eval()
    np.testing.assert_array_equal(again.forward(x), model.forward(x))
    assert repr(again) == repr(model)
    # another architecture in the file (a nested layer differs): a clear error naming it
    other = _small_resnet()
    other.layers[5].body.layers[1] = BatchNorm2d(4, eps=1e-3)
    Sequential(*other.layers).save(tmp_path / "other.npz")
    nested = r"layer 5\.body\.1 is BatchNorm2d\(num_features=4, eps=0\.001\) in the file but BatchNorm2d\(num_fea"
    with pytest.raises(ValueError, match=r"other\.npz: model file holds a different architecture .*" + nested):
        model.load_weights(tmp_path / "other.npz")
    with pytest.raises(ValueError, match=r"other\.npz: its feature layers differ .*" + nested):
        model.load_backbone(tmp_path / "other.npz")
    # the same blocks written in float64 and with other dropout seeds: the same architecture
    twin = _small_resnet(seed=0).astype(np.float64)
    twin.layers[5].body.layers[0].body.layers[2] = Dropout(0.3, seed=99)
    Sequential(*twin.layers).save(tmp_path / "twin.npz")
    model.load_weights(tmp_path / "twin.npz")
    np.testing.assert_allclose(model.forward(x), twin.eval().forward(x.astype(np.float64)), rtol=1e-5, atol=1e-5)
    # a shortcut where this model has none
    extra = _small_resnet()
    extra.layers[3] = Residual(extra.layers[3].body.layers, [Conv2d(4, 4, 1, rng=0)])
    Sequential(*extra.layers).save(tmp_path / "extra.npz")
    with pytest.raises(ValueError, match=r"Residual block 3 has shortcut in the file, unlike this model's"):
        model.load_weights(tmp_path / "extra.npz")
    # settings this model's block lacks, and a plain layer where a block stands: short, exact messages
    arch = model.architecture()
    arch[3]["config"]["gate"] = 0.5
    arch[6] = {"type": "ReLU", "config": {}}
    np.savez(tmp_path / "odd.npz", format_version=np.array(1), architecture=np.array(json.dumps(arch)),
             metadata=np.array("{}"))  # fmt: skip
    with pytest.raises(ValueError, match=r"Residual block 3 has unknown settings \['gate'\] in the file"):
        model.load_weights(tmp_path / "odd.npz")
    del arch[3]["config"]["gate"]
    np.savez(tmp_path / "odd.npz", format_version=np.array(1), architecture=np.array(json.dumps(arch)),
             metadata=np.array("{}"))  # fmt: skip
    with pytest.raises(ValueError, match=r"layer 6 is ReLU\(\) in the file but Residual\(body: 5 layers, "
                                         r"shortcut: 2 layers\) in this model$"):  # fmt: skip
        model.load_weights(tmp_path / "odd.npz")


def test_a_model_file_cannot_nest_residual_blocks_without_limit(tmp_path):
    """A model file is data: nesting beyond MAX_RESIDUAL_NESTING is refused with a ValueError naming
    the file, not a RecursionError (and not after building thousands of layers)."""
    entry: dict = {"type": "ReLU", "config": {}}
    for _ in range(MAX_RESIDUAL_NESTING + 1):
        entry = {"type": "Residual", "config": {"body": [entry], "shortcut": None}}
    path = tmp_path / "path.npz"
    np.savez(path, format_version=np.array(1), architecture=np.array(json.dumps([entry])),
             metadata=np.array("{}"))  # fmt: skip
    with pytest.raises(ValueError, match=rf"path\.npz: .*blocks nest at most {MAX_RESIDUAL_NESTING} deep"):
        fastconv.load(path)
    entry = {"type": "Residual", "config": {"body": [{"type": "Nope", "config": {}}], "shortcut": None}}
    np.savez(path, format_version=np.array(1), architecture=np.array(json.dumps([entry])),
             metadata=np.array("{}"))  # fmt: skip
    with pytest.raises(ValueError, match=r"path\.npz: architecture: layer 0\.body\.0 has unknown type 'Nope'; known"):
        fastconv.load(path)
    # what a hostile file holds is shown cut to a line, however large, and nested errors name a path
    entry = {"type": "Residual", "config": {"body": "A" * 5_000_000, "shortcut": None}}
    for _ in range(3):
        entry = {"type": "Residual", "config": {"body": [{"type": "ReLU"}, entry], "shortcut": None}}
    np.savez(path, format_version=np.array(1), architecture=np.array(json.dumps([entry])),
             metadata=np.array("{}"))  # fmt: skip
    nested = r"layer 0\.body\.1\.body\.1\.body\.1 \(Residual\) has an invalid config "
    with pytest.raises(ValueError, match=nested) as err:
        fastconv.load(path)
    assert len(str(err.value)) < 1000 and "expected a list of layers, got 'AAAA" in str(err.value)


def test_residual_refuses_what_cannot_be_added(rng):
    block = Residual([Conv2d(3, 5, 3, padding=1, rng=0)])  # 3 -> 5 channels with an identity shortcut
    with pytest.raises(ValueError, match=r"the body maps x of shape \(2, 3, 4, 4\) to \(2, 5, 4, 4\) but the "
                                         r"identity shortcut gives \(2, 3, 4, 4\)"):  # fmt: skip
        block.forward(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    with pytest.raises(ValueError, match=r"layer 0 .*the body gives \(5, 4, 4\) per sample but the shortcut \(3, 4,"):
        Sequential(block).summary((3, 4, 4))
    with pytest.raises(ValueError, match="Residual: body: expected at least one layer, got an empty list"):
        Residual([])
    with pytest.raises(TypeError, match="Residual: shortcut: expected a list of layers, got 'conv'"):
        Residual([ReLU()], "conv")
    with pytest.raises(TypeError, match="Residual: body: item 1 is a str, expected a fastconv Layer"):
        Residual([ReLU(), "conv"])
    with pytest.raises(TypeError, match="Residual: body: item 1 is a int"):
        Residual([{"type": "ReLU"}, 5])
    with pytest.raises(ValueError, match=r"layer 1\.body\.0 \(Conv2d\(4, 4, 1\)\) cannot take input shape \(3, 4, 4\)"):
        Sequential(ReLU(), Residual([Conv2d(4, 4, 1, rng=0)])).summary((3, 4, 4))
    with pytest.raises(TypeError, match="Residual: body: expected layers or architecture entries"):
        Residual([{"type": "ReLU"}, ReLU()])
    # blocks built one by one in code nest no deeper than a file may: what is saved loads
    deep = Residual([ReLU()])
    for _ in range(MAX_RESIDUAL_NESTING - 1):
        deep = Residual([deep])
    with pytest.raises(ValueError, match=f"blocks nest at most {MAX_RESIDUAL_NESTING} deep, this one 17"):
        Residual([deep])
    Sequential.from_architecture(Sequential(deep).architecture())  # 16 deep: fine
    # one layer object in two places would overwrite its own forward cache: refused
    relu, conv = ReLU(), Conv2d(3, 3, 1, rng=0)
    with pytest.raises(ValueError, match=r"Sequential: the layer object ReLU\(\) appears twice"):
        Sequential(conv, relu, Residual([Conv2d(3, 3, 1, rng=1), relu]))
    with pytest.raises(ValueError, match=r"Residual: the layer object Conv2d\(3, 3, 1\) appears twice"):
        Residual([conv], [conv])
    block = Residual([conv])
    with pytest.raises(ValueError, match=r"appears twice"):
        Sequential(block, block)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        Residual([ReLU()]).backward(np.ones((1, 1)))


def test_a_block_runs_in_its_inputs_dtype_and_keeps_its_layers_backends(rng):
    """A branch without parameters computes in x's dtype (no cast to float32), a float32 layer
    given float64 is refused as when bare, and wrapping a layer keeps the backend set on it."""
    model = Sequential(Conv2d(3, 3, 1, dtype=np.float64, rng=0), Residual([ReLU()]),
                       Residual([Conv2d(3, 3, 1, dtype=np.float64, rng=1)], [fastconv.AvgPool2d(1)]))  # fmt: skip
    x = rng.standard_normal((2, 3, 4, 4))
    h = model.layers[0].forward(x)
    r = np.maximum(h, 0) + h  # block 1: relu(h) + h; block 2: conv(r) + avgpool1(r) = conv(r) + r
    want = model.layers[2].body.layers[0].forward(r) + r
    y = model.forward(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)
    model.backward(np.ones_like(y))  # no float32 anywhere to clash with
    with pytest.raises(TypeError, match="expected dtype float64 to match x, got float32"):
        Residual([Conv2d(3, 3, 1, rng=0)]).forward(x)
    conv = Conv2d(3, 3, 3, backend="python", rng=0)
    block = Residual([conv])
    assert conv.backend == "python" and block.backend is None
    block.backend = "numpy"
    assert conv.backend == "numpy"


def test_evaluation_gives_back_each_inner_layers_own_mode(rng):
    """A frozen BatchNorm inside a block (eval mode in a training model) is still frozen after
    predict(), which runs everything in eval mode and then restores the modes layer by layer."""
    frozen = BatchNorm2d(3)
    model = Sequential(Conv2d(3, 3, 1, rng=0), Residual([Conv2d(3, 3, 1, rng=1), frozen]), BatchNorm2d(3))
    model.train()
    frozen.eval()
    model.predict(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    assert model.layers[1].training and not frozen.training and model.layers[2].training


def test_every_setting_reaches_the_layers_inside(rng):
    model = _small_resnet()
    model.set_backend("numpy")
    assert {layer.backend for layer in model.modules()} == {"numpy"}
    model.eval()
    assert not any(layer.training for layer in model.modules())
    model.train()
    assert all(layer.training for layer in model.modules())
    model.astype(np.float64)
    nested_bn = model.layers[5].body.layers[1]
    assert nested_bn.running_mean.dtype == np.float64
    assert model.layers[6].shortcut.layers[0].weight.data.dtype == np.float64
    # the nested Dropout follows the model's seed
    x = rng.standard_normal((4, 3, 8, 8))
    outs = []
    for _ in range(2):
        model.reseed(123)
        outs.append(model.forward(x))
    np.testing.assert_array_equal(outs[0], outs[1])
    model.reseed(124)
    assert not np.array_equal(model.forward(x), outs[0])
    # recompute_batchnorm finds the BatchNorms inside blocks
    from fastconv.train import recompute_batchnorm

    nested_bn.running_mean[...] = 99.0
    recompute_batchnorm(model, x)
    assert np.all(np.abs(nested_bn.running_mean) < 50)


def test_an_evaluation_between_forward_and_backward_changes_no_gradient(rng):
    model = _small_resnet().astype(np.float64)
    model.reseed(0)
    xb, xv = rng.standard_normal((4, 3, 8, 8)), rng.standard_normal((6, 3, 8, 8))
    dy = rng.standard_normal((4, 1))
    model.zero_grad()
    model.forward(xb)
    model.backward(dy)
    want = [p.grad.copy() for p in model.parameters()]
    model.reseed(0)
    model.zero_grad()
    model.forward(xb)
    model.predict(xv)  # eval mode inside, every nested cache put back afterwards
    model.backward(dy)
    for p, w in zip(model.parameters(), want):
        np.testing.assert_array_equal(p.grad, w, err_msg=p.name)


def test_first_layer_residual_skips_the_input_gradient_but_not_the_weights(rng):
    block = _basic_block(2, 3, 2, seed=4)
    model = Sequential(block, Flatten(), Linear(3 * 3 * 3, 1, rng=0, dtype=np.float64))
    x = rng.standard_normal((2, 2, 5, 5))
    dy = rng.standard_normal((2, 1))
    model.zero_grad()
    model.forward(x)
    assert model.backward(dy) is None
    skipped = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.forward(x)
    dx = model.backward(dy, need_input_grad=True)
    assert dx.shape == x.shape
    for p, s in zip(model.parameters(), skipped):
        np.testing.assert_allclose(p.grad, s, rtol=1e-12, atol=1e-14, err_msg=p.name)
    assert block.body.layers[0].requires_input_grad  # the flag is set only for the call


def test_summary_expands_blocks_and_counts_every_flop():
    model = _small_resnet()
    text = model.summary((3, 8, 8))
    assert "5.body.0.body.0: Conv2d(4, 4, 3, padding=1)" in text and "6: Residual: body + shortcut" in text
    leaves = [m for m in model.modules() if not isinstance(m, Residual)]
    shapes = {}

    def walk(seq, shape):
        for layer in seq.layers:
            out = layer.output_shape(shape)
            if isinstance(layer, Residual):
                walk(layer.body, shape)
                if layer.shortcut is not None:
                    walk(layer.shortcut, shape)
                shapes.setdefault("adds", []).append(math.prod(out))
            else:
                shapes.setdefault("leaf", []).append(layer.flops(shape))
            shape = out

    walk(model, (3, 8, 8))
    assert len(shapes["leaf"]) == len(leaves)
    assert model.flops((3, 8, 8)) == sum(shapes["leaf"]) + sum(shapes["adds"])
    block = model.layers[3]  # identity shortcut, every body layer keeps (4, 8, 8)
    assert block.flops((4, 8, 8)) == sum(layer.flops((4, 8, 8)) for layer in block.body.layers) + 4 * 8 * 8
    total = sum(p.size for p in model.parameters())
    assert f"total parameters: {total:,}" in text


@pytest.mark.parametrize("widths, n", [((16, 32, 64), 3), ((8, 16), 1), ((4,), 2)])
def test_zoo_resnet_is_the_papers_cifar_design(widths, n):
    """zoo.resnet: 2 + 2*n*stages weighted layers, a projection exactly where a stage starts, the
    parameter count of the design worked out layer by layer, and one logit per output."""
    model = fastconv.zoo.resnet(num_outputs=10, widths=widths, blocks_per_stage=n, seed=0)
    blocks = [layer for layer in model.layers if isinstance(layer, Residual)]
    assert len(blocks) == n * len(widths)
    assert [b.shortcut is not None for b in blocks] == [s > 0 and i == 0 for s in range(len(widths)) for i in range(n)]
    weighted = [m for m in model.modules() if isinstance(m, (Conv2d, Linear))]
    assert len(weighted) - sum(b.shortcut is not None for b in blocks) == 2 + 2 * n * len(widths)
    params = 3 * widths[0] * 9 + 2 * widths[0]  # stem conv (no bias) + BN
    cin = widths[0]
    for w in widths:
        for _ in range(n):
            params += cin * w * 9 + w * w * 9 + 4 * w  # two convs, two BNs
            if cin != w:
                params += cin * w + 2 * w  # the 1x1 projection and its BN
            cin = w
    params += widths[-1] * 10 + 10
    assert model.num_parameters() == params
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 10)).astype(np.float32)
    assert model.forward(x).shape == (2, 10)
    np.testing.assert_array_equal(fastconv.zoo.resnet(num_outputs=10, widths=widths, blocks_per_stage=n).forward(x),
                                  model.forward(x))  # the seed fixes the weights  # fmt: skip
    with pytest.raises(ValueError, match="blocks_per_stage: expected a positive int, got 0"):
        fastconv.zoo.resnet(blocks_per_stage=0)
    with pytest.raises(ValueError, match=r"widths: expected a positive int, got 0"):
        fastconv.zoo.resnet(widths=(16, 0))
    with pytest.raises(TypeError, match=r"widths: expected positive ints, one per stage, got 16"):
        fastconv.zoo.resnet(widths=16)
    with pytest.raises(TypeError, match=r"blocks_per_stage: expected a positive int, got True \(bool\)"):
        fastconv.zoo.resnet(blocks_per_stage=True)
    with pytest.raises(ValueError, match="num_outputs: expected a positive int, got 0"):
        fastconv.zoo.resnet(num_outputs=0)
    with pytest.raises(ValueError, match="dropout: expected a number in"):
        fastconv.zoo.resnet(dropout="0.5")
    numpy_ints = fastconv.zoo.resnet(widths=np.array([4, 8]), blocks_per_stage=np.int64(1), num_outputs=np.int64(2))
    assert numpy_ints.architecture() == fastconv.zoo.resnet(widths=[4, 8], num_outputs=2).architecture()
    with pytest.raises(ValueError, match=r"dropout: expected a number in \[0, 1\), got 1.0"):
        fastconv.zoo.resnet(dropout=1.0)
    with_dropout = fastconv.zoo.resnet(dropout=0.3)
    assert [type(m).__name__ for m in with_dropout.layers[-3:]] == ["Flatten", "Dropout", "Linear"]
