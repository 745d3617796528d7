"""Singular-value spectrum of the input-output Jacobian at initialization, from free probability.

For a dense network ``x^l = phi(W^l x^{l-1} + b^l)`` the input-output Jacobian is
``J = D_L W_L ... D_1 W_1`` with ``D_l = diag(phi'(z^l))``. Its squared singular
values are the eigenvalues of ``J J^T``. At large width the ``D_l^2`` and
``W_l W_l^T`` are asymptotically free, so ``J J^T``'s spectral law is the free
multiplicative convolution of theirs (Pennington, Schoenholz & Ganguli 2017,
"Resurrecting the sigmoid in deep learning through dynamical isometry"; 2018,
"The emergence of spectral universality in deep networks"): S-transforms multiply,

    S_{JJ^T}(w) = prod_l S_{D_l^2}(w) S_{W_l W_l^T}(w),

with, for square ``n x n`` layers and ``sigma_w^2 = n Var(w)``,

- Gaussian weights (Marchenko-Pastur, ratio 1): ``S(w) = 1 / (sigma_w^2 (1 + w))``;
- orthogonal weights scaled to ``sigma_w^2``: ``S(w) = 1 / sigma_w^2``;
- ``D_l^2``: the law of ``phi'(z)^2``, ``z ~ N(0, q_l)`` with ``q_l`` the
  mean-field pre-activation variance of layer ``l`` (so layers off the fixed
  point are handled too); its S-transform has no closed form in general and is
  obtained numerically from the law (:func:`jacobian_density`).

Conventions: ``psi(z) = sum_{k>=1} m_k z^k`` (moment generating function),
``chi`` its functional inverse, ``S(w) = chi(w) (1 + w) / w``. The moments
``m_k = (1/n) tr (J J^T)^k`` follow from the product of S-transform power
series (:func:`jacobian_moments`); in particular ``m1 = prod_l sigma_w^2 mu_1``
(``mu_k = E[phi'(z)^{2k}]``) and
``m2 / m1^2 - 1 = sum_l (mu_2 / mu_1^2 - 1 + s_W)`` with ``s_W = 1`` for Gaussian and
``0`` for orthogonal weights (Pennington et al. 2018). The density of
``J J^T``'s eigenvalues (squared singular values) comes from the Stieltjes
transform ``G(x) = (psi(1/x) + 1) / x``, ``p(x) = -Im G(x + i0) / pi``, with
``psi`` solved from ``z = psi S(psi) / (1 + psi)`` by Newton continuation.
An activation whose derivative vanishes on a set of probability ``p0``
(ReLU: ``1/2``) puts an atom of mass ``max_l p0_l`` at zero.

:func:`sample_jacobian_spectrum` is the Monte Carlo side, for any network:
exact Jacobians of sampled networks (their layer ops run by
:class:`propagate.batched.Run`, one vector-Jacobian product per output unit).
What the theory covers, the ops say (:func:`propagate.layers.theory_gap`);
:func:`analyze_spectrum` (``propagate spectrum``) samples a network the theory
does not reach and says why its predicted columns are empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from propagate.activations import torch_forms
from propagate.batched import Run, SharedDraws, jacobians
from propagate.errors import UserError
from propagate.layers import FREE_PROBABILITY, batch_coupled, forward_ops, theory_gap

__all__ = ["jacobian_moments", "jacobian_density", "JacobianSpectrum", "jacobian_spectrum", "layer_laws",
           "sample_jacobian_spectrum", "summarize_singular_values", "analyze_spectrum", "SpectrumAnalysis",
           "COUPLED_BATCH"]

_ATOMS = 256  # equal-probability atoms approximating the law of phi'(z)^2 for the density


# ----------------------------------------------------------------------------
# the layers' laws


@dataclass
class LayerLaw:
    """One layer's ingredients: weights ``sigma_w^2`` and kind, the law of ``phi'(z)^2``."""

    sigma_w2: float
    orthogonal: bool
    q: float
    mu: tuple  # mu_k = E[phi'(z)^{2k}], k = 1..K (accurate quadrature)
    atoms: np.ndarray = field(repr=False)  # values of phi'^2 (equal weights) for the density
    p_zero: float = 0.0  # probability that phi'(z) = 0


def _d2_law(act, q: float, kmax: int):
    from scipy import special

    from propagate.theory import gaussian_expectation

    mu = tuple(gaussian_expectation(lambda z, k=k: act.grad(z) ** (2 * k), q, 0.0, act.kinks) for k in range(1, kmax + 1))
    u = (np.arange(_ATOMS) + 0.5) / _ATOMS
    z = math.sqrt(q) * special.ndtri(u)
    atoms = np.asarray(act.grad(z), dtype=float) ** 2
    p_zero = float(np.mean(atoms == 0.0))
    return mu, atoms, p_zero


def layer_laws(spec, *, input_q: float | None = None, kmax: int = 8) -> list[LayerLaw]:
    """Per-layer laws of ``spec`` (square layers; Gaussian-like or orthogonal weights; plain dense stacks).

    Weights that are not orthogonal (normal, truncated normal, uniform) have
    the Marchenko-Pastur law at large width (universality). A spec the theory
    does not cover (:func:`propagate.layers.theory_gap`) is a :class:`UserError`.
    """
    from propagate.theory import predict_layers

    gap = theory_gap(spec.compile(), FREE_PROBABILITY)
    if gap:
        raise UserError(gap)
    table = predict_layers(spec, input_q=input_q)
    pre_q = table.set_index("layer")["pre_q"]
    orth = spec.initializer.distribution == "orthogonal"
    act = spec.act
    laws, cache = [], {}
    for l, sw2 in enumerate(spec.sigma_w2(), start=1):
        q = float(pre_q[l])
        if not (math.isfinite(q) and q > 0):
            raise UserError(f"the mean-field signal vanishes or diverges at layer {l} (q = {q:g}); no spectrum")
        key = round(q, 12)
        if key not in cache:
            cache[key] = _d2_law(act, q, kmax)
        mu, atoms, p0 = cache[key]
        laws.append(LayerLaw(float(sw2), orth, q, mu, atoms, p0))
    return laws


# ----------------------------------------------------------------------------
# power series: moments <-> S-transform


def _series_inverse(a: np.ndarray) -> np.ndarray:
    """Compositional inverse of ``f(z) = sum_{k>=1} a[k] z^k`` (a[0] = 0, a[1] != 0), same order."""
    K = len(a) - 1
    b = np.zeros(K + 1, dtype=complex if np.iscomplexobj(a) else float)
    b[1] = 1.0 / a[1]
    # Solve f(g(w)) = w order by order: powers of g are updated incrementally
    for n in range(2, K + 1):
        # coefficient of w^n in f(g(w)) with g truncated (b[n] = 0 so far), then correct linearly
        g = b.copy()
        comp = _compose(a, g, K)
        b[n] = -comp[n] / a[1]
    return b


def _compose(a: np.ndarray, g: np.ndarray, K: int) -> np.ndarray:
    """``f(g(w))`` truncated at order K (``g[0] = 0``)."""
    out = np.zeros(K + 1, dtype=np.result_type(a, g))
    p = np.zeros(K + 1, dtype=out.dtype)
    p[0] = 1.0
    for k in range(1, K + 1):
        p = np.convolve(p, g)[: K + 1]
        out += a[k] * p
    return out


def _s_series(m: np.ndarray) -> np.ndarray:
    """S-transform power series ``S(w) = sum_k s[k] w^k`` (order K-1) from moments ``m[1..K]`` (m[0] unused)."""
    K = len(m) - 1
    psi = np.zeros(K + 1)
    psi[1:] = m[1:]
    chi = _series_inverse(psi)  # chi(w) = w/m1 + ...
    # S = chi(w) (1 + w) / w: shift down by one, multiply by (1 + w)
    c = chi[1:]  # c[j] = coefficient of w^j in chi/w, j = 0..K-1
    s = c.copy()
    s[1:] += c[:-1]
    return s


def _moments_from_s(s: np.ndarray) -> np.ndarray:
    """Moments ``m[1..K]`` from an S-transform series of order ``K - 1`` (inverse of :func:`_s_series`)."""
    K = len(s)
    # chi(w)/w = S(w) / (1 + w)
    inv1pw = (-1.0) ** np.arange(K)
    c = np.convolve(s, inv1pw)[:K]
    chi = np.zeros(K + 1)
    chi[1:] = c
    psi = _series_inverse(chi)
    return psi


def _mp_moments(K: int, sw2: float) -> np.ndarray:
    m = np.zeros(K + 1)
    for k in range(1, K + 1):
        m[k] = math.comb(2 * k, k) / (k + 1) * sw2**k  # Catalan numbers: Marchenko-Pastur, ratio 1
    return m


def jacobian_moments(laws: list[LayerLaw], kmax: int = 4) -> dict:
    """``m_k = (1/n) tr (J J^T)^k`` for ``k = 1..kmax`` from the product of S-transform series."""
    K = int(kmax)
    if K < 1 or any(len(law.mu) < K for law in laws):
        raise UserError(f"kmax must be between 1 and the number of computed D^2 moments, got {kmax}")
    total = np.zeros(K)
    total[0] = 1.0
    for law in laws:
        if law.orthogonal:
            w = np.zeros(K + 1)
            w[1:] = [law.sigma_w2**k for k in range(1, K + 1)]
        else:
            w = _mp_moments(K, law.sigma_w2)
        d = np.zeros(K + 1)
        d[1:] = law.mu[:K]
        total = np.convolve(total, _s_series(w))[:K]
        total = np.convolve(total, _s_series(d))[:K]
    m = _moments_from_s(total)
    return {f"m{k}": float(m[k]) for k in range(1, K + 1)}


# ----------------------------------------------------------------------------
# density: Newton continuation on the S-transform equation


def _groups(laws):
    """Identical layers grouped: ``[(law, multiplicity)]`` for the D^2 parts, plus the weight factors."""
    groups = []
    for law in laws:
        for i, (g, c) in enumerate(groups):
            # layers whose q agree to 1e-4 (a stack near its fixed point) share one law in the density
            # (changes it by ~1e-4; the moments use every layer's own law)
            if g.atoms is law.atoms or abs(g.q - law.q) <= 1e-4 * g.q:
                groups[i] = (g, c + 1)
                break
        else:
            groups.append((law, 1))
    gauss = [law.sigma_w2 for law in laws if not law.orthogonal]
    orth = [law.sigma_w2 for law in laws if law.orthogonal]
    return groups, gauss, orth


def _unique_atoms(atoms):
    vals, counts = np.unique(np.round(atoms, 14), return_counts=True)
    return vals, counts / counts.sum()


class _Solver:
    """Solves ``z = psi S(psi) / (1 + psi)`` for ``psi`` with one auxiliary ``chi_g`` per D^2 group.

    Unknowns ``u = (psi, chi_1..chi_G)``. Equations: ``psi_{D_g}(chi_g) = psi``
    (``chi_g`` is the inverse moment generating function of group g at psi) and
    ``prod_g (chi_g (1+psi)/psi)^{c_g} prod_W S_W(psi) psi / (z (1 + psi)) = 1``.
    """

    def __init__(self, laws):
        groups, self.gauss, self.orth = _groups(laws)
        self.atoms = [_unique_atoms(g.atoms) for g, _ in groups]
        # atoms of all groups in one padded (G, A) array (padding has weight 0)
        A = max(len(t) for t, _ in self.atoms)
        self.T = np.zeros((len(self.atoms), A))
        self.Wt = np.zeros((len(self.atoms), A))
        for g, (t, w) in enumerate(self.atoms):
            self.T[g, : len(t)], self.Wt[g, : len(w)] = t, w
        self.mult = np.array([c for _, c in groups], dtype=float)
        self.c_total = float(self.mult.sum())
        self.log_w = -sum(math.log(s) for s in self.orth) - sum(math.log(s) for s in self.gauss)
        self.n_gauss = len(self.gauss)

    def step(self, u, z):
        """One Newton step ``du`` and the residual size; the Jacobian is an arrow matrix (solved in O(G))."""
        psi, x = u[0], u[1:]
        den = 1.0 - x[:, None] * self.T
        Fg = np.sum(self.Wt * x[:, None] * self.T / den, axis=1) - psi  # psi_{D_g}(chi_g) - psi
        Jgg = np.sum(self.Wt * self.T / den**2, axis=1)  # d/dchi_g; d/dpsi is -1
        lp, l1p = np.log(psi), np.log1p(psi)
        logs = (lp - np.log(z) - l1p + self.log_w - self.n_gauss * l1p
                + np.sum(self.mult * np.log(x)) + self.c_total * (l1p - lp))
        e = np.exp(logs)
        F0 = e - 1.0
        J00 = e * (1 / psi - 1 / (1 + psi) - self.n_gauss / (1 + psi) + self.c_total * (1 / (1 + psi) - 1 / psi))
        J0g = e * self.mult / x
        du0 = (-F0 + np.sum(J0g * Fg / Jgg)) / (J00 + np.sum(J0g / Jgg))
        dug = (-Fg + du0) / Jgg
        du = np.concatenate([[du0], dug])
        return du, max(abs(F0), float(np.max(np.abs(Fg) / (np.abs(psi) + 1e-300))))

    def solve(self, u0, z, tol=1e-9, max_iter=40):
        u = u0.astype(complex)
        with np.errstate(all="ignore"):
            for _ in range(max_iter):
                du, res = self.step(u, z)
                if not np.all(np.isfinite(du)):
                    return None
                # damp steps that would change psi or a chi by more than half its size (stay on the branch)
                scale = np.max(np.abs(du) / (np.abs(u) + 1e-300))
                if scale > 0.5:
                    du *= 0.5 / scale
                u = u + du
                if np.max(np.abs(du) / (np.abs(u) + 1e-300)) < tol:
                    return u
            _, res = self.step(u, z)
        return u if res < 1e-8 else None


@dataclass
class JacobianSpectrum:
    """Predicted spectrum of ``J J^T`` (squared singular values of the input-output Jacobian).

    ``moments``: ``{"m1": ..., "m4": ...}`` (normalized traces). ``x``, ``density``:
    the continuous part on a log-spaced grid (density per unit of ``x``).
    ``atom``: mass at exactly zero. ``mass_below``: the continuous mass below
    ``x[0]`` (power-law extrapolation of the lower end). ``smoothing``: relative
    imaginary part used in the Stieltjes transform (the density is convolved
    with a Cauchy kernel of half-width ``smoothing * x``).
    """

    moments: dict
    x: np.ndarray
    density: np.ndarray
    atom: float
    mass_below: float
    smoothing: float
    laws: list = field(repr=False, default_factory=list)

    def total_mass(self) -> float:
        """Atom + mass below the grid + integral of the density over the grid (should be 1).

        The integral is the trapezoid rule in ``ln x`` (``int p dx = int p x d ln x``), exact
        for power laws between grid points up to second order on the log-spaced grid.
        """
        if len(self.x) < 2:
            return float(self.atom + self.mass_below)
        return float(self.atom + self.mass_below + np.trapezoid(self.density * self.x, np.log(self.x)))

    def to_dict(self) -> dict:
        return {"moments": self.moments, "density": [[float(a), float(b)] for a, b in zip(self.x, self.density)],
                "atom_at_zero": self.atom, "mass_below_grid": self.mass_below, "smoothing": self.smoothing}


def _solve_grid(solver, mk, xs, smoothing, eta_steps=6, x_start=None):
    """``-Im G(x (1 + i smoothing)) / pi`` on the descending grid ``xs`` (the solved prefix, if a branch is lost).

    The continuation starts at ``x_start`` (default ``xs[0]``), which must lie above the
    spectrum, where the moment series gives the starting point.
    """
    K = len(mk)

    def start(x, eta):
        z = 1.0 / (x * (1 + 1j * eta))
        psi = sum(mk[k] * z ** (k + 1) for k in range(K))
        chis = [psi / np.sum(w * t) for t, w in solver.atoms]
        return np.array([psi, *chis], dtype=complex)

    def continue_to(u, z_of, a, b, steps):
        """Follow the solution from parameter a to b (z = z_of(t)), halving steps on failure."""
        ts = list(np.linspace(a, b, steps + 1)[1:])
        t_prev = a
        while ts:
            t = ts[0]
            sol = solver.solve(u, z_of(t))
            if sol is None:
                if abs(t - t_prev) < 1e-6 * (abs(a - b) + 1e-300):
                    return None
                ts.insert(0, 0.5 * (t + t_prev))
                continue
            u, t_prev = sol, t
            ts.pop(0)
        return u

    # The physical branch is analytic in the upper half plane: follow it along x at a large
    # imaginary part (far from spurious real roots), then for each x lower the imaginary part
    # to `smoothing` in log steps.
    eta_big = 0.5
    log_eta = (math.log(eta_big), math.log(smoothing))
    x0 = xs[0] if x_start is None else x_start
    u_big = solver.solve(start(x0, eta_big), 1.0 / (x0 * (1 + 1j * eta_big)))
    lx_prev = math.log(x0)
    if u_big is not None and x0 != xs[0]:
        steps = max(1, int(math.ceil(8 * abs(math.log10(x0 / xs[0])))))
        u_big = continue_to(u_big, lambda lx: 1.0 / (math.exp(lx) * (1 + 1j * eta_big)), lx_prev, math.log(xs[0]), steps)
        lx_prev = math.log(xs[0])
    out_x, out_p = [], []
    for x in xs:
        if u_big is None:
            break
        u_big = continue_to(u_big, lambda lx: 1.0 / (math.exp(lx) * (1 + 1j * eta_big)), lx_prev, math.log(x), 1)
        lx_prev = math.log(x)
        if u_big is None:
            break
        u = continue_to(u_big, lambda le, x=x: 1.0 / (x * (1 + 1j * math.exp(le))), log_eta[0], log_eta[1], eta_steps)
        if u is None:
            continue
        w = x * (1 + 1j * smoothing)
        Gw = (u[0] + 1.0) / w
        out_x.append(x)
        out_p.append(max(-Gw.imag / math.pi, 0.0))
        # below a spectrum with a gap at 0 the density vanishes and psi -> -1 (a singular point Newton
        # struggles near): stop after 8 points with p x < 1e-12 of its peak
        px = [a * b for a, b in zip(out_x[-8:], out_p[-8:])]
        peak = max(pp * xx for pp, xx in zip(out_p, out_x))
        if len(px) == 8 and peak > 0 and max(px) < 1e-12 * peak:
            break
    return np.array(out_x[::-1]), np.array(out_p[::-1])


def _adaptive_grid(cx, mass, hi_x, lo_x, points):
    """A descending grid on [lo_x, hi_x], denser (in ln x) where the coarse ``p x`` changes fast (edges, peaks)."""
    u = np.linspace(math.log(lo_x), math.log(hi_x), 4 * points)
    if len(cx) >= 3 and mass.max() > 0:
        lx = np.log(cx)
        slope = np.abs(np.gradient(mass / mass.max(), lx))
        dens = 1.0 + 4.0 * np.interp(u, lx, slope) / max(float(slope.max()), 1e-300) * (u[-1] - u[0])
    else:
        dens = np.ones_like(u)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(u))])
    grid = np.interp(np.linspace(0.0, cdf[-1], points), cdf, u)
    return np.exp(grid[::-1])


def jacobian_density(laws: list[LayerLaw], *, points: int = 300, decades: float | None = None,
                     smoothing: float = 5e-4) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Density of ``J J^T``'s eigenvalues: ``(x, p, atom_at_zero, mass_below_grid)``.

    ``psi`` is solved at ``w = x (1 + i smoothing)`` by Newton's method,
    continued from large ``x`` (where ``psi ~ sum m_k / x^k``) at a large
    imaginary part and then down to ``smoothing`` at each ``x``. A coarse pass
    over ``decades`` below the top (default ``12 + 2 depth``, at most 40) finds
    the support; the ``points`` of the returned log-spaced grid cover it.
    The atom at zero (mass ``max_l P(phi'(z_l) = 0)``) is reported separately
    and its Cauchy tail removed from ``p``.
    """
    L = len(laws)
    m = jacobian_moments(laws, kmax=min(8, min(len(law.mu) for law in laws)))
    mk = [m[f"m{k}"] for k in range(1, len(m) + 1)]
    # the ratio of consecutive moments tends to the top edge from below; pad generously
    top = max(mk[-1] / mk[-2], mk[0]) * (3.0 + 0.2 * L)
    atom = max((law.p_zero for law in laws), default=0.0)
    if decades is None:
        decades = min(40.0, 12.0 + 2.0 * L)
    solver = _Solver(laws)
    coarse = np.exp(np.linspace(math.log(top), math.log(top) - decades * math.log(10.0), 5 * int(decades) + 12))
    # The coarse pass locates the support at two smoothings: above the top edge p is the Cauchy tail of
    # the smoothing, proportional to it (p x ~ eps / pi), inside the support p does not depend on it.
    eps_c = max(smoothing, 4e-3)
    cx, cp = _solve_grid(solver, mk, coarse, eps_c, eta_steps=3)
    cx2, cp2 = _solve_grid(solver, mk, coarse, eps_c / 2, eta_steps=3)
    if atom > 0 and len(cx):
        cp = np.maximum(cp - atom * eps_c / (math.pi * cx * (1 + eps_c**2)), 0.0)
        cp2 = np.maximum(cp2 - atom * eps_c / 2 / (math.pi * cx2 * (1 + eps_c**2 / 4)), 0.0)
    mass = cp * cx
    hi_x, lo_x = top, coarse[-1]
    if len(cx) and mass.max() > 0:
        on = np.flatnonzero(mass > 1e-7 * mass.max())
        i_lo = on[0]
        p2 = np.interp(np.log(cx), np.log(cx2), cp2) if len(cx2) >= 2 else cp / 2
        inside = np.flatnonzero((mass > 1e-7 * mass.max()) & (cp < 1.5 * p2))
        i_hi = inside[-1] if len(inside) else on[-1]
        step = coarse[0] / coarse[1]
        lo_x = cx[i_lo] / step if i_lo > 0 else cx[0]
        hi_x = cx[i_hi] * step**2
    xs = _adaptive_grid(cx, mass, hi_x, lo_x, int(points))
    x, p = _solve_grid(solver, mk, xs, smoothing, x_start=max(top, xs[0]))
    # the atom at zero appears in G as atom/w; with the smoothing its Cauchy tail adds atom*eps/(pi x (1+eps^2))
    if atom > 0 and len(x):
        p = np.maximum(p - atom * smoothing / (math.pi * x * (1 + smoothing**2)), 0.0)
    mass_below = 0.0
    if len(x) >= 3 and p[0] > 0 and p[1] > 0:
        gamma = -math.log(p[1] / p[0]) / math.log(x[1] / x[0])
        if gamma < 1:
            mass_below = float(p[0] * x[0] / (1 - gamma))
    return x, p, float(atom), mass_below


def jacobian_spectrum(spec, *, input_q: float | None = None, kmax: int = 4, points: int = 400,
                      smoothing: float = 5e-4, density: bool = True) -> JacobianSpectrum:
    """Moments and density of ``J J^T`` for ``spec`` (square layers), from free probability.

    Args:
        spec: a :class:`~propagate.spec.NetworkSpec` the theory covers: a plain
            dense stack with uniform width equal to its input dimension.
        input_q: second moment per input feature (default ``input_mean^2 + input_var``);
            sets the mean-field ``q_l`` at which each ``D_l^2`` is taken.
        kmax: number of moments returned.
        points: density grid size; ``density=False`` skips the density.
    """
    laws = layer_laws(spec, input_q=input_q, kmax=max(8, int(kmax)))
    moms = jacobian_moments(laws, kmax=kmax)
    if not density:
        return JacobianSpectrum(moms, np.array([]), np.array([]), max(law.p_zero for law in laws), 0.0, smoothing, laws)
    x, p, atom, below = jacobian_density(laws, points=points, smoothing=smoothing)
    return JacobianSpectrum(moms, x, p, atom, below, smoothing, laws)


# ----------------------------------------------------------------------------
# Monte Carlo


#: Inputs per network in the forward pass of :func:`sample_jacobian_spectrum` when the network has an op whose
#: output depends on its batch (BatchNorm): the normalization's batch.
COUPLED_BATCH = 128


def sample_jacobian_spectrum(spec, *, networks: int = 4, inputs: int = 1, seed: int = 0, batch: int | None = None):
    """Squared singular values of the input-output Jacobian of sampled networks, shape ``(networks, inputs, n_in)``.

    Any network (its layer ops, run by :class:`propagate.batched.Run`, float64):
    inputs are Gaussian ``N(spec.input_mean, spec.input_var)`` per feature;
    all networks are drawn in one batch from one generator seeded by ``seed``.
    The forward pass sees ``batch`` inputs per network (default ``inputs``, or
    :data:`COUPLED_BATCH` for a network with BatchNorm, whose statistics over
    that batch are held fixed: the per-sample Jacobian); the Jacobians are
    taken at the first ``inputs`` (:func:`propagate.batched.jacobians`, one
    vector-Jacobian product per output unit). Dropout masks are part of the
    sampled network. Values are descending per row (``min(n_out, n_in)`` of them).
    """
    import torch

    ops = spec.compile()
    if networks < 1 or inputs < 1:
        raise UserError("networks and inputs must be >= 1")
    B = batch if batch is not None else (max(inputs, COUPLED_BATCH) if batch_coupled(ops) else inputs)
    if B < inputs:
        raise UserError(f"batch ({B}) must be at least inputs ({inputs})")
    torch_forms(spec.act)  # UserError for an activation without a torch form
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
    dt = torch.float64
    x = torch.randn(networks, B, spec.input_dim, dtype=dt, generator=gen)
    x = x * math.sqrt(spec.input_var) + spec.input_mean
    run = Run(networks, B, inputs, max(spec.widths[1:]), dt, "cpu", SharedDraws(gen, networks))
    with torch.no_grad():
        _, tape = forward_ops(ops, x, run)
        J = jacobians(tape, run, inputs, spec.widths[-1], networks=range(networks))
    s = torch.linalg.svdvals(J.reshape(networks * inputs, J.shape[-2], J.shape[-1]))
    return (s**2).reshape(networks, inputs, -1).cpu().numpy()


def summarize_singular_values(s2, *, zero_tol: float | None = None) -> dict:
    """Statistics of squared singular values ``s2`` (any shape; last axis = one Jacobian's values).

    ``moments`` m1..m4 (normalized traces, averaged over Jacobians) with
    ``moments_se`` (standard errors across Jacobians), ``zero_frac`` (share of
    values that are zero to float64 precision: ``s2 <= zero_tol * max``, default
    ``zero_tol = (n * 2.2e-16)^2``, ``n`` values per Jacobian), and
    ``s_max``/``s_min_nonzero`` (singular values, not squared) averaged over Jacobians.
    """
    a = np.asarray(s2, dtype=float)
    a = a.reshape(-1, a.shape[-1])
    if zero_tol is None:
        zero_tol = (a.shape[1] * np.finfo(np.float64).eps) ** 2
    per = {k: np.mean(a**k, axis=1) for k in range(1, 5)}
    mom = {f"m{k}": float(np.mean(v)) for k, v in per.items()}
    mse = {f"m{k}": float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan for k, v in per.items()}
    top = a.max(axis=1, keepdims=True)
    zero = a <= zero_tol * top
    nz = np.where(zero, np.inf, a)
    return {
        "moments": mom,
        "moments_se": mse,
        "zero_frac": float(zero.mean()),
        "s_max": float(np.mean(np.sqrt(top[:, 0]))),
        "s_min_nonzero": float(np.mean(np.sqrt(nz.min(axis=1)))),
        "jacobians": int(a.shape[0]),
        "size": int(a.shape[1]),
    }


@dataclass
class SpectrumAnalysis:
    """What :func:`analyze_spectrum` returns.

    ``theory``: the free-probability :class:`JacobianSpectrum`, or None where
    the theory does not reach the network (``theory_note`` says why);
    ``samples``: squared singular values of sampled networks
    (:func:`sample_jacobian_spectrum`) and ``monte_carlo`` their
    :func:`summarize_singular_values`, or None when not sampled.
    """

    theory: JacobianSpectrum | None
    theory_note: str | None
    samples: np.ndarray | None = None
    monte_carlo: dict | None = None


def analyze_spectrum(spec, *, points: int = 300, check: bool = False, networks: int = 4, inputs: int = 2,
                     seed: int = 0) -> SpectrumAnalysis:
    """The Jacobian spectrum of ``spec``: predicted where free probability covers it, and sampled with ``check``.

    Where the theory does not reach ``spec`` (BatchNorm, LayerNorm, residual
    blocks, dropout; a mean-field signal that vanishes or diverges), the
    result's ``theory`` is None and ``theory_note`` says why; without
    ``check`` there is then nothing to show, a :class:`UserError`.
    """
    gap = theory_gap(spec.compile(), FREE_PROBABILITY)
    if gap and not check:
        raise UserError(f"{gap}; sample its spectrum instead (propagate spectrum --check)")
    theory, note = None, gap
    if gap is None:
        try:
            theory = jacobian_spectrum(spec, points=points)
        except UserError as exc:
            if not check:
                raise
            note = str(exc)
    if not check:
        return SpectrumAnalysis(theory, note)
    s2 = sample_jacobian_spectrum(spec, networks=networks, inputs=inputs, seed=seed)
    return SpectrumAnalysis(theory, note, s2, summarize_singular_values(s2))
