"""The per-layer table that theory, simulation and training all answer in.

One row per (source, configuration, layer[, epoch]). Column names are fixed here
so a report can lay prediction, simulation and training over each other with no
glue. Conventions (all three lenses follow them):

- ``layer`` counts weight layers from 1; row ``layer = l`` describes the
  pre-activation ``h^l = W^l x^{l-1} + b^l`` and the post-activation
  ``x^l = phi(h^l)``. Row ``layer = 0`` (optional) describes the network input
  ``x^0`` (its statistics are in the ``post_*`` columns).
- ``*_mean`` is the mean over units and samples; ``*_var`` is the variance
  pooled over units and samples (not a standard deviation); ``*_q`` is the
  second moment ``E[h^2] = var + mean^2`` (mean-field theory's ``q``).
- ``corr`` is the correlation of pre-activations between two different inputs
  (mean-field theory's ``c``), pooled over units.
- ``*_se`` columns are standard errors of the column they extend (simulation:
  across independent networks; training: across the probe batch).
- ``corr`` is the uncentered correlation (cosine similarity) of the
  pre-activation vectors of two different inputs ``a, b``:
  ``mean_i(h_a h_b) / sqrt(mean_i(h_a^2) mean_i(h_b^2))``, averaged over pairs
  (theory: ``q_ab / sqrt(q_aa q_bb)``).
- ``grad_norm`` is the L2 norm over the layer's units of the gradient of a
  scalar with respect to the pre-activation ``h^l``, root-mean-square over
  samples. Simulation and theory use a random linear readout
  ``y = r . x^depth / sqrt(n_depth)``, ``r ~ N(0, I)``, so that
  ``grad_norm^2`` at the last layer is ``E[phi'(h)^2]`` and each layer below
  multiplies it by ``sigma_w^2 E[phi'(h^l)^2]`` (``chi_1`` for equal widths);
  training uses the loss of one sample.
- ``dead_frac`` is the fraction of units whose post-activation is exactly zero
  for every input in the batch; ``saturated_frac`` the share of outputs within
  1% of the activation's range limits (tanh, sigmoid) or numerically zero.
"""

from __future__ import annotations

#: Columns every lens fills where it can (others are left NaN).
COLUMNS = [
    "source",  # "theory" | "simulation" | "training"
    "config",  # a short label of the spec, e.g. "selu/lecun_normal"
    "layer",
    "width",
    "pre_mean",
    "pre_var",
    "pre_q",
    "post_mean",
    "post_var",
    "post_q",
    "corr",
    "grad_norm",
    "dead_frac",
    "saturated_frac",
]

#: Optional columns: standard errors, training context.
OPTIONAL_COLUMNS = [
    "pre_mean_se",
    "pre_var_se",
    "post_mean_se",
    "post_var_se",
    "corr_se",
    "grad_norm_se",
    "epoch",  # training: 0 = at initialization, k = after epoch k
    "mode",  # training with BN: "train" (batch statistics) or "eval" (running statistics)
    "diverged",  # True from the first layer with inf/NaN on
]


def layer_table(rows, source: str | None = None, config: str | None = None):
    """Build a DataFrame with the canonical columns from a list of row dicts.

    Missing canonical columns are added as NaN; extra keys are kept after them.
    """
    import pandas as pd

    df = pd.DataFrame(list(rows))
    if source is not None:
        df["source"] = source
    if config is not None:
        df["config"] = config
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = float("nan")
    extra = [c for c in df.columns if c not in COLUMNS]
    ordered = [c for c in OPTIONAL_COLUMNS if c in extra] + [c for c in extra if c not in OPTIONAL_COLUMNS]
    return df[COLUMNS + ordered]
