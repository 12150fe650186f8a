"""Sequential: composition, modes, summary numbers, state dicts, model files (round trip,
atomic writes, clear errors for every kind of bad file) and the catnet builder."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastconv
import fastconv.layers as L
import fastconv.model as M
from fastconv import (
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    catnet,
)


def tiny_model(dtype=np.float64, batchnorm=True) -> Sequential:
    layers = [Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=1)]
    if batchnorm:
        layers.append(BatchNorm2d(3, dtype=dtype))
    layers += [ReLU(), MaxPool2d(2), Flatten(), Dropout(0.5, seed=2), Linear(3 * 2 * 2, 2, dtype=dtype, rng=3)]
    return Sequential(*layers)


@pytest.fixture
def x(rng) -> np.ndarray:
    return rng.standard_normal((3, 2, 4, 4))


# --- composition and modes ---------------------------------------------------------------


def test_forward_is_the_composition_of_the_layers(x):
    model = tiny_model().eval()
    h = x
    for layer in model.layers:
        h = layer.forward(h)
    np.testing.assert_array_equal(model(x), h)
    assert model(x).shape == (3, 2)


def test_parameter_names_follow_layer_indices():
    names = [p.name for p in tiny_model().parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "6.weight", "6.bias"]
    assert tiny_model().num_parameters() == (2 * 3 * 9 + 3) + (3 + 3) + (12 * 2 + 2)


def test_backward_returns_input_gradient_only_when_asked(monkeypatch, x):
    calls = []
    real = L.K.conv2d_backward

    def spy(*args, **kwargs):
        calls.append(kwargs["need_dx"])
        return real(*args, **kwargs)

    monkeypatch.setattr(L.K, "conv2d_backward", spy)
    model = tiny_model()
    dy = np.ones((3, 2))
    model(x)
    assert model.backward(dy) is None
    model(x)
    dx = model.backward(dy, need_input_grad=True)
    assert dx.shape == x.shape
    # The first conv skipped its input gradient the first time and computed it the second time.
    assert calls == [False, True]


@pytest.mark.parametrize("how", ["predict", "predict_logits"])
def test_an_evaluation_between_forward_and_backward_leaves_the_gradients_alone(rng, x, how):
    # Validation or a quick look at other images between a training forward and its backward:
    # the backward must still see the training batch (same batch size, so nothing would fail).
    from fastconv.train import predict_logits

    other = rng.standard_normal(x.shape)
    dy = rng.standard_normal((len(x), 2))

    def gradients(look: bool) -> list[np.ndarray]:
        model = tiny_model().reseed(3).train()
        model(x)
        if look:
            model.predict(other) if how == "predict" else predict_logits(model, other, tta=True)
            assert model.training
        model.zero_grad()
        dx = model.backward(dy, need_input_grad=True)
        return [dx, *(p.grad.copy() for p in model.parameters())]

    for got, want in zip(gradients(True), gradients(False)):
        np.testing.assert_array_equal(got, want)


def test_evaluating_restores_each_layers_own_mode(x):
    model = tiny_model().train()
    model.layers[1].eval()  # a BatchNorm frozen on purpose
    model.predict(x)
    assert model.training and model.layers[0].training and not model.layers[1].training


def test_a_slice_is_a_sequential_of_the_same_layers(x):
    model = tiny_model().eval()
    features = model[:4]
    assert isinstance(features, Sequential) and not features.training
    assert all(a is b for a, b in zip(features.layers, model.layers[:4]))
    np.testing.assert_array_equal(model[4:](features(x)), model(x))
    assert isinstance(model[-1], L.Linear) and len(model[::2]) == 4


def test_layers_shared_by_two_models_keep_working_in_both(rng):
    # A feature extractor or head shared with a second model: the head's backward must not leave
    # its first layer unable to pass gradients on inside the full model, nor rename its weights.
    full = Sequential(Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=1), ReLU(), Flatten(),
                      Linear(3 * 4 * 4, 1, dtype=np.float64, rng=2))  # fmt: skip
    names = [name for name, _ in full.named_parameters()]
    head = Sequential(*full.layers[3:])
    assert [name for name, _ in head.named_parameters()] == ["0.weight", "0.bias"]
    assert [name for name, _ in full.named_parameters()] == names == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert list(full.state_dict()) == names
    x = rng.standard_normal((2, 2, 4, 4))
    dy = rng.standard_normal((2, 1))
    full(x)
    full.zero_grad()
    full.backward(dy)
    expected = [p.grad.copy() for p in full.parameters()]
    head(full.layers[2](full.layers[1](full.layers[0](x))))
    assert head.backward(dy) is None
    full(x)
    full.zero_grad()
    full.backward(dy)
    for p, g in zip(full.parameters(), expected):
        np.testing.assert_allclose(p.grad, g, rtol=1e-12)
    assert full.layers[3].requires_input_grad and full.layers[0].requires_input_grad


def test_zero_grad_clears_every_gradient(x):
    model = tiny_model()
    model(x)
    model.backward(np.ones((3, 2)))
    assert all(p.grad.any() for p in model.parameters())
    model.zero_grad()
    assert not any(p.grad.any() for p in model.parameters())


def test_train_and_eval_propagate_to_layers(x):
    model = tiny_model()
    assert all(layer.training for layer in model)
    model.eval()
    assert not model.training and not any(layer.training for layer in model)
    a, b = model(x), model(x)
    np.testing.assert_array_equal(a, b)  # no dropout, no batch statistics in eval mode
    model.train()
    assert all(layer.training for layer in model)


def test_reseed_makes_training_forward_reproducible(x):
    model = tiny_model()
    model.reseed(5)
    a = model(x)
    b = model(x)
    model.reseed(5)
    np.testing.assert_array_equal(model(x), a)
    assert not np.array_equal(a, b)


def test_set_backend_validates_and_sets_every_layer(x):
    model = tiny_model(batchnorm=False).eval()
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("no-such-backend")
    ref = model.set_backend("python")(x)
    assert all(layer.backend == "python" for layer in model)
    for name in fastconv.available_backends():
        np.testing.assert_allclose(model.set_backend(name)(x), ref, rtol=1e-10, atol=1e-12, err_msg=name)


def test_forward_casts_float_input_to_the_model_dtype(x):
    model = tiny_model(dtype=np.float32).eval()
    y = model(x)  # float64 input
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, model(x.astype(np.float32)))


def test_predict_batches_equal_one_forward_and_restore_mode(x):
    model = tiny_model()
    big = np.concatenate([x] * 5)
    out = model.predict(big, batch_size=4)
    assert model.training
    np.testing.assert_allclose(out, model.eval()(big), rtol=1e-12)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_an_empty_batch_flows_through_forward_and_backward(batchnorm):
    """N = 0 gives (0, outputs) logits and a (0, C, H, W) input gradient (Flatten must not ask
    reshape to infer a width from zero elements). BatchNorm in training mode has no batch
    statistics to take and refuses, as PyTorch does, so that case runs in eval mode."""
    model = tiny_model(batchnorm=batchnorm)
    if batchnorm:
        model.eval()
    x0 = np.zeros((0, 2, 4, 4))
    assert model(x0).shape == (0, 2)
    assert model.backward(np.zeros((0, 2)), need_input_grad=True).shape == (0, 2, 4, 4)


def test_sequential_rejects_non_layers():
    with pytest.raises(TypeError, match="layer 1"):
        Sequential(ReLU(), "conv")


# --- summary ------------------------------------------------------------------------------


def _catnet_expected(image_size: int, width: int = 16) -> tuple[list[tuple[int, ...]], int, int]:
    """Per-layer output shapes, parameter total and forward FLOP of DESIGN.md's catnet, from the formulas."""
    shapes, params, flops = [], 0, 0
    c, s = 3, image_size
    for cout, pool in ((width, False), (width, True), (2 * width, True), (4 * width, True)):
        params += c * cout * 9 + cout
        flops += 2 * cout * s * s * c * 9 + cout * s * s  # conv (pad 1 keeps the size) + ReLU
        shapes += [(cout, s, s), (cout, s, s)]
        c = cout
        if pool:
            flops += c * (s // 2) * (s // 2) * 4
            s //= 2
            shapes.append((c, s, s))
    feat = c * s * s
    params += feat + 1
    flops += 2 * feat
    shapes += [(feat,), (feat,), (1,)]
    return shapes, params, flops


@pytest.mark.parametrize("image_size", [64, 32])
def test_catnet_summary_numbers(image_size):
    model = catnet(image_size=image_size)
    shapes, params, flops = _catnet_expected(image_size)
    text = model.summary((3, image_size, image_size))
    assert f"total parameters: {params:,}" in text
    assert f"forward FLOPs per image: {flops:,}" in text
    assert model.num_parameters() == params and model.flops((3, image_size, image_size)) == flops
    rows = [line for line in text.splitlines() if line.split(":")[0].isdigit()]
    assert len(rows) == len(model) == len(shapes)
    for row, shape in zip(rows, shapes):
        assert str(shape) in row
    if image_size == 64:
        assert params == 30001  # DESIGN.md: 448 + 2320 + 4640 + 18496 + (4096 + 1)


def test_summary_accepts_a_batched_shape_and_reports_bad_shapes():
    model = catnet(image_size=32)
    assert model.summary((7, 3, 32, 32)) == model.summary((3, 32, 32))
    with pytest.raises(ValueError, match="layer 13"):
        model.summary((3, 64, 64))  # the Linear layer was built for 32x32 input


# --- state dicts ----------------------------------------------------------------------------


def test_state_dict_holds_copies_of_parameters_and_buffers(x):
    model = tiny_model()
    model(x)
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "6.weight",
                           "6.bias"]
    np.testing.assert_array_equal(state["1.running_mean"], model[1].running_mean)
    state["0.weight"][:] = 0
    assert model[0].weight.data.any()


def test_load_state_dict_round_trip(x):
    a, b = tiny_model(), tiny_model()
    b[0].weight.data += 1
    a.train()(x)  # moves the batch-norm running statistics away from their initial values
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.eval()(x), b.eval()(x))


def test_load_state_dict_reports_missing_unexpected_and_mismatched_keys():
    model = tiny_model()
    before = model.state_dict()
    state = model.state_dict()
    del state["0.bias"]
    state["9.weight"] = np.zeros(3)
    state["6.weight"] = np.zeros((3, 12))
    with pytest.raises(ValueError) as err:
        model.load_state_dict(state)
    msg = str(err.value)
    assert "missing keys ['0.bias']" in msg and "unexpected keys ['9.weight']" in msg
    assert "6.weight: shape mismatch, model has (2, 12), state has (3, 12)" in msg
    for key, value in model.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(value, before[key])


def test_load_state_dict_non_strict_ignores_missing_and_unexpected_keys():
    model = tiny_model()
    model.load_state_dict({"0.bias": np.full(3, 7.0), "extra": np.zeros(1)}, strict=False)
    np.testing.assert_array_equal(model[0].bias.data, 7.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        model.load_state_dict({"0.bias": np.zeros(4)}, strict=False)


# --- model files -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path, rng, dtype):
    model = catnet(image_size=16, batchnorm=True, width=4, seed=3, dtype=dtype)
    images = rng.standard_normal((4, 3, 16, 16)).astype(dtype)
    model.train()(images)  # non-trivial running statistics
    metadata = {"mean": np.array([0.5, 0.4, 0.3]), "classes": ["not-cat", "cat"], "image_size": 16}
    metadata["acc"] = np.float32(1)
    path = model.save(tmp_path / "model.npz", metadata)
    loaded, meta = fastconv.model.load_with_metadata(path)
    assert meta == {"mean": [0.5, 0.4, 0.3], "classes": ["not-cat", "cat"], "image_size": 16, "acc": 1.0}
    assert loaded.architecture() == model.architecture()
    assert not loaded.training and loaded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded(images), model.eval()(images))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    assert fastconv.load(path).architecture() == model.architecture()


def test_model_file_is_a_plain_npz_without_pickles(tmp_path):
    path = catnet(image_size=8, width=2).save(tmp_path / "m.npz", {"note": "hi"})
    with np.load(path, allow_pickle=False) as z:
        assert int(z["format_version"]) == M.FORMAT_VERSION
        arch = json.loads(str(z["architecture"]))
        assert [e["type"] for e in arch][:3] == ["Conv2d", "ReLU", "Conv2d"]
        assert json.loads(str(z["metadata"])) == {"note": "hi"}
        assert "state/0.weight" in z.files
        assert all(z[k].dtype != object for k in z.files)


def test_load_weights_into_the_same_architecture_and_reject_another(tmp_path, x):
    source = tiny_model()
    source(x)
    path = source.save(tmp_path / "m.npz", {"k": 1})
    target = tiny_model()
    assert target.load_weights(path) == {"k": 1}
    np.testing.assert_array_equal(target.eval()(x), source.eval()(x))
    other = catnet(image_size=16, width=2)
    with pytest.raises(ValueError, match=r"m\.npz: model file holds a different architecture .* layer 0 is Conv2d"):
        other.load_weights(path)
    # dtype and dropout seeds do not make an architecture different
    tiny_model(dtype=np.float32).load_weights(path)


def _write_old(path: Path) -> bytes:
    catnet(image_size=8, width=2, seed=1).save(path, {"version": "old"})
    return path.read_bytes()


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = _write_old(path)

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(M.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        catnet(image_size=8, width=2, seed=2).save(path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["model.npz"]  # the temporary file was removed


def test_save_is_atomic_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = _write_old(path)
    monkeypatch.setattr(M.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        catnet(image_size=8, width=2, seed=2).save(path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["model.npz"]
    _, meta = fastconv.model.load_with_metadata(path)
    assert meta == {"version": "old"}


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "model.npz"
    _write_old(path)
    catnet(image_size=8, width=2, seed=2).save(path, {"version": "new"})
    assert fastconv.model.load_with_metadata(path)[1] == {"version": "new"}


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        fastconv.load(tmp_path / "nope.npz")


def test_load_truncated_file(tmp_path):
    path = tmp_path / "model.npz"
    data = _write_old(path)
    for cut in (len(data) // 2, len(data) - 10, 30):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"model\.npz: .*(corrupt or truncated|not a fastconv model file)"):
            fastconv.load(path)


def test_load_corrupted_bytes(tmp_path):
    path = tmp_path / "model.npz"
    data = bytearray(_write_old(path))
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("state/0.weight.npy")
    # Flip bytes inside the stored weights: the zip CRC check must catch it.
    start = info.header_offset + 30 + len(info.filename) + 200
    data[start : start + 4] = bytes(b ^ 0xFF for b in data[start : start + 4])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.npz: .*corrupt"):
        fastconv.load(path)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"this is a text file, not a model\n", r"model file \(not an \.npz archive; it starts with b'this i'\)"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", r"not an \.npz archive; it starts with b'\\xff\\xd8"),  # JPEG, not "pickled"
        (b"", "not a fastconv model file"),
    ],
)
def test_load_non_npz_file(tmp_path, content, match):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        fastconv.load(path)


def test_load_plain_npy_file(tmp_path):
    path = tmp_path / "model.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match=r"model\.npy: not a fastconv model file \(a single \.npy array"):
        fastconv.load(path)


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, format_version=np.array(1), architecture=np.array([{"type": "Conv2d"}], dtype=object))
    with pytest.raises(ValueError, match=r"evil\.npz: not a fastconv model file \(it contains pickled"):
        fastconv.load(path)


def test_load_bounds_what_a_file_may_unpack_to(tmp_path, monkeypatch):
    """A few hundred KB of zip can inflate to gigabytes: the sizes the zip declares are added
    up before anything is decompressed, and entries that are not ours are never decompressed."""
    good = catnet(image_size=8, width=2)
    with np.load(good.save(tmp_path / "good.npz"), allow_pickle=False) as z:
        parts = {k: z[k] for k in z.files}
    ours = sum(a.nbytes for a in parts.values())
    monkeypatch.setattr(M, "MAX_MODEL_BYTES", ours + 4096)  # npy headers fit in the margin
    np.savez_compressed(tmp_path / "extra.npz", **parts, junk=np.zeros(10**6, np.float32))  # 4 MB, 4 KB zipped
    np.testing.assert_array_equal(fastconv.load(tmp_path / "extra.npz").layers[0].weight.data, parts["state/0.weight"])
    big = {**parts, "state/0.weight": np.zeros(10**6, np.float32)}
    np.savez_compressed(tmp_path / "big.npz", **big)
    with pytest.raises(ValueError, match=r"big\.npz: .*entries unpack to [\d,]+ bytes, more than"):
        fastconv.load(tmp_path / "big.npz")


def test_load_reports_pathological_json_and_configs(tmp_path):
    good = catnet(image_size=8, width=2)
    with np.load(good.save(tmp_path / "good.npz"), allow_pickle=False) as z:
        parts = {k: z[k] for k in z.files}
    cases = {
        "deep": ("architecture", "[" * 200_000, "architecture entry is not valid JSON"),
        "digits": ("metadata", '{"a": ' + "9" * 5000 + "}", "metadata entry is not valid JSON"),
    }
    for name, (key, text, words) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **{**parts, key: np.array(text)})
        with pytest.raises(ValueError, match=rf"{name}\.npz: {words}"):
            fastconv.load(tmp_path / f"{name}.npz")
    arch = good.architecture()
    arch[0]["config"] = [1, 2]  # a list where a dict belongs
    np.savez(tmp_path / "cfg.npz", **{**parts, "architecture": np.array(json.dumps(arch))})
    for method in (good.load_weights, good.load_backbone):
        with pytest.raises(ValueError, match=r"cfg\.npz: .*layer 0 is"):
            method(tmp_path / "cfg.npz")


def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_load_reports_missing_entries_bad_versions_and_bad_json(tmp_path):
    good = catnet(image_size=8, width=2)
    with np.load(good.save(tmp_path / "good.npz"), allow_pickle=False) as z:
        parts = {k: z[k] for k in z.files}
    cases = {
        "no_arch": ({k: v for k, v in parts.items() if k != "architecture"}, "no 'architecture' entry"),
        "future": ({**parts, "format_version": np.array(99)}, "format_version 99 is not supported"),
        "badjson": ({**parts, "architecture": np.array("[{")}, "architecture entry is not valid JSON"),
        "notstr": ({**parts, "metadata": np.zeros(2)}, "metadata entry is not a JSON string"),
        "unknown": (
            {**parts, "architecture": np.array(json.dumps([{"type": "Conv3d", "config": {}}]))},
            "unknown type 'Conv3d'",
        ),
        "badconfig": (
            {**parts, "architecture": np.array(json.dumps([{"type": "ReLU", "config": {"inplace": True}}]))},
            r"layer 0 \(ReLU\) has an invalid config",
        ),
        "noweights": ({k: v for k, v in parts.items() if k != "state/0.weight"}, r"missing keys \['0.weight'\]"),
        "badshape": ({**parts, "state/13.weight": np.zeros((1, 7), np.float32)}, "13.weight: shape mismatch"),
        # an .npz of someone else's arrays: the error lists what the file does hold
        "foreign": ({"a": np.zeros(2), "b": np.ones(3)}, r"no 'format_version' entry; has \['a', 'b'\]"),
    }
    for name, (arrays, match) in cases.items():
        path = _write_npz(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(ValueError, match=match) as err:
            fastconv.load(path)
        assert f"{name}.npz" in str(err.value), name


# --- catnet -------------------------------------------------------------------------------


def test_catnet_default_is_the_design_network():
    model = catnet()
    expected = [
        ("Conv2d", {"in_channels": 3, "out_channels": 16, "kernel_size": 3, "padding": 1, "stride": 1}),
        ("ReLU", {}),
        ("Conv2d", {"in_channels": 16, "out_channels": 16, "kernel_size": 3, "padding": 1, "stride": 1}),
        ("ReLU", {}),
        ("MaxPool2d", {"kernel_size": 2, "stride": 2}),
        ("Conv2d", {"in_channels": 16, "out_channels": 32, "kernel_size": 3, "padding": 1, "stride": 1}),
        ("ReLU", {}),
        ("MaxPool2d", {"kernel_size": 2, "stride": 2}),
        ("Conv2d", {"in_channels": 32, "out_channels": 64, "kernel_size": 3, "padding": 1, "stride": 1}),
        ("ReLU", {}),
        ("MaxPool2d", {"kernel_size": 2, "stride": 2}),
        ("Flatten", {}),
        ("Dropout", {"p": 0.5}),
        ("Linear", {"in_features": 64 * 8 * 8, "out_features": 1}),
    ]
    arch = model.architecture()
    assert [e["type"] for e in arch] == [t for t, _ in expected]
    for entry, (_, config) in zip(arch, expected):
        assert {k: entry["config"][k] for k in config} == config
    assert model.dtype == np.float32
    y = model.eval()(np.zeros((2, 3, 64, 64), np.float32))
    assert y.shape == (2, 1) and y.dtype == np.float32


def test_catnet_variants():
    cifar = catnet(image_size=32)
    assert cifar[-1].in_features == 64 * 4 * 4
    assert cifar(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 1)
    bn = catnet(batchnorm=True, dropout=0.0, num_outputs=2, width=8, in_channels=1, image_size=24)
    types = [type(layer).__name__ for layer in bn]
    assert types[:3] == ["Conv2d", "BatchNorm2d", "ReLU"] and "Dropout" not in types
    assert bn[0].bias is None and bn[-1].out_features == 2 and bn[-1].in_features == 32 * 3 * 3
    with pytest.raises(ValueError, match="image_size"):
        catnet(image_size=4)


def test_catnet_seed_fixes_the_weights():
    a, b, c = catnet(seed=1), catnet(seed=1), catnet(seed=2)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        np.testing.assert_array_equal(va, vb)
        if k.endswith("weight"):
            assert not np.array_equal(va, vc)


def test_catnet_backend_argument():
    model = catnet(backend="python", image_size=8, width=2)
    assert {layer.backend for layer in model} == {"python"}


def test_saved_file_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = catnet(image_size=8, width=2).save(tmp_path / "new.npz")
    # A new file gets the usual permissions (the temporary file was created 0600).
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    catnet(image_size=8, width=2).save(path)
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_huge_declared_layer_is_refused_without_filling_memory(tmp_path):
    """A file may declare a layer far larger than its arrays (a hostile or broken file). The
    layers are built uninitialised (fastconv.layers.deferred_init) before the strict shape check,
    so a declared Linear of 5e8 weights (2 GB float32, 4 GB of float64 random draws before) costs
    neither the time nor the memory to fill it. Checked in a child process by its peak RSS."""
    import subprocess
    import sys

    model = Sequential(Flatten(), Linear(4, 10, rng=0))
    path = model.save(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as z:
        parts = {k: z[k] for k in z.files}
    arch = json.loads(str(parts["architecture"]))
    arch[1]["config"]["in_features"] = 50_000_000
    _write_npz(tmp_path / "huge.npz", **{**parts, "architecture": np.array(json.dumps(arch))})
    # the child's own peak (VmHWM of its address space): getrusage's ru_maxrss would carry over the
    # parent's RSS at fork time (Linux keeps the pre-exec high-water mark), i.e. pytest's
    code = (
        "import sys, fastconv\n"
        "try:\n    fastconv.load(sys.argv[1])\nexcept ValueError as e:\n    print('ERR', e)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "print('RSS_KB', hwm)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "huge.npz")], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    assert "ERR" in out and "1.weight: shape mismatch" in out
    rss_mb = int(out.split("RSS_KB")[1]) / 1024
    assert rss_mb < 1000, f"peak RSS {rss_mb:.0f} MB: the declared layer was filled"


def test_an_architecture_too_large_for_memory_is_a_named_error(tmp_path, monkeypatch):
    """Layers are built before their weights are compared with the file's; a declared layer beyond
    even the address space runs out of memory there, which must surface as the usual error."""
    path = catnet(image_size=8, width=2).save(tmp_path / "m.npz")

    def too_big(architecture):
        raise MemoryError("Unable to allocate 6.71 GiB")

    monkeypatch.setattr(Sequential, "from_architecture", staticmethod(too_big))
    with pytest.raises(ValueError, match=r"m\.npz: its architecture asks for layers too large for memory"):
        fastconv.load(path)


def test_import_fastconv_is_light_and_submodules_load_on_first_use():
    import subprocess
    import sys

    code = (
        "import sys, fastconv\n"
        "heavy = [m for m in ('h5py', 'skimage', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert callable(fastconv.train.fit) and callable(fastconv.data.load_image_folder)\n"
        "assert callable(fastconv.metrics.accuracy)\n"
        "try:\n    fastconv.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
