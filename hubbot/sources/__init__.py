"""Model sources behind one interface: `open_source(ref)` gives a local or Hub source."""

from __future__ import annotations

from typing import Callable

from ..errors import SourceError
from ..recipe.refs import ModelRef
from .base import Source
from .local import LocalSource

__all__ = ["Source", "LocalSource", "open_source", "caching_opener"]


def open_source(ref: ModelRef, *, allow_local: bool = True, hub: object | None = None) -> Source:
    """Open the weights a reference names. `hub` carries the Hub client settings (token, cache).
    `model+adapter` opens both and applies the LoRA adapter as tensors are read."""
    if ref.adapter is not None:
        if ref.adapter.adapter is not None:
            raise SourceError(f"{ref}: one adapter per model; merge the first adapter, then apply the second")
        from .adapter import AdapterSource
        from .unpacked import unpack

        # the adapter corrects the float weights a quantized model encodes, not its packed bytes
        return AdapterSource(ref, unpack(open_source(ref.weights, allow_local=allow_local, hub=hub)),
                             open_source(ref.adapter, allow_local=allow_local, hub=hub))
    if ref.local:
        if not allow_local:
            raise SourceError(f"{ref}: local paths are not readable in service mode; use a Hub repo id")
        return LocalSource(ref)
    from .hub import HubSource

    return HubSource(ref, hub)


def caching_opener(*, allow_local: bool = True, hub: object | None = None) -> Callable[[ModelRef], Source]:
    """An opener that opens each model once, for callers that plan many merges of the same
    models (soups, searches): headers are read, or fetched, a single time."""
    opened: dict[ModelRef, Source] = {}

    def opener(ref: ModelRef) -> Source:
        if ref not in opened:
            opened[ref] = open_source(ref, allow_local=allow_local, hub=hub)
        return opened[ref]

    return opener
