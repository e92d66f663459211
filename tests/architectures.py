"""The architecture matrix: tiny random models of each architecture in tests/models.ARCHS, merged
with linear, TIES and SLERP, then validated, loaded with transformers, run, compared with
mergekit 0.1.5 and checked for tensor coverage.

`python -m tests.architectures --write-doc` runs every architecture and writes
docs/architectures.md; tests/test_architectures.py runs a representative few in the suite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hubbot.merge import engine
from hubbot.merge.plan import build
from hubbot.recipe.merge import parse
from tests.models import ARCHS, load_state, make_arch_family

METHODS = ("linear", "ties", "slerp")
CHECKS = ("validate", "merge", "load", "forward", "parity", "coverage")
DOC = Path(__file__).resolve().parent.parent / "docs" / "architectures.md"
PARITY_ATOL = 2e-6  # float32 on both sides: equal up to rounding


def recipe(method: str, base: Path, ft1: Path, ft2: Path) -> str:
    if method == "linear":
        return (f"merge_method: linear\nmodels:\n  - {{model: {base}, parameters: {{weight: 0.4}}}}\n"
                f"  - {{model: {ft1}, parameters: {{weight: 0.3}}}}\n"
                f"  - {{model: {ft2}, parameters: {{weight: 0.3}}}}\ndtype: float32\n")
    if method == "ties":
        return (f"merge_method: ties\nbase_model: {base}\nmodels:\n"
                f"  - {{model: {ft1}, parameters: {{weight: 0.5, density: 0.5}}}}\n"
                f"  - {{model: {ft2}, parameters: {{weight: 0.5, density: 0.7}}}}\ndtype: float32\n")
    return (f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {ft1}\n"
            "parameters: {t: 0.4}\ndtype: float32\n")


@dataclass
class Row:
    """One architecture's results: per check, the methods that failed it and why ('' = passed)."""

    arch: str
    failures: dict[str, dict[str, str]] = field(default_factory=lambda: {c: {} for c in CHECKS})
    notes: dict[str, str] = field(default_factory=dict)  # check -> why it does not apply

    def fail(self, check: str, method: str, why: str) -> None:
        self.failures[check][method] = why.splitlines()[0][:200] if why else "failed"

    @property
    def ok(self) -> bool:
        return not any(self.failures.values())

    def cell(self, check: str) -> str:
        if check in self.notes:
            return f"n/a: {self.notes[check]}"
        failed = self.failures[check]
        if not failed:
            per_expert = check == "parity" and "parity_experts" in self.notes
            return "yes (experts per expert: see notes)" if per_expert else "yes"
        return "; ".join(f"**{m}: {why}**" for m, why in failed.items())


def forward_finite(folder: Path, auto_class: str) -> bool:
    import transformers

    model = getattr(transformers, auto_class).from_pretrained(folder, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([[0, 5, 17, 42, 7, 1]])
    with torch.no_grad():
        out = model(input_ids=ids)
    value = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    return bool(torch.isfinite(value).all())


def mergekit_parity(text: str, ours: Path, out: Path, auto_class: str, per_expert: bool) -> str | None:
    """None when mergekit 0.1.5 gives the same tensors (float32 up to rounding), else why not.
    mergekit may write the in-memory names of transformers 5 (`model.language_model.*`, fused
    experts) where hubbot keeps the checkpoint's (`language_model.model.*`, `experts.E.*`): then
    both are compared as loaded. `per_expert`: the method's result depends on whole-tensor
    statistics, which hubbot takes per expert and mergekit over the fused [E, ...] tensor, so
    expert tensors are left out of the comparison (see the notes in docs/architectures.md)."""
    from tests.oracle import mergekit_merge

    try:
        theirs_folder = mergekit_merge(text, out)
    except Exception as exc:  # the reference refusing an architecture is a result, not a crash
        lines = str(exc).strip().splitlines() or [""]
        raise Unsupported(f"mergekit 0.1.5 fails: {type(exc).__name__}: ...{lines[-1][-100:]}") from exc
    mine, theirs = load_state(ours), load_state(theirs_folder)
    if set(mine) != set(theirs):
        mine, _ = loaded_state(ours, auto_class)
        theirs, missing = loaded_state(theirs_folder, auto_class)
        if missing:
            raise Unsupported(f"mergekit 0.1.5's output lacks {len(missing)} tensors the model needs, "
                              f"e.g. '{missing[0]}'")
    if set(mine) != set(theirs):
        return f"tensor sets differ ({len(set(mine) ^ set(theirs))} names)"
    for name, ref in theirs.items():
        if per_expert and ".experts." in name:
            continue
        diff = (mine[name].float() - ref.float()).abs().max().item()
        if diff > PARITY_ATOL:
            return f"'{name}' differs by {diff:.3g}"
    return None


def loaded_state(folder: Path, auto_class: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state transformers loads from `folder`, and the tensors it had to initialise."""
    import transformers

    model, info = getattr(transformers, auto_class).from_pretrained(folder, dtype=torch.float32,
                                                                     output_loading_info=True)
    return model.state_dict(), sorted(info.get("missing_keys") or ())


class Unsupported(Exception):
    """mergekit 0.1.5 cannot merge this architecture."""


def run_arch(name: str, root: Path, methods: tuple[str, ...] = METHODS, parity: bool = True) -> Row:
    auto_class = ARCHS[name][2]
    row = Row(name)
    base, ft1, ft2 = make_arch_family(root / name, name)
    inputs = set(load_state(base))
    for method in methods:
        text = recipe(method, base, ft1, ft2)
        try:
            plan = build(parse(text))
        except Exception as exc:
            row.fail("validate", method, str(exc))
            continue
        if plan.problems:
            row.fail("validate", method, plan.problems[0])
        if plan.coverage is None or not plan.coverage.complete:
            row.fail("coverage", method, "input tensors without a rule")
        if plan.problems:
            continue
        out = root / f"{name}-{method}"
        try:
            folder = engine.run(plan, out, device="cpu").folder
        except Exception as exc:
            row.fail("merge", method, f"{type(exc).__name__}: {exc}")
            continue
        if set(load_state(folder)) != inputs:
            row.fail("coverage", method, "output tensors differ from the base's")
        try:
            if not forward_finite(folder, auto_class):
                row.fail("forward", method, "non-finite outputs")
        except Exception as exc:
            row.fail("load", method, f"{type(exc).__name__}: {exc}")
        if parity and "parity" not in row.notes:
            try:
                why = mergekit_parity(text, folder, root / f"{name}-{method}-mergekit", auto_class,
                                      per_expert=method != "linear" and any(".experts." in n for n in inputs))
            except Unsupported as exc:
                row.notes["parity"] = str(exc).replace(str(root), "...")
                continue
            if why:
                row.fail("parity", method, why)
            elif method != "linear" and any(".experts." in n for n in inputs):
                row.notes.setdefault("parity_experts", "")
    return row


def table(rows: list[Row]) -> str:
    lines = ["| architecture | loaded as | " + " | ".join(CHECKS) + " |", "|---" * (len(CHECKS) + 2) + "|"]
    for r in rows:
        cfg, _, auto_class = ARCHS[r.arch]
        lines.append(f"| {r.arch} | {cfg.removesuffix('Config')} ({auto_class}) | "
                     + " | ".join(r.cell(c) for c in CHECKS) + " |")
    return "\n".join(lines)


def document(rows: list[Row]) -> str:
    return f"""# Architectures

Generated by `python -m tests.architectures --write-doc` (do not edit by hand); the suite runs a
representative part of the same matrix (tests/test_architectures.py).

Each architecture is a tiny random model built offline from its transformers config (2 layers,
hidden size 64, float32; tests/models.py `ARCHS`): a base and two fine-tune-like variants (the
base plus seeded noise), each with a tokenizer. Every row is merged with {", ".join(METHODS)}
(linear over the three models; TIES with the base; SLERP between the base and one variant), and:

- **validate**: the plan has no problems;
- **merge**: the engine writes the output;
- **load**, **forward**: transformers loads the output with the named Auto class and a forward pass
  over a few tokens gives finite outputs;
- **parity**: mergekit 0.1.5 merges the same recipe to the same tensors (float32, within
  {PARITY_ATOL:g}), where it supports the architecture;
- **coverage**: every input tensor is merged, copied or left out for a named reason, and the
  output holds exactly the base's tensor names.

"yes" means every method passed; a failure names the method and the first problem.

{table(rows)}

## Notes

- Checkpoints keep the tensor names transformers saves (the per-expert layout for mixtures of
  experts, `experts.E.*`; `language_model.model.layers.N` and `vision_tower.*` for Llava;
  `model.layers.N` and `visual.*` for Qwen2-VL). Vision-language models: layer parameters and
  slices apply to the language model's layers (the stack whose length the text config gives);
  the vision tower and projector are merged tensor by tensor with the recipe's global parameters
  and filters (a filter such as `vision_tower` or `visual` selects them), and with slices they
  come from the first slice's sources, like the embeddings.
- Mixtures of experts are merged expert by expert: expert i of each model with expert i of the
  others, routers (`gate`) and shared experts included. What a method computes over a whole
  tensor (the density cuts of TIES, DARE, DELLA, Breadcrumbs and SCE, sign election, the norms of
  SLERP and NuSLERP, the angles of Model Stock and Karcher, Arcee Fusion's selection) is taken per
  expert in both stored layouts. In the per-expert layout (`experts.E.*`) each expert is its own
  tensor; a fused `[E, ...]` tensor (`experts.down_proj`, `experts.gate_up_proj`, as transformers 5
  and gpt-oss store them; recognised by the name and a first axis of the config's expert count) is
  merged one expert's slice at a time, exactly as the per-expert tensor `experts.e.down_proj.weight`
  of the same weights, with that tensor's random seed, so DARE and DELLA draw the same masks in
  both layouts (tests/test_fused_experts.py). Elementwise methods (linear, task arithmetic) give the
  same either way. A fused `gate_up_proj` holds each expert's gate and up projections together, so
  its cuts cover both, where Qwen's and Mixtral's per-expert checkpoints cut `gate_proj` and
  `up_proj` apart. mergekit 0.1.5 cuts over the fused tensor, so parity leaves expert tensors out
  for methods whose cuts or norms span a tensor.
- Encoders (BERT): merged like decoders (the `encoder.layer.N` stack, embeddings before it, the
  pooler with the non-layer tensors).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("archs", nargs="*", help="architectures to run (default: all)")
    ap.add_argument("--write-doc", action="store_true", help=f"write {DOC.relative_to(DOC.parent.parent)}")
    args = ap.parse_args(argv)
    names = args.archs or list(ARCHS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                row = run_arch(name, Path(tmp))
            except Exception:
                row = Row(name)
                row.fail("validate", "build", traceback.format_exc().strip().splitlines()[-1])
            print(f"{name}: {'ok' if row.ok else row.failures} {row.notes or ''}", file=sys.stderr, flush=True)
            rows.append(row)
    if args.write_doc:
        DOC.write_text(document(rows))
    print(table(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
