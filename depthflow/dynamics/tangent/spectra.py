"""Jacobian spectra of depth maps: per-token blocks, top-k eigenvalues and singular values.

For a Euclidean map the operator is the full state Jacobian ``J = dF_t/dx`` of size
``(T*D) x (T*D)``. For a :class:`~depthflow.dynamics.maps.SphereMap` it is the *tangent* Jacobian:
the input is restricted to the tangent spaces at ``u`` and the output projected on the
tangent spaces at ``y = F_hat(u)``; both are expressed in orthonormal tangent coordinates
(Householder bases, ``T*(D-1)`` of them), so the spurious radial directions of a normalised
map never appear. Eigenvalues need one space: the output tangent at ``y`` is carried back to
``u`` by the per-token rotation taking ``y`` to ``u`` (the identity at a fixed point, where
the spectrum is the usual tangent spectrum; elsewhere a convention, stated in the output).

Methods: ``"dense"`` builds the Jacobian with :func:`torch.func.jacrev` and calls
:func:`torch.linalg.eigvals`/``svd`` (at most ``max_dense`` rows); ``"arpack"`` runs
:func:`scipy.sparse.linalg.eigs`/``svds`` on a :class:`~scipy.sparse.linalg.LinearOperator`
of JVPs/VJPs (CPU); ``"krylov"`` runs a torch Krylov-Schur method (on ``J`` for eigenvalues,
on ``J^T J`` for singular values) on the state's device (GPU); ``"subspace"`` (singular
values only) runs block subspace iteration with vmapped JVPs/VJPs; ``"matrix_free"`` picks
krylov (one code path for CPU and GPU; on a ViT-S block it needs fewer products than
ARPACK); ``"auto"`` picks dense for small operators (n <= 1024). Operators of at least
``LINEARIZE_FROM`` rows trace their JVP once with :func:`torch.func.linearize`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import scipy.sparse.linalg as spla
import torch
import xarray as xr
from torch import Tensor
from torch.func import jacfwd, jacrev, linearize, vmap

from depthflow.core import vocabulary as dims
from depthflow.errors import ConfigError, InputError
from depthflow.dynamics.maps import DepthMap, check_states, tangent_project
from depthflow.dynamics.tangent import _linalg

__all__ = ["SpectrumResult", "token_jacobians", "eigvals", "singular_values",
           "TangentOperator", "METHODS"]

METHODS = ("auto", "dense", "matrix_free", "arpack", "krylov")
WHICH = ("LM", "LR", "SM")
MAX_DENSE = 8192
"""Largest operator (rows) the dense route builds: 8192^2 float64 is 0.5 GB."""


# ----------------------------------------------------------------------------- result


@dataclasses.dataclass
class SpectrumResult:
    """Top-k eigenvalues or singular values of a (tangent) Jacobian at one state.

    Attributes
    ----------
    eigenvalues : complex Tensor (k,) or None
        Largest first (by magnitude for ``which="LM"``, real part for ``"LR"``); smallest
        magnitude first for ``"SM"``.
    singular_values : Tensor (k,) or None
        Largest first.
    vectors : Tensor (k, T, D) or None
        Eigenvectors (complex, unit norm) or right singular vectors, in the ambient space
        (tangent at ``u`` for sphere maps). The top right singular vector is the most
        amplified input direction.
    left_vectors : Tensor (k, T, D) or None
        Left singular vectors (tangent at ``y`` for sphere maps).
    method : str
        The route actually taken (``dense``, ``arpack``, ``krylov``).
    nmatvec : int
        Operator applications: JVPs (and VJPs for singular values); for ``dense``, the
        number of Jacobian rows built.
    converged : bool
        Every reported value met ``tol``.
    residuals : Tensor (k,) or None
        Relative residuals of the reported pairs (matrix-free routes).
    tangent : bool
        The operator is the tangent Jacobian of a sphere map.
    size : int
        Dimension of the operator (``T*D``, or ``T*(D-1)`` on the sphere).
    map_json : str
        ``describe()`` of the map, JSON.
    """

    eigenvalues: Tensor | None = None
    singular_values: Tensor | None = None
    vectors: Tensor | None = None
    left_vectors: Tensor | None = None
    method: str = ""
    nmatvec: int = 0
    converged: bool = True
    residuals: Tensor | None = None
    tangent: bool = False
    size: int = 0
    map_json: str = "{}"

    @property
    def spectral_radius(self) -> float:
        """``max |eigenvalue|`` (or the top singular value: the spectral norm)."""
        vals = self.eigenvalues if self.eigenvalues is not None else self.singular_values
        return float(vals.abs().max()) if vals is not None and vals.numel() else math.nan

    @property
    def message(self) -> str:
        if self.converged:
            return "converged"
        return ("not converged to tol: raise ncv or max_restarts/max_iter, loosen tol, or use "
                "method='dense' when the operator is small")

    def to_dataset(self) -> xr.Dataset:
        """Labelled output with plain names (the caller chooses the group): real and
        imaginary parts as two variables (dim ``eig``) or the singular values (dim
        ``mode``), the spectral radius/norm, and NetCDF-plain attrs."""
        what = "tangent Jacobian" if self.tangent else "state Jacobian"
        data: dict[str, xr.DataArray] = {}
        if self.eigenvalues is not None:
            ev = self.eigenvalues.detach().cpu().to(torch.complex128).numpy()
            data["eig_real"] = xr.DataArray(
                ev.real, dims=(dims.EIG,),
                attrs={"long_name": f"real part of the top eigenvalues of the {what}",
                       "units": "1"})
            data["eig_imag"] = xr.DataArray(
                ev.imag, dims=(dims.EIG,),
                attrs={"long_name": f"imaginary part of the top eigenvalues of the {what}",
                       "units": "1"})
            data["spectral_radius"] = xr.DataArray(
                self.spectral_radius,
                attrs={"long_name": f"largest |eigenvalue| of the {what}", "units": "1"})
        if self.singular_values is not None:
            sv = self.singular_values.detach().cpu().double().numpy()
            data["singular_value"] = xr.DataArray(
                sv, dims=(dims.MODE,),
                attrs={"long_name": f"top singular values of the {what}", "units": "1"})
            data["spectral_norm"] = xr.DataArray(
                float(sv.max()) if sv.size else math.nan,
                attrs={"long_name": f"largest singular value of the {what}", "units": "1"})
        attrs = {"method": self.method, "nmatvec": int(self.nmatvec),
                 "converged": int(self.converged),
                 "tangent": int(self.tangent), "size": int(self.size),
                 "map": self.map_json}
        return xr.Dataset(data, attrs=attrs)


# ----------------------------------------------------------------------------- operator

LINEARIZE_FROM = 2048
"""Operators of at least this size trace the JVP once with :func:`torch.func.linearize`
(about 2 s on CPU, then each product costs about one forward pass instead of ~5)."""


def _linearized(f: DepthMap, t: int | None, x: Tensor):
    """``v -> J v`` from :func:`torch.func.linearize`, or None when tracing fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, jvp_fn = linearize(lambda z: f(t, z), x)
    except Exception:          # untraceable map: fall back to plain JVPs
        return None
    return jvp_fn



class TangentOperator:
    """The Jacobian of ``f`` at ``x`` as a linear operator on flat coordinates.

    Euclidean maps: ``J`` on ``R^(T*D)``. Sphere maps: ``B_y^T P_y J B_u`` on tangent
    coordinates (``B`` orthonormal tangent bases), and for eigenvalues the output carried
    from ``y`` to ``u``. ``matvec``/``rmatvec`` act on vectors (n,), ``matmat``/``rmatmat`` on
    blocks of rows (b, n) by vmapped JVPs/VJPs.
    """

    def __init__(self, f: DepthMap, t: int | None, x: Tensor, *, square: bool,
                 linearize: bool | None = None) -> None:
        if not isinstance(f, DepthMap):
            raise ConfigError(f"spectra need a depthflow.dynamics.maps.DepthMap, got "
                              f"{type(f).__name__}; wrap functions with "
                              "depthflow.dynamics.maps.from_function")
        check_states(x, name="x", unit=f.on_sphere)
        if x.ndim != 2:
            raise InputError(f"x must be one state of shape (T, D), got {tuple(x.shape)}; "
                             "loop or vmap over samples")
        self.f, self.t, self.square = f, f.check_depth(t), square
        self.tangent = f.on_sphere
        x = x.detach()
        self.x = x / x.norm(dim=-1, keepdim=True) if self.tangent else x
        with torch.no_grad():
            self.y = f(self.t, self.x)
        self.T, self.D = x.shape
        self.d = self.D - 1 if self.tangent else self.D
        self.n = self.T * self.d
        self._trace = bool(linearize or (linearize is None and self.n >= LINEARIZE_FROM))
        self._jvp_fn = None

    # lift/lower between flat coordinates and ambient (T, D) vectors
    def lift_in(self, c: Tensor) -> Tensor:
        c = c.reshape(*c.shape[:-1], self.T, self.d)
        return _linalg.to_tangent(self.x, c) if self.tangent else c

    def lift_out(self, c: Tensor) -> Tensor:
        c = c.reshape(*c.shape[:-1], self.T, self.d)
        if not self.tangent:
            return c
        return _linalg.to_tangent(self.x if self.square else self.y, c)

    def _lower(self, at: Tensor, v: Tensor) -> Tensor:
        v = _linalg.from_tangent(at, v) if self.tangent else v
        return v.reshape(*v.shape[:-2], self.n)

    def _jvp(self, v: Tensor) -> Tensor:
        if self._jvp_fn is None:          # lazily: the dense route never needs it
            plain = lambda v: self.f.jvp(self.t, self.x, v)[1]      # noqa: E731
            self._jvp_fn = (_linearized(self.f, self.t, self.x) if self._trace else None) \
                or plain
        return self._jvp_fn(v)

    def _jv(self, v: Tensor) -> Tensor:
        w = self._jvp(v)
        if self.tangent:
            w = tangent_project(self.y, w)
            if self.square:
                w = _linalg.transport(self.y, self.x, w)
        return w

    def matvec(self, c: Tensor) -> Tensor:
        w = self._jv(self.lift_in(c))
        return self._lower(self.x if (self.square or not self.tangent) else self.y,
                           w).detach()

    def rmatvec(self, c: Tensor) -> Tensor:
        if self.square:
            raise ConfigError("rmatvec is defined for the singular-value operator only")
        w = self.lift_out(c)
        g = self.f.vjp(self.t, self.x, w)[1]
        return self._lower(self.x, tangent_project(self.x, g) if self.tangent else g).detach()

    def matmat(self, C: Tensor) -> Tensor:
        return vmap(self.matvec)(C)

    def rmatmat(self, C: Tensor) -> Tensor:
        return vmap(self.rmatvec)(C)

    def dense(self, *, chunk_size: int | None = None) -> Tensor:
        """The operator as an (n, n) matrix: ``jacrev`` of the map, then the tangent
        projections and coordinates applied blockwise."""
        def flat(z: Tensor) -> Tensor:
            return self.f(self.t, z.reshape(self.T, self.D)).reshape(-1)

        J = jacrev(flat, chunk_size=chunk_size)(self.x.reshape(-1))     # (TD, TD)
        J = J.reshape(self.T, self.D, self.T, self.D)
        J = J.detach()
        if not self.tangent:
            return J.reshape(self.n, self.n)
        eye = torch.eye(self.d, dtype=self.x.dtype, device=self.x.device)
        Bin = _linalg.to_tangent(self.x[:, None, :], eye[None])          # (T, d, D)
        if self.square:     # <B_u, R_{y->u} P_y J .> = <P_y R_{u->y} B_u, J .>
            Bout = tangent_project(self.y[:, None, :],
                                   _linalg.transport(self.x[:, None, :], self.y[:, None, :], Bin))
        else:
            Bout = _linalg.to_tangent(self.y[:, None, :], eye[None])     # (T, d, D)
        M = torch.einsum("iad,idje,jbe->iajb", Bout, J, Bin)              # (T, d, T, d)
        return M.reshape(self.n, self.n)

    def scipy(self) -> spla.LinearOperator:
        """CPU float64 :class:`~scipy.sparse.linalg.LinearOperator` counting its products."""
        self.count = 0
        dev, dt = self.x.device, self.x.dtype

        def mv(v):
            self.count += 1
            c = torch.as_tensor(np.asarray(v).reshape(-1).real, device=dev, dtype=dt)
            return self.matvec(c).detach().cpu().double().numpy()

        def rmv(v):
            self.count += 1
            c = torch.as_tensor(np.asarray(v).reshape(-1).real, device=dev, dtype=dt)
            return self.rmatvec(c).detach().cpu().double().numpy()

        return spla.LinearOperator((self.n, self.n), matvec=mv,
                                   rmatvec=None if self.square else rmv, dtype=np.float64)


# ----------------------------------------------------------------------------- per token


def token_jacobians(f: DepthMap, t: int | None, x: Tensor, *,
                    chunk_size: int | None = None) -> Tensor:
    """Diagonal blocks ``dF_i / dx_i`` of the state Jacobian, one per token.

    Parameters
    ----------
    f : DepthMap
    t : int or None
        Depth index (None for autonomous maps).
    x : Tensor (..., T, D)
        States; leading batch dims are kept.
    chunk_size : int, optional
        Tokens differentiated at once (:func:`torch.func.vmap` chunks); default: as many
        as keep about 2^24 tangent entries in flight.

    Returns
    -------
    Tensor (..., T, D, D)
        Block ``i`` is the Jacobian of token ``i``'s output with respect to token ``i``'s
        input, the other tokens frozen. For a :class:`~depthflow.dynamics.maps.SphereMap`, the
        tangent block ``P_y J_ii P_u`` (ambient coordinates, rank ``D - 1``).
    """
    check_states(x, name="x", unit=f.on_sphere)
    t = f.check_depth(t)
    sphere = f.on_sphere
    x = x.detach()
    if sphere:
        x = x / x.norm(dim=-1, keepdim=True)
    batch, (T, D) = x.shape[:-2], x.shape[-2:]
    eye = torch.eye(T, dtype=x.dtype, device=x.device)

    def block(e: Tensor, state: Tensor) -> Tensor:           # e (T,) one-hot, state (T, D)
        xi = e @ state                                       # (D,)

        def g(z: Tensor) -> Tensor:
            return e @ f(t, state + e[:, None] * (z - xi)[None, :])

        J = jacfwd(g)(xi)                                    # (D, D)
        if sphere:
            yi = g(xi)
            Pu = torch.eye(D, dtype=x.dtype, device=x.device) - torch.outer(xi, xi)
            Py = torch.eye(D, dtype=x.dtype, device=x.device) - torch.outer(yi, yi)
            J = Py @ J @ Pu
        return J

    if chunk_size is None:         # tokens at once: ~2^24 tangent entries (128 MB float64)
        chunk_size = max(1, min(T, 2 ** 24 // (D * T * D)))
    per_state = vmap(block, in_dims=(0, None), chunk_size=chunk_size)
    flat = x.reshape(-1, T, D)
    out = torch.stack([per_state(eye, s) for s in flat]) if flat.shape[0] else \
        x.new_zeros(0, T, D, D)
    return out.reshape(*batch, T, D, D).detach()


# ----------------------------------------------------------------------------- eigenvalues


def _check(k: int, method: str, which: str, n: int, max_dense: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    if which not in WHICH:
        raise ConfigError(f"which must be 'LM' (largest magnitude), 'LR' (largest real "
                          f"part) or 'SM' (smallest magnitude), got {which!r}")
    if which == "SM" and method == "krylov":
        raise ConfigError("which='SM' has no Krylov-Schur route (it converges to the largest "
                          "values); use method='arpack', 'dense' or 'auto'")
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ConfigError(f"k must be an integer in 1..{n} (the operator size), got {k!r}")
    if method == "dense" and n > max_dense:
        raise ConfigError(f"method='dense' builds an {n} x {n} Jacobian, above max_dense="
                          f"{max_dense}; use method='matrix_free' (or raise max_dense)")


def _route(method: str, n: int, k: int, device: torch.device, which: str = "LM") -> str:
    if method == "auto":
        method = "dense" if n <= 1024 or k >= n - 2 else "matrix_free"
    if method == "matrix_free":
        # Krylov-Schur: same code on CPU and GPU, measured faster than ARPACK; smallest
        # magnitudes go to ARPACK (which="SM", no shift-invert: may not converge, flagged)
        method = "arpack" if which == "SM" else "krylov"
    if method in ("arpack", "krylov") and k >= n - 1:
        method = "dense"          # ARPACK needs k < n - 1; Krylov has nothing to gain
    return method


def _order(values: np.ndarray, which: str) -> np.ndarray:
    """Indices sorting ``values``: largest magnitude / real part first, or smallest magnitude
    first (``which="SM"``)."""
    if which == "SM":
        return np.argsort(np.abs(values), kind="stable")
    return _linalg.order(values, which)


def _start(n: int, seed: int, like: Tensor) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=gen, dtype=torch.float64).to(like.device, like.dtype)


def eigvals(f: DepthMap, t: int | None, x: Tensor, *, k: int = 8, method: str = "auto",
            which: str = "LM", tol: float = 1e-10, ncv: int | None = None,
            max_restarts: int = 300, vectors: bool = False, max_dense: int = MAX_DENSE,
            linearize: bool | None = None, seed: int = 0) -> SpectrumResult:
    """Top-``k`` eigenvalues of the (tangent) Jacobian of ``f_t`` at one state ``x`` (T, D).

    Parameters
    ----------
    f : DepthMap
        A sphere map gives the tangent spectrum (radial directions removed).
    t : int or None
    x : Tensor (T, D)
    k : int
        Number of eigenvalues (largest first).
    method : {"auto", "dense", "matrix_free", "arpack", "krylov"}
    which : {"LM", "LR", "SM"}
        Largest magnitude, largest real part, or smallest magnitude (dense or ARPACK
        without shift-invert; ``matrix_free`` routes ``"SM"`` to ARPACK, whose convergence
        is slow on clustered spectra and reported in ``converged``).
    tol : float
        Relative residual of each Ritz pair (matrix-free routes).
    ncv : int, optional
        Krylov subspace size (default ``max(2k+1, 40)``, at most the operator size).
    vectors : bool
        Also return eigenvectors (k, T, D) in the ambient space.
    max_dense : int
        Largest operator the dense route may build.
    linearize : bool, optional
        Trace the JVP once (:func:`torch.func.linearize`) before many products; default:
        when the operator has at least ``LINEARIZE_FROM`` rows.
    seed : int
        Start vector of the Krylov routes.
    """
    op = TangentOperator(f, t, x, square=True, linearize=linearize)
    _check(k, method, which, op.n, max_dense)
    route = _route(method, op.n, k, x.device, which)
    res = SpectrumResult(method=route, tangent=op.tangent, size=op.n, map_json=f.to_json())
    if route == "dense":
        M = op.dense(chunk_size=_chunk(op))
        if vectors:
            ev, V = torch.linalg.eig(M)
        else:
            ev, V = torch.linalg.eigvals(M), None
        idx = torch.from_numpy(_order(ev.cpu().numpy(), which)[:k].copy())
        res.eigenvalues = ev[idx.to(ev.device)]
        if V is not None:
            res.vectors = op.lift_in(V[:, idx.to(V.device)].T)
        res.nmatvec = op.T * op.D
        return res
    if route == "arpack":
        A = op.scipy()
        v0 = _start(op.n, seed, x).cpu().double().numpy()
        try:
            out = spla.eigs(A, k=k, which=which, tol=tol, v0=v0, ncv=_ncv(ncv, k, op.n),
                            maxiter=max_restarts * op.n, return_eigenvectors=True)
            ev, V, ok = out[0], out[1], True
        except spla.ArpackNoConvergence as err:
            ev, V, ok = err.eigenvalues, err.eigenvectors, False
        idx = _order(ev, which)[:k]
        res.eigenvalues = torch.from_numpy(ev[idx]).to(x.device)
        if vectors:
            Vt = torch.from_numpy(np.ascontiguousarray(V[:, idx].T)).to(x.device)
            res.vectors = op.lift_in(Vt.real.to(x.dtype)) + 1j * op.lift_in(
                Vt.imag.to(x.dtype))
        res.nmatvec, res.converged = op.count, ok
        return res
    out = _linalg.krylov_schur(op.matvec, _start(op.n, seed, x), k, which=which, tol=tol,
                               ncv=_ncv(ncv, k, op.n), max_restarts=max_restarts,
                               vectors=vectors)
    res.eigenvalues = torch.from_numpy(out["eigenvalues"].astype(np.complex128)).to(x.device)
    res.residuals = torch.from_numpy(out["residuals"])
    if vectors:
        Vc = out["vectors"]
        res.vectors = op.lift_in(Vc.real) + 1j * op.lift_in(Vc.imag)
    res.nmatvec, res.converged = out["nmatvec"], out["converged"]
    return res


def _ncv(ncv: int | None, k: int, n: int) -> int:
    """Krylov subspace size: ``max(2k + 1, 40)`` by default (fewer products than ARPACK's
    ``2k + 1`` on the clustered spectra of residual blocks), at most ``n``."""
    return min(n, ncv or max(2 * k + 1, 40))


def _chunk(op: TangentOperator) -> int:
    """Rows of the dense Jacobian built at once: about 2e7 state entries per chunk."""
    return max(1, min(op.T * op.D, int(2e7 // max(1, op.T * op.D * 8))))


# ----------------------------------------------------------------------------- singular values


def singular_values(f: DepthMap, t: int | None, x: Tensor, *, k: int = 8,
                    method: str = "auto", tol: float = 1e-8, oversample: int = 8,
                    max_iter: int = 300, vectors: bool = True, max_dense: int = MAX_DENSE,
                    linearize: bool | None = None, seed: int = 0) -> SpectrumResult:
    """Top-``k`` singular values (and vectors) of the (tangent) Jacobian of ``f_t`` at ``x``.

    Matrix-free by JVPs and VJPs: ``arpack`` (:func:`scipy.sparse.linalg.svds`, CPU),
    ``krylov`` (torch Krylov-Schur on ``J^T J``, any device) or ``subspace`` (block subspace
    iteration with ``k + oversample`` vmapped tangents per product: fewer, larger batched
    calls for a GPU, more products when the top singular values are clustered).
    ``vectors`` (default True) returns the right singular vectors ``(k, T, D)``
    (input directions, tangent at ``u`` on the sphere: ``vectors[0]`` is the most amplified
    perturbation) and the left ones ``(k, T, D)`` (tangent at ``y``). ``nmatvec`` counts JVPs
    plus VJPs. Other arguments as in :func:`eigvals`.
    """
    op = TangentOperator(f, t, x, square=False, linearize=linearize)
    _check(k, "krylov" if method == "subspace" else method, "LM", op.n, max_dense)
    route = method if method == "subspace" else _route(method, op.n, k, x.device)
    res = SpectrumResult(method=route, tangent=op.tangent, size=op.n, map_json=f.to_json())
    if route == "dense":
        U, s, Vh = torch.linalg.svd(op.dense(chunk_size=_chunk(op)))
        res.singular_values, res.nmatvec = s[:k], op.T * op.D
        if vectors:
            res.vectors, res.left_vectors = op.lift_in(Vh[:k]), op.lift_out(U[:, :k].T)
        return res
    if route == "arpack":
        A = op.scipy()
        v0 = _start(op.n, seed, x).cpu().double().numpy()
        try:
            U, s, Vh = spla.svds(A, k=k, tol=tol, v0=v0, maxiter=max_iter * op.n,
                                 solver="arpack", return_singular_vectors=True)
            ok = True
        except spla.ArpackNoConvergence:     # pragma: no cover - rare; report, don't crash
            U, s, Vh, ok = np.zeros((op.n, k)), np.full(k, np.nan), np.zeros((k, op.n)), False
        idx = np.argsort(-s)
        res.singular_values = torch.from_numpy(s[idx].copy()).to(x.device, x.dtype)
        if vectors:
            res.vectors = op.lift_in(torch.from_numpy(Vh[idx].copy()).to(x.device, x.dtype))
            res.left_vectors = op.lift_out(
                torch.from_numpy(U[:, idx].T.copy()).to(x.device, x.dtype))
        res.nmatvec, res.converged = op.count, ok
        return res
    if route == "krylov":
        out = _linalg.krylov_schur(lambda c: op.rmatvec(op.matvec(c)), _start(op.n, seed, x),
                                   k, tol=tol, ncv=_ncv(None, k, op.n), max_restarts=max_iter,
                                   vectors=True)
        s2 = torch.from_numpy(out["eigenvalues"].real.copy()).to(x.device, x.dtype)
        sv = s2.clamp_min(0).sqrt()
        res.singular_values, res.converged = sv, out["converged"]
        res.nmatvec, res.residuals = 2 * out["nmatvec"], torch.from_numpy(out["residuals"])
        if vectors:
            V = out["vectors"].real.to(x.dtype)
            V = V / V.norm(dim=1, keepdim=True)
            U = op.matmat(V) / sv.clamp_min(1e-300)[:, None]
            res.vectors, res.left_vectors = op.lift_in(V), op.lift_out(U)
        return res
    gen = torch.Generator().manual_seed(seed)
    b = min(op.n, k + oversample)
    q0 = torch.randn(b, op.n, generator=gen, dtype=torch.float64).to(x.device, x.dtype)
    out = _linalg.subspace_svd(op.matmat, op.rmatmat, q0, k, tol=tol, max_iter=max_iter)
    res.singular_values, res.residuals = out["singular_values"], out["residuals"]
    if vectors:
        res.vectors, res.left_vectors = op.lift_in(out["right"]), op.lift_out(out["left"])
    res.nmatvec, res.converged = out["nmatvec"], out["converged"]
    return res
