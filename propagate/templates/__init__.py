"""Prose templates of the generated documents (``derivations/selu.md``, a report's README).

A template is a markdown file with ``<<name>>`` slots; the code computes the
formulas and numbers and :func:`fill` puts them in. ``<<`` and ``>>`` were
chosen because markdown and LaTeX use ``{}`` and ``$`` everywhere and these
pairs nowhere. Filling is strict: a slot without a value, or a value without a
slot, is an error, so template and code cannot drift apart silently.
"""

from __future__ import annotations

import re
from importlib import resources

__all__ = ["load", "fill", "render"]

_SLOT = re.compile(r"<<([A-Za-z_][A-Za-z0-9_]*)>>")


def load(name: str) -> str:
    """The text of template ``name`` (e.g. ``"selu_derivation.md"``), shipped as package data."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def fill(template: str, values: dict) -> str:
    """Replace every ``<<name>>`` in ``template`` by ``str(values[name])``.

    Raises ``KeyError`` for a slot without a value and ``ValueError`` for a
    value whose slot does not appear.
    """
    slots = set(_SLOT.findall(template))
    missing = slots - set(values)
    if missing:
        raise KeyError(f"template slots without a value: {sorted(missing)}")
    unused = set(values) - slots
    if unused:
        raise ValueError(f"values without a slot in the template: {sorted(unused)}")
    return _SLOT.sub(lambda m: str(values[m.group(1)]), template)


def render(name: str, values: dict) -> str:
    """:func:`fill` the template ``name`` with ``values``."""
    return fill(load(name), values)
