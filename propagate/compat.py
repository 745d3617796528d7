"""Compatibility with third-party packages that a user's model may import.

One problem is handled here: ``torchvision`` wheels from PyPI are CUDA builds,
and their C++ extension (``torchvision/_C.so``) cannot load beside a CPU-only
torch build. ``import torchvision`` then fails with
``RuntimeError: operator torchvision::nms does not exist``: the extension is
what defines the ``torchvision::nms`` and ``torchvision::qnms`` operator
schemas, and ``torchvision/_meta_registrations.py`` registers fake (meta)
kernels for those two at import time, which needs the schemas to exist.

:func:`ensure_torchvision_importable` defines the two schemas (and nothing
else) when, and only when, the extension cannot load, so that
``torchvision.models`` (ResNet, VGG, ...) import and run: they use only
standard torch operators. Detection operators (``torchvision.ops.nms``,
``roi_align``, ...) still raise when called, since there is no kernel behind
the schemas. Standard library only at import.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

__all__ = ["ensure_torchvision_importable"]

#: The torch.library fragment that holds the two schemas; kept alive for the process (dropping it undefines them).
_TORCHVISION_FRAGMENT = None


def _extension_path(folder: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "_C" + suffix)
        if os.path.isfile(path):
            return path
    return None


def _extension_loads(folder: str) -> bool:
    """Whether torchvision's ``_C`` extension loads here (exactly what ``torchvision.extension`` tries first)."""
    import torch

    path = _extension_path(folder)
    if path is None:
        return False
    try:
        torch.ops.load_library(path)
    except (ImportError, OSError):
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` work when its C++ extension cannot load beside this torch (module docstring).

    Does nothing when torchvision is not installed, already imported, or its
    extension loads. Otherwise defines the schemas of ``torchvision::nms`` and
    ``torchvision::qnms`` (the two operators torchvision's import registers fake
    kernels for) in a ``torch.library`` fragment kept alive at module level.
    Calling the detection operators (``nms``, ``roi_align``, ...) still raises.
    Returns True when the schemas were defined by this call.
    """
    global _TORCHVISION_FRAGMENT
    if _TORCHVISION_FRAGMENT is not None or "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    if _extension_loads(list(spec.submodule_search_locations)[0]):
        return False
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_FRAGMENT = lib
    return True
