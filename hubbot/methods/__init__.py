"""The merge-method registry.

A method is a pure kernel `(base, tensors, params) -> tensor` plus a declaration of what it
needs (`method.py`). Each lives in its own small module here that declares `METHODS`; the
registry below lists those modules, so importing any part of the package builds the whole
registry at once, under the import lock (threads never see a half-filled one). Adding a method
is one file and one name in `MODULES`.

Kernels receive float32 tensors on the merge device; per-model parameters arrive as lists
aligned with `tensors`, shared ones as scalars, and seeded methods get `params["seed"]`.

A method whose only need for the whole tensor is a few statistics (inner products for the SLERP
family, Karcher and Model Stock; the cuts of TIES, Breadcrumbs and SCE) declares a `Blockwise`
form instead: passes that gather those statistics block by block, and a kernel that merges each
block with them. The engine then holds only a block of rows of a large tensor at a time; the
whole-tensor kernel is the same passes over one block, so there is one definition of the method.
"""

from __future__ import annotations

import difflib

from . import (
    arcee_fusion,
    breadcrumbs,
    della,
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    sce,
    slerp,
    task_arithmetic,
)
from .method import REQUIRED, Block, BlockKernel, Blockwise, Kernel, Method, Param, Pass

__all__ = ["REQUIRED", "Block", "BlockKernel", "Blockwise", "Kernel", "Method", "Param", "Pass", "all_methods", "get"]

MODULES = (linear, slerp, nuslerp, multislerp, karcher, task_arithmetic, breadcrumbs, della, sce, model_stock,
           nearswap, arcee_fusion, passthrough)


def _registry() -> dict[str, Method]:
    out: dict[str, Method] = {}
    for module in MODULES:
        for method in module.METHODS:
            if method.name in out:
                raise ValueError(f"merge method {method.name!r} is declared twice")
            out[method.name] = method
    return dict(sorted(out.items()))


_REGISTRY = _registry()


def all_methods() -> dict[str, Method]:
    return dict(_REGISTRY)


def get(name: str) -> Method:
    """The method called `name`; a typo gets the closest names in the error."""
    methods = all_methods()
    if name in methods:
        return methods[name]
    normalized = name.strip().lower().replace("-", "_").replace(" ", "_")
    hint = [normalized] if normalized in methods else difflib.get_close_matches(normalized, methods, n=2)
    tip = f"did you mean {' or '.join(repr(h) for h in hint)}? " if hint else ""
    raise KeyError(f"unknown merge method {name!r}; {tip}known methods: {', '.join(methods)}")
