"""Planning: from a recipe and the models' headers to the list of output tensors to compute.

Only config.json, the index, the safetensors headers and (for vocabulary merges and chat
templates) the small tokenizer files are read, so every problem (missing tensors, shape or layer
mismatches, bad layer ranges, missing parameters) is found before any weight byte is fetched, and
all of them are reported together.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .. import methods
from ..errors import PlanError, SourceError
from ..methods import REQUIRED, Method
from ..model import arch
from ..model.format import DTYPES, FLOAT_CODES, TensorInfo
from ..recipe import chat_templates
from ..recipe.merge import Recipe
from ..recipe.refs import ModelRef
from ..recipe.values import Params, evaluate
from ..sources import Source, open_source
from . import vocab
from .tokenizer import OutputTokenizer, model_chat_template

if TYPE_CHECKING:
    from ..recipe.moe import MoeRecipe

DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
CODE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
MAX_LISTED = 5
CHUNK_BYTES = 4 << 20  # float32 bytes of one block of rows: small enough to stay in the CPU caches
WHOLE_BYTES = 16 << 20  # float32 bytes up to which a method with statistics passes takes a tensor whole


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

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype].itemsize
        for d in self.shape:
            n *= d
        return n


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

    @property
    def models(self) -> list[Source]:
        """The sources that are models (not tensors computed here, such as MoE routers)."""
        return [s for s in self.sources if s.is_model]

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.tasks)

    @property
    def input_bytes(self) -> int:
        seen = {(i.source, i.name) for t in self.tasks for i in (*t.inputs, *([t.base] if t.base else []))}
        return sum(self.sources[s].tensors()[n].nbytes for s, n in seen)

    def blocks(self, task: TensorTask, chunk_bytes: int = CHUNK_BYTES) -> tuple[list[tuple[int, int]] | None, int]:
        """How the engine splits `task`: its blocks of rows (None: the whole tensor at once), and
        how many statistics passes read them before the merge (a blockwise method's passes)."""
        f32_bytes = task.nbytes // DTYPES[task.dtype].itemsize * 4
        if task.copy or task.vocab or len(task.shape) < 2:
            return None, 0
        blockwise = self.method.blockwise_for(task.params)
        if self.method.elementwise or (blockwise is not None and not blockwise.passes):
            return (_rows(task, chunk_bytes), 0) if f32_bytes > chunk_bytes else (None, 0)
        if blockwise is not None and f32_bytes > WHOLE_BYTES:
            return _rows(task, chunk_bytes), len(blockwise.passes)
        return None, 0

    def peak_bytes(self, chunk_bytes: int = CHUNK_BYTES, prefetch: int = 2) -> int:
        """Bytes of tensors in flight at the worst task: raw inputs (prefetched too), their
        float32 copies, and the result with a few temporaries; split tasks count one block."""
        worst = 0
        for t in self.tasks:
            rows, _ = self.blocks(t, chunk_bytes)
            numel = max(1, t.nbytes // DTYPES[t.dtype].itemsize)
            if rows is not None:
                numel = numel // t.shape[0] * (rows[0][1] - rows[0][0])
            n_in = len(t.inputs) + (1 if t.base else 0)
            worst = max(worst, numel * (2 * n_in * (1 + prefetch) + 4 * (n_in + 2)))
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
            lines.append(f"  {'model' if s.is_model else 'computed'}: {s.label}{rev}")
        lines.append(f"output: {len(self.tasks)} tensors, {self.out_layers} layers, {_size(self.output_bytes)}"
                     f" ({CODE_NAMES.get(self.tasks[0].dtype, self.tasks[0].dtype) if self.tasks else '-'})")
        lines.append(f"reads: {_size(self.input_bytes)} of weights; peak memory for tensors about "
                     f"{_size(self.peak_bytes())}")
        if self.vocab is not None:
            spec = self.recipe.tokenizer
            lines.append(f"vocabulary: {len(self.vocab.tokens)} tokens ({spec.source if spec else 'base'}"
                         f"{f', {len(self.vocab.added)} added' if self.vocab.added else ''}), "
                         f"{self.vocab.size} embedding rows")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _rows(task: TensorTask, chunk_bytes: int) -> list[tuple[int, int]]:
    """Blocks of whole rows of about `chunk_bytes` in float32 (at least one row each)."""
    row = max(1, task.nbytes // DTYPES[task.dtype].itemsize // task.shape[0])
    step = max(1, chunk_bytes // (4 * row))
    return [(a, min(a + step, task.shape[0])) for a in range(0, task.shape[0], step)]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


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
            src = opener(ref)
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
        self.vocab: vocab.Vocabulary | None = None

    def build(self) -> Plan:
        if self.recipe.tokenizer is not None:
            self.vocab = self._vocabulary()
        slices = self._slices()
        ref_src = self.sources[self.ref]
        ref_names = list(ref_src.tensors())
        pre = [n for n in ref_names if arch.split_layer(n) is None and arch.is_pre(n)]
        post = [n for n in ref_names if arch.split_layer(n) is None and not arch.is_pre(n)]
        tasks: list[TensorTask] = []
        if slices:
            first, last = slices[0], slices[-1]
            tasks += [t for n in pre if (t := self._task(n, [(s, n) for s in first[1]], first[0], None, 0.0))]
            out_layer = 0
            prefix = self._layer_prefix(ref_src)
            layer_map: list[tuple[int, int]] = []
            for slice_params, slots, length in slices:
                for offset in range(length):
                    t = offset / (length - 1) if length > 1 else 1.0
                    tasks += self._layer_tasks(slots, slice_params, offset, out_layer, prefix, t)
                    layer_map.append((slots[0].source, slots[0].start + offset))
                    out_layer += 1
            tasks += [t for n in post if (t := self._task(n, [(s, n) for s in last[1]], last[0], None, 0.0))]
        else:
            layer_map, out_layer = [], 0
        self._report_missing()
        self._check_architectures(tasks)
        config = self._out_config(layer_map, tasks)
        tokenizer_source = self._tokenizer_source()
        return Plan(
            recipe=self.recipe, method=self.method, sources=self.sources, tasks=tasks, config=config,
            tokenizer_source=tokenizer_source, input_dtype=self.recipe.dtype, out_layers=out_layer,
            problems=self.problems, warnings=self.warnings, vocab=self.vocab,
            tokenizer=self._output_tokenizer(tokenizer_source),
        )

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

    def _layer_prefix(self, src: Source) -> str | None:
        for name in src.tensors():
            parsed = arch.split_layer(name)
            if parsed:
                return parsed.prefix
        return None

    def _layer_tasks(self, slots: list[_Slot], slice_params: Params, offset: int, out_layer: int,
                     prefix: str | None, t: float) -> list[TensorTask]:
        first = self.sources[slots[0].source]
        src_layer = slots[0].start + offset
        template = [p for n in first.tensors() if (p := arch.split_layer(n)) and p.index == src_layer]
        tasks = []
        for p in template:
            inputs = []
            for s in slots:
                src_prefix = self._layer_prefix(self.sources[s.source]) or p.prefix
                inputs.append((s, p.at(s.start + offset, src_prefix)))
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
        if self.method.seeded:
            params["seed"] = zlib.crc32(f"{self.recipe.random_seed or 0}:{out_name}".encode())
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
        )

    def _out_dtype(self, stored: str) -> str:
        name = self.recipe.out_dtype or self.recipe.dtype
        return DTYPE_CODES[name] if name else stored

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

    def _check_architectures(self, tasks: list[TensorTask]) -> None:
        archs = {s.label: tuple(s.config().get("architectures") or ()) for s in self.sources}
        if len(set(archs.values())) > 1:
            self.problems.append("the models have different architectures ("
                                 + ", ".join(f"{k}: {'/'.join(v) or '?'}" for k, v in archs.items())
                                 + "); merge models of one architecture")
        used: dict[int, set[str]] = {}
        for t in tasks:
            for i in (*t.inputs, *([t.base] if t.base else [])):
                used.setdefault(i.source, set()).add(i.name)
        if self.recipe.slices is None:
            for k, names in used.items():
                unused = [n for n in self.sources[k].tensors() if n not in names]
                if unused:
                    self.warnings.append(f"{self.sources[k].label}: {len(unused)} tensors are not in the output "
                                         f"(e.g. '{unused[0]}')")

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
