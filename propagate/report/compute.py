"""The numbers behind the report: each function returns tidy tables.

These are the data steps of ``propagate report``; each is usable on its own
(in a notebook, with a figure function from :mod:`propagate.report.figures`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from propagate.inits import get_init, list_inits
from propagate.io import read_table
from propagate.report.tasks import PRIORITY, ReportRunner
from propagate.runner import Point, Shared, point_key
from propagate.selu import solve_selu, stability_box
from propagate.stats import config_columns

__all__ = [
    "SIM_CONFIGS",
    "selu_summary",
    "selu_trajectories",
    "phase_grid",
    "init_marks",
    "simulate_configs",
    "training_tables",
    "preset_groups",
]

#: (activation, init) pairs of the lecture demo and the recipes it left out; each is
#: simulated without and with batch normalization.
SIM_CONFIGS = [
    ("relu", "glorot_uniform"),
    ("relu", "he_normal"),
    ("selu", "glorot_uniform"),
    ("selu", "random_uniform"),
    ("selu", "lecun_uniform"),
    ("selu", "lecun_normal"),
]


def selu_summary(digits: int = 30) -> dict:
    """SELU's solved constants, Jacobian and stability box as plain numbers (strings at full precision)."""
    sol = solve_selu(0, 1, digits=digits)
    d = sol.to_dict()
    box = stability_box(sol.lambda_, sol.alpha)
    d["stability_box"] = {k: (v if not hasattr(v, "__float__") else float(v)) for k, v in box.items()} if isinstance(box, dict) else box
    return d


def selu_trajectories(starts=None, steps: int = 25, omega: float = 0.0, tau: float = 1.0):
    """Iterate SELU's moment map ``g: (mu, nu) -> (mu~, nu~)`` from a grid of starts.

    Returns a table ``start, step, mu, nu`` (``nu`` a variance). With
    ``omega = 0`` the first step forgets ``mu``; every start then moves along
    the same curve to (0, 1).
    """
    import pandas as pd

    from propagate.theory import snn_moment_map

    if starts is None:
        starts = [(m, v) for m in (-0.8, 0.0, 0.8) for v in (0.15, 0.5, 1.6, 2.6, 3.5)]
    rows = []
    for i, (mu, nu) in enumerate(starts):
        rows.append({"start": i, "step": 0, "mu": mu, "nu": nu})
        for k in range(1, steps + 1):
            mu, nu = snn_moment_map("selu", mu, nu, omega, tau)
            rows.append({"start": i, "step": k, "mu": mu, "nu": nu})
    return pd.DataFrame(rows)


def phase_grid(activation: str, sigma_w2=None, sigma_b2=None):
    """``chi_1`` on a grid of (``sigma_w^2``, ``sigma_b^2``), and the critical line.

    Returns ``(grid, line)``: ``grid`` has ``sigma_w2, sigma_b2, chi_1, q_star``;
    ``line`` has ``sigma_b2, sigma_w2, q_star`` where ``chi_1 = 1``.
    """
    import pandas as pd

    from propagate.theory import chi_1, critical_line, fixed_point_q

    sw = np.linspace(0.1, 4.0, 40) if sigma_w2 is None else np.asarray(sigma_w2, float)
    sb = np.linspace(0.0, 0.5, 26) if sigma_b2 is None else np.asarray(sigma_b2, float)
    rows = []
    for b in sb:
        for w in sw:
            rows.append({"sigma_w2": w, "sigma_b2": b, "chi_1": chi_1(activation, w, b),
                         "q_star": fixed_point_q(activation, w, b)})
    # Near sigma_b^2 = 0 the line bends sharply (tanh: sigma_w^2 - 1 ~ sigma_b^2^(1/3)),
    # so it is traced on extra points close to 0 as well as on the grid.
    fine = np.array([1e-8, 1e-6, 1e-5, 1e-4, 1e-3, 3e-3])
    line = critical_line(activation, np.unique(np.concatenate([sb, fine[fine < sb.max()]])))
    return pd.DataFrame(rows), line


def init_marks(fan_in: int = 256, fan_out: int = 256):
    """``sigma_w^2`` of every named init for a ``fan_out x fan_in`` layer."""
    import pandas as pd

    rows = [{"init": n, "sigma_w2": get_init(n).sigma_w2(fan_in, fan_out)} for n in list_inits() if ":" not in n]
    df = pd.DataFrame(rows)
    # inits with the same sigma_w^2 share one marker; uniform and normal variants by family name
    df["family"] = df["init"].str.replace(r"_(uniform|normal)$", "", regex=True)
    df.loc[df["init"].str.startswith("random_"), "family"] = df["init"]
    return df.groupby("sigma_w2", as_index=False).agg(init=("family", lambda s: ", ".join(dict.fromkeys(s))))


@dataclass
class SimulationTables:
    """Simulation and theory tables for many configurations (long format, ``config`` column)."""

    sim: object
    theory: object
    notes: list


def simulate_config(activation: str, init: str, batchnorm: bool, inputs, samples: int, seeds: int, seed: int,
                    progress: bool = False) -> dict:
    """One configuration of :func:`simulate_configs` (a runner point): its simulation and theory rows and a note."""
    from propagate.simulate import simulate
    from propagate.spec import NetworkSpec

    spec = NetworkSpec.demo(activation, init, batchnorm, out_features=None)
    res = simulate(spec, samples=samples, seeds=seeds, seed=seed, input=inputs, progress=progress)
    label = spec.label()
    return {"sim": res.table.assign(config=label).to_dict(orient="records"),
            "theory": [] if res.theory is None else res.theory.assign(config=label).to_dict(orient="records"),
            "note": "" if res.diverged_at is None else f"{label}: diverged at layer {res.diverged_at}"}


def simulate_configs(inputs, *, configs=SIM_CONFIGS, samples=1000, seeds=4, seed=0, progress=False,
                     runner=None) -> SimulationTables:
    """Simulate and predict the lecture demo's network (784 -> 512 -> 50 x 256) for each configuration.

    ``inputs`` is an ``(N, 784)`` float array of input images ([0, 1] pixels)
    or ``"gaussian"``. Each (activation, init) runs without and with batch
    normalization, each one point of ``runner``
    (:class:`propagate.report.tasks.ReportRunner`; default in process, with
    this process's torch threads).
    """
    import pandas as pd

    runner = runner or ReportRunner()
    points = [Point(point_key({"kind": "report simulation", "activation": act, "init": init, "batchnorm": bn,
                               "samples": samples, "seeds": seeds, "seed": seed}),
                    simulate_config, (act, init, bn, Shared("inputs"), samples, seeds, seed, progress and not runner.on_dask),
                    shared={"inputs": inputs}, meta={"what": f"{act}/{init}{'+BN' if bn else ''}"})
              for bn in (False, True) for act, init in configs]
    values = runner.run(points, label="simulation", priority=PRIORITY["simulation"])
    parts = [values[p.key] for p in points]
    sims = [pd.DataFrame(v["sim"]) for v in parts]
    theories = [pd.DataFrame(v["theory"]) for v in parts if v["theory"]]
    return SimulationTables(pd.concat(sims, ignore_index=True),
                            pd.concat(theories, ignore_index=True) if theories else None,
                            [v["note"] for v in parts if v["note"]])


def geometric_rate(table, column="pre_var", first=2, last=None):
    """Per-layer factor of ``column`` fitted between layers ``first`` and ``last`` (log-linear)."""
    t = table[(table["layer"] >= first) & ((table["layer"] <= last) if last else True)]
    y = t[column].to_numpy(float)
    x = t["layer"].to_numpy(float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.exp(np.polyfit(x[ok], np.log(y[ok]), 1)[0]))


def run_label(preset: str, lr: float) -> str:
    """How a training run is named in figures and tables."""
    return f"{preset} (lr {lr:g})"


def _run_tags(preset: str, lr: float) -> dict:
    """The columns a training run's rows get in the report's long tables (see :func:`collect_training`)."""
    from propagate.presets import get_preset

    spec = get_preset(preset).spec().with_(name="")
    return {"run": run_label(preset, lr), "preset": preset, "lr": lr, **config_columns(spec), "config": spec.label()}


def _long_tables(parts):
    """``(history, layers)``: the concatenation of ``(tags, history, layers)`` parts, each tagged (``None``: absent)."""
    import pandas as pd

    hist = [h.assign(**tags) for tags, h, _ in parts if h is not None]
    lay = [lay.assign(**tags) for tags, _, lay in parts if lay is not None]
    return (pd.concat(hist, ignore_index=True) if hist else pd.DataFrame(),
            pd.concat(lay, ignore_index=True) if lay else pd.DataFrame())


def collect_training(work_dir, summary):
    """Read every run of a ``reproduce`` folder into two long tables (history, layers).

    Both get ``run``, ``preset``, ``lr``, ``config`` (the spec label, for
    display) and the configuration columns of :data:`propagate.stats.CONFIG_COLUMNS`
    (``activation``, ``init``, ``normalization``, ``residual``: what figures read).
    """
    from propagate.reproduce import run_name

    parts = []
    for _, r in summary.iterrows():
        d = Path(work_dir) / run_name(r["preset"], r["lr"])
        parts.append((_run_tags(r["preset"], r["lr"]),
                      read_table(d / "history.csv") if (d / "history.csv").exists() else None,
                      read_table(d / "layers.csv") if (d / "layers.csv").exists() else None))
    return _long_tables(parts)


def training_tables(runs):
    """:func:`collect_training`'s two long tables from results in hand: ``runs`` are ``(preset, lr, TrainResult)``."""
    return _long_tables([(_run_tags(preset, lr), res.history, res.layers) for preset, lr, res in runs])


def preset_groups(names, max_size: int | None = None) -> list[list[str]]:
    """``names`` (presets) in groups of one architecture, differing only in initializer, each trained as one model.

    Groups keep the order of their first member; a group holds at most
    ``max_size`` presets (a batched model of too many members would not fit in
    memory; ``None``: no limit).
    """
    from propagate.presets import get_preset
    from propagate.spec import same_architecture

    groups: list[list[str]] = []
    for name in names:
        spec = get_preset(name).spec()
        home = next((g for g in groups if same_architecture(get_preset(g[0]).spec(), spec)
                     and (max_size is None or len(g) < max_size)), None)
        if home is None:
            groups.append([name])
        else:
            home.append(name)
    return groups


#: The learning rate the lecture demo's reported numbers were measured at: RMSprop with Keras' default lr 0.001
#: (shared/reference/seed-experiments.md, "Training"). Its points belong only on figures of this learning rate.
DEMO_LR = 1e-3


def reported_table(summary):
    """The lecture demo's reported accuracies per preset and epoch (``preset, epoch, lr, acc, val_acc``);
    ``lr`` is :data:`DEMO_LR`, the learning rate they were measured at."""
    import pandas as pd

    from propagate.presets import get_preset

    rows = []
    for name in dict.fromkeys(summary["preset"]):
        rep = get_preset(name).reported
        if rep:
            for e, (a, v) in enumerate(zip(rep["acc"], rep["val_acc"]), start=1):
                rows.append({"preset": name, "epoch": e, "lr": DEMO_LR, "acc": a, "val_acc": v})
    return pd.DataFrame(rows, columns=["preset", "epoch", "lr", "acc", "val_acc"])


def drift_runs(summary, lrs) -> list[str]:
    """Runs whose per-layer drift the report shows: the SNN recipe at every learning rate,
    the failing plain ReLU and the lecture demo's favourite (SELU + BN + lecun_uniform)."""
    have = set(summary["preset"])
    lrs = list(lrs)
    runs = [run_label("selu-lecun-normal", lr) for lr in lrs if "selu-lecun-normal" in have]
    if "relu" in have:
        runs.append(run_label("relu", lrs[0]))
    if "selu-bn-lecun-uniform" in have:
        runs.append(run_label("selu-bn-lecun-uniform", lrs[-1]))
    return runs[:4]
