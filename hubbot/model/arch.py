"""What hubbot needs to know about a transformer's layout, read from tensor names and config.json.

Decoder checkpoints name per-layer tensors `<prefix>.<index>.<rest>` (`model.layers.3.mlp...`,
`transformer.h.3.attn...`); everything else sits before the layers (embeddings) or after them
(final norm, lm_head). Reading this from names keeps hubbot free of per-architecture tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LAYER = re.compile(r"^(?P<prefix>(?:[\w-]+\.)*?(?:layers|layer|h|blocks|block|decoder_layers))\.(?P<index>\d+)\.(?P<rest>.+)$")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
PRE_MARKERS = ("embed", "wte", "wpe", "word_embeddings")
LM_HEAD = re.compile(r"(^|\.)lm_head\.weight$")
EMBED = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings)\.weight$")
PACKED_CODES = ("F8_E4M3", "F8_E5M2", "I8", "U8", "I32", "I16")
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
