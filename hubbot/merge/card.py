"""The model card of a merge: Hub metadata plus a page that says what was merged, how, and how
to reproduce it, built from the recipe, the plan (sources at pinned revisions) and the run."""

from __future__ import annotations

import html
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..recipe.merge import Recipe
from ..recipe.moe import MoeRecipe
from . import coverage
from .plan import Plan

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d")


@dataclass(frozen=True)
class RunFacts:
    """What the card reports about the run itself."""

    seconds: float
    device: str
    output_bytes: int
    tensors: int


def source_facts(plan: Plan) -> list[dict[str, Any]]:
    """Per source: reference, Hub id (None when local), pinned revision, license, gated."""
    facts = []
    for s in plan.models:
        info = getattr(s, "info", None)
        card_data = getattr(info, "card_data", None)
        license_ = getattr(card_data, "license", None) if card_data else None
        if license_ is None and "README.md" in s.files():
            license_ = _front_matter(s.read_file("README.md").decode(errors="replace")).get("license")
        facts.append({
            "ref": str(s.ref),
            "hub_id": None if s.ref.local else s.ref.path,
            "revision": s.revision,
            "license": license_,
            "gated": bool(getattr(info, "gated", False)),
        })
    return facts


def _front_matter(text: str) -> dict:
    if not text.startswith("---"):
        return {}
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return data if isinstance(data, dict) else {}


def resolved_recipe(plan: Plan) -> str:
    """The recipe with every Hub model pinned to the commit that was merged."""
    pins = {str(s.ref): s.pinned() for s in plan.sources}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (pins.get(v, v) if k in ("model", "base_model", "source_model") and isinstance(v, str)
                        else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return yaml.safe_dump(walk(yaml.safe_load(plan.recipe.text)), sort_keys=False)


def parameters_svg(curves: dict[str, list[float]], width: int = 640, height: int = 260) -> str:
    """A line chart of per-layer parameter values (one line per parameter and model)."""
    pad, legend = 40, 18 * len(curves)
    values = [v for c in curves.values() for v in c]
    lo, hi = min(values + [0.0]), max(values + [1.0])
    n = max(len(c) for c in curves.values())
    x = lambda i: pad + (width - 2 * pad) * (i / max(1, n - 1))  # noqa: E731
    y = lambda v: pad + (height - 2 * pad) * (1 - (v - lo) / ((hi - lo) or 1))  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + legend}" '
             f'font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>',
             f'<text x="{pad - 6}" y="{y(hi) + 4:.1f}" text-anchor="end">{hi:g}</text>',
             f'<text x="{pad - 6}" y="{y(lo) + 4:.1f}" text-anchor="end">{lo:g}</text>',
             f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">output layer (0 to {n - 1})</text>']
    for k, (name, curve) in enumerate(curves.items()):
        color = PALETTE[k % len(PALETTE)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(curve))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        parts.append(f'<text x="{pad}" y="{height + 14 + 18 * k}" fill="{color}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def build_card(plan: Plan, *, repo_id: str | None, run: RunFacts | None) -> tuple[str, dict[str, bytes]]:
    """README.md text (front matter and body) and extra files it references."""
    from huggingface_hub import ModelCard, ModelCardData

    facts = source_facts(plan)
    hub_ids = list(dict.fromkeys(f["hub_id"] for f in facts if f["hub_id"]))
    licenses = {f["license"] for f in facts}
    license_ = licenses.pop() if len(licenses) == 1 and None not in licenses else None
    method = plan.method
    data = ModelCardData(
        base_model=hub_ids or None,
        base_model_relation="merge" if hub_ids else None,
        library_name="transformers",
        license=license_,
        tags=["merge", method.name, "hubbot", "mergekit"],
    )
    name = repo_id.split("/")[-1] if repo_id else "Merged model"
    extra: dict[str, bytes] = {}
    lines = [f"# {name}", "",
             f"This model is a merge of {len(facts)} pre-trained language models, made with "
             f"hubbot using **{method.title}**.", ""]
    warnings = _license_warnings(facts, license_)
    if warnings:
        lines += ["> [!WARNING]"] + [f"> {w}" for w in warnings] + [""]
    lines += ["## Method", "", method.summary + (f" ({method.paper})" if method.paper else ""), ""]
    lines += ["## Sources", "", "| model | revision | license | parameters |", "|---|---|---|---|"]
    params = _source_parameters(plan)
    for f in facts:
        lines.append(f"| {f['ref']} | {f['revision'] or 'local files'} | {f['license'] or 'unknown'} | "
                     f"{params.get(f['ref'], '')} |")
    lines.append("")
    curves = plan.param_curves()
    if curves:
        extra["parameters.svg"] = parameters_svg(curves).encode()
        lines += ["## Parameters per layer", "", "![parameter values per output layer](parameters.svg)", ""]
    lines += ["## Recipe", "", "As submitted:", "", "```yaml", plan.recipe.text.rstrip(), "```", "",
              "Resolved, with every source pinned to the commit that was merged:", "",
              "```yaml", resolved_recipe(plan).rstrip(), "```", ""]
    lines += coverage.markdown(plan.coverage)
    lines += _usage(repo_id, plan) + _reproduce(plan)
    if run is not None:
        lines += ["## Merge facts", "",
                  f"- hubbot {__version__}, Python {platform.python_version()}",
                  f"- hardware: {_hardware(run.device)}",
                  f"- duration: {run.seconds:.1f} s; {run.tensors} tensors; output {run.output_bytes / 1e9:.2f} GB",
                  f"- output layers: {plan.out_layers}", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card), extra


def write_card(plan: Plan, folder: Path, run: RunFacts | None) -> None:
    """Write README.md (and the files it references) into a local output folder."""
    card, extra = build_card(plan, repo_id=None, run=run)
    (folder / "README.md").write_text(card)
    for name, data in extra.items():
        (folder / name).write_bytes(data)


def _license_warnings(facts: list[dict], chosen: str | None) -> list[str]:
    out = []
    if chosen is None:
        desc = ", ".join(f"{f['ref']}: {f['license'] or 'unknown'}" for f in facts)
        out.append(f"The sources do not share one license ({desc}); no license is set. Check each source's "
                   "terms before using or sharing this model.")
    gated = [f["ref"] for f in facts if f["gated"]]
    if gated:
        out.append(f"Gated sources ({', '.join(gated)}): their access conditions may apply to this model too.")
    return out


def _source_parameters(plan: Plan) -> dict[str, str]:
    r = plan.recipe
    out: dict[str, str] = {}
    if isinstance(r, MoeRecipe):
        roles = [(r.base_model, "base: attention, norms, embeddings")]
        roles += [(e.source_model, f"expert {i} ({len(e.positive_prompts)} prompts)") for i, e in enumerate(r.experts)]
        roles += [(e.source_model, "shared expert") for e in r.shared_experts]
        for ref, role in roles:
            out[str(ref)] = "; ".join(x for x in (out.get(str(ref)), role) if x)
        return out
    for m in r.models or ():
        out[str(m.model)] = ", ".join(f"{k}: {v}" for k, v in m.parameters.items())
    for i, s in enumerate(r.slices or ()):
        for src in s.sources:
            entry = f"layers {src.layer_range[0]}-{src.layer_range[1] - 1} (slice {i})"
            out[str(src.model)] = "; ".join(x for x in (out.get(str(src.model)), entry) if x)
    return out


def _usage(repo_id: str | None, plan: Plan) -> list[str]:
    target = repo_id or "path/to/merged-model"
    tok = plan.tokenizer_source
    chat = bool(tok and ("chat_template.jinja" in tok.files() or _has_chat_template(tok))) or bool(
        isinstance(plan.recipe, Recipe) and plan.recipe.chat_template)
    body = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'model = AutoModelForCausalLM.from_pretrained("{target}", dtype="auto")',
            f'tokenizer = AutoTokenizer.from_pretrained("{target}")']
    if chat:
        body += ['messages = [{"role": "user", "content": "What is model merging?"}]',
                 "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\")"]
    else:
        body += ['inputs = tokenizer("Model merging is", return_tensors="pt").input_ids']
    body += ["outputs = model.generate(inputs, max_new_tokens=64)",
             "print(tokenizer.decode(outputs[0], skip_special_tokens=True))"]
    return ["## Use it", "", "```python", *body, "```", ""]


def _has_chat_template(tok) -> bool:
    if "tokenizer_config.json" not in tok.files():
        return False
    return b'"chat_template"' in tok.read_file("tokenizer_config.json")


def _reproduce(plan: Plan) -> list[str]:
    name = plan.recipe.FILE_NAME
    tool = "mergekit-moe" if isinstance(plan.recipe, MoeRecipe) else "mergekit"
    return ["## Reproduce it", "", f"The recipe is in this repo as `{name}`:", "", "```bash",
            "pip install hubbot", f"hubbot merge {name} --out merged/", "```", "",
            f"It is also a valid {tool} configuration.", ""]


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        try:
            import torch

            return f"{device} ({torch.cuda.get_device_name(device)})"
        except Exception:  # the name is a nicety; the device string is enough
            return device
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
