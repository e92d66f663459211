"""Extract a LoRA adapter: the low-rank difference between a fine-tune and its base.

For every linear weight (2-D, outside the embeddings) the difference M - B is factored by a
truncated SVD, M - B ~ U_r S_r V_r^T, and saved as a PEFT LoRA adapter with B = U_r sqrt(S_r),
A = sqrt(S_r) V_r^T and alpha = r, so scale 1 reproduces the best rank-r approximation. Modules
smaller than the rank keep their full rank (recorded in rank_pattern / alpha_pattern). Tensors
LoRA cannot express (norms, biases, embeddings) are reported, not saved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from ..errors import MergeError, SourceError
from ..model import arch
from ..sources import Source
from ..sources.adapter import CONFIG_FILE, PREFIX, WEIGHTS_FILE

CONV1D_MODEL_TYPES = ("gpt2",)  # layers stored (in, out): PEFT's fan_in_fan_out
EXACT_SVD_SHARE = 0.25  # ranks above this share of the smaller side use the exact SVD
OVERSAMPLE = 8


@dataclass
class Extracted:
    folder: Path
    modules: int
    rank: int
    skipped: list[str] = field(default_factory=list)  # tensors that differ but LoRA cannot carry


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B @ A the best rank-`rank` approximation of `delta` (randomised SVD when
    the rank is small next to the matrix, seeded so results repeat)."""
    if rank > EXACT_SVD_SHARE * min(delta.shape):
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        with torch.random.fork_rng(devices=[delta.device] if delta.device.type == "cuda" else []):
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(delta, q=min(rank + OVERSAMPLE, *delta.shape), niter=2)
        vh = v.T
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def linear_weights(base: Source, model: Source) -> tuple[list[str], list[str]]:
    """Names of weights to factor, and names of other tensors whose shapes match (checked later)."""
    theirs = base.tensors()
    linear, other = [], []
    for name, info in model.tensors().items():
        if name not in theirs:
            continue
        if theirs[name].shape != info.shape:
            raise SourceError(f"'{name}' has shape {list(info.shape)} in {model.label} but "
                              f"{list(theirs[name].shape)} in {base.label}; is it a fine-tune of that base?")
        is_linear = len(info.shape) == 2 and name.endswith(".weight") and not arch.is_pre(name)
        (linear if is_linear else other).append(name)
    return linear, other


def extract(base: Source, model: Source, rank: int, out: Path, *, device: torch.device | None = None,
            progress: Callable[[int, int], None] | None = None) -> Extracted:
    """Write a PEFT adapter for `model` relative to `base` into the folder `out`."""
    if rank < 1:
        raise MergeError(f"--rank must be at least 1, got {rank}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out} already exists and is not empty; choose a new --out folder")
    device = device or torch.device("cpu")
    fan_in_fan_out = arch.text_config(model.config()).get("model_type") in CONV1D_MODEL_TYPES
    linear, other = linear_weights(base, model)
    if not linear:
        raise SourceError(f"{model.label} has no linear weights in common with {base.label}")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for k, name in enumerate(linear):
        b, m = base.read(name), model.read(name)
        delta = m.to(device, torch.float32) - b.to(device, torch.float32)
        if fan_in_fan_out:
            delta = delta.T
        r = min(rank, *delta.shape)
        lora_b, lora_a = low_rank(delta, r)
        module = name[: -len(".weight")]
        tensors[f"{PREFIX}{module}.lora_A.weight"] = lora_a.to(m.dtype).cpu().contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = lora_b.to(m.dtype).cpu().contiguous()
        if r != rank:
            ranks[module] = r
        if progress:
            progress(k + 1, len(linear))
    skipped = [n for n in other if not torch.equal(base.read(n), model.read(n))]
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base.ref),
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": ranks,
        "alpha_pattern": ranks,
        "target_modules": sorted({n[: -len(".weight")].rsplit(".", 1)[-1] for n in linear}),
        "fan_in_fan_out": fan_in_fan_out,
        "lora_dropout": 0.0,
        "bias": "none",
        "inference_mode": True,
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return Extracted(out, len(linear), rank, skipped)
