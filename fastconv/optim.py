"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules, with PyTorch's update rules.

Each optimizer updates ``Parameter.data`` in place from ``Parameter.grad``; per-parameter
state (momentum buffers, Adam moments) and one scratch array are allocated once, so a step
allocates no arrays. Weight decay skips parameters whose ``decay`` flag is False (biases and
normalisation parameters). ``optimizer.lr`` may be changed at any time (schedules do).

Parameter groups, as in PyTorch: ``params`` may be a list of dicts ``{"params": [...], "lr": ...,
"weight_decay": ...}`` (keys other than ``params`` optional) instead of a list of Parameters, e.g.
a fresh head at 10x the rate of a pretrained backbone. A group's ``lr`` is kept as a ratio to the
optimizer's ``lr`` given at construction, and follows ``optimizer.lr`` in that proportion: a
schedule scales every group alike (what PyTorch's schedulers do to each group's base rate).
``state_dict()`` / ``load_state_dict()`` of optimizers and schedules hold plain arrays (for
``np.savez`` next to the model's ``state_dict()``), so an interrupted run resumes exactly.

Update rules, for a parameter p with gradient g at step t = 1, 2, ... (wd = weight_decay):

* SGD: ``g += wd * p``; with momentum m: ``b = g`` at t = 1, else ``b = m * b + g``;
  ``d = g + m * b`` (Nesterov) or ``d = b``; ``p -= lr * d``.
* Adam: ``g += wd * p`` (L2 in the gradient); ``m1 = b1 * m1 + (1 - b1) * g``;
  ``m2 = b2 * m2 + (1 - b2) * g^2``; ``p -= lr / (1 - b1^t) * m1 / (sqrt(m2) / sqrt(1 - b2^t) + eps)``.
* AdamW: ``p *= 1 - lr * wd`` (decoupled), then Adam with no L2 term.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .layers import Parameter

__all__ = ["SGD", "Adam", "AdamW", "CosineSchedule", "Optimizer", "StepSchedule"]


ParamsOrGroups = Iterable[Parameter] | Iterable[dict]


def _nonneg(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not value >= 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return float(value)


class Optimizer:
    """Base class: holds the parameter list, ``lr`` and ``weight_decay``; ``step`` is per subclass.

    ``params``: Parameters, or parameter groups (dicts with ``params`` and optionally ``lr`` and
    ``weight_decay``; see the module docstring). ``self.params`` is always the flat list."""

    def __init__(self, params: ParamsOrGroups, lr: float, weight_decay: float = 0.0) -> None:
        lr = _nonneg("lr", lr)
        weight_decay = _nonneg("weight_decay", weight_decay)
        items = list(params)
        if not items:
            raise ValueError("params: expected at least one Parameter, got an empty list")
        if all(isinstance(g, dict) for g in items):
            groups = items
        elif any(isinstance(g, dict) for g in items):
            raise TypeError("params: expected Parameters or parameter groups (dicts), not a mixture")
        else:
            groups = [{"params": items}]
        self.params: list[Parameter] = []
        self._lr_scale: list[float] = []  # group lr / self.lr at construction
        self._wd: list[float | None] = []  # each parameter's group weight decay; None: weight_decay
        seen: set[int] = set()
        for k, group in enumerate(groups):
            unknown = sorted(set(group) - {"params", "lr", "weight_decay"})
            if "params" not in group or unknown:
                raise ValueError(
                    f"params[{k}]: expected a dict with 'params' and optionally 'lr', 'weight_decay', "
                    f"got keys {sorted(group)}"
                )
            ps = [group["params"]] if isinstance(group["params"], Parameter) else list(group["params"])
            if not ps:
                raise ValueError(f"params[{k}]: the group has no parameters")
            scale = 1.0
            if "lr" in group:
                glr = _nonneg(f"params[{k}]['lr']", group["lr"])
                if lr == 0 and glr != 0:
                    raise ValueError(f"params[{k}]['lr']: a group's rate is a ratio to lr, which is 0")
                scale = glr / lr if lr else 1.0
            wd = _nonneg(f"params[{k}]['weight_decay']", group["weight_decay"]) if "weight_decay" in group else None
            for p in ps:
                if not isinstance(p, Parameter):
                    raise TypeError(f"params: expected fastconv Parameters, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"params: parameter {p.name!r} appears more than once")
                seen.add(id(p))
                self.params.append(p)
                self._lr_scale.append(scale)
                self._wd.append(wd)
        self.lr = lr
        self.weight_decay = weight_decay
        self.steps = 0
        # One scratch array per parameter: the step's arithmetic is done with out= into it.
        self._scratch = [np.empty_like(p.data) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad.fill(0)

    def _state(self) -> list[list[np.ndarray]]:
        """Every per-parameter state list (each indexed like ``params``); subclasses add theirs."""
        return [self._scratch]

    def _moments(self) -> dict[str, list[np.ndarray]]:
        """The per-parameter state a resumed run needs (not the scratch), by name."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the optimizer's state as plain arrays, for ``np.savez`` (no pickle needed):
        ``steps``, ``lr``, ``weight_decay``, the groups' ``lr_scale`` and ``group_weight_decay`` per
        parameter, and every per-parameter buffer as ``"<buffer>.<i>"``, i indexing ``params``
        (SGD: ``momentum``; Adam/AdamW: ``m`` and ``v``)."""
        state = {"steps": np.array(self.steps, np.int64), "lr": np.array(self.lr, np.float64)}
        # hyperparameters, restored on load as PyTorch restores param_groups: the optimizer's
        # weight decay, each parameter's lr ratio and weight decay (NaN = the optimizer's)
        state["weight_decay"] = np.array(self.weight_decay, np.float64)
        state["lr_scale"] = np.array(self._lr_scale, np.float64)
        state["group_weight_decay"] = np.array([np.nan if wd is None else wd for wd in self._wd], np.float64)
        for name, arrays in self._moments().items():
            for i, a in enumerate(arrays):
                state[f"{name}.{i}"] = a.copy()
        return state

    _HYPER_KEYS = ("weight_decay", "lr_scale", "group_weight_decay")

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Resume from :meth:`state_dict` of an optimizer of the same kind over parameters of the
        same shapes. Raises ValueError naming missing, unexpected, mis-shaped or non-numeric
        entries; nothing changes unless every check passes (every entry is converted first).
        Buffers are cast to their parameter's dtype. States saved before parameter groups (no
        ``weight_decay`` / ``lr_scale`` / ``group_weight_decay``) keep this optimizer's settings."""
        self._follow_dtypes()  # a model cast since the optimizer was built: buffers in the new dtype
        moments = self._moments()
        expected = {"steps": (), "lr": ()}
        for name, arrays in moments.items():
            expected.update({f"{name}.{i}": a.shape for i, a in enumerate(arrays)})
        if any(k in state for k in self._HYPER_KEYS):
            n = (len(self.params),)
            expected.update({"weight_decay": (), "lr_scale": n, "group_weight_decay": n})
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [f"{k}: expected shape {expected[k]}, got {np.shape(state[k])}"
                 for k in expected if k in state and np.shape(state[k]) != expected[k]]  # fmt: skip
        if missing or unexpected or wrong:
            raise ValueError(
                f"optimizer state of another optimizer or model: missing {missing}, unexpected {unexpected}"
                + (f", {'; '.join(wrong)}" if wrong else "")
            )
        converted = {}
        for key in expected:
            try:
                converted[key] = np.asarray(state[key]).astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"optimizer state: {key} is not numeric ({exc})") from None
        steps, lr = int(converted["steps"]), float(converted["lr"])
        if steps < 0 or not lr >= 0:
            raise ValueError(f"optimizer state: steps {steps} and lr {lr} must be >= 0")
        if "lr_scale" in expected:
            scale, wds, wd = converted["lr_scale"], converted["group_weight_decay"], float(converted["weight_decay"])
            ok = np.all(np.isfinite(scale)) and np.all(scale >= 0) and np.all(np.isnan(wds) | (wds >= 0))
            if not (ok and wd >= 0):
                raise ValueError("optimizer state: weight_decay, lr_scale and group_weight_decay must be >= 0")
        # every check passed: assign
        for name, arrays in moments.items():
            for i, a in enumerate(arrays):
                np.copyto(a, converted[f"{name}.{i}"], casting="unsafe")
        if "lr_scale" in expected:
            self.weight_decay = wd
            self._lr_scale = [float(v) for v in scale]
            self._wd = [None if np.isnan(v) else float(v) for v in wds]
        self.steps, self.lr = steps, lr

    def _follow_dtypes(self) -> None:
        """Recast a parameter's state when its dtype has changed since (``model.astype`` after
        the optimizer was built): otherwise float64 weights would get float32 updates silently."""
        for i, p in enumerate(self.params):
            if self._scratch[i].dtype != p.data.dtype:
                for arrays in self._state():
                    arrays[i] = arrays[i].astype(p.data.dtype)

    def step(self) -> None:
        raise NotImplementedError

    def _decay(self, i: int) -> float:
        """Weight decay of parameter i: its group's (else ``self.weight_decay``, read at every step
        so that it may be changed like ``lr``), 0 for parameters flagged ``decay=False``."""
        if not self.params[i].decay:
            return 0.0
        wd = self._wd[i]
        return self.weight_decay if wd is None else wd

    def _lr(self, i: int) -> float:
        """Learning rate of parameter i now: ``lr`` times its group's ratio."""
        return self.lr * self._lr_scale[i]

    def _l2_grad(self, i: int, out: np.ndarray) -> np.ndarray:
        """out = grad + wd * p for parameter i (L2 regularisation folded into the gradient)."""
        p = self.params[i]
        wd = self._decay(i)
        if wd:
            np.multiply(p.data, wd, out=out)
            out += p.grad
        else:
            np.copyto(out, p.grad)
        return out


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay (PyTorch's rule)."""

    def __init__(
        self,
        params: ParamsOrGroups,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov: requires momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self._buf = [np.zeros_like(p.data) for p in self.params] if self.momentum else []

    def _state(self) -> list[list[np.ndarray]]:
        return [self._scratch, self._buf] if self.momentum else [self._scratch]

    def _moments(self) -> dict[str, list[np.ndarray]]:
        return {"momentum": self._buf} if self.momentum else {}

    def step(self) -> None:
        self._follow_dtypes()
        self.steps += 1
        m = self.momentum
        for i, p in enumerate(self.params):
            lr = self._lr(i)
            g = self._l2_grad(i, self._scratch[i])
            if m:
                buf = self._buf[i]
                if self.steps == 1:
                    np.copyto(buf, g)
                else:
                    buf *= m
                    buf += g
                if self.nesterov:
                    # p -= lr * (g + m * buf), done as two in-place subtractions.
                    g *= lr
                    p.data -= g
                    np.multiply(buf, lr * m, out=g)
                    p.data -= g
                    continue
                np.multiply(buf, lr, out=g)
                p.data -= g
            else:
                g *= lr
                p.data -= g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction; ``weight_decay`` adds ``wd * p`` to the gradient."""

    decoupled = False
    #: used when ``weight_decay`` is None: 0 for Adam, 1e-2 for AdamW (PyTorch's defaults)
    default_weight_decay = 0.0

    def __init__(
        self,
        params: ParamsOrGroups,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
    ) -> None:
        super().__init__(params, lr, self.default_weight_decay if weight_decay is None else weight_decay)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"eps: expected a positive number, got {eps!r}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self._m = [np.zeros_like(p.data) for p in self.params]
        self._v = [np.zeros_like(p.data) for p in self.params]
        self._denom = [np.empty_like(p.data) for p in self.params]

    def _state(self) -> list[list[np.ndarray]]:
        return [self._scratch, self._m, self._v, self._denom]

    def _moments(self) -> dict[str, list[np.ndarray]]:
        return {"m": self._m, "v": self._v}

    def step(self) -> None:
        self._follow_dtypes()
        self.steps += 1
        b1, b2 = self.betas
        t = self.steps
        sqrt_bc2 = math.sqrt(1.0 - b2**t)
        for i, p in enumerate(self.params):
            lr = self._lr(i)
            step_size = lr / (1.0 - b1**t)
            g = self._scratch[i]
            if self.decoupled:
                wd = self._decay(i)
                if wd:
                    p.data *= 1.0 - lr * wd
                np.copyto(g, p.grad)
            else:
                self._l2_grad(i, g)
            m, v, denom = self._m[i], self._v[i], self._denom[i]
            m *= b1
            np.multiply(g, 1.0 - b1, out=denom)  # denom is free scratch until below
            m += denom
            np.multiply(g, g, out=g)
            g *= 1.0 - b2
            v *= b2
            v += g
            np.sqrt(v, out=denom)
            denom /= sqrt_bc2
            denom += self.eps
            np.divide(m, denom, out=g)
            g *= step_size
            p.data -= g


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter; PyTorch ``AdamW``): ``weight_decay``
    defaults to 1e-2 and shrinks the weights directly instead of entering the gradient."""

    decoupled = True
    default_weight_decay = 1e-2


class _Schedule:
    """Base: remembers the optimizer's initial lr as ``base_lr`` and sets ``optimizer.lr`` for each step."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_step = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> dict[str, np.ndarray]:
        """``last_step`` and ``base_lr`` as arrays (``np.savez``-able), for :meth:`load_state_dict`."""
        return {"last_step": np.array(self.last_step, np.int64), "base_lr": np.array(self.base_lr, np.float64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Resume the schedule where :meth:`state_dict` left it; sets the optimizer's lr for that step."""
        if set(state) != {"last_step", "base_lr"}:
            raise ValueError(f"schedule state: expected entries last_step and base_lr, got {sorted(state)}")
        self.last_step, self.base_lr = int(state["last_step"]), float(state["base_lr"])
        self.optimizer.lr = self.lr_at(self.last_step)

    def step(self) -> float:
        """Advance one step and set (and return) the learning rate for the next optimizer step."""
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)
        return self.optimizer.lr


class CosineSchedule(_Schedule):
    """Linear warm-up then cosine decay from the optimizer's lr to ``min_lr`` over ``total_steps``.

    ``lr(t) = base * (t + 1) / warmup_steps`` for t < warmup_steps, then
    ``min_lr + (base - min_lr) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2``,
    held at ``min_lr`` after ``total_steps``. t counts ``step()`` calls; call it once per
    optimizer step (or once per epoch, with ``total_steps`` in epochs).
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> None:
        if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"total_steps, warmup_steps: expected 0 <= warmup <= total and total > 0, got {total_steps}, "
                f"{warmup_steps}"
            )
        if min_lr < 0:
            raise ValueError(f"min_lr: expected >= 0, got {min_lr!r}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / span) if span else 1.0
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StepSchedule(_Schedule):
    """``lr(t) = base * gamma ** (t // step_size)`` (PyTorch ``StepLR``)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        if step_size <= 0:
            raise ValueError(f"step_size: expected a positive int, got {step_size!r}")
        if not gamma > 0:
            raise ValueError(f"gamma: expected a positive number, got {gamma!r}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)
