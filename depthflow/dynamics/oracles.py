"""Analytic oracle maps: depth maps whose spectra, fixed points, exponents and basins are known
in closed form (the DynamicalSystems.jl "toy systems with known answers").

Every oracle acts on token states ``(..., T, D)`` token by token with the same law, so the
state-level answers are the per-token answers repeated ``T`` times (eigenvalues, singular
values, exponents) or combined token by token (fixed points, basins). An :class:`Oracle`
bundles the map with its answers; all tensors are float64 (complex128 for eigenvalues).

================  ==========================================  ===============================
constructor       map (per token)                             closed forms
================  ==========================================  ===============================
``linear``        ``x -> A x``                                eig(A), svd(A), log|eig(A)|
``rotation``      ``x -> rho R(theta_1..theta_m) x``          ``rho e^(+-i theta_k)``
``non_normal``    ``x -> [[a, b], [0, c]] x``                 eig ``a, c``; singular values
``power``         ``u -> A u / ||A u||`` (A symmetric > 0)    fixed points ``+-q_i``; tangent
                                                              spectrum ``lambda_j/lambda_i``
``two_attractors`` circle map ``theta -> theta - c s(theta)``  attractors, their derivative,
                                                              basin fractions (arc lengths)
``linear_family`` ``x -> A_t x``, ``t = 1..L``                finite-time exponents
================  ==========================================  ===============================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from depthflow.errors import ConfigError
from depthflow.dynamics.maps import DepthMap, from_function, sphere

__all__ = ["Oracle", "linear", "rotation", "non_normal", "power", "two_attractors",
           "linear_family", "random_orthogonal", "symmetric_matrix"]

F64 = torch.float64


@dataclasses.dataclass(frozen=True)
class Oracle:
    """A map and its closed-form answers (None where not applicable).

    Attributes
    ----------
    map : DepthMap
    jacobian_eigenvalues : complex Tensor (T*D,) or None
        Eigenvalues of the full state Jacobian (any state: the map is linear), largest
        magnitude first.
    singular_values : Tensor (T*D,) or None
        Singular values of the state Jacobian, largest first.
    fixed_points : Tensor (K, D) or None
        Per-token directional fixed points of a sphere map; state fixed points are any
        choice of one per token.
    stable : bool Tensor (K,) or None
        Attracting (tangent spectral radius < 1).
    tangent_eigenvalues : complex Tensor (K, D-1) or None
        Per-token tangent Jacobian spectrum at each fixed point, largest magnitude first.
    basin_fractions : Tensor (K,) or None
        Fraction of uniformly random directions (per token) that converge to each fixed
        point under iteration; sums to 1 over the attractors.
    lyapunov_exponents : Tensor (T*D,) or (T*(D-1),) or None
        Exponents of the iterated map (largest first): ``log |eig|`` for linear maps, the
        tangent exponents ``log(lambda_j / lambda_1)`` for ``power``, finite-time
        ``log(s_i(A_L..A_1)) / L`` for ``linear_family``.
    matrix : Tensor or None
        The per-token matrix (or stack of matrices for ``linear_family``).
    tokens : int
    notes : str
    """

    map: DepthMap
    tokens: int
    matrix: Tensor | None = None
    jacobian_eigenvalues: Tensor | None = None
    singular_values: Tensor | None = None
    fixed_points: Tensor | None = None
    stable: Tensor | None = None
    tangent_eigenvalues: Tensor | None = None
    basin_fractions: Tensor | None = None
    lyapunov_exponents: Tensor | None = None
    notes: str = ""

    def state(self, index: int | Sequence[int]) -> Tensor:
        """The state fixed point (T, D) with fixed point ``index`` on every token (or
        ``index[i]`` on token ``i``)."""
        if self.fixed_points is None:
            raise ConfigError(f"{self.map.name} has no closed-form fixed points")
        idx = [index] * self.tokens if isinstance(index, int) else list(index)
        return self.fixed_points[idx]


def _sorted(values: Tensor) -> Tensor:
    return values[torch.argsort(values.abs(), descending=True, stable=True)]


def _repeat(values: Tensor, tokens: int) -> Tensor:
    return _sorted(values.repeat(tokens))


def random_orthogonal(dim: int, *, seed: int = 0) -> Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian with signs fixed), float64."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def symmetric_matrix(eigenvalues: Sequence[float], *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``A = Q diag(eigenvalues) Q^T`` with random orthogonal ``Q``; returns ``(A, Q)``
    (column ``i`` of ``Q`` is the eigenvector of ``eigenvalues[i]``)."""
    lam = torch.as_tensor(eigenvalues, dtype=F64)
    q = random_orthogonal(len(lam), seed=seed)
    return (q * lam) @ q.T, q


def _linear_fn(A: Tensor):
    def fn(x: Tensor) -> Tensor:
        return x @ A.to(x).T
    return fn


def linear(A: Tensor, *, tokens: int = 3, name: str = "linear") -> Oracle:
    """``x_i -> A x_i`` on every token (autonomous).

    The state Jacobian is ``I_T (x) A`` everywhere: eigenvalues ``eig(A)`` and singular
    values ``svd(A)`` each repeated ``T`` times; the Lyapunov exponents of its iteration are
    ``log |eig(A)|`` (repeated ``T`` times).
    """
    A = torch.as_tensor(A, dtype=F64)
    ev = torch.linalg.eigvals(A)
    return Oracle(map=from_function(_linear_fn(A), name=name), tokens=tokens, matrix=A,
                  jacobian_eigenvalues=_repeat(ev, tokens),
                  singular_values=torch.linalg.svdvals(A).repeat(tokens).sort(
                      descending=True).values,
                  lyapunov_exponents=torch.log(_repeat(ev, tokens).abs()),
                  notes="J = I_T kron A at every state")


def rotation(angles: Sequence[float], *, radius: float = 1.0, tokens: int = 3) -> Oracle:
    """``x -> rho R x`` with ``R`` block-diagonal 2x2 rotations by ``angles`` (D = 2m).

    Eigenvalues ``rho e^(+-i theta_k)`` (complex pairs), all singular values ``rho``, all
    Lyapunov exponents ``log rho``.
    """
    th = torch.as_tensor(angles, dtype=F64)
    D = 2 * len(th)
    A = torch.zeros(D, D, dtype=F64)
    for k, a in enumerate(th):
        c, s = math.cos(float(a)), math.sin(float(a))
        A[2 * k:2 * k + 2, 2 * k:2 * k + 2] = torch.tensor([[c, -s], [s, c]], dtype=F64)
    out = linear(radius * A, tokens=tokens, name=f"rotation(rho={radius})")
    return out


def non_normal(a: float = 0.9, b: float = 2.0, c: float = 0.5, *, tokens: int = 3) -> Oracle:
    """``x -> [[a, b], [0, c]] x`` (D = 2): eigenvalues ``a, c``; singular values
    ``sqrt((S +- sqrt(S^2 - 4 a^2 c^2)) / 2)`` with ``S = a^2 + b^2 + c^2`` (non-normal:
    the spectral norm exceeds the spectral radius when ``b != 0``)."""
    A = torch.tensor([[a, b], [0.0, c]], dtype=F64)
    S = a * a + b * b + c * c
    disc = math.sqrt(S * S - 4 * a * a * c * c)
    sv = torch.tensor([math.sqrt((S + disc) / 2), math.sqrt(max(S - disc, 0.0) / 2)],
                      dtype=F64)
    base = linear(A, tokens=tokens, name="non_normal")
    return dataclasses.replace(base, singular_values=sv.repeat(tokens).sort(
        descending=True).values, notes="closed-form 2x2 singular values")


def power(eigenvalues: Sequence[float], *, tokens: int = 3, norms: float = 1.0,
          seed: int = 0) -> Oracle:
    """The sphere map of a symmetric positive definite linear map: one step of power
    iteration, ``u -> A u / ||A u||`` per token (``A = Q diag(lambda) Q^T``).

    Closed forms (``lambda_1 > lambda_2 > ... > 0`` distinct):

    - fixed points ``+-q_i`` (the eigenvectors), ``2 D`` per token, ordered
      ``+q_1, -q_1, +q_2, -q_2, ...``;
    - tangent Jacobian at ``+-q_i``: ``(I - q_i q_i^T) A / lambda_i``, eigenvalues
      ``lambda_j / lambda_i`` (``j != i``); attracting only for ``i = 1``;
    - basins: ``+q_1`` attracts every direction with ``<u, q_1> > 0``: fractions 1/2, 1/2,
      then 0;
    - tangent Lyapunov exponents ``log(lambda_j / lambda_1)``, ``j = 2..D`` (per token).

    The map is scale invariant, so ``norms`` does not change any answer (it is recorded).
    """
    lam = torch.as_tensor(eigenvalues, dtype=F64)
    if (lam <= 0).any() or len(set(lam.tolist())) != len(lam):
        raise ConfigError(f"power: eigenvalues must be positive and distinct, got "
                          f"{lam.tolist()}")
    lam, _ = torch.sort(lam, descending=True)
    A, q = symmetric_matrix(lam.tolist(), seed=seed)
    D = len(lam)
    fmap = sphere(from_function(_linear_fn(A), name="power_linear"), norms, source="oracle")
    points = torch.stack([s * q[:, i] for i in range(D) for s in (1.0, -1.0)])
    tangent = []
    for i in range(D):
        ratios = torch.cat([lam[:i], lam[i + 1:]]) / lam[i]
        tangent += [ratios, ratios]
    tangent = torch.stack(tangent).to(torch.complex128)
    stable = torch.zeros(2 * D, dtype=torch.bool)
    stable[:2] = True
    basins = torch.zeros(2 * D, dtype=F64)
    basins[:2] = 0.5
    exps = torch.log(lam[1:] / lam[0]).repeat(tokens).sort(descending=True).values
    return Oracle(map=fmap, tokens=tokens, matrix=A, fixed_points=points, stable=stable,
                  tangent_eigenvalues=tangent, basin_fractions=basins,
                  lyapunov_exponents=exps,
                  notes="power iteration: fixed points +-eigenvectors, top one attracting")


def _half_sines(theta: Tensor, zeros: Tensor) -> Tensor:
    return torch.prod(torch.sin((theta[..., None] - zeros) / 2), dim=-1)


def two_attractors(zeros: Sequence[float] = (0.0, 0.8, 2.0, 4.4), *, gain: float = 0.4,
                   tokens: int = 3, norms: float = 1.0) -> Oracle:
    """A circle map (D = 2) with two attractors and known basins, as a sphere map.

    Per token ``x = |x| (cos theta, sin theta) -> |x| (cos g(theta), sin g(theta))`` with
    ``g(theta) = theta + gain * s(theta)``, ``s(theta) = prod_k sin((theta - z_k)/2)`` and
    zeros ``z_1 < z_2 < z_3 < z_4`` in ``[0, 2 pi)``. Since ``|s'| <= 2`` and
    ``gain < 1/2``, ``g`` is an increasing circle homeomorphism: every orbit moves
    monotonically to a fixed point. Closed forms:

    - fixed points at the angles ``z_k`` (order ``z_1..z_4``), with derivative (= tangent
      eigenvalue) ``g'(z_k) = 1 + gain * s'(z_k)``,
      ``s'(z_k) = 1/2 prod_(j != k) sin((z_k - z_j)/2)``: ``z_1, z_3`` attract, ``z_2, z_4``
      repel;
    - basins: the arcs between the repellers, fractions
      ``(z_2 - z_4 + 2 pi) / 2 pi`` for ``z_1`` and ``(z_4 - z_2) / 2 pi`` for ``z_3``.
    """
    z = torch.as_tensor(zeros, dtype=F64)
    if len(z) != 4 or not bool((z[1:] > z[:-1]).all()) or z[0] < 0 or z[-1] >= 2 * math.pi:
        raise ConfigError(f"two_attractors: zeros must be 4 increasing angles in [0, 2 pi), "
                          f"got {list(zeros)}")
    if not 0 < gain < 0.5:
        raise ConfigError(f"two_attractors: gain must be in (0, 0.5) so that the circle map "
                          f"is monotone, got {gain}")

    def fn(x: Tensor) -> Tensor:
        r = x.norm(dim=-1, keepdim=True)
        th = torch.atan2(x[..., 1], x[..., 0])
        g = th + gain * _half_sines(th, z.to(x))
        return r * torch.stack([torch.cos(g), torch.sin(g)], dim=-1)

    fmap = sphere(from_function(fn, name="two_attractors_circle"), norms, source="oracle")
    ds = torch.stack([0.5 * torch.prod(torch.sin((z[k] - torch.cat([z[:k], z[k + 1:]])) / 2))
                      for k in range(4)])
    deriv = 1 + gain * ds
    points = torch.stack([torch.cos(z), torch.sin(z)], dim=-1)
    basins = torch.tensor([(z[1] - z[3] + 2 * math.pi) / (2 * math.pi), 0.0,
                           (z[3] - z[1]) / (2 * math.pi), 0.0], dtype=F64)
    return Oracle(map=fmap, tokens=tokens, fixed_points=points, stable=deriv.abs() < 1,
                  tangent_eigenvalues=deriv[:, None].to(torch.complex128),
                  basin_fractions=basins,
                  notes="monotone circle map: attractors z1, z3; basins = arcs between "
                        "repellers z2, z4")


def linear_family(matrices: Tensor, *, tokens: int = 3) -> Oracle:
    """Depth-indexed linear maps ``x_i -> A_t x_i``, ``t = 1..L`` (non-autonomous).

    Finite-time Lyapunov exponents over the whole depth: ``log s_i(A_L ... A_1) / L``
    (per token, repeated ``T`` times); the composed map ``compose(F, 0, L)`` has Jacobian
    eigenvalues ``eig(A_L ... A_1)``.
    """
    As = torch.as_tensor(matrices, dtype=F64)
    L = As.shape[0]

    def fn(t: int, x: Tensor) -> Tensor:
        return x @ As[t - 1].to(x).T

    prod = torch.eye(As.shape[-1], dtype=F64)
    for A in As:
        prod = A @ prod
    exps = torch.log(torch.linalg.svdvals(prod)) / L
    return Oracle(map=from_function(fn, depths=range(1, L + 1), name="linear_family"),
                  tokens=tokens, matrix=As,
                  jacobian_eigenvalues=_repeat(torch.linalg.eigvals(prod), tokens),
                  lyapunov_exponents=exps.repeat(tokens).sort(descending=True).values,
                  notes="jacobian_eigenvalues are those of the composed map A_L..A_1")
