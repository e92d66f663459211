"""Mixture-of-experts merges: dense fine-tunes become the experts of one sparse model.

Every layer of the output keeps the base model's attention and norms; its MLP becomes a set of
experts (each expert's MLP taken unchanged from one source model) behind a router whose rows
come from prompts (see hubbot.gates). Outputs:

- Mixtral (`MixtralForCausalLM`) from Llama or Mistral models, no shared expert;
- Qwen2-MoE (`Qwen2MoeForCausalLM`) from Qwen2, Llama or Mistral models, with one shared
  expert that every token uses, weighted by its own sigmoid gate.

Tensors are written in the per-expert layout that transformers itself saves for these models
(`block_sparse_moe.experts.E.w1` for Mixtral, `mlp.experts.E.gate_proj` for Qwen2-MoE), which
transformers 4 and 5, vLLM and llama.cpp all load. The merge is planned from headers into an
ordinary Plan whose tasks each copy one tensor, so the streaming engine writes it: weights are
read tensor by tensor and never held whole.
"""

from __future__ import annotations

import functools
import json
import threading
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..methods import Method
from ..model import arch
from ..model.dtypes import DTYPE_CODES, FLOAT_CODES
from ..recipe.moe import Expert, MoeRecipe, parse_moe
from ..sources import Source, open_source
from ..sources.computed import ComputedSource
from . import engine
from .plan import Input, Opener, Plan, TensorTask, open_sources
from .tokenizer import OutputTokenizer
from .writer import DEFAULT_SHARD_BYTES

SOURCE_TYPES = {"mixtral": ("llama", "mistral"), "qwen2_moe": ("qwen2", "llama", "mistral")}
MLP_PARTS = ("gate_proj", "up_proj", "down_proj")
MIXTRAL_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
TITLES = {"mixtral": "Mixtral", "qwen2_moe": "Qwen2-MoE"}


def _expert_kernel(base: torch.Tensor | None, tensors: list[torch.Tensor], params: dict[str, Any]) -> torch.Tensor:
    """One tensor copied into the MoE, with the expert's optional noise and residual scale."""
    x = tensors[0]
    if params["noise"]:
        gen = torch.Generator(device=x.device).manual_seed(params["seed"])
        x = x + torch.randn(x.shape, generator=gen, device=x.device) * params["noise"]
    return x * params["scale"] if params["scale"] != 1 else x


def build(recipe: MoeRecipe, *, opener: Opener | None = None, device: str | None = None) -> Plan:
    """Plan an MoE merge from the models' configs and headers (no weights are read).

    Problems are collected in `plan.problems`; the router weights are computed when the merge
    runs (`run`), or on their first read."""
    sources = open_sources(recipe.model_refs(), opener)
    return _MoePlanner(recipe, sources, device).build()


def run(recipe: MoeRecipe | str, out: Path, *, allow_local: bool = True, opener: Opener | None = None,
        device: str | None = None, shard_bytes: int = DEFAULT_SHARD_BYTES,
        progress: Callable[[engine.Progress], None] | None = None, cancel: threading.Event | None = None,
        on_shard: Callable[[Path], None] | None = None) -> engine.RunResult:
    """Parse (if given text), plan and write an MoE into the folder `out`. The engine computes
    the routers (the prompts run through the base) before it writes the first shard."""
    if isinstance(recipe, str):
        recipe = parse_moe(recipe, allow_local=allow_local)
    plan = build(recipe, opener=opener or functools.partial(open_source, allow_local=allow_local), device=device)
    return engine.run(plan, out, device=device, shard_bytes=shard_bytes, progress=progress, cancel=cancel,
                      on_shard=on_shard)


class _MoePlanner:
    def __init__(self, recipe: MoeRecipe, sources: list[Source], device: str | None):
        self.recipe, self.device = recipe, device
        self.by_ref = {s.ref: s for s in sources}
        self.sources = sources
        self.base = self.by_ref[recipe.base_model]
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def build(self) -> Plan:
        r = self.recipe
        base_type = self.base.config().get("model_type")
        out_arch = r.architecture or ("qwen2_moe" if r.shared_experts or base_type == "qwen2" else "mixtral")
        self._check_sources(out_arch)
        shared = r.shared_experts[0] if r.shared_experts else None
        if out_arch == "mixtral" and shared:
            self.problems.append("shared_experts: Mixtral has no shared expert; remove it, or set architecture: qwen "
                                 "for a Qwen2-MoE")
        if out_arch == "qwen2_moe" and not shared:
            self.problems.append("shared_experts: Qwen2-MoE needs one shared expert (every token uses it); add "
                                 "shared_experts: [{source_model: ..., positive_prompts: [...]}]")
        if len({e.source_model for e in r.experts}) == 1 and len(r.experts) > 1:
            self.warnings.append("every expert is the same model: the MoE computes what that model computes, "
                                 "only slower (useful only as a starting point for training)")
        layers = arch.layer_count(self.base.config()) or 0
        hidden = arch.text_config(self.base.config()).get("hidden_size")
        expert_shapes = self._mlp_shapes(r.experts, "experts", layers)
        shared_shapes = self._mlp_shapes((shared,), "shared_experts", layers) if shared else {}

        routers = self._router_source(out_arch, layers, hidden)
        sources = [*self.sources, routers]
        index = {id(s): i for i, s in enumerate(sources)}
        tasks = self._tasks(out_arch, layers, index, routers) if not self.problems else []
        config = self._config(out_arch, expert_shapes, shared_shapes) if not self.problems else {}
        noisy = any(e.noise_scale for e in (*r.experts, *r.shared_experts))
        method = Method(
            name="moe",
            kernel=_expert_kernel,
            title=f"mixture of experts → {TITLES[out_arch]}: {len(r.experts)} experts, {r.experts_per_token} per "
                  f"token{', 1 shared' if shared else ''}, gate {r.gate_mode}",
            summary="Each layer's MLP becomes a set of experts taken from the source models, behind a router "
                    "initialised from prompts.",
            paper="Jiang et al. 2024, Mixtral of Experts, arXiv:2401.04088",
            elementwise=not noisy,
        )
        return Plan(recipe=r, method=method, sources=sources, tasks=tasks, config=config,
                    tokenizer_source=self.base, input_dtype=r.dtype, out_layers=layers,
                    problems=self.problems, warnings=self.warnings, tokenizer=OutputTokenizer(self.base))

    def _check_sources(self, out_arch: str) -> None:
        allowed = SOURCE_TYPES[out_arch]
        for s in self.sources:
            model_type = s.config().get("model_type")
            if model_type not in allowed:
                self.problems.append(f"{s.label} is a {model_type!r} model; a {TITLES[out_arch]} output is built "
                                     f"from {', '.join(allowed)} models")
        counts = {s.label: arch.layer_count(s.config()) for s in self.sources}
        if len(set(counts.values())) > 1:
            self.problems.append("the models have different numbers of layers ("
                                 + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "); experts must match the base")
        sizes = {s.label: arch.text_config(s.config()).get("hidden_size") for s in self.sources}
        if len(set(sizes.values())) > 1:
            self.problems.append("the models have different hidden sizes ("
                                 + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + ")")
        for s in self.sources:  # MLPs come from every source, attention from the base only
            biased = [n for n in s.tensors() if n.endswith(".bias") and (".mlp." in n or s is self.base and (
                ".o_proj." in n or (out_arch == "mixtral" and ".self_attn." in n)))]
            if biased:
                self.problems.append(f"{s.label} has bias tensors (e.g. '{biased[0]}') that a "
                                     f"{TITLES[out_arch]} has no place for")

    def _mlp_shapes(self, experts: tuple[Expert, ...], path: str, layers: int) -> dict[str, tuple[int, ...]]:
        """The MLP tensor shapes the experts share (checked for every layer), by part name."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, e in enumerate(experts):
            src = self.by_ref[e.source_model]
            tensors = src.tensors()
            prefix = self._prefix(src)
            missing = []
            for layer in range(layers):
                for part in MLP_PARTS:
                    info = tensors.get(f"{prefix}.{layer}.mlp.{part}.weight")
                    if info is None:
                        missing.append(f"{prefix}.{layer}.mlp.{part}.weight")
                        continue
                    if info.dtype not in FLOAT_CODES:
                        self.problems.append(f"{path}[{i}]: {src.label} '{info.name}' is {info.dtype}, not a float")
                    elif shapes.setdefault(part, info.shape) != info.shape:
                        self.problems.append(f"{path}[{i}]: {src.label} '{info.name}' has shape {list(info.shape)}, "
                                             f"other experts have {list(shapes[part])}; experts must have the "
                                             "same MLP sizes")
            if missing:
                self.problems.append(f"{path}[{i}]: {src.label} lacks MLP tensors such as '{missing[0]}' "
                                     f"({len(missing)} missing); is it a Llama, Mistral or Qwen2 model?")
        return shapes

    @staticmethod
    def _prefix(src: Source) -> str:
        for name in src.tensors():
            parsed = arch.split_layer(name)
            if parsed:
                return parsed.prefix
        return "model.layers"

    def _router_source(self, out_arch: str, layers: int, hidden: int) -> ComputedSource:
        from . import gates

        r = self.recipe
        prefix = self._prefix(self.base)
        experts = len(r.experts)
        names = {layer: self._router_name(out_arch, prefix, layer) for layer in range(layers)}
        shapes = {n: (experts, hidden) for n in names.values()}
        if r.shared_experts:
            shapes.update({f"{prefix}.{layer}.mlp.shared_expert_gate.weight": (1, hidden) for layer in range(layers)})
        sets = [(e.positive_prompts, e.negative_prompts) for e in (*r.experts, *r.shared_experts)]
        dev = engine.pick_device(self.device)

        def compute(cancel: threading.Event | None) -> dict[str, torch.Tensor]:
            rows = gates.router_rows(r.gate_mode, self.base, sets, seed=r.random_seed or 0, device=dev, cancel=cancel)
            out = {names[layer]: rows[layer, :experts] for layer in range(layers)}
            if r.shared_experts:
                out.update({f"{prefix}.{layer}.mlp.shared_expert_gate.weight": rows[layer, experts:experts + 1]
                            for layer in range(layers)})
            return out

        return ComputedSource(f"router weights ({r.gate_mode} gate)", shapes, compute)

    @staticmethod
    def _router_name(out_arch: str, prefix: str, layer: int) -> str:
        block = "block_sparse_moe" if out_arch == "mixtral" else "mlp"
        return f"{prefix}.{layer}.{block}.gate.weight"

    def _tasks(self, out_arch: str, layers: int, index: dict[int, int], routers: ComputedSource) -> list[TensorTask]:
        r = self.recipe
        prefix = self._prefix(self.base)
        model_dtype = self._model_dtype()
        tasks: list[TensorTask] = []
        done_layers: set[int] = set()

        def task(out_name: str, src: Source, name: str, layer: int | None, scale: float = 1.0,
                 noise: float = 0.0) -> TensorTask:
            info = src.tensors()[name]
            dtype = DTYPE_CODES[r.dtype] if r.dtype else (info.dtype if info.dtype in FLOAT_CODES else model_dtype)
            params = {"scale": scale, "noise": noise, "seed": zlib.crc32(f"{r.random_seed or 0}:{out_name}".encode())}
            return TensorTask(out_name, info.shape, dtype, (Input(index[id(src)], name),), None, params,
                              layer=layer, t=layer / max(1, layers - 1) if layer is not None else 0.0,
                              copy=info.dtype not in FLOAT_CODES)

        for name in self.base.tensors():
            parsed = arch.split_layer(name)
            if parsed is None or not parsed.rest.startswith("mlp."):
                tasks.append(task(name, self.base, name, parsed.index if parsed else None))
                continue
            layer = parsed.index
            if layer in done_layers:
                continue
            done_layers.add(layer)
            router = self._router_name(out_arch, prefix, layer)
            tasks.append(replace(task(router, routers, router, layer), dtype=DTYPE_CODES[r.dtype] if r.dtype
                                 else model_dtype))
            block = f"{prefix}.{layer}.block_sparse_moe" if out_arch == "mixtral" else f"{prefix}.{layer}.mlp"
            for e_i, expert in enumerate(r.experts):
                src = self.by_ref[expert.source_model]
                for part in MLP_PARTS:
                    out_part = MIXTRAL_NAMES[part] if out_arch == "mixtral" else part
                    tasks.append(task(f"{block}.experts.{e_i}.{out_part}.weight", src,
                                      f"{self._prefix(src)}.{layer}.mlp.{part}.weight", layer,
                                      *self._scales(expert, part)))
            for expert in r.shared_experts:
                src = self.by_ref[expert.source_model]
                for part in MLP_PARTS:
                    tasks.append(task(f"{block}.shared_expert.{part}.weight", src,
                                      f"{self._prefix(src)}.{layer}.mlp.{part}.weight", layer,
                                      *self._scales(expert, part)))
                gate = f"{prefix}.{layer}.mlp.shared_expert_gate.weight"
                tasks.append(replace(task(gate, routers, gate, layer), dtype=tasks[-1].dtype))
        return tasks

    @staticmethod
    def _scales(expert: Expert, part: str) -> tuple[float, float]:
        scale = expert.residual_scale if part == "down_proj" and expert.residual_scale is not None else 1.0
        return scale, expert.noise_scale or 0.0

    def _model_dtype(self) -> str:
        """The base's weight dtype code, for tensors computed here (router rows)."""
        codes = [i.dtype for i in self.base.tensors().values() if i.dtype in FLOAT_CODES]
        return max(set(codes), key=codes.count) if codes else "F32"

    def _config(self, out_arch: str, expert_shapes: dict, shared_shapes: dict) -> dict:
        """The output config.json: the base's settings (defaults filled in by transformers) in the
        MoE architecture's config class, so the output loads as that architecture."""
        from transformers import AutoConfig, MixtralConfig, Qwen2MoeConfig

        r = self.recipe
        raw = dict(self.base.config())
        model_type = raw.pop("model_type")
        full = AutoConfig.for_model(model_type, **raw).to_dict()
        for key in ("architectures", "model_type", "transformers_version", "auto_map", "_name_or_path"):
            full.pop(key, None)
        inter = expert_shapes["gate_proj"][0]
        if r.dtype:
            full["dtype"] = r.dtype
        if out_arch == "mixtral":
            cfg = MixtralConfig(**{**full, "num_local_experts": len(r.experts),
                                   "num_experts_per_tok": r.experts_per_token, "intermediate_size": inter,
                                   "sliding_window": full.get("sliding_window"), "output_router_logits": False})
            cfg.architectures = ["MixtralForCausalLM"]
        else:
            cfg = Qwen2MoeConfig(**{**full, "num_experts": len(r.experts), "num_experts_per_tok": r.experts_per_token,
                                    "moe_intermediate_size": inter,
                                    "shared_expert_intermediate_size": shared_shapes["gate_proj"][0],
                                    "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True,
                                    "qkv_bias": any(n.endswith("q_proj.bias") for n in self.base.tensors()),
                                    "output_router_logits": False})
            cfg.architectures = ["Qwen2MoeForCausalLM"]
        config = json.loads(cfg.to_json_string(use_diff=True))
        config.pop("transformers_version", None)
        if len(r.experts) & (len(r.experts) - 1):
            self.warnings.append(f"{len(r.experts)} experts is not a power of two; llama.cpp will not load the output")
        return config

