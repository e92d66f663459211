"""Moving a merge's inputs to its device and its results back, without stalling the pipeline.

On the CPU nothing moves. On a GPU the read thread stages each unit's inputs in pinned host
memory and copies them on a side stream; the kernels' stream waits for that copy on the device
(an event, not a host wait), so the next unit's copy overlaps the current kernel. Results are
cast on the device and copied back on another side stream; only the write thread waits for
that copy, so it overlaps the next kernels, and the host never synchronises per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Staged:
    """A unit's inputs on their way to the device: `ready` is recorded after their copy (None: already there)."""

    tensors: list[torch.Tensor]
    ready: "torch.cuda.Event | None" = None


@dataclass
class Returning:
    """A result on its way back: `host` (final dtype, CPU) once `done` has completed, and
    whether every entry was finite (a 0-d tensor copied with it; None: already checked)."""

    host: torch.Tensor
    finite: torch.Tensor | None = None
    done: "torch.cuda.Event | None" = None

    def wait(self) -> tuple[torch.Tensor, bool]:
        """The host tensor and whether it is finite, once the copy has landed (write thread)."""
        if self.done is not None:
            self.done.synchronize()
        return self.host, True if self.finite is None else bool(self.finite)


class Transfer:
    """The host-device traffic of one merge on `dev`."""

    def __init__(self, dev: torch.device):
        self.dev = dev
        self.cuda = dev.type == "cuda"
        if self.cuda:
            self.upload = torch.cuda.Stream(dev)
            self.download = torch.cuda.Stream(dev)

    def stage(self, raw: list[torch.Tensor]) -> Staged:
        """Start copying `raw` (CPU) to the device (read thread)."""
        if not self.cuda:
            return Staged(raw)
        with torch.cuda.stream(self.upload):
            moved = [x.pin_memory().to(self.dev, non_blocking=True) for x in raw]
            ready = torch.cuda.Event()
            ready.record(self.upload)
        return Staged(moved, ready)

    def arrive(self, staged: Staged) -> list[torch.Tensor]:
        """The inputs, usable by kernels on the current stream from here on (main thread)."""
        if staged.ready is None:
            return staged.tensors
        stream = torch.cuda.current_stream(self.dev)
        stream.wait_event(staged.ready)
        for x in staged.tensors:
            x.record_stream(stream)  # allocated on the upload stream, used and freed on this one
        return staged.tensors

    def send_back(self, out: torch.Tensor, dtype: torch.dtype) -> Returning:
        """`out` cast to `dtype` on its way to the host; on a GPU the finiteness of every entry
        travels with it, to be read by the writer (the CPU checks before sending, see the engine)."""
        if not self.cuda:
            return Returning(out.to(dtype))
        cast = out.to(dtype)
        finite = torch.isfinite(out).all()
        self.download.wait_stream(torch.cuda.current_stream(self.dev))
        with torch.cuda.stream(self.download):
            host = torch.empty(cast.shape, dtype=dtype, pin_memory=True)
            host.copy_(cast, non_blocking=True)
            flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            flag.copy_(finite, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.download)
        cast.record_stream(self.download)  # made on the kernels' stream, read on this one
        finite.record_stream(self.download)
        return Returning(host, flag, done)
