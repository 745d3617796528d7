"""Finite-width spread across networks: variance of the log squared norms of signals and gradients.

Mean-field theory gives the average of a layer's statistics over infinitely
wide networks. Two networks of finite width differ: for one fixed input ``x``
the squared norm ``||z^l||^2`` of layer ``l``'s pre-activations, and the
squared norm ``||g^l||^2`` of the gradient ``g^l = dy/dz^l``, change from
network to network, and the spread of their logarithms grows with depth over
width. This module predicts, per layer,

- ``var_log_norm``: ``Var[ln ||z^l||^2]`` across networks, fixed input;
- ``var_log_grad``: ``Var[ln ||g^l||^2]`` across networks, fixed input, for
  the random readout ``y = r . phi(z^depth) / sqrt(n_depth)``, ``r ~ N(0, I)``
  drawn with the network (the convention of :mod:`propagate.stats`),

both natural-log variances of *squared* norms (the variance of ``ln ||.||``
is a quarter of it), and measures the same on simulated networks
(:func:`measured_spread`).

How the prediction works
------------------------
Given layer ``l - 1``'s output, the pre-activations ``z^l_i = W_i x + b_i`` of
a network with Gaussian weights ``N(0, sigma_w^2 / n_{l-1})`` and biases
``N(0, sigma_b^2)`` are independent ``N(0, Q_l)`` with
``Q_l = sigma_w^2 ||x^{l-1}||^2 / n_{l-1} + sigma_b^2``. So for one input
``Q_l`` is a scalar Markov chain, ``||z^l||^2 = Q_l chi^2_{n_l}`` with the
chi-square independent of ``Q_l``, and

    Var ln ||z^l||^2 = Var ln Q_l + psi_1(n_l / 2)        (psi_1: trigamma; exact)

The chain ``ln Q`` is propagated to first order around the mean-field
trajectory ``q_l`` (the delta method in log space, which resums the
``1/width`` series of Roberts, Yaida & Hanin, "The Principles of Deep Learning
Theory", ch. 4-5: their four-point vertex recursion
``V^{l+1} = chi_par^2 V^l + sigma_w^4 (<phi^4> - <phi^2>^2)`` is the same
recursion for ``Var Q`` at order ``1/n``; in log space the per-layer variances
add, which is what keeps it right when ``depth/width`` is not small, cf.
Hanin & Nica 2019):

    d ln Q_{l+1} = a_l d ln Q_l + c_l eps_l,
    a_l = sigma_w^2 E[phi^2 (z^2 - q)] / (2 q q_{l+1}),   c_l = sigma_w^2 E[phi^2] / q_{l+1},
    Var eps_l = Var[phi(z)^2] / (n_l E[phi^2]^2),          z ~ N(0, q_l).

The gradient obeys ``||g^l||^2 = sigma_w^2 ||g^{l+1}||^2 F_l`` with
``F_l = (1/n_l) sum_i phi'(z_i)^2 xi_i^2`` (``xi`` standard normal: the
components of ``W^T g`` at leading order, independent of ``z^l``), so
``ln ||g^l||^2 = sum_{k >= l} (ln F_k + const)``; ``ln F_k`` moves with
``ln Q_k`` by ``b_k = E[phi'^2 (z^2 - q)] / (2 q E[phi'^2])`` and has its own
noise ``eta_k`` with ``Var eta = (3 E[phi'^4] - E[phi'^2]^2) / (n E[phi'^2]^2)``,
correlated with ``eps_k`` (same units). Everything is a linear combination of
independent per-layer pairs ``(eps_k, eta_k)``, so the variances are sums.

Exact cases. ReLU with Gaussian weights and no bias: ``ln(||x^l||^2 / ||x^{l-1}||^2)``
is ``ln(sigma_w^2 chi^2_K / n_{l-1})`` with ``K ~ Binomial(n_l, 1/2)`` active
units, independent across layers (rotation invariance), so

    var_log_norm(l) = sum_{k<l} V(n_k) + psi_1(n_l / 2),   V(n) = Var ln chi^2_K
                    = E[psi_1(K/2)] + Var[psi(K/2)]        (K >= 1; K = 0 has probability 2^-n)

exactly at every width, and ``var_log_grad(l) = sum_{k>=l} V(n_k)`` up to
``O(1/n^2)`` per layer (the one direction of ``W^T g`` along the layer's input
is neglected). ``V(n) = 5/n + O(1/n^2)``, so both grow as ``5 beta`` with
``beta = sum_l 1/n_l``; Hanin & Nica (2019) find ``ln ||J u||`` asymptotically
Gaussian with variance ``5 beta / 4`` for ReLU/He networks, i.e. ``5 beta``
for the squared norm (:data:`HANIN_NICA_CONSTANT`).

With orthogonal (Haar, square) weights and no bias ``||W x|| = sigma_w ||x||``
exactly and ``W x`` is uniform on a sphere, so the active units carry a
``Beta(K/2, (n-K)/2)`` share of its squared norm: each layer contributes
``V(n) - psi_1(n/2)`` (``3/n`` at leading order) and there is no chi-square
term; the gradient likewise, but for the Gaussian readout's top layer (``V(n)``).

Coverage. Any activation the theory integrates, Gaussian or orthogonal
weights, biases; plain dense stacks only (what the ops say of themselves,
:func:`spread_gap`; :func:`predict_spread` raises :class:`UserError` for
BatchNorm, LayerNorm, residual blocks and dropout, and the sampled side,
:func:`sample_spread`, answers for every network). Weights drawn
from another distribution (uniform, truncated normal) change each layer's
variance at ``O(1/n^2)`` only (their fourth cumulant enters divided by the
fan-in), so the same prediction holds at leading order. Orthogonal weights
(square layers only) remove the chi-square of ``||W x||``; the units of
``W x`` lie on a sphere, so the noise terms become the residuals of ``phi^2``
and ``phi'^2 xi^2`` after regression on the squared weight part of ``z`` (and,
for ``xi``, the components of ``W^T g``, on ``xi^2``). The readout
``r`` stays Gaussian. The delta method is first order in the noise: for
activations whose maps are curved in ``ln q`` (tanh, SELU; not ReLU or linear)
it is within a few per cent of simulation at depth/width up to ~0.3 and
overestimates the gradient's spread by ~10% at depth/width 1 (tanh, width 32).

All variances are of natural logarithms.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from propagate.activations import torch_forms
from propagate.batched import LogNorms, Run, SharedDraws
from propagate.errors import UserError
from propagate.layers import FINITE_WIDTH, batch_coupled, forward_ops, theory_gap, vjp_ops
from propagate.limits import require_memory

__all__ = ["predict_spread", "check_spec", "spread_gap", "sample_spread", "spread_table", "spread_columns",
           "relu_layer_variance", "chi2_log_variance", "measured_spread", "HANIN_NICA_CONSTANT", "SPREAD_COLUMNS",
           "COUPLED_BATCH"]

#: Leading-order constant of ReLU/He networks: ``Var ln ||J u||^2 ~ 5 beta``, ``beta = sum_l 1/n_l``
#: (Hanin & Nica 2019: ``ln ||J u||`` is asymptotically ``N(-5 beta/4, 5 beta/4)``).
HANIN_NICA_CONSTANT = 5.0

#: Columns added by :func:`predict_spread` (theory) and by the simulator (measured, with ``*_se``).
SPREAD_COLUMNS = ("var_log_norm", "var_log_grad")


def chi2_log_variance(n) -> float:
    """``Var[ln chi^2_n] = psi_1(n/2)`` (trigamma), exactly."""
    from scipy import special

    return float(special.polygamma(1, 0.5 * float(n)))


@lru_cache(maxsize=256)
def relu_layer_variance(n: int) -> float:
    """``Var[ln chi^2_K]``, ``K ~ Binomial(n, 1/2)`` conditioned on ``K >= 1``: one ReLU layer's exact log-variance.

    By the law of total variance, ``E[psi_1(K/2)] + Var[psi(K/2)]``
    (``ln chi^2_K = ln 2 + ln Gamma(K/2, 1)``). Equals ``5/n + O(1/n^2)``.
    """
    from scipy import special, stats

    n = int(n)
    if n < 1:
        raise UserError(f"width must be >= 1, got {n}")
    k = np.arange(1, n + 1)
    p = stats.binom.pmf(k, n, 0.5)
    p = p / p.sum()  # condition on K >= 1 (a dead layer has log norm -inf)
    dig = special.psi(0.5 * k)
    mean = float(np.dot(p, dig))
    return float(np.dot(p, special.polygamma(1, 0.5 * k)) + np.dot(p, (dig - mean) ** 2))


# ----------------------------------------------------------------------------
# prediction


def spread_gap(spec) -> str | None:
    """Why :func:`predict_spread` does not cover ``spec`` (what its ops say, :func:`propagate.layers.theory_gap`), or None."""
    return theory_gap(spec.compile(), FINITE_WIDTH)


def check_spec(spec) -> None:
    """Raise :class:`UserError` unless :func:`predict_spread` covers ``spec`` (cheap; call before other work)."""
    gap = spread_gap(spec)
    if gap:
        raise UserError(gap)


def _layer_terms(act, q: float, sw2: float, sb2: float, n: int, orthogonal: bool, next_orthogonal: bool):
    """Per-layer slopes and noise covariances at mean-field pre-activation variance ``q`` (module docstring).

    Returns ``dict(a, c, b, var_eps, var_eta, cov, var_chi)`` where ``var_chi``
    is ``Var ln(||z^l||^2 / (n Q_l))`` given the layer input.
    """
    from propagate.theory import gaussian_expectation

    kinks = act.kinks

    def E(f):
        return gaussian_expectation(f, q, 0.0, kinks)

    f1 = lambda z: act.numpy(z) ** 2  # noqa: E731
    f2 = lambda z: act.grad(z) ** 2  # noqa: E731
    A, B = E(f1), E(f2)
    A2 = E(lambda z: f1(z) ** 2)
    B2 = E(lambda z: f2(z) ** 2)
    AB = E(lambda z: f1(z) * f2(z))
    Az = E(lambda z: f1(z) * (z * z - q))  # = 2 q^2 dA/dq (Stein)
    Bz = E(lambda z: f2(z) * (z * z - q))
    q_next = sw2 * A + sb2
    var_f1 = A2 - A * A
    var_f2xi = 3.0 * B2 - B * B  # Var[phi'^2 xi^2], xi ~ N(0,1) independent
    cov = AB - A * B  # Cov[phi^2, phi'^2 xi^2]
    su2 = q - sb2  # variance of the weight part u = W x of z = u + b
    if orthogonal and su2 > 0:
        # ||u||^2 is fixed: remove the part of phi^2 explained by u^2; Cov(f(z), u^2) = su2^2 E[f (z^2-q)] / q^2
        ca, cb = su2 * su2 * Az / (q * q), su2 * su2 * Bz / (q * q)
        var_f1 -= ca * ca / (2 * su2 * su2)
        var_f2xi -= cb * cb / (2 * su2 * su2)  # the phi'^2 factor of the gradient sees the same units
        cov -= ca * cb / (2 * su2 * su2)
        var_chi = (4 * su2 * sb2 + 2 * sb2 * sb2) / (n * q * q)
    else:
        var_chi = chi2_log_variance(n)
    if next_orthogonal:
        # W^T g of an orthogonal next layer has fixed norm: remove the part of phi'^2 xi^2 explained by xi^2
        var_f2xi -= (2.0 * B) ** 2 / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "a": sw2 * Az / (2 * q * q_next) if q_next > 0 else 0.0,
            "c": sw2 * A / q_next if q_next > 0 else 0.0,
            "b": Bz / (2 * q * B) if B > 0 else 0.0,
            "var_eps": max(var_f1, 0.0) / (n * A * A) if A > 0 else math.nan,
            "var_eta": max(var_f2xi, 0.0) / (n * B * B) if B > 0 else math.nan,
            "cov": cov / (n * A * B) if A > 0 and B > 0 else 0.0,
            "var_chi": var_chi,
        }


def _is_exact_relu(spec) -> bool:
    act, init = spec.act, spec.initializer
    return (act.family == "relu" and init.distribution in ("normal", "orthogonal")
            and all(s == 0 for s in spec.sigma_b2()))


def _all_layer_terms(spec, pre_q, orth: bool, exact: bool):
    """Every layer's slopes ``a, c, b`` and noise terms ``var_eps, var_eta, cov, var_chi`` (arrays, layer k at k-1)."""
    D, widths, act = spec.depth, spec.widths, spec.act
    sw2, sb2 = spec.sigma_w2(), spec.sigma_b2()
    a, c, b = np.ones(D), np.ones(D), np.zeros(D)
    v_eps, v_eta, cov, v_chi = np.zeros(D), np.zeros(D), np.zeros(D), np.zeros(D)
    for k in range(1, D + 1):
        n = widths[k]
        q = pre_q[k - 1]
        if exact:
            v = relu_layer_variance(n)
            if orth:
                # z = W x is uniform on a sphere: the active units carry a Beta(K/2, (n-K)/2) share of ||z||^2
                v_eps[k - 1] = v - chi2_log_variance(n)
                v_eta[k - 1] = v if k == D else v - chi2_log_variance(n)  # the readout r is Gaussian
                v_chi[k - 1] = 0.0
            else:
                v_eps[k - 1] = v_eta[k - 1] = v
                v_chi[k - 1] = chi2_log_variance(n)
            continue  # a = c = 1, b = 0: the covariance never enters
        if not (np.isfinite(q) and q > 0):
            a[k - 1:] = c[k - 1:] = v_eps[k - 1:] = v_eta[k - 1:] = v_chi[k - 1:] = math.nan
            break
        nxt_orth = orth and k < D  # the readout r is Gaussian
        t = _layer_terms(act, q, sw2[k - 1], sb2[k - 1], n, orth, nxt_orth)
        a[k - 1], c[k - 1], b[k - 1] = t["a"], t["c"], t["b"]
        v_eps[k - 1], v_eta[k - 1], cov[k - 1], v_chi[k - 1] = t["var_eps"], t["var_eta"], t["cov"], t["var_chi"]
    return a, c, b, v_eps, v_eta, cov, v_chi


def predict_spread(spec, *, input_q: float | None = None, table=None):
    """Predicted ``var_log_norm`` and ``var_log_grad`` of every layer of ``spec`` (natural-log variances).

    Args:
        spec: a :class:`~propagate.spec.NetworkSpec` the theory covers (:func:`spread_gap`).
        input_q: the fixed input's per-feature second moment ``||x||^2 / n_0``
            (default: ``spec.input_mean^2 + spec.input_var``).
        table: the mean-field table of ``spec`` (:func:`propagate.theory.predict_layers`),
            if already computed, for its per-layer ``pre_q``.

    Returns:
        a DataFrame with ``layer`` (0 = input), ``width``, ``var_log_norm``,
        ``var_log_grad``, ``beta`` (``sum_{k<=l} 1/n_k``) and ``method``:
        ``"exact"`` (ReLU, Gaussian or orthogonal weights, no bias: exact norm
        variance, see module docstring) or ``"delta"`` (first order in log space). Row 0 has
        ``var_log_norm = 0`` (the input is fixed) and no gradient.
    """
    import pandas as pd

    from propagate.theory import predict_layers

    check_spec(spec)
    orth = spec.initializer.distribution == "orthogonal"
    if table is None:
        table = predict_layers(spec, input_q=input_q)
    D, widths = spec.depth, spec.widths
    pre_q = table.set_index("layer")["pre_q"].reindex(range(1, D + 1)).to_numpy(dtype=float)
    exact = _is_exact_relu(spec)
    a, c, b, v_eps, v_eta, cov, v_chi = _all_layer_terms(spec, pre_q, orth, exact)

    # E[k-1, j-1]: coefficient of eps_j in d ln Q_k (d ln Q_1 = 0 for a fixed input)
    E = np.zeros((D, D))
    for k in range(2, D + 1):
        E[k - 1] = a[k - 2] * E[k - 2]
        E[k - 1, k - 2] = c[k - 2]
    var_lnq = E**2 @ v_eps
    var_norm = var_lnq + v_chi
    # gradient at layer l: sum_{k>=l} (b_k d ln Q_k + eta_k); accumulate from the top
    var_grad = np.zeros(D)
    w = np.zeros(D)  # coefficients on eps
    eta_var_sum = 0.0
    for l in range(D, 0, -1):
        w = w + b[l - 1] * E[l - 1]
        eta_var_sum += v_eta[l - 1]
        ind = np.zeros(D)
        ind[l - 1:] = 1.0
        var_grad[l - 1] = float(w**2 @ v_eps + 2.0 * (w * ind) @ cov + eta_var_sum)
    beta = np.cumsum([1.0 / widths[k] for k in range(1, D + 1)])
    rows = [{"layer": 0, "width": widths[0], "var_log_norm": 0.0, "var_log_grad": math.nan, "beta": 0.0}]
    for l in range(1, D + 1):
        rows.append({"layer": l, "width": widths[l], "var_log_norm": float(var_norm[l - 1]),
                     "var_log_grad": float(var_grad[l - 1]), "beta": float(beta[l - 1])})
    df = pd.DataFrame(rows)
    df["method"] = "exact" if exact else "delta"
    return df


# ----------------------------------------------------------------------------
# measurement


def measured_spread(values, covariate=None) -> tuple[float, float]:
    """Variance across networks of per-input log norms, with its standard error.

    Args:
        values: array ``(S, J)``: ``ln ||.||^2`` of network ``s`` at its input
            ``j`` (``S >= 3`` networks, ``J >= 1`` inputs each).
        covariate: optional ``(S, J)`` array, the inputs' ``ln ||x^0||^2``. The
            theory is for one fixed input, but simulated networks see different
            random inputs whose norms differ; the part of ``values`` linear in
            the covariate (one slope, fitted over all networks and inputs) is
            removed first. For zero-bias ReLU the slope is exactly 1.

    Returns:
        ``(var, se)``: the unbiased variance across networks, averaged over the
        ``J`` inputs, and its standard error from the spread of the networks'
        contributions (networks are independent; the inputs of one network are
        not). Non-finite entries (a dead network) drop that network.
    """
    y = np.asarray(values, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    ok = np.all(np.isfinite(y), axis=1)
    x = None
    if covariate is not None:
        x = np.asarray(covariate, dtype=np.float64).reshape(y.shape)
        ok &= np.all(np.isfinite(x), axis=1)
        x = x[ok]
    y = y[ok]
    S = y.shape[0]
    if S < 3:
        return math.nan, math.nan
    if x is not None:
        xc = x - x.mean(axis=0)
        yc0 = y - y.mean(axis=0)
        den = float(np.sum(xc * xc))
        slope = float(np.sum(xc * yc0) / den) if den > 0 else 0.0
        y = y - slope * x
    dev2 = (y - y.mean(axis=0)) ** 2  # (S, J)
    d = dev2.mean(axis=1) * S / (S - 1)  # per-network contribution; mean(d) is the estimate
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(S))


_SAMPLED_COLUMNS = ("var_log_norm", "var_log_norm_se", "var_log_grad", "var_log_grad_se", "mean_log_norm",
                    "mean_log_norm_se", "mean_log_grad", "mean_log_grad_se")

#: Inputs per network in the forward pass of :func:`sample_spread` when the network has an op whose output
#: depends on its batch (BatchNorm): the normalization's batch.
COUPLED_BATCH = 128


def sample_spread(spec, *, networks: int = 128, inputs: int = 4, seed: int = 0, input_q: float | None = None,
                  batch: int | None = None):
    """Measured ``var_log_norm`` and ``var_log_grad`` (with ``*_se``) of ``networks`` sampled networks of ``spec``.

    A light Monte Carlo for figures and tests, for any network (its layer ops,
    run by :class:`propagate.batched.Run`): ``batch`` fixed inputs of norm
    ``sqrt(n_0 input_q)`` (random directions, the same for every network, so
    no input-norm correction is needed), float64, the readout ``r ~ N(0, I)``
    per network; the spread is measured at the first ``inputs`` of them and the
    variance across networks is :func:`measured_spread`. ``mean_log_norm`` and
    ``mean_log_grad`` (with ``*_se`` across networks) are the means of
    ``ln ||z^l||^2`` and ``ln ||g^l||^2``. ``batch`` defaults to
    ``inputs``, or :data:`COUPLED_BATCH` for a network with BatchNorm (its
    statistics over the batch, held fixed in the backward pass, as the
    simulator does). Dropout masks are drawn per network, so they are part of
    the spread. All networks' weights come from one generator seeded by
    ``seed``, a layer at a time. Returns a DataFrame like
    :func:`predict_spread`'s (``layer`` 0 included, NaN there).
    """
    import pandas as pd

    ops = spec.compile()
    if networks < 3 or inputs < 1:
        raise UserError("sample_spread needs networks >= 3 and inputs >= 1")
    B = _forward_batch(ops, inputs, batch)
    torch_forms(spec.act)  # UserError for an activation without a torch form
    # float64: every layer's weights are kept for the backward pass, plus a few [networks, B, width] buffers
    require_memory(8 * networks * (sum(a * b for a, b in spec.fans()) + 4 * B * max(spec.widths)),
                   f"sampling the spread of {networks} networks", "sample fewer networks or a narrower network")
    q0 = (spec.input_mean**2 + spec.input_var) if input_q is None else float(input_q)
    norms = _sampled_log_norms(spec, ops, networks, inputs, B, q0, seed)
    rows = [{"layer": 0, "width": spec.widths[0], **dict.fromkeys(_SAMPLED_COLUMNS, math.nan)}]
    for l in range(1, spec.depth + 1):
        vn, sn = measured_spread(norms.norms[l])
        vg, sg = measured_spread(norms.grads[l])
        mn, mns = _mean_across_networks(norms.norms[l])
        mg, mgs = _mean_across_networks(norms.grads[l])
        rows.append({"layer": l, "width": spec.widths[l], "var_log_norm": vn, "var_log_norm_se": sn,
                     "var_log_grad": vg, "var_log_grad_se": sg, "mean_log_norm": mn, "mean_log_norm_se": mns,
                     "mean_log_grad": mg, "mean_log_grad_se": mgs})
    return pd.DataFrame(rows)


def _mean_across_networks(values) -> tuple[float, float]:
    """Mean of ``(S, J)`` log norms and its standard error across networks (a dead network, -inf, dropped)."""
    y = np.asarray(values, dtype=np.float64)
    y = y[np.all(np.isfinite(y), axis=1)].mean(axis=1)
    if len(y) < 2:
        return math.nan, math.nan
    return float(y.mean()), float(y.std(ddof=1) / math.sqrt(len(y)))


def _forward_batch(ops, inputs: int, batch: int | None) -> int:
    if batch is None:
        return max(inputs, COUPLED_BATCH) if batch_coupled(ops) else inputs
    if batch < inputs:
        raise UserError(f"batch ({batch}) must be at least inputs ({inputs})")
    return int(batch)


def _sampled_log_norms(spec, ops, networks: int, inputs: int, B: int, q0: float, seed: int) -> LogNorms:
    """The :class:`LogNorms` tap of one run of ``networks`` networks over ``B`` fixed inputs (the first ``inputs`` kept)."""
    import torch

    dt, d, n = torch.float64, spec.input_dim, spec.widths[-1]
    g0 = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 2**31]).generate_state(1)[0]))
    x = torch.randn(B, d, dtype=dt, generator=g0)
    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True) * math.sqrt(d * q0)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0]).generate_state(1)[0]))
    norms = LogNorms()
    run = Run(networks, B, inputs, max(spec.widths[1:]), dt, "cpu", SharedDraws(gen, networks), taps=(norms,))
    with torch.no_grad():
        _, tape = forward_ops(ops, x.expand(networks, B, d).clone(), run)
        r = torch.randn(networks, n, dtype=dt, generator=gen)
        vjp_ops(tape, (r / math.sqrt(n)).unsqueeze(1).expand(networks, inputs, n), run.record, stop_at_first=True)
    return norms


def spread_columns(table, log_norms: dict, log_grads: dict, log_inputs=None, *, spec=None, input_q: float | None = None):
    """``table`` with the measured spread across networks added (for :func:`propagate.simulate.simulate`).

    Args:
        table: the per-layer table (column ``layer``).
        log_norms: ``{layer: (S, J) array}``, ``ln ||z^l||^2`` of network ``s`` at input ``j``.
        log_grads: ``{layer: (S, J) array}``, ``ln ||g^l||^2`` likewise.
        log_inputs: ``(S, J)`` array of the inputs' ``ln ||x^0||^2``, regressed out
            (:func:`measured_spread`), or ``None``.
        spec, input_q: when given, ``theory_var_log_norm`` and
            ``theory_var_log_grad`` are added too: :func:`predict_spread`'s,
            or NaN where it does not cover ``spec``.

    Adds ``var_log_norm``, ``var_log_norm_se``, ``var_log_grad``, ``var_log_grad_se``
    (natural-log variances of squared norms; NaN where not measured). Returns
    ``(table, note)``: ``note`` says why the theory columns are empty (None
    when they are filled or not asked for).
    """
    out = table.copy()
    for col, data in (("var_log_norm", log_norms), ("var_log_grad", log_grads)):
        vals, ses = [], []
        for lay in out["layer"]:
            arr = data.get(int(lay))
            if arr is None:
                vals.append(math.nan)
                ses.append(math.nan)
                continue
            arr = np.asarray(arr, dtype=np.float64)
            cov = None if log_inputs is None else np.asarray(log_inputs, dtype=np.float64)[:, : arr.shape[1]]
            v, s = measured_spread(arr, cov)
            vals.append(v)
            ses.append(s)
        out[col] = vals
        out[col + "_se"] = ses
    if spec is None:
        return out, None
    th, note = _predicted(spec, input_q=input_q)
    for col in SPREAD_COLUMNS:
        out["theory_" + col] = out["layer"].map(th[col]).astype(float) if th is not None else math.nan
    return out, note


def _predicted(spec, *, input_q=None, table=None):
    """``(predict_spread indexed by layer, None)``, or ``(None, why not)``."""
    gap = spread_gap(spec)
    if gap:
        return None, gap
    try:
        return predict_spread(spec, input_q=input_q, table=table).set_index("layer"), None
    except UserError as exc:  # e.g. an activation the theory cannot integrate
        return None, str(exc)


#: Inputs per network of :func:`spread_table`'s sampled side.
SPREAD_TABLE_INPUTS = 4
#: Networks of :func:`spread_table`'s sampled side where the theory does not cover the spec.
SPREAD_TABLE_NETWORKS = 32


def spread_table(spec, *, table=None, input_q: float | None = None, networks: int | None = None, seed: int = 0):
    """The finite-width spread of every layer: predicted where the theory covers ``spec``, sampled where it does not.

    Args:
        spec: any :class:`~propagate.spec.NetworkSpec`.
        table: its mean-field table (:func:`propagate.theory.predict_layers`), if computed.
        input_q: the fixed input's per-feature second moment (default from ``spec``).
        networks: sample this many networks (:func:`sample_spread`, seed
            ``seed``, :data:`SPREAD_TABLE_INPUTS` inputs each) even where the
            theory covers ``spec``; default: sample
            :data:`SPREAD_TABLE_NETWORKS` networks only where it does not.

    Returns:
        ``(DataFrame, note)``: columns ``layer``, ``var_log_norm`` and
        ``var_log_grad`` (predicted, NaN where the theory does not reach), and
        when sampled ``sampled_var_log_norm``, ``sampled_var_log_norm_se``,
        ``sampled_var_log_grad``, ``sampled_var_log_grad_se``; ``note`` says why
        the predicted columns are empty (None when they are filled).
    """
    import pandas as pd

    th, note = _predicted(spec, input_q=input_q, table=table)
    out = pd.DataFrame({"layer": range(spec.depth + 1)})
    for col in SPREAD_COLUMNS:
        out[col] = out["layer"].map(th[col]).astype(float) if th is not None else math.nan
    if networks is None and note is not None:
        networks = SPREAD_TABLE_NETWORKS
    if networks is not None:
        ms = sample_spread(spec, networks=networks, inputs=SPREAD_TABLE_INPUTS, seed=seed, input_q=input_q)
        ms = ms.set_index("layer")
        for col in SPREAD_COLUMNS:
            for c in (col, col + "_se"):
                out["sampled_" + c] = out["layer"].map(ms[c]).astype(float)
    return out, note
