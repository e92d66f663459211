"""Router initialisation for mixture-of-experts merges.

A router scores a token for each expert as the dot product of the token's hidden state (the
MLP's input) with the expert's router row. Rows built from prompts make an expert attract
tokens like its prompts' tokens:

- `hidden`: for every layer, the mean MLP input of the base model over each prompt's tokens,
  averaged over the expert's positive prompts, minus the same for its negative prompts,
  normalised. The base runs one layer at a time (a one-layer model whose weights are swapped
  in from the source), so memory holds one layer, the embedding, and the prompts' states.
- `cheap_embed`: the same from token embeddings alone, one row for every layer.
- `random` / `uniform_random`: seeded random rows.

A prompt set with no prompts (a shared expert without any) gets a zero row.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import torch

from ..errors import Cancelled, SourceError
from ..model import arch
from ..sources import Source
from ..sources.base import TOKENIZER_FILES

PromptSet = tuple[tuple[str, ...], tuple[str, ...]]  # (positive, negative)


def router_rows(mode: str, base: Source, prompt_sets: list[PromptSet], *, seed: int = 0,
                device: torch.device | None = None, cancel: threading.Event | None = None) -> torch.Tensor:
    """Router rows as a float32 tensor (layers, len(prompt_sets), hidden_size)."""
    config = arch.text_config(base.config())
    layers, hidden = arch.layer_count(config), config["hidden_size"]
    shape = (layers, len(prompt_sets), hidden)
    if mode == "random":
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if mode == "uniform_random":
        bound = hidden ** -0.5
        return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * (2 * bound) - bound
    device = device or torch.device("cpu")
    prompts = list(dict.fromkeys(p for pos, neg in prompt_sets for p in (*pos, *neg)))
    ids = _tokenize(base, prompts)
    embed = base.read(_embedding_name(base)).to(device, torch.float32)
    states = {p: embed[torch.tensor(i, device=device)] for p, i in zip(prompts, ids)}
    del embed
    if mode == "cheap_embed":
        vectors = {p: s.mean(0) for p, s in states.items()}
        return _combine(prompt_sets, vectors, hidden).expand(layers, -1, -1).clone()
    rows = torch.empty(layers, len(prompt_sets), hidden)
    for layer, vectors in enumerate(_hidden_states(base, states, layers, device, cancel)):
        rows[layer] = _combine(prompt_sets, vectors, hidden)
    return rows


def _combine(prompt_sets: list[PromptSet], vectors: dict[str, torch.Tensor], hidden: int) -> torch.Tensor:
    rows = torch.zeros(len(prompt_sets), hidden)
    for k, (pos, neg) in enumerate(prompt_sets):
        if not pos and not neg:
            continue
        v = torch.zeros(hidden)
        if pos:
            v += torch.stack([vectors[p].cpu() for p in pos]).mean(0)
        if neg:
            v -= torch.stack([vectors[p].cpu() for p in neg]).mean(0)
        rows[k] = v / v.norm().clamp_min(1e-8)
    return rows


def _tokenize(base: Source, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt with the base model's own tokenizer (read through the source)."""
    from transformers import AutoTokenizer

    have = set(base.files())
    with tempfile.TemporaryDirectory(prefix="hubbot-tok-") as tmp:
        for name in (*TOKENIZER_FILES, "config.json"):
            if name in have:
                (Path(tmp) / name).write_bytes(base.read_file(name))
        try:
            tok = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise SourceError(f"{base.label}: its tokenizer could not be loaded ({exc}); the hidden and cheap_embed "
                              "gate modes need it (gate_mode: random does not)") from None
    ids = [tok(p).input_ids for p in prompts]
    empty = [p for p, i in zip(prompts, ids) if not i]
    if empty:
        raise SourceError(f"the prompt {empty[0]!r} has no tokens; remove it from the recipe")
    return ids


def _embedding_name(base: Source) -> str:
    names = [n for n in base.tensors() if arch.EMBED.search(n)]
    if not names:
        raise SourceError(f"{base.label}: has no token embedding tensor (such as model.embed_tokens.weight)")
    return names[0]


def _hidden_states(base: Source, states: dict[str, torch.Tensor], layers: int, device: torch.device,
                   cancel: threading.Event | None):
    """For each layer in turn: {prompt: mean MLP input over its tokens}; `states` advance in place."""
    by_layer: dict[int, dict[str, str]] = {}
    for name in base.tensors():
        parsed = arch.split_layer(name)
        if parsed:
            by_layer.setdefault(parsed.index, {})[parsed.rest] = name
    models: dict[str, torch.nn.Module] = {}
    for layer in range(layers):
        if cancel is not None and cancel.is_set():
            raise Cancelled("the merge was cancelled while computing router weights")
        model = _one_layer_model(base.config(), layer, models, device)
        block = model.layers[0]
        weights = {rest: base.read(name).to(device, torch.float32) for rest, name in by_layer.get(layer, {}).items()}
        missing, unexpected = block.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise SourceError(f"{base.label}: layer {layer} does not match its config "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        captured: dict[str, torch.Tensor] = {}
        hooks = [
            block.mlp.register_forward_pre_hook(lambda _m, args: captured.__setitem__("mlp_in", args[0])),
            block.register_forward_hook(lambda _m, _a, out: captured.__setitem__(
                "out", out[0] if isinstance(out, tuple) else out)),
        ]
        vectors = {}
        try:
            with torch.no_grad():
                for prompt, h in states.items():
                    model(inputs_embeds=h[None], use_cache=False)
                    vectors[prompt] = captured["mlp_in"][0].mean(0)
                    states[prompt] = captured["out"][0]
        finally:
            for hook in hooks:
                hook.remove()
        yield vectors


def _one_layer_model(config: dict, layer: int, cache: dict[str, torch.nn.Module], device: torch.device) -> torch.nn.Module:
    """The decoder body with only layer `layer`'s configuration, a one-row vocabulary and no
    weights of interest: it exists to run that layer. Cached by the layer's configuration."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(config)
    n = arch.layer_count(cfg)
    for key, value in config.items():
        if key != "architectures" and isinstance(value, list) and len(value) == n:
            cfg[key] = [value[layer]]
    cfg.update(num_hidden_layers=1, vocab_size=1, pad_token_id=None, bos_token_id=None, eos_token_id=None,
               tie_word_embeddings=False)
    key = json.dumps(cfg, sort_keys=True, default=str)
    if key not in cache:
        model_type = cfg.pop("model_type", None)
        if not model_type:
            raise SourceError("the base model's config.json has no model_type")
        model = AutoModel.from_config(AutoConfig.for_model(model_type, **cfg), dtype=torch.float32)
        cache[key] = model.to(device).eval()
    return cache[key]
