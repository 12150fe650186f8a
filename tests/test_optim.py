"""Optimizers and schedules: each update rule against hand-derived numbers (torch-free), and
against PyTorch itself when it is installed (an extra oracle, never the only one)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fastconv.layers import Parameter
from fastconv.optim import SGD, Adam, AdamW, CosineSchedule, StepSchedule

GRADS = [1.0, 2.0, -1.0]


def run(optimizer_cls, grads=GRADS, p0=0.0, decay=True, **kwargs) -> list[float]:
    """Scalar parameter, prescribed gradient per step; returns the parameter after each step."""
    p = Parameter(np.array([p0]), "p", decay=decay)
    opt = optimizer_cls([p], **kwargs)
    out = []
    for g in grads:
        p.grad[:] = g
        opt.step()
        out.append(float(p.data[0]))
    return out


def test_sgd_plain():
    # p <- p - lr * g: 0 - 0.1 * 1 = -0.1, -0.1 - 0.2 = -0.3, -0.3 + 0.1 = -0.2
    np.testing.assert_allclose(run(SGD, lr=0.1), [-0.1, -0.3, -0.2], rtol=1e-15)


def test_sgd_momentum():
    # b1 = 1 -> p = -0.1; b2 = 0.9 * 1 + 2 = 2.9 -> p = -0.39; b3 = 0.9 * 2.9 - 1 = 1.61 -> p = -0.551
    np.testing.assert_allclose(run(SGD, lr=0.1, momentum=0.9), [-0.1, -0.39, -0.551], rtol=1e-14)


def test_sgd_nesterov():
    # d = g + m * b:  step 1: b = 1, d = 1.9 -> -0.19;  step 2: b = 2.9, d = 2 + 2.61 = 4.61 -> -0.651;
    # step 3: b = 1.61, d = -1 + 1.449 = 0.449 -> -0.6959
    np.testing.assert_allclose(run(SGD, lr=0.1, momentum=0.9, nesterov=True), [-0.19, -0.651, -0.6959], rtol=1e-14)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_adam_weight_decay_respects_the_decay_flag(cls):
    # a parameter with decay=False (biases, BatchNorm) is not decayed: zero gradients leave it put
    assert run(cls, [0.0, 0.0], p0=1.0, decay=False, lr=0.1, weight_decay=0.3) == [1.0, 1.0]
    assert run(cls, [0.0, 0.0], p0=1.0, decay=True, lr=0.1, weight_decay=0.3)[-1] < 1.0


def test_sgd_weight_decay_respects_the_decay_flag():
    # g_eff = g + wd * p with p0 = 1, g = 0, lr 0.1, wd 0.5: p1 = 1 - 0.05 = 0.95, p2 = 0.95 * 0.95
    np.testing.assert_allclose(run(SGD, [0.0, 0.0], p0=1.0, lr=0.1, weight_decay=0.5), [0.95, 0.9025], rtol=1e-15)
    assert run(SGD, [0.0, 0.0], p0=1.0, decay=False, lr=0.1, weight_decay=0.5) == [1.0, 1.0]


def adam_reference(grads, lr, b1, b2, eps, p0=0.0, wd=0.0, decoupled=False) -> list[float]:
    """Adam/AdamW for a scalar, written out from the paper's equations (bias-corrected moments)."""
    p, m, v, out = p0, 0.0, 0.0, []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - lr * wd * p
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
        out.append(p)
    return out


def test_adam_first_step_is_lr_times_sign():
    # m_hat = g and v_hat = g^2 at t = 1, so the step is lr * g / (|g| + eps).
    out = run(Adam, [4.0], lr=0.01)
    np.testing.assert_allclose(out, [-0.01 * 4 / (4 + 1e-8)], rtol=1e-15)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.8)])
def test_adam_matches_the_written_out_rule(betas):
    expected = adam_reference(GRADS, 0.1, *betas, 1e-8)
    np.testing.assert_allclose(run(Adam, lr=0.1, betas=betas), expected, rtol=1e-13)
    # Hand check of step 2 for betas (0.5, 0.8): m = 0.25 + 1 = 1.25, m_hat = 1.25/0.75 = 5/3;
    # v = 0.8*0.2 + 0.2*4 = 0.96, v_hat = 0.96/0.36 = 8/3; step = 0.1 * (5/3) / sqrt(8/3).
    if betas == (0.5, 0.8):
        p2 = -0.1 - 0.1 * (5 / 3) / math.sqrt(8 / 3)
        assert expected[1] == pytest.approx(p2, rel=1e-7)


def test_adam_l2_weight_decay_goes_into_the_gradient():
    expected = adam_reference(GRADS, 0.1, 0.9, 0.999, 1e-8, p0=1.0, wd=0.3)
    np.testing.assert_allclose(run(Adam, p0=1.0, lr=0.1, weight_decay=0.3), expected, rtol=1e-13)
    no_decay = adam_reference(GRADS, 0.1, 0.9, 0.999, 1e-8, p0=1.0)
    np.testing.assert_allclose(run(Adam, p0=1.0, decay=False, lr=0.1, weight_decay=0.3), no_decay, rtol=1e-13)


def test_adamw_decay_is_decoupled():
    expected = adam_reference(GRADS, 0.1, 0.9, 0.999, 1e-8, p0=1.0, wd=0.3, decoupled=True)
    np.testing.assert_allclose(run(AdamW, p0=1.0, lr=0.1, weight_decay=0.3), expected, rtol=1e-13)
    # With zero gradients AdamW only shrinks: p = (1 - lr*wd)^t (Adam with L2 would move by ~lr per step).
    np.testing.assert_allclose(run(AdamW, [0.0, 0.0], p0=1.0, lr=0.1, weight_decay=0.3), [0.97, 0.97**2], rtol=1e-12)
    assert AdamW([Parameter(np.zeros(1))]).weight_decay == 1e-2


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
def test_updates_in_place_and_lr_is_settable(cls):
    p = Parameter(np.ones((2, 3), np.float32), "w")
    data = p.data
    opt = cls([p], lr=0.1)
    p.grad[:] = 1
    opt.step()
    assert p.data is data and p.data.dtype == np.float32
    moved = 1.0 - float(p.data[0, 0])
    opt.lr = 0.0
    before = p.data.copy()
    opt.step()
    np.testing.assert_array_equal(p.data, before)
    assert moved > 0
    opt.zero_grad()
    assert not p.grad.any()


@pytest.mark.parametrize(
    "cls, kwargs",
    [(SGD, dict(lr=0.1, momentum=0.9)), (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
     (Adam, dict(lr=0.01, weight_decay=0.1)), (AdamW, dict(lr=0.01, weight_decay=0.1))],
)  # fmt: skip
def test_a_model_cast_after_the_optimizer_was_built_gets_updates_in_its_new_dtype(cls, kwargs):
    from fastconv import Linear, Sequential

    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 5)) for _ in range(4)]

    def steps(cast_first: bool) -> np.ndarray:
        model = Sequential(Linear(5, 3, rng=1))
        if cast_first:
            model.astype(np.float64)
        opt = cls(model.parameters(), **kwargs)
        w = model.layers[0].weight
        for t, g in enumerate(grads):
            if t == 2 and not cast_first:
                model.astype(np.float64)  # part-way: moments so far are kept, now in float64
            w.grad[...] = g
            opt.step()
            assert w.data.dtype == np.float64 or t < 2
        return w.data

    late, early = steps(False), steps(True)
    assert late.dtype == early.dtype == np.float64
    # float32 moments of the first two steps differ from float64 ones by float32 rounding only
    # (a sanity check; the exact check of the fix is the bitwise comparison below)
    np.testing.assert_allclose(late, early, rtol=0, atol=1e-6)
    model = Sequential(Linear(5, 3, rng=1))
    opt = cls(model.parameters(), **kwargs)
    model.astype(np.float64)
    w = model.layers[0].weight
    for g in grads:
        w.grad[...] = g
        opt.step()
    ref = Sequential(Linear(5, 3, rng=1)).astype(np.float64)
    ref_opt = cls(ref.parameters(), **kwargs)
    for g in grads:
        ref.layers[0].weight.grad[...] = g
        ref_opt.step()
    np.testing.assert_array_equal(w.data, ref.layers[0].weight.data)


@pytest.mark.parametrize(
    "cls, kwargs",
    [(SGD, dict(lr=0.1, momentum=0.9, nesterov=True)), (SGD, dict(lr=0.1)), (Adam, dict(lr=0.01)),
     (AdamW, dict(lr=0.01, weight_decay=0.1))],
)  # fmt: skip
def test_a_run_resumed_from_saved_optimizer_and_schedule_state_continues_exactly(tmp_path, cls, kwargs):
    from fastconv import Linear, Sequential

    rng = np.random.default_rng(1)
    grads = [[rng.standard_normal((3, 5)), rng.standard_normal(3)] for _ in range(6)]

    def build():
        model = Sequential(Linear(5, 3, rng=2)).astype(np.float64)
        opt = cls(model.parameters(), **kwargs)
        return model, opt, CosineSchedule(opt, total_steps=6, warmup_steps=2)

    def steps(model, opt, sched, gs):
        for g in gs:
            for p, gp in zip(model.parameters(), g):
                p.grad[...] = gp
            opt.step()
            sched.step()

    straight = build()
    steps(*straight, grads)
    first = build()
    steps(*first, grads[:3])
    np.savez(tmp_path / "run.npz", **first[0].state_dict(), **{f"opt.{k}": v for k, v in first[1].state_dict().items()},
             **{f"sched.{k}": v for k, v in first[2].state_dict().items()})  # fmt: skip
    with np.load(tmp_path / "run.npz", allow_pickle=False) as f:
        saved = dict(f)
    resumed = build()
    resumed[0].load_state_dict({k: v for k, v in saved.items() if not k.startswith(("opt.", "sched."))})
    resumed[1].load_state_dict({k[4:]: v for k, v in saved.items() if k.startswith("opt.")})
    resumed[2].load_state_dict({k[6:]: v for k, v in saved.items() if k.startswith("sched.")})
    assert resumed[1].lr == first[1].lr and resumed[1].steps == 3
    steps(*resumed, grads[3:])
    for p, q in zip(resumed[0].parameters(), straight[0].parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_loading_optimizer_state_after_a_cast_fills_buffers_of_the_new_dtype():
    from fastconv import Linear, Sequential

    rng = np.random.default_rng(3)
    grads = [rng.standard_normal((3, 5)) for _ in range(4)]

    def run(cast_before_optimizer: bool):
        model = Sequential(Linear(5, 3, rng=1))
        if cast_before_optimizer:
            model.astype(np.float64)
        opt = AdamW(model.parameters(), lr=0.01)
        model.astype(np.float64)
        ref = Sequential(Linear(5, 3, rng=1)).astype(np.float64)
        ref_opt = AdamW(ref.parameters(), lr=0.01)
        for g in grads[:2]:
            ref.layers[0].weight.grad[...] = g
            ref_opt.step()
        model.load_state_dict(ref.state_dict())
        opt.load_state_dict(ref_opt.state_dict())
        for g in grads[2:]:
            for m in (model, ref):
                m.layers[0].weight.grad[...] = g
            opt.step()
            ref_opt.step()
        return model.layers[0].weight.data, ref.layers[0].weight.data

    for cast_first in (True, False):
        got, want = run(cast_first)
        np.testing.assert_array_equal(got, want)


def test_optimizer_state_of_another_model_or_optimizer_is_refused():
    from fastconv import Linear, Sequential

    adam = Adam(Sequential(Linear(5, 3, rng=0)).parameters())
    with pytest.raises(ValueError, match=r"missing \['m.0', 'm.1', 'v.0', 'v.1'\], unexpected \['momentum.0'"):
        adam.load_state_dict(SGD(Sequential(Linear(5, 3, rng=0)).parameters(), lr=0.1, momentum=0.9).state_dict())
    other = Adam(Sequential(Linear(4, 3, rng=0)).parameters()).state_dict()
    before = [a.copy() for a in adam._m]
    with pytest.raises(ValueError, match=r"m.0: expected shape \(3, 5\), got \(3, 4\)"):
        adam.load_state_dict(other)
    assert all(np.array_equal(a, b) for a, b in zip(adam._m, before)) and adam.steps == 0
    sched = CosineSchedule(adam, total_steps=4)
    with pytest.raises(ValueError, match="last_step and base_lr"):
        sched.load_state_dict({"last_step": np.array(1)})


def test_optimizer_argument_checks():
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="Parameter"):
        SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="lr"):
        Adam([p], lr=-1)


def _torch_compare(ours_cls, torch_cls, ours_kwargs, torch_kwargs, steps=5):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0, b0 = rng.standard_normal((3, 4)), rng.standard_normal(3)
    grads = [(rng.standard_normal((3, 4)), rng.standard_normal(3)) for _ in range(steps)]
    w, b = Parameter(w0.copy(), "w"), Parameter(b0.copy(), "b", decay=False)
    opt = ours_cls([w, b], **ours_kwargs)
    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    wd = torch_kwargs.pop("weight_decay", 0.0)
    topt = torch_cls([{"params": [tw], "weight_decay": wd}, {"params": [tb], "weight_decay": 0.0}], **torch_kwargs)
    _step_both(opt, topt, [w, b], [tw, tb], grads)


def _step_both(opt, topt, ours: list, theirs: list, grads: list) -> None:
    """Feed the same gradients to our optimizer and torch's, then compare the parameters."""
    import torch

    for gs in grads:
        for p, t, g in zip(ours, theirs, gs):
            p.grad[:] = g
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("SGD", {"lr": 0.1}),
        ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
        ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
        ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
        ("Adam", {"lr": 0.1, "betas": (0.5, 0.9), "eps": 1e-6}),
        ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
    ],
)
def test_matches_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    ours = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name]
    _torch_compare(ours, getattr(torch.optim, name), dict(kwargs), dict(kwargs))


# --- schedules ------------------------------------------------------------------------------


def test_cosine_schedule_with_warmup():
    opt = SGD([Parameter(np.zeros(1))], lr=1.0)
    sched = CosineSchedule(opt, total_steps=10, warmup_steps=2, min_lr=0.1)
    lrs = [opt.lr] + [sched.step() for _ in range(12)]
    # warm-up: (t+1)/2; then 0.1 + 0.9 * (1 + cos(pi * (t-2)/8)) / 2; held at 0.1 after step 10
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert lrs[6] == pytest.approx(0.55, rel=1e-12)  # halfway: cos(pi/2) = 0
    assert lrs[4] == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)), rel=1e-12)
    assert lrs[10] == pytest.approx(0.1) and lrs[12] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))


def test_step_schedule():
    opt = Adam([Parameter(np.zeros(1))], lr=1.0)
    sched = StepSchedule(opt, step_size=3, gamma=0.5)
    lrs = [opt.lr] + [sched.step() for _ in range(7)]
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_schedules_match_torch_without_warmup():
    torch = pytest.importorskip("torch")
    for ours_factory, torch_factory in (
        (lambda o: CosineSchedule(o, 7, min_lr=0.01), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7, 0.01)),
        (lambda o: StepSchedule(o, 2, 0.3), lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.3)),
    ):
        opt = SGD([Parameter(np.zeros(1))], lr=0.5)
        topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
        ours, ref = ours_factory(opt), torch_factory(topt)
        for _ in range(7):
            assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
            topt.step()
            ours.step()
            ref.step()


def test_schedule_argument_checks():
    opt = SGD([Parameter(np.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup"):
        CosineSchedule(opt, total_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="step_size"):
        StepSchedule(opt, 0)


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (SGD, {"lr": 0.1}),
        (SGD, {"lr": 0.05, "momentum": 0.9}),
        (SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
        (Adam, {"lr": 0.05}),
        (AdamW, {"lr": 0.05, "weight_decay": 0.0}),
    ],
)
def test_minimises_a_quadratic(cls, kwargs):
    """loss = 0.5 * sum(a * (p - target)^2) with curvatures a in [0.5, 2]: every optimizer reaches the target."""
    rng = np.random.default_rng(1)
    target, a = rng.standard_normal(10), rng.uniform(0.5, 2.0, 10)
    p = Parameter(np.zeros(10))
    opt = cls([p], **kwargs)
    for _ in range(400):
        opt.zero_grad()
        p.grad += a * (p.data - target)
        opt.step()
    np.testing.assert_allclose(p.data, target, atol=1e-3)


# --- parameter groups -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,kwargs",
    [(SGD, {"momentum": 0.9, "nesterov": True}), (Adam, {}), (AdamW, {}), (SGD, {})],
)
def test_a_group_trains_exactly_like_its_own_optimizer(cls, kwargs):
    # Two groups with their own lr and weight decay == two separate optimizers with those settings,
    # and a schedule scales both rates alike (the group keeps its ratio to optimizer.lr).
    rng = np.random.default_rng(3)
    a0, b0 = rng.standard_normal(4), rng.standard_normal(3)
    grads = [(rng.standard_normal(4), rng.standard_normal(3)) for _ in range(6)]
    a, b = Parameter(a0.copy(), "a"), Parameter(b0.copy(), "b")
    groups = [{"params": [a]}, {"params": [b], "lr": 0.3, "weight_decay": 0.2}]
    grouped = cls(groups, lr=0.03, weight_decay=0.01, **kwargs)
    sched = CosineSchedule(grouped, total_steps=6, warmup_steps=2)
    a2, b2 = Parameter(a0.copy(), "a"), Parameter(b0.copy(), "b")
    only_a = cls([a2], lr=0.03, weight_decay=0.01, **kwargs)
    only_b = cls([b2], lr=0.3, weight_decay=0.2, **kwargs)
    sa = CosineSchedule(only_a, total_steps=6, warmup_steps=2)
    sb = CosineSchedule(only_b, total_steps=6, warmup_steps=2)
    for ga, gb in grads:
        a.grad[:], b.grad[:], a2.grad[:], b2.grad[:] = ga, gb, ga, gb
        grouped.step(), only_a.step(), only_b.step()
        sched.step(), sa.step(), sb.step()
    np.testing.assert_allclose(a.data, a2.data, rtol=1e-13)
    np.testing.assert_allclose(b.data, b2.data, rtol=1e-13)
    assert grouped.params == [a, b]
    # and the group's own settings mattered: with the optimizer's settings b ends elsewhere
    b3 = Parameter(b0.copy(), "b")
    plain = cls([b3], lr=0.03, weight_decay=0.01, **kwargs)
    s3 = CosineSchedule(plain, total_steps=6, warmup_steps=2)
    for _, gb in grads:
        b3.grad[:] = gb
        plain.step(), s3.step()
    assert np.abs(b3.data - b.data).max() > 1e-3


def test_group_decay_still_skips_parameters_flagged_no_decay():
    p = Parameter(np.array([1.0]), "bias", decay=False)
    opt = SGD([{"params": [p], "weight_decay": 0.5}], lr=0.1)
    p.grad[:] = 0.0
    opt.step()
    assert p.data[0] == 1.0


def test_groups_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0, h0 = rng.standard_normal((3, 4)), rng.standard_normal(5)
    w, h = Parameter(w0.copy(), "w"), Parameter(h0.copy(), "h")
    opt = AdamW([{"params": [w]}, {"params": [h], "lr": 5e-2, "weight_decay": 0.0}], lr=5e-3, weight_decay=0.05)
    tw, th = torch.tensor(w0, requires_grad=True), torch.tensor(h0, requires_grad=True)
    topt = torch.optim.AdamW([{"params": [tw]}, {"params": [th], "lr": 5e-2, "weight_decay": 0.0}], lr=5e-3,
                             weight_decay=0.05)  # fmt: skip
    grads = [(rng.standard_normal((3, 4)), rng.standard_normal(5)) for _ in range(5)]
    _step_both(opt, topt, [w, h], [tw, th], grads)


def test_parameter_group_checks():
    p, q = Parameter(np.zeros(2), "p"), Parameter(np.zeros(2), "q")
    with pytest.raises(TypeError, match="not a mixture"):
        SGD([p, {"params": [q]}], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[0\].*'momentum'"):
        SGD([{"params": [p], "momentum": 0.5}], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\]: the group has no parameters"):
        SGD([{"params": [p]}, {"params": []}], lr=0.1)
    with pytest.raises(ValueError, match="'p' appears more than once"):
        SGD([{"params": [p]}, {"params": [q, p]}], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[0\]\['lr'\]: expected a number >= 0"):
        Adam([{"params": [p], "lr": -1.0}])
    with pytest.raises(ValueError, match="ratio to lr, which is 0"):
        Adam([{"params": [p], "lr": 0.1}], lr=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        AdamW([{"params": [p], "weight_decay": float("nan")}])
    with pytest.raises(TypeError, match="Parameter"):
        SGD([{"params": [np.zeros(2)]}], lr=0.1)


def test_weight_decay_may_be_changed_after_construction_like_lr():
    p = Parameter(np.ones(1), "p")
    opt = SGD([p], lr=0.1, weight_decay=0.5)
    opt.weight_decay = 0.0
    p.grad[:] = 0.0
    opt.step()
    assert p.data[0] == 1.0
    q = Parameter(np.ones(1), "q")
    grouped = SGD([{"params": [q], "weight_decay": 0.5}], lr=0.1, weight_decay=0.0)
    grouped.weight_decay = 0.0  # a group's own decay is not the optimizer's
    grouped.step()
    assert q.data[0] == pytest.approx(0.95, rel=1e-15)


def test_saved_state_restores_the_groups_settings():
    # as PyTorch restores param_groups: a state saved from a grouped optimizer, loaded into one
    # built without groups, continues exactly like the grouped one
    rng = np.random.default_rng(5)
    a0, b0 = rng.standard_normal(3), rng.standard_normal(2)
    grads = [(rng.standard_normal(3), rng.standard_normal(2)) for _ in range(6)]
    a, b = Parameter(a0.copy(), "a"), Parameter(b0.copy(), "b")
    opt = AdamW([{"params": [a]}, {"params": [b], "lr": 0.05, "weight_decay": 0.3}], lr=0.01, weight_decay=0.1)
    for ga, gb in grads[:3]:
        a.grad[:], b.grad[:] = ga, gb
        opt.step()
    state = opt.state_dict()
    a2, b2 = Parameter(a.data.copy(), "a"), Parameter(b.data.copy(), "b")
    resumed = AdamW([a2, b2], lr=0.01, weight_decay=0.1)
    resumed.load_state_dict(state)
    for ga, gb in grads[3:]:
        a.grad[:], b.grad[:], a2.grad[:], b2.grad[:] = ga, gb, ga, gb
        opt.step()
        resumed.step()
    np.testing.assert_array_equal(a2.data, a.data)
    np.testing.assert_array_equal(b2.data, b.data)
    old_style = {k: v for k, v in state.items() if k not in ("weight_decay", "lr_scale", "group_weight_decay")}
    AdamW([a2, b2], lr=0.01).load_state_dict(old_style)  # states saved before groups still load
    with pytest.raises(ValueError, match="lr_scale"):
        AdamW([a2, b2], lr=0.01).load_state_dict({**state, "lr_scale": np.array([1.0, -2.0])})
    # the optimizer's own weight decay (live for groups without theirs) travels with the state
    plain = SGD([a2, b2], lr=0.1, weight_decay=0.01)
    plain.weight_decay = 0.5
    fresh = SGD([a2, b2], lr=0.1, weight_decay=0.01)
    fresh.load_state_dict(plain.state_dict())
    assert fresh.weight_decay == 0.5


def test_a_failed_load_changes_nothing():
    p, q = Parameter(np.ones(2), "p"), Parameter(np.ones(2), "q")
    opt = Adam([p, q], lr=0.1)
    p.grad[:], q.grad[:] = 1.0, 2.0
    opt.step()
    before = {k: np.copy(v) for k, v in opt.state_dict().items()}
    bad = {**before, "lr_scale": np.array([3.0, 3.0]), "m.0": np.array([5.0, 5.0]), "m.1": np.array(["a", "b"])}
    with pytest.raises(ValueError, match=r"m\.1 is not numeric"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)
