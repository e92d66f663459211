"""Tensors computed in this process (such as MoE router weights), served like a model's.

The shapes are known when planning, so a plan can list these tensors next to ones read from
models; the values are computed once, on `compute()` or the first read.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import torch

from ..errors import SourceError
from ..model.format import TensorInfo
from ..recipe.refs import ModelRef
from .base import Source

Compute = Callable[["threading.Event | None"], dict[str, torch.Tensor]]


class ComputedSource(Source):
    """float32 tensors named in `shapes`, produced together by `compute(cancel)`."""

    is_model = False

    def __init__(self, label: str, shapes: dict[str, tuple[int, ...]], compute: Compute):
        super().__init__(ModelRef(label, local=True))
        self._label = label
        self._shapes = shapes
        self._compute = compute
        self._values: dict[str, torch.Tensor] | None = None
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return self._label

    def files(self) -> list[str]:
        return []

    def read_file(self, path: str) -> bytes:
        raise SourceError(f"{self.label}: holds computed tensors, not files (asked for {path})")

    def read_range(self, path: str, offset: int, length: int) -> bytearray:
        raise SourceError(f"{self.label}: holds computed tensors, not files (asked for {path})")

    def _load_tensor_infos(self) -> dict[str, TensorInfo]:
        return {n: TensorInfo(n, "F32", s, "", 0, 4 * math.prod(s)) for n, s in self._shapes.items()}

    def compute(self, cancel: threading.Event | None = None) -> None:
        """Compute every tensor now (a no-op once done)."""
        with self._lock:
            if self._values is not None:
                return
            values = self._compute(cancel)
            for name, shape in self._shapes.items():
                got = values.get(name)
                if got is None or tuple(got.shape) != shape:
                    raise SourceError(f"{self.label}: internal error: tensor '{name}' was computed with shape "
                                      f"{None if got is None else list(got.shape)}, expected {list(shape)}")
            self._values = {n: v.detach().to("cpu", torch.float32).contiguous() for n, v in values.items()}

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        self.compute()
        tensor = self._values[name]
        return tensor if rows is None else tensor[rows[0]:rows[1]]
