"""Depth maps: one abstraction for a ViT layer, a phase, a Raptor block or any torch function.

A :class:`DepthMap` is a depth-indexed family ``F_t`` of pure functions on token states of
shape ``(..., T, D)``. Calling ``F(t, x)`` applies the map of depth index ``t`` (1-based: the
map that produces depth ``t`` from depth ``t - 1``); autonomous maps have ``depths = None``
and ignore ``t`` (pass ``None``). Tangent maps come from :mod:`torch.func`:
``F.jvp(t, x, v) -> (F_t(x), J v)`` and ``F.vjp(t, x, u) -> (F_t(x), J^T u)``.

Constructors (wrap, never subclass)::

    from_model(vit_or_raptor)        # F_t = model.step(t, .), t = 1..L
    from_function(fn, depths=None)   # any pure torch function fn(x) or fn(t, x)
    compose(F, start, stop)          # one phase: F_stop o ... o F_(start+1), autonomous
    frozen(F, t)                     # F_t applied again and again, autonomous
    sphere(F, norms)                 # F_hat(u) = F(r u) / ||F(r u)|| per token

Anything with ``depth`` and ``step(layer, state)`` is a model here: the depthflow ViT and a
fitted Raptor surrogate plug in unchanged. A model map never changes the model it wraps: it
asks ``step`` for the plain-math attention on every call (forward-mode AD has no rule for
fused attention kernels) and refuses a model in training mode (stochastic depth and dropout
would make the map random). Definitions: ``docs/methods.md``.
"""

from __future__ import annotations

import abc
import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import jvp as _jvp
from torch.func import vjp as _vjp

from depthflow.errors import ConfigError, InputError

__all__ = [
    "DepthMap", "ModelMap", "FunctionMap", "ComposedMap", "FrozenMap", "SphereMap",
    "from_model", "from_function", "compose", "frozen", "sphere", "norms_from_states",
    "tangent_project", "require_autonomous", "check_states",
]


def tangent_project(u: Tensor, v: Tensor) -> Tensor:
    """Project ``v`` on the tangent space of the unit sphere at ``u``, per token:
    ``v - <u, v> u`` (``u`` unit along the last dim)."""
    return v - (u * v).sum(-1, keepdim=True) * u


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class DepthMap(abc.ABC):
    """A depth-indexed family of pure maps on token states ``(..., T, D)``.

    Attributes
    ----------
    depths : tuple of int or None
        Valid depth indices ``t`` (``None``: autonomous, ``t`` is ignored).
    name : str
        Short description used in outputs.
    """

    depths: tuple[int, ...] | None = None
    name: str = "map"

    @property
    def autonomous(self) -> bool:
        return self.depths is None

    @property
    def on_sphere(self) -> bool:
        """Whether the map acts on unit token directions (a :class:`SphereMap`, possibly
        frozen or composed)."""
        return False

    @abc.abstractmethod
    def _apply(self, t: int | None, x: Tensor) -> Tensor:
        """The map itself; ``t`` already validated."""

    def __call__(self, t: int | None, x: Tensor) -> Tensor:
        return self._apply(self.check_depth(t), x)

    def check_depth(self, t: int | None) -> int | None:
        if self.depths is None:
            return None
        if t is None or int(t) not in self.depths:
            raise ConfigError(f"{self.name}: depth index t must be one of "
                              f"{_span(self.depths)}, got {t!r}")
        return int(t)

    def jvp(self, t: int | None, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(F_t(x), J_t(x) v)`` by forward-mode AD."""
        t = self.check_depth(t)
        return _jvp(lambda z: self._apply(t, z), (x,), (v,))

    def vjp(self, t: int | None, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(F_t(x), J_t(x)^T u)`` by reverse-mode AD."""
        t = self.check_depth(t)
        y, pullback = _vjp(lambda z: self._apply(t, z), x)
        (g,) = pullback(u)
        return y.detach(), g.detach()

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of what this map is (written into every output)."""
        return {"map": type(self).__name__, "name": self.name,
                "depths": None if self.depths is None else _span(self.depths)}

    def to_json(self) -> str:
        return json.dumps(self.describe(), sort_keys=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _span(depths: Sequence[int]) -> str:
    depths = list(depths)
    if depths == list(range(depths[0], depths[-1] + 1)):
        return f"{depths[0]}..{depths[-1]}"
    return ",".join(map(str, depths))


class ModelMap(DepthMap):
    """``F_t = model.step(t, .)`` for ``t = 1..model.depth`` (a ViT or a Raptor surrogate)."""

    def __init__(self, model: Any, *, attention: str = "math") -> None:
        if not hasattr(model, "step") or not hasattr(model, "depth"):
            raise ConfigError(f"a model map needs an object with 'depth' and "
                              f"'step(layer, state)', got {type(model).__name__}")
        if getattr(model, "training", False):
            raise ConfigError(f"a model map needs a model in eval mode (stochastic depth and "
                              f"dropout make a training-mode model random); call "
                              f"{type(model).__name__}.eval() first")
        self.model = model
        self.attention = attention
        self._ask = "attention" in inspect.signature(model.step).parameters
        self.depths = tuple(range(1, int(model.depth) + 1))
        self.name = f"{type(model).__name__} layers 1..{model.depth}"

    def _apply(self, t: int | None, x: Tensor) -> Tensor:
        width = getattr(getattr(self.model, "cfg", None), "embed_dim", None)
        if width is not None and (x.ndim < 2 or x.shape[-1] != width):
            raise InputError(f"{self.name}: states must have shape (..., T, {width}), got "
                             f"{tuple(x.shape)}")
        if self._ask:
            return self.model.step(t, x, attention=self.attention)
        return self.model.step(t, x)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        cfg = getattr(self.model, "cfg", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            info["architecture"] = cfg.to_dict()
        return info


class FunctionMap(DepthMap):
    """A plain torch function: ``fn(x)`` (autonomous) or ``fn(t, x)`` (with ``depths``)."""

    def __init__(self, fn: Callable[..., Tensor], *, depths: Sequence[int] | None = None,
                 name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.depths = None if depths is None else tuple(int(d) for d in depths)
        if self.depths is not None and not self.depths:
            raise ConfigError("depths must be None (autonomous) or a non-empty sequence")
        self.name = name or getattr(fn, "__name__", "function")

    def _apply(self, t: int | None, x: Tensor) -> Tensor:
        return self.fn(x) if self.depths is None else self.fn(t, x)


class ComposedMap(DepthMap):
    """Depth ``start`` -> ``stop`` in one map: ``F_stop o ... o F_(start+1)`` (autonomous)."""

    def __init__(self, base: DepthMap, start: int, stop: int) -> None:
        if base.depths is None:
            raise ConfigError("compose needs a depth-indexed map; to iterate an autonomous "
                              "map use it directly")
        steps = tuple(range(start + 1, stop + 1))
        if not steps or any(s not in base.depths for s in steps):
            raise ConfigError(f"compose: need start < stop with layers {start + 1}..{stop} "
                              f"inside {_span(base.depths)}, got start={start}, stop={stop}")
        self.base, self.start, self.stop, self.steps = base, start, stop, steps
        self.name = f"{base.name} composed {start + 1}..{stop}"

    @property
    def on_sphere(self) -> bool:
        return self.base.on_sphere

    def _apply(self, t: int | None, x: Tensor) -> Tensor:
        for s in self.steps:
            x = self.base._apply(s, x)
        return x

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base": self.base.describe(),
                "layers": _span(self.steps)}


class FrozenMap(DepthMap):
    """``F_t`` at a frozen depth index, as an autonomous map (iterate it for dynamics)."""

    def __init__(self, base: DepthMap, t: int | None) -> None:
        self.base = base
        self.t = base.check_depth(t)
        self.name = f"{base.name} frozen at t={t}"

    @property
    def on_sphere(self) -> bool:
        return self.base.on_sphere

    def _apply(self, t: int | None, x: Tensor) -> Tensor:
        return self.base._apply(self.t, x)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base": self.base.describe(), "t": self.t}


class SphereMap(DepthMap):
    """The map on token directions: ``F_hat_t(u) = F_t(r u) / ||F_t(r u)||`` per token.

    ``norms`` are the reference input norms ``r``: a tensor broadcastable to the token axis of
    the states (``(T,)`` or ``(..., T)``), typically the mean token norms of a trajectory at
    the input depth (:func:`norms_from_states`). The map's tangent Jacobian acts on the
    tangent space at ``u``: :meth:`tangent_jvp` projects the input tangent; the output of a
    normalised map is tangent at ``F_hat(u)`` by construction.
    """

    def __init__(self, base: DepthMap, norms: Tensor, *, source: str = "given") -> None:
        norms = torch.as_tensor(norms).detach()
        if not torch.isfinite(norms).all() or (norms <= 0).any():
            raise InputError("sphere: reference norms must be finite and positive "
                             f"(got min {float(norms.min()):.3g}); zero-norm tokens have no "
                             "direction")
        self.base, self.norms, self.source = base, norms, source
        self.depths = base.depths
        self.name = f"sphere({base.name})"

    @property
    def on_sphere(self) -> bool:
        return True

    def _apply(self, t: int | None, u: Tensor) -> Tensor:
        r = self.norms.to(device=u.device, dtype=u.dtype).unsqueeze(-1)     # (..., T, 1)
        return _unit(self.base._apply(t, r * u))

    def tangent_jvp(self, t: int | None, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(F_hat(u), J_hat P_u v)`` with ``P_u`` the tangent projection at ``u``."""
        return self.jvp(t, u, tangent_project(u, v))

    def tangent_vjp(self, t: int | None, u: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """``(F_hat(u), P_u J_hat^T P_y w)``: the adjoint of :meth:`tangent_jvp`."""
        t = self.check_depth(t)
        y = self._apply(t, u).detach()
        y, g = self.vjp(t, u, tangent_project(y, w))
        return y, tangent_project(u, g)

    def describe(self) -> dict[str, Any]:
        n = self.norms.double()
        return {**super().describe(), "base": self.base.describe(),
                "wrapper": "F_hat(u) = F(r u) / ||F(r u)|| per token",
                "norms_source": self.source, "norms_shape": list(self.norms.shape),
                "norms_min": float(n.min()), "norms_mean": float(n.mean()),
                "norms_max": float(n.max())}


def from_model(model: Any, *, attention: str = "math") -> ModelMap:
    """The layers of a depth model (``depth``, ``step(layer, state)``) as a depth map."""
    return ModelMap(model, attention=attention)


def from_function(fn: Callable[..., Tensor], *, depths: Sequence[int] | None = None,
                  name: str | None = None) -> FunctionMap:
    """Wrap a pure torch function of token states ``(..., T, D)``.

    ``fn(x)`` when ``depths`` is None (autonomous), else ``fn(t, x)`` for ``t`` in ``depths``.
    The function must be traceable by :mod:`torch.func` (no in-place ops on inputs, no
    data-dependent Python control flow, no ``.item()``).
    """
    return FunctionMap(fn, depths=depths, name=name)


def compose(base: DepthMap, start: int, stop: int) -> ComposedMap:
    """The phase of layers ``start+1..stop`` as one autonomous map."""
    return ComposedMap(base, start, stop)


def frozen(base: DepthMap, t: int | None) -> FrozenMap:
    """``F_t`` at a frozen depth index: a layer (or Raptor block) iterated as a dynamical
    system."""
    return FrozenMap(base, t)


def sphere(base: DepthMap, norms: Tensor | float, *, source: str = "given") -> SphereMap:
    """Wrap ``base`` as a map on token directions at reference norms ``norms``."""
    return SphereMap(base, torch.as_tensor(norms), source=source)


def norms_from_states(states: Tensor) -> Tensor:
    """Mean token norms ``(T,)`` of states ``(..., T, D)`` (e.g. one depth of a trajectory)."""
    norms = states.norm(dim=-1)
    return norms.reshape(-1, norms.shape[-1]).mean(0)


def require_autonomous(f: DepthMap, routine: str) -> DepthMap:
    """Raise a clear error when ``routine`` needs an autonomous map and got a family."""
    if not isinstance(f, DepthMap):
        raise ConfigError(f"{routine} needs a depthflow.dynamics.maps.DepthMap, got {type(f).__name__}; "
                          "wrap functions with depthflow.dynamics.maps.from_function")
    if not f.autonomous:
        raise ConfigError(f"{routine} needs an autonomous map, got {f.name} with depth indices "
                          f"{_span(f.depths)}; use depthflow.dynamics.maps.frozen(F, t) for one layer "
                          "or depthflow.dynamics.maps.compose(F, start, stop) for a phase")
    return f


def check_states(x: Tensor, *, name: str = "states", unit: bool = False) -> Tensor:
    """Validate token states ``(..., T, D)``: finite, and non-zero per token when ``unit``."""
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise InputError(f"{name} must be a tensor of shape (..., T, D), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contain NaN or inf")
    if unit and (x.norm(dim=-1) == 0).any():
        raise InputError(f"{name} contain zero-norm tokens, which have no direction on the "
                         "sphere")
    return x
