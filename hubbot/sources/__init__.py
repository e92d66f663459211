"""Model sources behind one interface: `open_source(ref)` gives a local or Hub source."""

from __future__ import annotations

from ..errors import SourceError
from ..recipe import ModelRef
from .base import Source
from .local import LocalSource

__all__ = ["Source", "LocalSource", "open_source"]


def open_source(ref: ModelRef, *, allow_local: bool = True, hub: object | None = None) -> Source:
    """Open the weights a reference names. `hub` carries the Hub client settings (token, cache).
    `model+adapter` opens both and applies the LoRA adapter as tensors are read."""
    if ref.adapter is not None:
        if ref.adapter.adapter is not None:
            raise SourceError(f"{ref}: one adapter per model; merge the first adapter, then apply the second")
        from .adapter import AdapterSource

        return AdapterSource(ref, open_source(ref.weights, allow_local=allow_local, hub=hub),
                             open_source(ref.adapter, allow_local=allow_local, hub=hub))
    if ref.local:
        if not allow_local:
            raise SourceError(f"{ref}: local paths are not readable in service mode; use a Hub repo id")
        return LocalSource(ref)
    from .hub import HubSource

    return HubSource(ref, hub)
