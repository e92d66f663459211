"""Llama-shaped benchmark models: a random base and fine-tunes of it, written straight to
sharded safetensors.

Weights are drawn with a seeded generator from the shapes transformers gives the config (built
on the meta device, so no slow initialisation runs), scaled like an initialised model; a
fine-tune is the base plus small noise, so task vectors are small as they are in practice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    heads: int

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads,
                           num_key_value_heads=self.heads, max_position_embeddings=2048,
                           tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, torch_dtype="bfloat16",
                           architectures=["LlamaForCausalLM"])


# about 255 M parameters (the size of the reference figures), about 1.1 B (hidden and MLP widths of
# TinyLlama's shape); "tiny" is for a quick check of the harness
SHAPES = {
    "250m": Shape(hidden=1024, intermediate=2752, layers=15, vocab=32000, heads=16),
    "1b": Shape(hidden=2048, intermediate=5632, layers=19, vocab=32000, heads=32),
    # Llama-2-7B's widths with 4 of its 32 layers (1.07 B parameters): every tensor at full size
    "7b": Shape(hidden=4096, intermediate=11008, layers=4, vocab=32000, heads=32),
    "tiny": Shape(hidden=64, intermediate=128, layers=4, vocab=320, heads=4),
}


def _shapes(shape: Shape) -> dict[str, tuple[int, ...]]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape.config())
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _write_sharded(folder: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    from safetensors.torch import save_file

    names = list(state)
    total = sum(t.numel() * t.element_size() for t in state.values())
    per_shard = -(-total // shards)
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = state[name].numel() * state[name].element_size()
        if groups[-1] and size + nbytes > per_shard and len(groups) < shards:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: state[n].contiguous() for n in group}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def make_models(root: Path, size: str = "250m", fine_tunes: int = 2, shards: int = 3, seed: int = 0) -> list[Path]:
    """Write a base and `fine_tunes` fine-tunes under `root` (reused when already there); base first."""
    from tests.models import tokenizer

    shape = SHAPES[size]
    folders = [root / "base"] + [root / f"ft{i}" for i in range(1, fine_tunes + 1)]
    if all((f / "model.safetensors.index.json").exists() for f in folders):
        return folders
    shapes = _shapes(shape)
    gen = torch.Generator().manual_seed(seed)
    base = {}
    for name, dims in shapes.items():
        if name.endswith("norm.weight"):
            base[name] = torch.ones(dims)
        else:
            base[name] = torch.randn(dims, generator=gen) * 0.02
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        if i == 0:
            state = {n: t.to(torch.bfloat16) for n, t in base.items()}
        else:
            state = {n: (t + torch.randn(t.shape, generator=gen) * 0.002).to(torch.bfloat16) for n, t in base.items()}
        _write_sharded(folder, state, shards)
        shape.config().save_pretrained(folder)
        tokenizer(folder)
    return folders
