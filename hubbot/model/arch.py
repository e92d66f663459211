"""What hubbot needs to know about a transformer's layout, read from tensor names and config.json.

Decoder checkpoints name per-layer tensors `<prefix>.<index>.<rest>` (`model.layers.3.mlp...`,
`transformer.h.3.attn...`); everything else sits before the layers (embeddings) or after them
(final norm, lm_head). Reading this from names keeps hubbot free of per-architecture tables.

A checkpoint may hold several stacks of layers: a vision-language model has its vision
encoder's layers (`model.vision_tower.encoder.layers.N`, `model.visual.blocks.N`) next to the
language model's (`model.language_model.layers.N`). The language model's stack is the *main*
stack: layer parameters and slices apply to it, and every other tensor, other stacks included,
is merged or copied whole like the embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

LAYER = re.compile(r"^(?P<prefix>(?:[\w-]+\.)*?(?:layers|layer|h|blocks|block|decoder_layers))\.(?P<index>\d+)\.(?P<rest>.+)$")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
PRE_MARKERS = ("embed", "wte", "wpe", "word_embeddings")
LM_HEAD = re.compile(r"(^|\.)lm_head\.weight$")
OUTPUT_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)\.weight$")  # embed_out: GPT-NeoX
EMBED = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings)\.weight$")
PACKED_CODES = ("F8_E4M3", "F8_E5M2", "I8", "U8", "I32", "I16")
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
HEAD_KEYS = ("num_attention_heads", "n_head")
KV_HEAD_KEYS = ("num_key_value_heads",)
# Stacks of layers that are not the language model's: vision and audio encoders, projectors.
NON_TEXT = re.compile(r"(vision|visual|image|vit\b|siglip|clip|audio|multi_modal|mm_projector)")
# Mixtures of experts stored fused (transformers 5, gpt-oss): one [experts, ...] tensor per projection,
# `...experts.down_proj`, where the per-expert layout has `...experts.E.down_proj.weight`.
FUSED_EXPERTS = re.compile(r"^(?P<head>(?:.+\.)?experts)\.(?P<rest>(?!\d+\.)[^.]+(?:\.[^.]+)*)$")
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
QUANTIZED_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx", ".SCB", ".absmax", ".quant_map",
                      ".weight_scale", ".input_scale", ".weight_format")


@dataclass(frozen=True)
class LayerName:
    prefix: str
    index: int
    rest: str

    def at(self, index: int, prefix: str | None = None) -> str:
        return f"{prefix or self.prefix}.{index}.{self.rest}"


def split_layer(name: str) -> LayerName | None:
    m = LAYER.match(name)
    return LayerName(m["prefix"], int(m["index"]), m["rest"]) if m else None


def layer_stacks(names: Iterable[str]) -> dict[str, int]:
    """Each stack of layers among `names`, by prefix: how many layers it holds (highest index + 1)."""
    stacks: dict[str, int] = {}
    for name in names:
        p = split_layer(name)
        if p:
            stacks[p.prefix] = max(stacks.get(p.prefix, 0), p.index + 1)
    return stacks


def main_stack(config: dict, names: Iterable[str]) -> str | None:
    """The prefix of the language model's layers: the only stack, else the stacks not named like
    a vision or audio encoder, preferring the one whose length the (text) config gives."""
    names = list(names)
    stacks = layer_stacks(names)
    if len(stacks) <= 1:
        return next(iter(stacks), None)
    text = [p for p in stacks if not NON_TEXT.search(p)] or list(stacks)
    count = layer_count(config)
    fits = [p for p in text if stacks[p] == count] or text
    size = {p: sum(1 for n in names if n.startswith(p + ".")) for p in fits}
    return max(fits, key=lambda p: (size[p], -len(p)))


def outside_text_model(name: str, stack: str | None) -> bool:
    """Whether a non-layer tensor belongs to another part than the language model (a vision
    tower, a projector): it is neither under the main stack's parent module nor the output head."""
    if stack is None or OUTPUT_HEAD.search(name):
        return False
    root = stack.rpartition(".")[0]
    return bool(root) and not name.startswith(root + ".")


def is_pre(name: str) -> bool:
    """Non-layer tensors that come before the layers: token and position embeddings."""
    return any(marker in name for marker in PRE_MARKERS)


def layer_count(config: dict) -> int | None:
    cfg = text_config(config)
    for key in LAYER_COUNT_KEYS:
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return None


def layer_count_key(config: dict) -> str | None:
    cfg = text_config(config)
    return next((k for k in LAYER_COUNT_KEYS if isinstance(cfg.get(k), int)), None)


def text_config(config: dict) -> dict:
    """The decoder's config (multimodal configs nest it under text_config)."""
    return config.get("text_config") or config


def first_int(config: dict, keys: tuple[str, ...]) -> int | None:
    """The first of `keys` the config sets to an integer (architectures name the same size differently)."""
    return next((config[k] for k in keys if isinstance(config.get(k), int)), None)


def config_contradictions(config: dict, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Where config.json disagrees with the tensors it describes: the language model's layer
    count, vocabulary (embedding rows), hidden size (embedding width) and attention head counts
    (q/k projection rows). Checks only what both sides state."""
    cfg = text_config(config)
    out = []
    stack = main_stack(config, shapes)
    layers, key = layer_count(config), layer_count_key(config)
    stacks = layer_stacks(shapes)
    if stack is not None and layers is not None and stacks[stack] != layers:
        out.append(f"{key} is {layers} but the tensors hold {stacks[stack]} layers ('{stack}.N')")
    embed = next((n for n in shapes if EMBED.search(n) and not outside_text_model(n, stack)), None)
    hidden = first_int(cfg, HIDDEN_KEYS)
    if embed is not None and len(shapes[embed]) == 2:
        rows, width = shapes[embed]
        vocab = vocab_size(config)
        if isinstance(vocab, int) and rows != vocab:
            out.append(f"vocab_size is {vocab} but '{embed}' has {rows} rows")
        if hidden is not None and width != hidden:
            out.append(f"hidden size is {hidden} but '{embed}' is {width} wide")
    heads, kv_heads = first_int(cfg, HEAD_KEYS), first_int(cfg, KV_HEAD_KEYS)
    head_dim = cfg.get("head_dim") if isinstance(cfg.get("head_dim"), int) else None
    if head_dim is None and hidden and heads and hidden % heads == 0:
        head_dim = hidden // heads
    if stack is not None and head_dim:
        for proj, count, what in (("q_proj", heads, "num_attention_heads"), ("k_proj", kv_heads or heads,
                                                                               "num_key_value_heads")):
            name = f"{stack}.0.self_attn.{proj}.weight"
            if count and name in shapes and len(shapes[name]) == 2 and shapes[name][0] != count * head_dim:
                out.append(f"{what} x head_dim is {count} x {head_dim} = {count * head_dim} but '{name}' has "
                           f"{shapes[name][0]} rows")
    return out


def expert_count(config: dict) -> int | None:
    """How many routed experts each mixture-of-experts layer holds (architectures name it differently)."""
    return first_int(text_config(config), EXPERT_COUNT_KEYS)


def fused_experts(name: str, shape: tuple[int, ...], config: dict) -> int:
    """The number of experts a fused expert tensor holds along its first axis (`experts.down_proj`,
    [experts, ...]), or 0 for any other tensor. Merge methods run on each expert's slice, so that
    expert e merges as its own tensor `expert_name(name, e)` of the per-expert layout would."""
    count = expert_count(config)
    if count is None or len(shape) < 2 or shape[0] != count or not FUSED_EXPERTS.match(name):
        return 0
    return count


def expert_name(name: str, expert: int) -> str:
    """Expert `expert`'s own tensor in the per-expert layout of a fused expert tensor, as
    transformers maps the two: `experts.down_proj` -> `experts.3.down_proj.weight`,
    `experts.down_proj_bias` -> `experts.3.down_proj.bias` (a name already ending in .weight or
    .bias keeps it)."""
    m = FUSED_EXPERTS.match(name)
    if m is None:
        raise ValueError(f"'{name}' is not a fused expert tensor")
    rest = m["rest"]
    if rest.endswith("_bias"):
        rest = rest[: -len("_bias")] + ".bias"
    elif not rest.endswith((".weight", ".bias")):
        rest += ".weight"
    return f"{m['head']}.{expert}.{rest}"


def vocab_size(config: dict) -> int | None:
    return text_config(config).get("vocab_size")


def tied_alias(name: str, available: set[str]) -> str | None:
    """For a tied model that stores no lm_head: the embedding tensor that stands in for it."""
    if not LM_HEAD.search(name):
        return None
    return next((n for n in sorted(available) if EMBED.search(n)), None)


def quantization_problem(config: dict, tensor_dtypes: dict[str, str]) -> str | None:
    """Why a model's weights are quantized or packed (and so not mergeable), or None.

    `tensor_dtypes` maps tensor names to safetensors dtype codes."""
    qc = config.get("quantization_config") or text_config(config).get("quantization_config")
    if qc:
        kind = qc.get("quant_method", "unknown") if isinstance(qc, dict) else "unknown"
        return f"is quantized ({kind}); merge the original float16/bfloat16 weights instead"
    packed = [n for n, code in tensor_dtypes.items()
              if n.endswith(QUANTIZED_SUFFIXES) or code in PACKED_CODES and n.endswith(".weight")]
    if packed:
        return f"holds packed or quantized tensors (e.g. '{packed[0]}'); merge the original float weights instead"
    return None


def on_vocabulary(name: str) -> bool:
    """Tensors with one row per token: the input embedding and lm_head."""
    return bool(EMBED.search(name) or LM_HEAD.search(name))
