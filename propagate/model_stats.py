"""Per-layer statistics of any torch model: :func:`inspect` at initialization, :class:`LayerStats` while training.

Forward hooks on every leaf module (a module without children) record its
output at each call, in execution order, so a module called twice gives two
rows. Each output is measured at once by :func:`propagate.stats.measure` (the
one definition every lens shares), and a hook on the output tensor records the
gradient that reaches it in the backward pass.

Columns (one row per leaf-module call):

- ``index`` (execution order from 0), ``module`` (qualified name; ``""`` is the
  model itself), ``type`` (class name), ``call`` (0 for a module's first call,
  1 for its second, ...), ``shape`` (the output's shape after the batch
  dimension, e.g. ``64x32x32``), ``units`` and ``positions``.
- A *unit* is a feature of ``Linear`` (the last dimension) and a channel of
  ``Conv1d/2d/3d`` (dimension 1); other modules count units the way the
  nearest weight layer before them does (a ReLU after a Conv2d counts
  channels; before any weight layer, dimension 1). ``positions`` is the
  number of entries per unit and sample.
- ``out_mean``, ``out_var``, ``out_q``: mean, pooled variance (not a standard
  deviation) and second moment of the output, pooled over units, positions
  and inputs, exactly as :func:`propagate.simulate.simulate` pools ``pre_*``
  and ``post_*``: so ``out_var`` of a weight layer estimates the mean-field
  ``q`` of that layer, and ``out_*`` of an activation its ``post_*``.
- ``corr``: the mean cosine similarity of the outputs of input pairs
  ``(2i, 2i+1)`` (whole per-sample output vectors; simulation's ``corr``).
- ``grad_norm``: the L2 norm over units and positions of the gradient with
  respect to the output, root mean square over inputs. The gradient is that
  of ``loss(output, targets)`` when a loss is given (as the loss reduces it:
  pass ``reduction="sum"`` for per-sample gradients, as training's probe
  uses), else of a fixed random Gaussian readout of the model's output,
  ``y = sum_b r . out_b / sqrt(n)``, ``r ~ N(0, I)`` per network, as
  ``simulate`` does (so ``grad_norm`` at the output is about 1).
- ``dead_frac`` (activation modules with a kink at a zero lower bound, the
  ReLU-like ones): the share of units whose output is exactly 0 at every
  input and position; ``saturated_frac`` (activations with a finite bound):
  the share of outputs at a range limit (:func:`propagate.stats.measure`).
- Weight layers (``Linear``, ``Conv1d/2d/3d``): ``fan_in`` (``C_in / groups x
  kernel area`` for a convolution), ``sigma_w2 = fan_in x mean(w^2)`` (the
  weights' variance about zero) and ``sigma_b2 = mean(b^2)``.
- ``finite``: every entry of the output was finite.

Only the first floating tensor of a module's output is measured (an LSTM's
output, not its state); dimension 0 is taken as the batch.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from propagate.activations import get_activation
from propagate.errors import UserError
from propagate.module_spec import activation_of, leaf_modules, weight_stats
from propagate.stats import aggregate, measure
from propagate.inits import get_init
from propagate.io import atomic_write_bytes, atomic_write_json, run_metadata, write_table

__all__ = ["inspect", "InspectResult", "LayerStats", "ROW_COLUMNS", "STAT_COLUMNS", "reinit_model", "build_model_from"]

#: Descriptive columns of every row, then the statistics.
ROW_COLUMNS = ["index", "module", "type", "call", "shape", "units", "positions", "fan_in", "sigma_w2", "sigma_b2"]
#: The measured statistics (``*_se`` columns extend the first five over networks).
STAT_COLUMNS = ["out_mean", "out_var", "out_q", "corr", "grad_norm", "dead_frac", "saturated_frac"]
_SE_STATS = ("out_mean", "out_var", "out_q", "corr", "grad_norm")
# out_* are stored in stats.aggregate's pre_* columns, so networks are averaged by the one formula simulate uses
_AS_PRE = {"out_mean": "pre_mean", "out_var": "pre_var", "out_q": "pre_q"}


def _first_float_tensor(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_float_tensor(o)
            if t is not None:
                return t
    return None


class _Recorder:
    """Forward hooks on a model's leaf modules: one row per call, its output and gradient measured in batches.

    A hook copies the module's output at once (a later in-place operation, such
    as ``ReLU(inplace=True)`` or ``out += identity``, cannot change what was
    recorded) and a tensor hook copies the gradient that reaches it.
    :meth:`finish` then measures all outputs of the same shape (and
    activation) in one :func:`propagate.stats.measure` call, stacked along its
    network axis, so a recorded step costs a handful of reductions rather than
    several per module. ``chain[i]`` says whether row ``i``'s input is the
    previous row's output (row 0: the model input), which the theory needs (a
    functional operation or a branch breaks it). Memory: one more copy of
    every leaf module's output and gradient until :meth:`finish`.
    """

    def __init__(self, model, *, tap_energy: bool = False):
        self.leaves = leaf_modules(model)
        self.tap_energy = tap_energy
        self.handles: list = []
        self.reset()

    def reset(self, model_input=None):
        self.rows: list[dict] = []
        self.modules: list = []
        self.chain: list[bool] = []
        self.energy: dict[int, Any] = {}
        self.calls: dict[int, int] = {}
        self.outs: dict[int, tuple] = {}  # row -> (output [B, n] copy, activation name, unit dim, units)
        self.grads: dict[int, Any] = {}  # row -> gradient [B, n] copy
        self.last_out = model_input
        self.first_input = None  # what the first leaf module received (the theory starts from its statistics)
        self.output = None
        self.reaches_output = False
        self.unit_dim = 1  # channels (PyTorch's layout) until a Linear layer says features are last

    def attach(self):
        for name, m in self.leaves:
            self.handles.append(m.register_forward_hook(functools.partial(self._forward, name)))

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _forward(self, name, module, args, output):
        import torch

        t = _first_float_tensor(output)
        i = len(self.rows)
        row = {"index": i, "module": name, "type": type(module).__name__, "call": self.calls.get(id(module), 0)}
        self.calls[id(module)] = row["call"] + 1
        self.chain.append(bool(args) and args[0] is self.last_out)
        if i == 0 and args and isinstance(args[0], torch.Tensor):
            self.first_input = args[0].detach().clone()
        self.modules.append(module)
        ws = weight_stats(module)
        if ws is not None:
            row.update(ws)
            self.unit_dim = -1 if isinstance(module, torch.nn.Linear) else 1
            if self.tap_energy and module.weight.dim() > 2:
                with torch.no_grad():  # per-tap weight energy: sum over inputs, mean over output channels
                    w = module.weight.detach()
                    self.energy[i] = (w * w).sum(1).mean(0).double().cpu().numpy()
        self.rows.append(row)
        self.last_out = t
        if t is None:
            return
        B = t.shape[0] if t.dim() else 1
        units = int(t.shape[self.unit_dim]) if t.dim() >= 2 else 1
        row.update(shape="x".join(str(d) for d in t.shape[1:]) or "1", units=units,
                   positions=int(t.numel() // max(B * units, 1)))
        unit_dim = self.unit_dim if t.dim() >= 3 else None
        self.outs[i] = (t.detach().reshape(B, -1).clone(), activation_of(module), unit_dim, units, tuple(t.shape))
        if t.requires_grad and torch.is_grad_enabled():
            t.register_hook(functools.partial(self._backward, i))

    def _backward(self, i, g):
        B = g.shape[0] if g.dim() else 1
        self.grads[i] = g.detach().reshape(B, -1).clone()

    def finish(self) -> None:
        """Measure the recorded outputs and gradients (grouped by shape), into the rows; frees the copies."""
        import torch

        groups: dict = {}
        for i, (flat, act, unit_dim, units, shape) in self.outs.items():
            groups.setdefault((flat.shape, act, unit_dim, units, shape), []).append(i)
        for (_, act, unit_dim, units, shape), idx in groups.items():
            self._measure_outputs(idx, act, unit_dim, units, shape)
        by_shape: dict = {}
        for i, g in self.grads.items():
            by_shape.setdefault(g.shape, []).append(i)
        for idx in by_shape.values():
            gn = measure(grad=torch.stack([self.grads[i] for i in idx]))[0]["grad_norm"]
            for i, v in zip(idx, gn.tolist()):
                self.rows[i]["grad_norm"] = v
        self.outs, self.grads = {}, {}

    def _measure_outputs(self, idx, act_name, unit_dim, units, shape) -> None:
        import torch

        x = torch.stack([self.outs[i][0] for i in idx])  # [rows, B, n]: measure's network axis holds the rows
        act = get_activation(act_name) if act_name is not None else None
        st, _ = measure(pre=x, post=x if act is not None else None, act=act)
        # measure() recomputes an overflowing q in float64, so q is inf/NaN exactly when an entry is
        finite = torch.isfinite(st["pre_q"] + st["pre_mean"]).tolist()
        cols = {"out_mean": st["pre_mean"], "out_var": st["pre_var"], "out_q": st["pre_q"], "corr": st["corr"]}
        if act is not None:
            lo, hi = act.bounds
            if lo == 0 and act.kinks:  # ReLU-like: dead units, counted per unit (channel) over inputs and positions
                per_unit = x if unit_dim is None else x.reshape(len(idx), *shape).movedim(
                    unit_dim if unit_dim < 0 else unit_dim + 1, -1).reshape(len(idx), -1, units)
                cols["dead_frac"] = measure(post=per_unit, act=act)[0]["dead_frac"]
            if math.isfinite(lo) or math.isfinite(hi):
                cols["saturated_frac"] = st["saturated_frac"]
        values = {k: v.tolist() for k, v in cols.items()}
        for j, i in enumerate(idx):
            self.rows[i].update({k: v[j] for k, v in values.items()}, finite=finite[j])

    def table_rows(self) -> list[dict]:
        """The rows with every column (NaN where a statistic does not apply)."""
        out = []
        for row in self.rows:
            r = {c: math.nan for c in ROW_COLUMNS + STAT_COLUMNS}
            r.update(row)
            r["finite"] = bool(row.get("finite", True))
            out.append(r)
        return out


# ----------------------------------------------------------------------------
# leaving the model as it was


@contextlib.contextmanager
def _preserved(model, mode: str | None):
    """Run with the model in ``mode`` ("train", "eval" or None: as it is); restore modes, buffers and grads after.

    Buffers (BatchNorm's running statistics) are copied back bit for bit;
    ``requires_grad`` and every parameter's ``.grad`` object are put back.
    Parameters are never written (gradients are taken with
    ``torch.autograd.grad``, which does not accumulate into ``.grad``).
    """
    import torch

    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [(p, p.requires_grad, p.grad) for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        if mode is not None:
            model.train(mode == "train")
        yield model
    finally:
        for m, was in modes:
            m.training = was
        for p, req, g in flags:
            p.requires_grad_(req)
            p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


# ----------------------------------------------------------------------------
# networks: a factory's, or a model's redrawn parameters


def _is_factory(model) -> bool:
    import torch.nn as nn

    return not isinstance(model, nn.Module) and callable(model)


def build_model_from(factory):
    """Call a user's factory; anything it raises, or returns that is not a module, is the user's error (UserError)."""
    import torch.nn as nn

    name = getattr(factory, "__qualname__", None) or type(factory).__name__
    try:
        model = factory()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code (a sys.exit in it included)
        raise UserError(f"{name}() raised {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def reinit_model(model, how: str) -> None:
    """Redraw ``model``'s parameters in place from the global torch random state.

    ``how="reset"``: every module's own ``reset_parameters()`` (PyTorch's
    defaults; BatchNorm also resets its running statistics). Otherwise a name
    from :mod:`propagate.inits`: ``Linear`` weights by ``Init.sample``,
    ``Conv1d/2d/3d`` kernels by ``Init.sample_kernel`` (``fan_in = C_in / groups x
    kernel area``), biases by ``Init.sample_bias`` (zero but for
    ``torch_default``); other modules keep their parameters.
    """
    import torch
    import torch.nn as nn

    if how == "reset":
        for m in model.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
        return

    init = get_init(how)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(init.sample(m.out_features, m.in_features, dtype=m.weight.dtype))
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                c_out, c_in, *k = m.weight.shape
                m.weight.copy_(init.sample_kernel(c_out, c_in, k, dtype=m.weight.dtype))
            else:
                continue
            if m.bias is not None:
                fan_in = int(math.prod(m.weight.shape[1:]))
                m.bias.copy_(init.sample_bias(m.bias.shape[0], fan_in, dtype=m.bias.dtype))


def _model_device(model):
    import torch

    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return torch.device("cpu")


def _network(model, n: int, seed: int, reinit: str | None, device):
    """Network ``n``: the factory called (or the model copied and redrawn) under torch seed ``seed + n``.

    A model object is used as it is (no copy) unless it must be redrawn or moved to another device.
    """
    import torch

    torch.manual_seed(seed + n)
    if _is_factory(model):
        net = build_model_from(model)
    elif reinit is not None or (device is not None and torch.device(device) != _model_device(model)):
        net = copy.deepcopy(model)
    else:
        return model
    if reinit is not None:
        reinit_model(net, reinit)
    return net.to(device) if device is not None else net


# ----------------------------------------------------------------------------
# one network


def _objective(out, loss, targets, gen):
    """The scalar whose gradient is recorded: ``loss(output, targets)``, or the random readout of the output."""
    import torch

    t = _first_float_tensor(out)
    if t is None:
        return None
    if loss is not None:
        y = loss(out, targets) if targets is not None else loss(out)
        if not isinstance(y, torch.Tensor) or y.numel() != 1:
            raise UserError("loss(output, targets) must return a scalar tensor")
        return y.reshape(())
    B = t.shape[0] if t.dim() else 1
    flat = t.reshape(B, -1)
    r = torch.randn(flat.shape[1], generator=gen, dtype=torch.float64).to(device=t.device, dtype=t.dtype)
    return (flat @ r).sum() / math.sqrt(flat.shape[1])


def _readout_generator(seed: int, n: int):
    import torch

    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(n), 0x1A5]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]) >> 1)


def _run_network(net, x, rec, loss, targets, gen):
    """Forward and backward once with the hooks on; the rows land in ``rec``. Returns whether a gradient was taken."""
    import torch

    rec.reset(x)
    rec.attach()
    try:
        with torch.enable_grad():
            out = net(x)
            y = _objective(out, loss, targets, gen)
            rec.output = _first_float_tensor(out)
            rec.reaches_output = rec.output is not None and rec.output is rec.last_out
            if y is None or not y.requires_grad:
                return False
            wrt = [x] if x.requires_grad else [p for p in net.parameters() if p.requires_grad]
            torch.autograd.grad(y, wrt, allow_unused=True)
            return True
    finally:
        rec.detach()


def _check_forward(net, x):
    """One tiny forward pass (2 inputs, no grad): a model that cannot take these inputs is the user's error."""
    import torch

    try:
        with torch.no_grad():
            net(x[:2])
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's model or inputs (sys.exit included)
        raise UserError(f"the model failed on inputs of shape {tuple(x.shape)}: {type(exc).__name__}: "
                        f"{_first_line(exc)}") from None


# ----------------------------------------------------------------------------
# over networks


def _aggregate(per_network):
    """Mean over networks and standard error across networks (``*_se``), by :func:`propagate.stats.aggregate`."""
    import pandas as pd

    nets = per_network["network"].nunique()
    tab = per_network.rename(columns=_AS_PRE).assign(layer=per_network["index"],
                                                     width=per_network["units"].fillna(0).astype(int),
                                                     diverged=~per_network["finite"].astype(bool),
                                                     post_mean=math.nan, post_var=math.nan, post_q=math.nan)
    agg = aggregate(tab).rename(columns={v: k for k, v in _AS_PRE.items()})
    agg = agg.rename(columns={f"{v}_se": f"{k}_se" for k, v in _AS_PRE.items()})
    first = per_network[per_network["network"] == per_network["network"].min()].set_index("index")
    means = per_network.groupby("index")[["sigma_w2", "sigma_b2"]].mean()
    out = pd.DataFrame({"index": agg["layer"].astype(int)})
    for c in ROW_COLUMNS[1:]:
        out[c] = out["index"].map(means[c] if c in means.columns else first[c])
    for c in STAT_COLUMNS:
        out[c] = agg[c].to_numpy()
        if c in _SE_STATS:
            out[c + "_se"] = agg[c + "_se"].to_numpy() if nets > 1 else math.nan
    out["finite"] = ~agg["diverged"].to_numpy(dtype=bool)
    out["networks"] = nets
    return out


def _check_same_structure(rows, first):
    a = [(r["module"], r["type"]) for r in first]
    b = [(r["module"], r["type"]) for r in rows]
    if a != b:
        raise UserError("the networks differ in structure (modules called in another order); "
                        "inspect needs the same model for every network")


@dataclass
class InspectResult:
    """What :func:`inspect` returns.

    Attributes:
        table: one row per leaf-module call (module docstring for the
            columns), mean over networks with ``*_se`` (standard error across
            networks), and where the theory reaches ``theory_out_mean``,
            ``theory_out_var``, ``theory_out_q``, ``theory_corr``,
            ``theory_grad_norm`` (weight layers), ``ratio`` (``out_var /
            theory_out_var``), ``layer`` (the theory's layer), ``judged``,
            ``disagree`` and ``disagree_in`` (:func:`propagate.stats.compare_with_theory`'s
            flags, the statistics renamed to ``out_*``).
        per_network: the same rows per network (column ``network``).
        theory: the theory's own per-layer table (:mod:`propagate.stats` format) or None.
        spec: the :class:`~propagate.spec.NetworkSpec` of an MLP-like model
            (with its measured per-layer variances), or None.
        theory_note: one line: what the theory covers, or which module stops it and why.
        meta: run parameters (networks, seed, inputs, mode, objective, device, seconds).
    """

    table: Any
    per_network: Any
    theory: Any = None
    spec: Any = None
    theory_note: str = ""
    meta: dict = field(default_factory=dict)


def _as_inputs(inputs, dtype, device):
    import torch

    if isinstance(inputs, np.ndarray) or not isinstance(inputs, torch.Tensor):
        try:
            inputs = torch.as_tensor(np.asarray(inputs))
        except (TypeError, ValueError) as exc:
            raise UserError(f"inputs must be an array or tensor: {exc}") from None
    if inputs.dim() < 1 or inputs.shape[0] < 2:
        raise UserError(f"inputs need a batch of at least 2 (pairs give corr), got shape {tuple(inputs.shape)}")
    if inputs.is_floating_point():
        inputs = inputs.to(dtype=dtype)
        if not bool(torch.isfinite(inputs).all()):
            raise UserError("inputs contain inf or NaN")
    return inputs.to(device)


def _check_options(networks, reinit, mode, model):
    if not isinstance(networks, (int, np.integer)) or isinstance(networks, bool) or networks < 1:
        raise UserError(f"networks must be a whole number >= 1, got {networks!r}")
    if mode not in (None, "train", "eval"):
        raise UserError(f"mode must be 'train', 'eval' or None, got {mode!r}")
    if reinit is not None and reinit != "reset":

        get_init(reinit)
    if networks > 1 and not _is_factory(model) and reinit is None:
        raise UserError("several networks need a factory (a callable that builds the model) or reinit= "
                        "('reset' or an initializer name); a model object alone is one network")


def inspect(model, inputs, *, loss: Callable | None = None, targets=None, networks: int = 1,
            reinit: str | None = None, seed: int = 0, mode: str | None = None, theory: bool = True,
            device=None, threads: int | None = None, progress: bool = False) -> InspectResult:
    """Per-layer statistics of any ``nn.Module`` on ``inputs``, over ``networks`` random networks, theory alongside.

    Args:
        model: an ``nn.Module``, or a factory (a callable with no arguments
            returning one), called ``networks`` times under torch seeds
            ``seed .. seed + networks - 1`` so that the user's own
            initialization is what gets sampled.
        inputs: ``[B, ...]`` array or tensor (``B >= 2``), the same for every
            network; cast to the model's floating dtype.
        loss, targets: the gradient is that of ``loss(output, targets)``
            (``loss(output)`` without targets); default: a random Gaussian
            readout of the output (module docstring).
        networks: independent networks; more than one gives ``*_se``.
        reinit: ``None``; ``"reset"`` (the modules' ``reset_parameters()``) or
            an initializer name (:func:`reinit_model`), applied to a copy of a
            model object, or to each network a factory builds.
        seed: first torch seed (factories, redraws, dropout masks, readout).
        mode: ``"train"``, ``"eval"`` or None (the model's own mode).
        theory: add mean-field theory columns where the theory reaches
            (:mod:`propagate.model_theory`).
        device: where to run (default: the model's); a model object on another
            device is copied there, never moved.
        threads: torch CPU threads during the run (restored after).
        progress: a tqdm bar over networks on stderr.

    The model is left as it was: hooks removed, train/eval mode and
    ``requires_grad`` restored, no ``.grad`` written, buffers (BatchNorm
    running statistics) restored bit for bit, parameters untouched. The global
    torch random state is restored too.
    """
    import sys

    import torch
    from tqdm import tqdm

    _check_options(networks, reinit, mode, model)
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        # factories, redraws and dropout use the global generators: fork every device's (CUDA's too, when present)
        with torch.random.fork_rng(devices=None if torch.cuda.is_available() else []):
            # network 0 first: a bad model or input fails with one line before any progress bar
            net = _network(model, 0, int(seed), reinit, device)
            rows, trace, en = _inspect_one(net, inputs, loss, targets, mode, seed, 0, True)
            per, energy = [rows], [en]
            for n in tqdm(range(1, networks), desc="networks", file=sys.stderr, disable=not progress or networks < 3,
                          leave=False):
                net = _network(model, n, int(seed), reinit, device)
                rows, _, en = _inspect_one(net, inputs, loss, targets, mode, seed, n, False)
                _check_same_structure(rows, per[0])
                per.append(rows)
                energy.append(en)
    finally:
        torch.set_num_threads(threads_before)
    if trace is not None:
        trace.energy = energy
    return _result(per, trace, theory, loss, dict(networks=int(networks), seed=int(seed), mode=mode or "as is",
                                                  reinit=reinit, seconds=round(time.perf_counter() - t0, 4)))


def _inspect_one(net, inputs, loss, targets, mode, seed, n, keep_trace):
    """Rows of one network, what its hooks saw (for the theory: modules in call order, chain, input), tap energies."""
    import torch

    dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
    x = _as_inputs(inputs, dtype, _model_device(net))
    if x.is_floating_point():
        x = x.detach().clone().requires_grad_(True)
    rec = _Recorder(net, tap_energy=True)
    with _preserved(net, mode):
        _check_forward(net, x.detach())
        tg = targets.to(x.device) if hasattr(targets, "to") and hasattr(targets, "device") else targets
        grad = _run_network(net, x, rec, loss, tg, _readout_generator(seed, n))
        rec.finish()
        trace = None
        if keep_trace:
            from propagate.model_theory import Trace

            trace = Trace(modules=list(rec.modules), names=[r["module"] for r in rec.rows], chain=list(rec.chain),
                          inputs=rec.first_input if rec.first_input is not None else x.detach(),
                          reaches_output=rec.reaches_output,
                          readout=loss is None and grad, training=[m.training for m in rec.modules])
    rows = rec.table_rows()
    for r in rows:
        r["network"] = n
    return rows, trace, rec.energy


def _result(per, trace, theory, loss, meta) -> InspectResult:
    import pandas as pd

    per_network = pd.DataFrame([r for rows in per for r in rows])
    per_network = per_network[["network", *ROW_COLUMNS, *STAT_COLUMNS, "finite"]]
    table = _aggregate(per_network)
    meta.update(objective="loss" if loss else "readout")
    if trace is not None:
        meta.update(inputs=list(trace.inputs.shape), device=str(trace.inputs.device))
    if not theory or trace is None:
        return InspectResult(table, per_network, theory_note="theory not requested" if not theory else "", meta=meta)
    from propagate.model_theory import attach_theory

    table, theory_df, spec, note = attach_theory(table, trace)
    meta.update(theory_note=note, spec=spec.to_dict() if spec is not None else None)
    return InspectResult(table, per_network, theory_df, spec, note, meta)


# ----------------------------------------------------------------------------
# during training


class LayerStats:
    """Record per-layer statistics inside your own training loop, every ``every`` steps.

    >>> with LayerStats(model, every=50) as stats:          # doctest: +SKIP
    ...     for x, y in loader:
    ...         opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    >>> stats.table()                                       # doctest: +SKIP

    A *step* is a forward pass of ``model`` with gradients enabled (so
    evaluation under ``torch.no_grad()`` does not count); steps ``0, every,
    2 every, ...`` are recorded. On a recorded step, hooks measure every leaf
    module's output (the columns of :func:`inspect`, module docstring) and the
    gradient your own backward pass sends through it; each weight layer's
    ``update_ratio = ||W_after - W_before|| / ||W_before||`` (Frobenius norms,
    weights only) spans that step's optimizer update, read at the next step's
    forward pass (or on leaving the block). Other steps run no hook but one
    counter. Rows stay as tensors until :meth:`table`.
    """

    def __init__(self, model, every: int = 50):
        import torch.nn as nn

        if not isinstance(model, nn.Module):
            raise UserError(f"LayerStats needs a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every < 1:
            raise UserError(f"every must be a whole number >= 1, got {every!r}")
        self.model, self.every = model, int(every)
        self.step = 0
        self._rec = _Recorder(model)
        self._handles: list = []
        self._pending = None  # (step, weight snapshots) of a recorded step until the next one starts
        self._recording = False
        self._done: list[dict] = []

    def __enter__(self):
        self._handles = [self.model.register_forward_pre_hook(self._before),
                         self.model.register_forward_hook(self._after)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        self._rec.detach()
        self._finish()
        return False

    def _before(self, module, args):
        import torch

        if not torch.is_grad_enabled():
            return
        self._finish()  # the previous recorded step's backward pass and optimizer update are done by now
        self._recording = self.step % self.every == 0
        if self._recording:
            self._rec.reset(args[0] if args else None)
            self._rec.attach()
        self.step += 1

    def _after(self, module, args, output):
        import torch

        if not self._recording or not torch.is_grad_enabled():
            return
        self._recording = False
        self._rec.detach()
        with torch.no_grad():
            snaps = {id(m): (m, m.weight.detach().clone())
                     for m, row in zip(self._rec.modules, self._rec.rows) if "fan_in" in row}
        self._pending = (self.step - 1, snaps)

    def _finish(self):
        """Close the pending recorded step: measure its outputs and gradients, then the weights' update ratios."""
        import torch

        if self._pending is None:
            return
        step, snaps = self._pending
        self._pending = None
        self._rec.finish()
        ratios = {}
        with torch.no_grad():
            for key, (m, w0) in snaps.items():
                d = (m.weight.detach() - w0).reshape(-1)
                w = w0.reshape(-1)
                ratios[key] = math.sqrt(float(torch.dot(d, d)) / float(torch.dot(w, w)))
        for r, m in zip(self._rec.table_rows(), self._rec.modules):
            r["step"] = step
            r["update_ratio"] = ratios.get(id(m), math.nan)
            self._done.append(r)

    def table(self):
        """The recorded rows as a tidy DataFrame: ``step`` then the :func:`inspect` columns and ``update_ratio``."""
        import pandas as pd

        cols = ["step", *ROW_COLUMNS, *STAT_COLUMNS, "update_ratio", "finite"]
        return pd.DataFrame(self._done, columns=cols)

    def to_csv(self, path, meta: dict | None = None):
        """Write :meth:`table` to ``path`` (CSV) with a ``.meta.json`` beside it, atomically."""

        return write_table(self.table(), path, meta or run_metadata(every=self.every, steps=self.step))

    def to_parquet(self, path, meta: dict | None = None):
        """Write :meth:`table` to ``path`` (Parquet, needs pyarrow) with a ``.meta.json`` beside it, atomically."""
        import io as _io
        from pathlib import Path

        buf = _io.BytesIO()
        self.table().to_parquet(buf, index=False)
        path = Path(path)
        atomic_write_bytes(path, buf.getvalue())
        atomic_write_json(path.with_name(path.name + ".meta.json"), meta or run_metadata(every=self.every, steps=self.step))
        return path
