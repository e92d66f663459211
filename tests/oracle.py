"""mergekit 0.1.5 as a reference: run the same recipe text through it, in this process."""

from __future__ import annotations

from pathlib import Path


def mergekit_merge(recipe_text: str, out: Path, shard_bytes: int = 5 * 1000**3) -> Path:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(yaml.safe_load(recipe_text))
    run_merge(config, str(out), MergeOptions(copy_tokenizer=True, quiet=True, write_model_card=False,
                                              out_shard_size=shard_bytes, lazy_unpickle=False))
    return out
