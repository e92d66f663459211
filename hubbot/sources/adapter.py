"""A model with a PEFT LoRA adapter applied on the fly (`model+adapter` in a recipe).

Each tensor the adapter touches is read from the model and corrected as it is read,
W' = W + scale * B @ A (scale = alpha / r, or alpha / sqrt(r) with rsLoRA; alpha and r per
module from alpha_pattern / the stored factors), so the merged model is never materialised and
blocks of rows cost only those rows of B. Layouts follow PEFT's saved adapters: keys
`base_model.model.<module>.lora_A.weight` / `.lora_B.weight` for linear layers (transposed for
`fan_in_fan_out` layers such as GPT-2's Conv1D), `.lora_embedding_A` / `.lora_embedding_B` for
embeddings, and whole tensors (modules_to_save, saved embedding layers `base_layer.weight`,
trained biases) that replace the model's.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import torch

from ..errors import SourceError
from ..model import arch
from ..model.format import TensorInfo
from ..recipe.refs import ModelRef
from .base import TOKENIZER_FILES, Source

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
FACTORS = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$")
UNSUPPORTED = {
    "lora_magnitude_vector": "DoRA adapters (use_dora) are not supported; merge them with peft first",
    "lora_B.bias": "LoRA bias (lora_bias) is not supported; merge the adapter with peft first",
    "trainable_tokens": "trainable-token adapters are not supported; merge the adapter with peft first",
}


@dataclass(frozen=True)
class Lora:
    """One low-rank correction: adapter tensors `a` (r x in) and `b` (out x r), scaled by `scale`.

    `layout`: "linear" (weight out x in), "fan_in_fan_out" (weight in x out) or "embedding"
    (weight tokens x dim, with a = r x tokens and b = dim x r)."""

    a: str
    b: str
    scale: float
    layout: str

    def delta(self, adapter: Source, rows: tuple[int, int] | None) -> torch.Tensor:
        """The correction for rows [rows) of the weight (all rows when None), in float32."""
        a, b = adapter.read(self.a).float(), adapter.read(self.b).float()
        lo, hi = rows if rows is not None else (0, None)
        if self.layout == "linear":
            out = b[lo:hi] @ a
        else:  # the weight is (B @ A) transposed: its rows are columns of A
            out = a[:, lo:hi].T @ b.T
        return out.mul_(self.scale)


def pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank/alpha pattern lookup: the first key that matches the end of the module name
    at a dot boundary."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class AdapterSource(Source):
    """`model`'s weights and files with `adapter` applied; tokenizer files the adapter ships
    (it may add tokens) take precedence over the model's."""

    def __init__(self, ref: ModelRef, model: Source, adapter: Source):
        super().__init__(ref)
        self.model, self.adapter = model, adapter
        self.revision = model.revision
        self._loras: dict[str, Lora] = {}
        self._replaced: dict[str, str] = {}
        self._adapter_config = self._read_adapter_config()

    def _read_adapter_config(self) -> dict:
        files = self.adapter.files()
        if CONFIG_FILE not in files:
            raise SourceError(f"{self.adapter.label}: has no {CONFIG_FILE}; is it a PEFT adapter?")
        if WEIGHTS_FILE not in files:
            raise SourceError(f"{self.adapter.label}: has no {WEIGHTS_FILE}; save the adapter with "
                              "safe_serialization (pickled adapter_model.bin is not read)")
        try:
            config = json.loads(self.adapter.read_file(CONFIG_FILE))
        except ValueError as exc:
            raise SourceError(f"{self.adapter.label}: {CONFIG_FILE} is not valid JSON ({exc})") from None
        if config.get("peft_type", "LORA") != "LORA":
            raise SourceError(f"{self.adapter.label}: is a {config.get('peft_type')} adapter; only LoRA adapters "
                              "can be applied")
        if config.get("use_dora"):
            raise SourceError(f"{self.adapter.label}: {UNSUPPORTED['lora_magnitude_vector']}")
        return config

    def pinned(self) -> str:
        return f"{self.model.pinned()}+{self.adapter.pinned()}"

    def _own_tokenizer_files(self) -> set[str]:
        return {f for f in self.adapter.files() if f in TOKENIZER_FILES}

    def files(self) -> list[str]:
        return sorted(set(self.model.files()) | self._own_tokenizer_files())

    def read_file(self, path: str) -> bytes:
        source = self.adapter if path in self._own_tokenizer_files() else self.model
        return source.read_file(path)

    def read_range(self, path: str, offset: int, length: int) -> bytearray | memoryview:
        return self.model.read_range(path, offset, length)

    def config(self) -> dict:
        """The model's config; vocab_size follows an embedding the adapter replaces."""
        if self._config is None:
            config = json.loads(json.dumps(self.model.config()))
            for name, info in self.tensors().items():
                if name in self._replaced and arch.EMBED.search(name):
                    arch.text_config(config)["vocab_size"] = info.shape[0]
            self._config = config
        return self._config

    def _load_tensor_infos(self) -> dict[str, TensorInfo]:
        infos = dict(self.model.tensors())
        stored = self.adapter.tensors()
        problems: list[str] = []
        factors: dict[str, dict[str, str]] = {}
        for key in stored:
            for marker, why in UNSUPPORTED.items():
                if marker in key:
                    raise SourceError(f"{self.adapter.label}: {why} (tensor '{key}')")
            name = key[len(PREFIX):] if key.startswith(PREFIX) else key
            m = FACTORS.match(name)
            if m:
                factors.setdefault(m["module"], {})[m["kind"]] = key
                continue
            target = self._target(name.replace(".base_layer.", "."), infos)
            if target is None:
                problems.append(f"'{key}'")
                continue
            self._replaced[target] = key
        for target, key in self._replaced.items():
            info = stored[key]
            infos[target] = TensorInfo(target, info.dtype, info.shape, info.file, info.offset, info.nbytes)
        for module, pair in factors.items():
            target = self._target(module + ".weight", infos)
            if target is None or len(pair) != 2:
                problems.append(f"'{module}'")
                continue
            self._loras[target] = self._lora(module, pair, infos[target], stored)
        if problems:
            raise SourceError(f"{self.adapter.label}: adapter tensors {', '.join(problems[:5])} match no tensor of "
                              f"{self.model.label}; is the adapter for this model?")
        return infos

    @staticmethod
    def _target(name: str, infos: dict[str, TensorInfo]) -> str | None:
        """The model tensor an adapter name refers to: itself, or the one name that ends with it
        (or that it ends with) at a dot, for checkpoints whose module paths differ by a prefix."""
        if name in infos:
            return name
        matches = [n for n in infos if n.endswith("." + name) or name.endswith("." + n)]
        return matches[0] if len(matches) == 1 else None

    def _lora(self, module: str, pair: dict[str, str], target: TensorInfo, stored: dict[str, TensorInfo]) -> Lora:
        cfg = self._adapter_config
        embedding = "lora_embedding_A" in pair
        a = pair["lora_embedding_A" if embedding else "lora_A.weight"]
        b = pair["lora_embedding_B" if embedding else "lora_B.weight"]
        rank = stored[a].shape[0]
        alpha = pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
        scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
        layout = "embedding" if embedding else ("fan_in_fan_out" if cfg.get("fan_in_fan_out") else "linear")
        rows_out, cols = (stored[b].shape[0], stored[a].shape[1]) if layout == "linear" else (stored[a].shape[1], stored[b].shape[0])
        if len(stored[a].shape) != 2 or (rows_out, cols) != tuple(target.shape):
            raise SourceError(f"{self.adapter.label}: LoRA factors of '{module}' give shape {[rows_out, cols]}, but "
                              f"{self.model.label} has {list(target.shape)} for '{target.name}'; check fan_in_fan_out "
                              "and that the adapter is for this model")
        return Lora(a, b, scale, layout)

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        self.tensors()
        replaced = self._replaced.get(name)
        x = self.adapter.read(replaced, rows) if replaced else self.model.read(name, rows)
        lora = self._loras.get(name)
        if lora is None:
            return x
        return x.float().add_(lora.delta(self.adapter, rows)).to(x.dtype)

    def close(self) -> None:
        self.model.close()
        self.adapter.close()
