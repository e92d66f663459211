"""mergekit 0.1.5 as a reference: run the same recipe text through it, in this process."""

from __future__ import annotations

from pathlib import Path

import torch


def mergekit_merge(recipe_text: str, out: Path, shard_bytes: int = 5 * 1000**3) -> Path:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(yaml.safe_load(recipe_text))
    run_merge(config, str(out), MergeOptions(copy_tokenizer=True, quiet=True, write_model_card=False,
                                              out_shard_size=shard_bytes, lazy_unpickle=False))
    return out


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable values of their (16-bit) dtype lie between a and b."""
    def ordered(x: torch.Tensor) -> torch.Tensor:
        i = x.view(torch.int16).int()
        return torch.where(i < 0, -32768 - i, i)

    return (ordered(a) - ordered(b)).abs()
