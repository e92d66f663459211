"""Planning: from a recipe and the models' headers to the list of output tensors to compute.

Only config.json, the index, the safetensors headers and (for vocabulary merges and chat
templates) the small tokenizer files are read, so every problem (missing tensors, shape or layer
mismatches, bad layer ranges, missing parameters) is found before any weight byte is fetched, and
all of them are reported together.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .. import methods
from ..errors import PlanError, SourceError
from ..methods import REQUIRED, Method
from ..model import arch, quant
from ..model.dtypes import CODE_NAMES, DTYPE_CODES, FLOAT_CODES, TERNARY
from ..model.format import DTYPES, TensorInfo
from ..recipe import chat_templates
from ..recipe.merge import Recipe
from ..recipe.refs import ModelRef
from ..recipe.values import Params, evaluate
from ..sizes import human_bytes
from ..sources import Source, open_source
from ..sources.unpacked import UnpackedSource, stores_ternary_floats, unpack
from . import coverage as cov
from . import vocab
from .tokenizer import OutputTokenizer, model_chat_template

if TYPE_CHECKING:
    from ..recipe.moe import MoeRecipe

MAX_LISTED = 5
CHUNK_BYTES = 4 << 20  # float32 bytes of one block of rows: small enough to stay in the CPU caches


@dataclass(frozen=True)
class Input:
    """One input tensor: `source` indexes Plan.sources."""

    source: int
    name: str


@dataclass(frozen=True)
class TensorTask:
    """One output tensor and everything needed to compute it.

    `params` holds shared parameters as scalars and per-model ones as lists aligned with
    `inputs`. `copy` tasks (non-float tensors) take the first input unchanged. `vocab` tasks
    (embeddings, lm_head) have their inputs' rows moved into the output vocabulary first.
    `ternary` tasks (out_dtype: ternary) are written as packed BitNet b1.58 values with their
    scale in `dtype` (model/quant.py): `shape` is the merged tensor's, `nbytes` what is stored.
    `experts` > 0 marks a fused [experts, ...] tensor of a mixture of experts (arch.fused_experts):
    a method that is not elementwise merges each expert's slice on its own, as the per-expert
    layout's tensor of that expert, with that tensor's seed (`expert_seeds`, for seeded methods).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    inputs: tuple[Input, ...]
    base: Input | None
    params: dict[str, Any]
    layer: int | None = None
    t: float = 0.0
    copy: bool = False
    vocab: bool = False
    ternary: bool = False
    experts: int = 0
    expert_seeds: tuple[int, ...] = ()

    def expert_params(self, expert: int) -> dict[str, Any]:
        """The parameters expert `expert`'s slice of a fused expert tensor merges with."""
        return {**self.params, "seed": self.expert_seeds[expert]} if self.expert_seeds else self.params

    @property
    def reads(self) -> tuple[Input, ...]:
        """Its input tensors in the order the engine reads them: the base first, then the models."""
        return ((self.base,) if self.base else ()) + self.inputs

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self.ternary:
            return quant.ternary_nbytes(self.shape, DTYPES[self.dtype].itemsize)
        return self.numel * DTYPES[self.dtype].itemsize


@dataclass
class Plan:
    """A merge, fully resolved against the models' headers. (A mixture-of-experts recipe
    plans into the same shape: see hubbot.moe.)"""

    recipe: "Recipe | MoeRecipe"
    method: Method
    sources: list[Source]
    tasks: list[TensorTask]
    config: dict
    tokenizer_source: Source | None
    input_dtype: str | None
    out_layers: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    vocab: vocab.Vocabulary | None = None
    tokenizer: OutputTokenizer | None = None
    coverage: cov.Coverage | None = None

    @property
    def models(self) -> list[Source]:
        """The sources that are models (not tensors computed here, such as MoE routers)."""
        return [s for s in self.sources if s.is_model]

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.tasks)

    @property
    def input_bytes(self) -> int:
        seen = {(i.source, i.name) for t in self.tasks for i in t.reads}
        return sum(self.sources[s].tensors()[n].nbytes for s, n in seen)

    def per_expert(self, task: TensorTask) -> bool:
        """Whether the engine merges `task` one expert's slice at a time: a fused expert tensor under
        a method whose result depends on more than each entry (cuts, norms, random draws)."""
        return task.experts > 0 and not (task.copy or task.vocab or task.ternary or self.method.elementwise)

    def blocks(self, task: TensorTask, chunk_bytes: int = CHUNK_BYTES) -> tuple[list[tuple[int, int]] | None, int]:
        """How the engine splits `task`: its blocks of rows (None: the whole tensor at once), and
        how many statistics passes read them before the merge (a blockwise method's passes). A
        fused expert tensor merged per expert comes one expert (a row of its first axis) at a time."""
        f32_bytes = task.numel * 4
        if self.per_expert(task):
            return [(e, e + 1) for e in range(task.experts)], 0
        if task.copy or task.vocab or task.ternary or len(task.shape) < 2:  # ternary: one scale per tensor
            return None, 0
        blockwise = self.method.blockwise_for(task.params)
        if f32_bytes <= chunk_bytes or not (self.method.elementwise or blockwise is not None):
            return None, 0  # read once, its passes (if any) run on the whole of it
        # a method with statistics passes reads the blocks again for each: its memory stays a
        # block's whatever the tensor's size, and its passes run beside the merges
        return _rows(task, chunk_bytes), 0 if blockwise is None else len(blockwise.passes)

    def peak_bytes(self, chunk_bytes: int = CHUNK_BYTES, prefetch: int = 2) -> int:
        """Bytes of tensors in flight at the worst task: raw inputs (prefetched too), their
        float32 copies, and the result with a few temporaries; split tasks count one block,
        and one more, with its read ahead, for the statistics passes of the next task."""
        worst = 0
        for t in self.tasks:
            rows, passes = self.blocks(t, chunk_bytes)
            numel = max(1, t.numel)
            if rows is not None:
                numel = numel // t.shape[0] * (rows[0][1] - rows[0][0])
            n_in = len(t.reads)
            raw, work = 2 * n_in, 4 * (n_in + 2)  # bytes an entry: the inputs, their float32 copies and temporaries
            lane = 2 * raw + work if passes else 0  # the lane's block, the one it reads ahead, its float32 work
            worst = max(worst, numel * (raw * (1 + prefetch) + work + lane))
        return worst

    def raise_for_problems(self) -> None:
        if self.problems:
            raise PlanError(self.problems)

    def param_curves(self) -> dict[str, list[float]]:
        """Per-output-layer values of each numeric parameter that varies over the layers, for
        plots. Tensors whose values follow the same curve share one line, labelled by the
        first of them (`t · self_attn.q_proj.weight (+3)`); per-model values name the model."""
        per_tensor: dict[tuple[str, str], dict[int, float]] = {}
        for task in self.tasks:
            if task.layer is None:
                continue
            rest = task.name.split(f".{task.layer}.", 1)[-1]
            for name, value in task.params.items():
                values = value if isinstance(value, list) else [value]
                for i, v in enumerate(values):
                    if name == "seed" or isinstance(v, bool) or not isinstance(v, (int, float)):
                        continue
                    key = name if not isinstance(value, list) else f"{name}[{self.sources[task.inputs[i].source].label}]"
                    per_tensor.setdefault((key, rest), {})[task.layer] = float(v)
        groups: dict[tuple[str, tuple[float, ...]], list[str]] = {}
        for (key, rest), by_layer in per_tensor.items():
            curve = tuple(by_layer[i] for i in sorted(by_layer))
            if len(set(curve)) > 1:
                groups.setdefault((key, curve), []).append(rest)
        return {f"{key} · {rests[0]}" + (f" (+{len(rests) - 1})" if len(rests) > 1 else ""): list(curve)
                for (key, curve), rests in groups.items()}

    def summary(self) -> str:
        lines = [f"method: {self.method.name} ({self.method.title})"]
        for s in self.sources:
            rev = f" @ {s.revision[:12]}" if s.revision else ""
            read = f" ({s.method}, read as float32)" if isinstance(s, UnpackedSource) else ""
            lines.append(f"  {'model' if s.is_model else 'computed'}: {s.label}{rev}{read}")
        ternary = sum(t.ternary for t in self.tasks)
        lines.append(f"output: {len(self.tasks)} tensors, {self.out_layers} layers, {human_bytes(self.output_bytes)}"
                     f" ({CODE_NAMES.get(self.tasks[0].dtype, self.tasks[0].dtype) if self.tasks else '-'}"
                     f"{f'; {ternary} linear weights packed {TERNARY}' if ternary else ''})")
        lines.append(f"reads: {human_bytes(self.input_bytes)} of weights; peak memory for tensors about "
                     f"{human_bytes(self.peak_bytes())}")
        if self.vocab is not None:
            spec = self.recipe.tokenizer
            lines.append(f"vocabulary: {len(self.vocab.tokens)} tokens ({spec.source if spec else 'base'}"
                         f"{f', {len(self.vocab.added)} added' if self.vocab.added else ''}), "
                         f"{self.vocab.size} embedding rows")
        if self.coverage is not None:
            lines += self.coverage.lines()
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _rows(task: TensorTask, chunk_bytes: int) -> list[tuple[int, int]]:
    """Blocks of whole rows of about `chunk_bytes` in float32 (at least one row each)."""
    row = max(1, task.numel // task.shape[0])
    step = max(1, chunk_bytes // (4 * row))
    return [(a, min(a + step, task.shape[0])) for a in range(0, task.shape[0], step)]


@dataclass
class _Slot:
    """One input of a slice: a source, the first layer it contributes and its parameter scopes."""

    source: int
    start: int
    scopes: tuple[Params, ...]


Opener = Callable[[ModelRef], Source]


def build(recipe: Recipe, *, opener: Opener | None = None) -> Plan:
    """Resolve a recipe against its models' headers. Problems are collected in `plan.problems`;
    a model that cannot be opened at all raises SourceError naming it."""
    method = methods.get(recipe.merge_method)
    sources = open_sources(recipe.model_refs(), opener)
    index = {s.ref: i for i, s in enumerate(sources)}
    return _Planner(recipe, method, sources, index).build()


def open_sources(refs: list[ModelRef], opener: Opener | None = None) -> list[Source]:
    """Open each model and read its config and headers; PlanError lists every model that
    cannot be opened or holds quantized weights."""
    opener = opener or open_source
    sources: list[Source] = []
    problems: list[str] = []
    for ref in refs:
        try:
            src = unpack(opener(ref))  # fp8, mxfp4 and packed ternary weights read as floats
            src.config()
            src.tensors()
        except SourceError as exc:
            problems.append(str(exc))
            continue
        sources.append(src)
    if problems:
        raise PlanError(problems)
    for s in sources:
        why = arch.quantization_problem(s.config(), {n: i.dtype for n, i in s.tensors().items()})
        if why:
            problems.append(f"{s.label} {why}")
    if problems:
        raise PlanError(problems)
    return sources


def check_weights(plan: Plan) -> Plan:
    """What validation adds to a plan without problems by reading a few rows of a few weights, the
    one read beyond headers (so not part of planning): ternary models stored as floats. `hubbot
    validate` and the job service's validation both run it."""
    if not plan.problems:
        plan.warnings += ternary_float_warnings(plan)
    return plan


def ternary_float_warnings(plan: Plan) -> list[str]:
    """BitNet b1.58 models among the sources stored as plain floats (no quantization_config), so the
    user knows what keeps a merge of them ternary. This reads a few rows of two weights per model."""
    if getattr(plan.recipe, "out_dtype", None) == TERNARY:  # a mixture of experts' recipe has none
        return []
    return [f"{s.label}: its linear weights take three values each, up to a scale: a BitNet b1.58 model stored as "
            f"floats, with no quantization_config; a merge of ternary weights is not ternary, so set out_dtype: "
            f"{TERNARY} to write a packed BitNet model (or keep a float output on purpose)"
            for s in plan.models if stores_ternary_floats(s, arch.main_stack(s.config(), s.tensors()))]


class _Planner:
    def __init__(self, recipe: Recipe, method: Method, sources: list[Source], index: dict[ModelRef, int]):
        self.recipe, self.method, self.sources, self.index = recipe, method, sources, index
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.missing: dict[int, list[str]] = {}
        self.missing_params: dict[tuple[str, str], int] = {}
        self.base = index[recipe.base_model] if recipe.base_model and method.base != "none" else None
        ref_model = recipe.base_model or recipe.model_refs()[0]
        self.ref = index[ref_model]
        self.layers = {i: arch.layer_count(s.config()) for i, s in enumerate(sources)}
        self.stacks = {i: arch.main_stack(s.config(), s.tensors()) for i, s in enumerate(sources)}
        self.vocab: vocab.Vocabulary | None = None
        self.ranges: dict[int, list[tuple[int, int]]] = {}  # per source: the layer ranges slices take
        self.end_sources: tuple[set[int], set[int]] = (set(), set())

    def build(self) -> Plan:
        self._check_configs()
        self._report_low_bit_sources()
        if self.recipe.tokenizer is not None:
            self.vocab = self._vocabulary()
        slices = self._slices()
        ref_names = list(self.sources[self.ref].tensors())
        prefix = self.stacks[self.ref]
        layered = {n for n in ref_names if self._main_layer(self.ref, n)}
        pre = [n for n in ref_names if n not in layered and self._is_pre(self.ref, n)]
        post = [n for n in ref_names if n not in layered and n not in pre]
        tasks: list[TensorTask] = []
        if slices:
            first, last = slices[0], slices[-1]
            self.end_sources = ({s.source for s in first[1]}, {s.source for s in last[1]})
            tasks += [t for n in pre if (t := self._task(n, [(s, n) for s in first[1]], first[0], None, 0.0))]
            out_layer = 0
            layer_map: list[tuple[int, int]] = []
            for slice_params, slots, length in slices:
                for s in slots:
                    self.ranges.setdefault(s.source, []).append((s.start, s.start + length))
                for offset in range(length):
                    t = offset / (length - 1) if length > 1 else 1.0
                    tasks += self._layer_tasks(slots, slice_params, offset, out_layer, prefix, t)
                    layer_map.append((slots[0].source, slots[0].start + offset))
                    out_layer += 1
            tasks += [t for n in post if (t := self._task(n, [(s, n) for s in last[1]], last[0], None, 0.0))]
        else:
            layer_map, out_layer = [], 0
        self._report_missing()
        self._check_architectures()
        coverage = self._coverage(tasks) if slices else None
        config = self._out_config(layer_map, tasks)
        if tasks and not self.problems:
            self.problems += [f"output config.json: {c}; this is a bug in the plan, please report it"
                              for c in arch.config_contradictions(config, {t.name: t.shape for t in tasks})]
        tokenizer_source = self._tokenizer_source()
        return Plan(
            recipe=self.recipe, method=self.method, sources=self.sources, tasks=tasks, config=config,
            tokenizer_source=tokenizer_source, input_dtype=self.recipe.dtype, out_layers=out_layer,
            problems=self.problems, warnings=self.warnings, vocab=self.vocab,
            tokenizer=self._output_tokenizer(tokenizer_source), coverage=coverage,
        )

    def _main_layer(self, source: int, name: str) -> arch.LayerName | None:
        """`name` split as a layer of the source's language model, or None (not in its main stack)."""
        p = arch.split_layer(name)
        return p if p is not None and p.prefix == self.stacks[source] else None

    def _is_pre(self, source: int, name: str) -> bool:
        """Non-layer tensors planned with the first slice: embeddings and the parts outside the
        language model (vision tower, projector); the rest (final norm, head) go with the last."""
        return arch.is_pre(name) or arch.outside_text_model(name, self.stacks[source])

    def _check_configs(self) -> None:
        """Refuse sources whose config.json contradicts their own tensors: the output config
        would describe a model that is not there."""
        for s in self.sources:
            if s.is_model:
                for c in arch.config_contradictions(s.config(), {n: i.shape for n, i in s.tensors().items()}):
                    self.problems.append(f"{s.label}: config.json contradicts its tensors: {c}; fix the "
                                         "model's config.json (or its weights) before merging it")

    def _report_low_bit_sources(self) -> None:
        """What a merge of quantized sources writes when the recipe does not say: they decode to float32."""
        decoded = [s.label for s in self.sources if isinstance(s, UnpackedSource)]
        if decoded and not self.recipe.dtype and not self.recipe.out_dtype:
            self.warnings.append(f"{', '.join(decoded)}: quantized weights are read as float32 and the recipe sets "
                                 "no dtype, so they are written as float32; set dtype: bfloat16 (or float16) for an "
                                 "output half that size")

    def _vocabulary(self) -> vocab.Vocabulary | None:
        """The output vocabulary, planned from tokenizer.json files and embedding shapes."""
        rows = {}
        for i, s in enumerate(self.sources):
            embed = next((info.shape[0] for name, info in s.tensors().items() if arch.EMBED.search(name)), None)
            rows[i] = embed or arch.vocab_size(s.config()) or 0
        base = self.index[self.recipe.base_model] if self.recipe.base_model else None
        planned, problems, warnings = vocab.build(self.recipe.tokenizer, self.sources, self.index, self.ref, base, rows)
        self.problems += problems
        self.warnings += warnings
        return planned

    def _slices(self) -> list[tuple[Params, list[_Slot], int]]:
        """The recipe as slices of (slice parameters, inputs, length). `models:` is one slice
        over every layer; the base joins it when the method needs one."""
        r = self.recipe
        out = []
        if r.models is not None:
            slots = [_Slot(self.index[m.model], 0, (m.parameters, r.parameters)) for m in r.models]
            if self.base is not None and all(s.source != self.base for s in slots):
                slots.append(_Slot(self.base, 0, (r.parameters,)))
            counts = {self.sources[s.source].label: self.layers[s.source] for s in slots}
            if None in counts.values():
                self.problems.append("could not find the layer count (num_hidden_layers) in the config of "
                                     + ", ".join(k for k, v in counts.items() if v is None))
                return []
            if len(set(counts.values())) > 1:
                self.problems.append("the models have different numbers of layers ("
                                     + ", ".join(f"{k}: {v}" for k, v in counts.items())
                                     + "); use 'slices' with layer_range to pick matching layers")
                return []
            out.append(({}, slots, next(iter(counts.values()))))
            return out
        for i, s in enumerate(r.slices or ()):
            slots = []
            for j, src in enumerate(s.sources):
                k = self.index[src.model]
                n = self.layers[k]
                a, b = src.layer_range
                if n is not None and b > n:
                    self.problems.append(f"slices[{i}].sources[{j}].layer_range: [{a}, {b}] goes past {src.model}, "
                                         f"which has {n} layers (0 to {n - 1}; the end is excluded)")
                slots.append(_Slot(k, a, (src.parameters, s.parameters, r.parameters)))
            if self.base is not None and all(x.source != self.base for x in slots):
                self.problems.append(f"slices[{i}].sources: merge_method '{self.method.name}' needs the base model "
                                     f"{r.base_model} among each slice's sources")
            length = s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
            out.append((s.parameters, slots, length))
        return [] if self.problems else out

    def _layer_tasks(self, slots: list[_Slot], slice_params: Params, offset: int, out_layer: int,
                     prefix: str | None, t: float) -> list[TensorTask]:
        """The output layer `out_layer`: each tensor of the first input's layer, with every input's
        tensor of the same name in its own language model's stack."""
        first = slots[0].source
        src_layer = slots[0].start + offset
        template = [p for n in self.sources[first].tensors()
                    if (p := self._main_layer(first, n)) and p.index == src_layer]
        tasks = []
        for p in template:
            inputs = [(s, p.at(s.start + offset, self.stacks[s.source] or p.prefix)) for s in slots]
            task = self._task(p.at(out_layer, prefix), inputs, slice_params, out_layer, t)
            if task:
                tasks.append(task)
        return tasks

    def _task(self, out_name: str, inputs: list[tuple[_Slot, str]], slice_params: Params,
              layer: int | None, t: float) -> TensorTask | None:
        """One output tensor: find each input (with tied-embedding stand-ins), check shapes,
        resolve parameters."""
        found: list[tuple[_Slot, TensorInfo]] = []
        for slot, name in inputs:
            tensors = self.sources[slot.source].tensors()
            info = tensors.get(name)
            if info is None:
                alias = arch.tied_alias(name, set(tensors))
                info = tensors.get(alias) if alias else None
            if info is None:
                self.missing.setdefault(slot.source, []).append(name)
                continue
            found.append((slot, info))
        if len(found) != len(inputs):
            return None
        on_vocab = self.vocab is not None and arch.on_vocabulary(out_name)
        shapes = {info.shape[1:] if on_vocab else info.shape for _, info in found}
        if len(shapes) > 1:
            desc = ", ".join(f"{self.sources[s.source].label} {list(i.shape)}" for s, i in found)
            self.problems.append(f"tensor '{out_name}': shapes differ ({desc}); these models cannot be merged "
                                 "tensor by tensor")
            return None
        first_info = found[0][1]
        shape = first_info.shape
        aligned = False
        if on_vocab:
            shape = (self.vocab.size, *shape[1:])
            sources = [s.source for s, _ in found]
            aligned = not all(self.vocab.is_identity([s.source], i.shape[0]) for s, i in found)
            for k in self.vocab.rule_sources() - set(sources):
                self.problems.append(f"tensor '{out_name}': tokenizer.tokens takes rows from {self.sources[k].label}, "
                                     "which is not an input of this tensor; use one of its inputs")
        is_float = all(i.dtype in FLOAT_CODES for _, i in found)
        out_code = self._out_dtype(first_info.dtype) if is_float else first_info.dtype
        base_pair = next(((s, i) for s, i in found if s.source == self.base), None)
        others = [(s, i) for s, i in found if s.source != self.base]
        params = self._params(out_name, others, slice_params, t) if is_float else {}
        ternary = is_float and self._ternary(out_name, shape, layer)
        experts = arch.fused_experts(out_name, shape, self.sources[self.ref].config()) if is_float else 0
        expert_seeds: tuple[int, ...] = ()
        if self.method.seeded:
            params["seed"] = self._seed(out_name)
            expert_seeds = tuple(self._seed(arch.expert_name(out_name, e)) for e in range(experts))
        return TensorTask(
            name=out_name,
            shape=shape,
            dtype=out_code,
            inputs=tuple(Input(s.source, i.name) for s, i in others),
            base=Input(base_pair[0].source, base_pair[1].name) if base_pair else None,
            params=params,
            layer=layer,
            t=t,
            copy=not is_float,
            vocab=aligned,
            ternary=ternary,
            experts=experts,
            expert_seeds=expert_seeds,
        )

    def _seed(self, name: str) -> int:
        """A seeded method's seed for the tensor `name`: the recipe's random_seed and the name."""
        return zlib.crc32(f"{self.recipe.random_seed or 0}:{name}".encode())

    def _out_dtype(self, stored: str) -> str:
        name = self.recipe.out_dtype if self.recipe.out_dtype != TERNARY else None
        name = name or self.recipe.dtype
        return DTYPE_CODES[name] if name else stored

    def _ternary(self, name: str, shape: tuple[int, ...], layer: int | None) -> bool:
        """Whether out_dtype: ternary packs this tensor: the linear weights of the language model's
        layers (norms, embeddings, the head and other parts stay floats)."""
        if self.recipe.out_dtype != TERNARY or layer is None or len(shape) != 2 or not name.endswith(".weight"):
            return False
        if shape[0] % quant.TERNARY_PER_BYTE:
            self.problems.append(f"tensor '{name}': out_dtype: {TERNARY} packs four rows to a byte, but it has "
                                 f"{shape[0]} rows; merge to a float out_dtype instead")
            return False
        return True

    def _params(self, tensor: str, others: list[tuple[_Slot, TensorInfo]], slice_params: Params, t: float) -> dict[str, Any]:
        shared_scopes = (slice_params, self.recipe.parameters)
        out: dict[str, Any] = {}
        for p in self.method.params:
            if p.per_model:
                values = []
                for slot, _ in others:
                    v = self._resolve(p.name, slot.scopes, tensor, t)
                    if v is None:
                        v = p.default
                    if v is REQUIRED:
                        key = (p.name, self.sources[slot.source].label)
                        self.missing_params[key] = self.missing_params.get(key, 0) + 1
                    values.append(v)
                out[p.name] = values
            else:
                v = self._resolve(p.name, shared_scopes, tensor, t)
                v = p.default if v is None else v
                if v is REQUIRED:
                    self.missing_params[(p.name, "")] = self.missing_params.get((p.name, ""), 0) + 1
                out[p.name] = v
        return out

    @staticmethod
    def _resolve(name: str, scopes: tuple[Params, ...], tensor: str, t: float) -> Any:
        for scope in scopes:
            if name in scope:
                v = evaluate(scope[name], tensor, t)
                if v is not None:
                    return v
        return None

    def _report_missing(self) -> None:
        for src, names in self.missing.items():
            listed = ", ".join(f"'{n}'" for n in names[:MAX_LISTED])
            more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
            self.problems.append(f"{self.sources[src].label} lacks tensors {listed}{more} that the output needs; "
                                 "are the models of the same architecture?")
        for (param, model), count in self.missing_params.items():
            who = f" for {model}" if model else ""
            self.problems.append(f"parameter '{param}' is required by '{self.method.name}' but has no value{who} "
                                 f"({count} tensors); set it under that model's parameters or the global parameters")

    def _check_architectures(self) -> None:
        archs = {s.label: tuple(s.config().get("architectures") or ()) for s in self.sources}
        if len(set(archs.values())) > 1:
            self.problems.append("the models have different architectures ("
                                 + ", ".join(f"{k}: {'/'.join(v) or '?'}" for k, v in archs.items())
                                 + "); merge models of one architecture")

    def _coverage(self, tasks: list[TensorTask]) -> cov.Coverage:
        """Account for every input tensor; those with no rule become one problem per model, tensors
        left out of the output for a named reason a warning when that loses weights silently
        (a tied head; layers a slice skips are what the recipe says)."""
        tied_out = not any(arch.LM_HEAD.search(t.name) for t in tasks)
        coverage = cov.account(self.sources, tasks, lambda k, n: self._left_out(k, n, tied_out))
        holders: dict[str, list[str]] = {}
        for s in self.sources:
            for n in s.tensors():
                holders.setdefault(n, []).append(s.label)
        ref = self.sources[self.ref].label
        for c in coverage.sources:
            if c.unmatched:
                self.problems.append(cov.unmatched_problem(c.label, c.unmatched, holders, ref))
            heads = c.left_out.get(cov.TIED_HEAD)
            if heads:
                self.warnings.append(f"{c.label}: {len(heads)} tensors are not in the output ({cov.TIED_HEAD}: "
                                     f"'{heads[0]}')")
        return coverage

    def _left_out(self, source: int, name: str, tied_out: bool) -> str | None:
        """Why the plan leaves an input tensor out of the output on purpose, or None."""
        if tied_out and arch.LM_HEAD.search(name):
            return cov.TIED_HEAD
        if self.recipe.slices is None:
            return None
        layer = self._main_layer(source, name)
        if layer is not None:
            ranges = self.ranges.get(source, [])
            return cov.OUTSIDE_SLICES if all(not a <= layer.index < b for a, b in ranges) else None
        first, last = self.end_sources
        return cov.OTHER_SLICE if source not in (first if self._is_pre(source, name) else last) else None

    def _out_config(self, layer_map: list[tuple[int, int]], tasks: list[TensorTask]) -> dict:
        config = copy.deepcopy(self.sources[self.ref].config())
        cfg = arch.text_config(config)
        key = arch.layer_count_key(config)
        ref_layers = self.layers[self.ref]
        if key and layer_map:
            for name, value in list(cfg.items()):
                if name != "architectures" and isinstance(value, list) and len(value) == ref_layers:
                    cfg[name] = [self._per_layer(name, s, i, value) for s, i in layer_map]
            cfg[key] = len(layer_map)
        if tasks and not tasks[0].copy:
            dtype = CODE_NAMES.get(tasks[0].dtype)
            for c in (config, cfg):
                c["dtype"] = dtype
                if "torch_dtype" in c:
                    c["torch_dtype"] = dtype
        if self.vocab is not None:
            cfg["vocab_size"] = self.vocab.size
        if any(t.ternary for t in tasks):
            config["quantization_config"] = dict(quant.BITNET_CONFIG)
        if self.recipe.tokenizer is not None:
            return config
        sizes = {s.label: arch.vocab_size(s.config()) for s in self.sources}
        if len({v for v in sizes.values() if v is not None}) > 1:
            self.problems.append("the models have different vocabulary sizes ("
                                 + ", ".join(f"{k}: {v}" for k, v in sizes.items())
                                 + "); set tokenizer_source: union (or base) to align their vocabularies")
        return config

    def _per_layer(self, name: str, source: int, layer: int, fallback: list) -> Any:
        """A per-layer config entry (e.g. layer_types) for one output layer, from its source."""
        values = arch.text_config(self.sources[source].config()).get(name)
        if isinstance(values, list) and layer < len(values):
            return values[layer]
        return fallback[min(layer, len(fallback) - 1)]

    def _tokenizer_source(self) -> Source | None:
        spec = self.recipe.tokenizer
        if spec is None or spec.source in ("base", "union"):
            return self.sources[self.ref]
        ref = ModelRef.parse(spec.source)
        if ref not in self.index:
            self.problems.append(f"tokenizer_source: {spec.source!r} is not one of the recipe's models")
            return None
        return self.sources[self.index[ref]]

    def _output_tokenizer(self, source: Source | None) -> OutputTokenizer | None:
        """The output tokenizer: the source's files, tokens the vocabulary added, the chat template."""
        if source is None:
            return None
        template = None
        if self.recipe.chat_template is not None:
            auto = self.recipe.chat_template == chat_templates.AUTO
            found = [t for s in self.sources if (t := model_chat_template(s))] if auto else []
            template = chat_templates.resolve(self.recipe.chat_template, found)
            if template is None:
                self.warnings.append("chat_template: auto found no chat template in any model; none is set")
        return OutputTokenizer(source, self.vocab.added if self.vocab else [], template)
