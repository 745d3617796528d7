"""A user's model named on the command line: ``package.module:callable`` or ``path/to/file.py:callable``.

:func:`load_target` imports the module (or runs the file as a module) and
returns the callable; every way that can fail because of what the user wrote
(no such file or module, no such attribute, not callable, the module raising
on import) is a :class:`~propagate.errors.UserError` with one line. Before
importing, :func:`propagate.compat.ensure_torchvision_importable` lets
``torchvision.models`` load beside a CPU-only torch.
"""

from __future__ import annotations

import hashlib
import math
import importlib
import importlib.util
import os
import sys

from propagate.compat import ensure_torchvision_importable
from propagate.errors import UserError

__all__ = ["load_target", "split_target"]


def split_target(text: str) -> tuple[str, str]:
    """``(module or file, attribute path)`` of ``TARGET``; UserError when it is not ``X:NAME``."""
    where, sep, attr = str(text).strip().rpartition(":")
    if not sep or not where or not attr:
        raise UserError(f"TARGET must be package.module:callable or path/to/file.py:callable, got {text!r}")
    return where, attr


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_file(path: str):
    if not os.path.isfile(path):
        raise UserError(f"no such file: {path}")
    full = os.path.abspath(path)
    name = "_propagate_target_" + hashlib.sha1(full.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    folder = os.path.dirname(full)
    sys.path.insert(0, folder)  # the file may import its neighbours
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's file (sys.exit included)
        sys.modules.pop(name, None)
        raise UserError(f"running {path} raised {type(exc).__name__}: {_first_line(exc)}") from None
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise UserError(f"no module named {name!r}") from None
        raise UserError(f"importing {name} failed: {type(exc).__name__}: {_first_line(exc)}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module (sys.exit included)
        raise UserError(f"importing {name} failed: {type(exc).__name__}: {_first_line(exc)}") from None


def load_target(text: str):
    """The callable ``TARGET`` names (module docstring); it is not called here."""
    where, attr = split_target(text)
    ensure_torchvision_importable()
    is_file = where.endswith(".py") or os.sep in where or (os.altsep and os.altsep in where)
    module = _import_file(where) if is_file else _import_module(where)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserError(f"{where} has no attribute {attr!r}") from None
    if not callable(obj):
        raise UserError(f"{where}:{attr} is a {type(obj).__name__}, not a callable that returns a model")
    return obj


# ----------------------------------------------------------------------------
# inputs for a target, and the whole run (what `propagate inspect` calls)

#: Datasets ``--dataset`` accepts ([0, 1]-scaled pixels).
DATASETS = ("mnist-5k", "mnist", "fashion-mnist")


def _first_leaf_is_linear(factory, seed: int) -> bool:
    import torch

    from propagate.model_stats import build_model_from
    from propagate.module_spec import leaf_modules

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model_from(factory)
    return isinstance(leaf_modules(model)[0][1], torch.nn.Linear)


def _dataset_inputs(name, n, seed, flatten):
    import numpy as np

    from propagate.data import dataset_identity, load_dataset

    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    ds = load_dataset(name)
    x, y = ds.arrays("train", flatten=flatten)
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    x, y = x[idx], y[idx]
    if not flatten:
        x = x[:, None]  # one channel: [N, 1, 28, 28]
    return x, y, {"input": name, "dataset": dataset_identity(ds)}


def _file_inputs(path, n):
    import numpy as np

    if not os.path.isfile(path):
        raise UserError(f"no such file: {path}")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} as a .npy array: {_first_line(exc)}") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiu" or x.ndim < 1:
        raise UserError(f"{path} must hold a numeric array [N, ...], got {getattr(x, 'dtype', type(x))}")
    return x[:n], None, {"input": os.path.abspath(path), "input_file_shape": list(x.shape)}


def _check_input_memory(inputs: int, shape: tuple) -> None:
    """Refuse (UserError) Gaussian inputs that alone would not fit in the machine's memory (float32)."""
    need = 4 * inputs * math.prod(shape)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > total:
        raise UserError(f"{inputs} inputs of shape {list(shape)} need {need / 2**30:.3g} GiB, the machine has "
                        f"{total / 2**30:.1f} GiB; use a smaller --input-shape or fewer --inputs")


def inspect_target(target: str, *, dataset: str | None = None, input_file: str | None = None,
                   input_shape=None, inputs: int = 128, loss: str | None = None, **options):
    """Load ``TARGET`` (:func:`load_target`), make its inputs and run :func:`propagate.inspect` on the factory.

    Exactly one input source: ``dataset`` (a name from :data:`DATASETS`,
    [0, 1] pixels, ``inputs`` random training images under ``options["seed"]``,
    flattened when the model's first leaf module is ``Linear``, else
    ``[N, 1, 28, 28]``), ``input_file`` (a ``.npy`` array used as it is, its
    first ``inputs`` rows) or ``input_shape`` (a tuple such as ``(3, 64, 64)``:
    standard Gaussian inputs). ``loss="cross-entropy"`` (with a dataset) takes
    the gradient of the summed cross-entropy on the labels (per-sample
    gradients, as training's probe); default the random readout. Other
    ``options`` go to :func:`propagate.inspect` (``networks``, ``seed``,
    ``reinit``, ``mode``, ``device``, ``threads``, ``progress``).
    The result's ``meta`` records the target and the input's identity.
    """
    import numpy as np
    import torch

    from propagate.model_stats import inspect

    if sum(v is not None for v in (dataset, input_file, input_shape)) != 1:
        raise UserError("give exactly one input source: a dataset, an input file or an input shape")
    if loss not in (None, "readout", "cross-entropy"):
        raise UserError(f"loss must be 'readout' or 'cross-entropy', got {loss!r}")
    if loss == "cross-entropy" and dataset is None:
        raise UserError("the cross-entropy loss needs labels: use a dataset")
    factory = load_target(target)
    seed = int(options.get("seed", 0))
    if dataset is not None:
        x, y, desc = _dataset_inputs(dataset, inputs, seed, _first_leaf_is_linear(factory, seed))
    elif input_file is not None:
        x, y, desc = _file_inputs(input_file, inputs)
    else:
        shape = tuple(int(s) for s in input_shape)
        _check_input_memory(inputs, shape)
        x = torch.randn((inputs, *shape), generator=torch.Generator().manual_seed(seed)).numpy()
        y, desc = None, {"input": f"gaussian{list(shape)}"}
    crit = None
    if loss == "cross-entropy":
        crit = torch.nn.CrossEntropyLoss(reduction="sum")
        options["targets"] = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(options.get("device") or "cpu")
    res = inspect(factory, x, loss=crit, **options)
    res.meta.update(target=target, loss=loss or "readout", **desc)
    return res
