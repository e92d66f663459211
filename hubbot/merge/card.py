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
from ..sizes import human_bytes
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
            license_ = _card_license(s.read_file("README.md").decode(errors="replace"))
        facts.append({
            "ref": str(s.ref),
            "hub_id": None if s.ref.local else s.ref.path,
            "revision": s.revision,
            "license": license_,
            "gated": bool(getattr(info, "gated", False)),
        })
    return facts


def _card_license(text: str) -> str | None:
    """The license in a model card's metadata (None when it has none, or metadata it cannot read)."""
    from huggingface_hub import ModelCard

    if not text.lstrip().startswith("---"):  # no metadata (ModelCard would warn about it)
        return None
    try:
        return ModelCard(text, ignore_metadata_errors=True).data.get("license")
    except (ValueError, yaml.YAMLError):
        return None


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
    """README.md text (front matter and body) and extra files it references. Rendered in plain
    Python: a template engine costs a merge a quarter of a second of imports, and the card has
    only a few loops."""
    facts = source_facts(plan)
    hub_ids = list(dict.fromkeys(f["hub_id"] for f in facts if f["hub_id"]))
    licenses = {f["license"] for f in facts}
    license_ = licenses.pop() if len(licenses) == 1 and None not in licenses else None
    method = plan.method
    meta = {"base_model": hub_ids or None, "library_name": "transformers", "license": license_,
            "tags": ["merge", method.name, "hubbot", "mergekit"], "base_model_relation": "merge" if hub_ids else None}
    curves = plan.param_curves()
    extra = {"parameters.svg": parameters_svg(curves).encode()} if curves else {}
    tool = "mergekit-moe" if isinstance(plan.recipe, MoeRecipe) else "mergekit"
    name = repo_id.split("/")[-1] if repo_id else "Merged model"
    target = repo_id or "path/to/merged-model"
    recipe_file = plan.recipe.FILE_NAME
    params = _source_parameters(plan)
    warnings = _license_warnings(facts, license_)
    coverage_md = "\n".join(coverage.markdown(plan.coverage))

    front = yaml.dump({k: v for k, v in meta.items() if v is not None}, sort_keys=False, allow_unicode=True).strip()
    out = [f"---\n{front}\n---\n\n# {name}\n\n"
           f"This model is a merge of {len(facts)} pre-trained language models, made with hubbot using "
           f"**{method.title}**.\n"]
    if warnings:
        out.append("\n> [!WARNING]\n" + "".join(f"> {w}\n" for w in warnings))
    out.append(f"\n## Method\n\n{method.summary}" + (f" ({method.paper})" if method.paper else "") + "\n\n"
               "## Sources\n\n| model | revision | license | parameters |\n|---|---|---|---|\n")
    out += [f"| {f['ref']} | {f['revision'] or 'local files'} | {f['license'] or 'unknown'} | "
            f"{params.get(f['ref'], '')} |\n" for f in facts]
    if curves:
        out.append("\n## Parameters per layer\n\n![parameter values per output layer](parameters.svg)\n")
    out.append(f"\n## Recipe\n\nAs submitted:\n\n```yaml\n{plan.recipe.text.rstrip()}\n```\n\n"
               "Resolved, with every source pinned to the commit that was merged:\n\n"
               f"```yaml\n{resolved_recipe(plan).rstrip()}\n```\n")
    if coverage_md:
        out.append(f"\n{coverage_md}")
    if _chat(plan):
        prompt = ('messages = [{"role": "user", "content": "What is model merging?"}]\n'
                  "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\")\n")
    else:
        prompt = 'inputs = tokenizer("Model merging is", return_tensors="pt").input_ids\n'
    out.append("\n## Use it\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
               f'model = AutoModelForCausalLM.from_pretrained("{target}", dtype="auto")\n'
               f'tokenizer = AutoTokenizer.from_pretrained("{target}")\n{prompt}'
               "outputs = model.generate(inputs, max_new_tokens=64)\n"
               "print(tokenizer.decode(outputs[0], skip_special_tokens=True))\n```\n\n"
               f"## Reproduce it\n\nThe recipe is in this repo as `{recipe_file}`:\n\n"
               f"```bash\npip install hubbot\nhubbot merge {recipe_file} --out merged/\n```\n\n"
               f"It is also a valid {tool} configuration.\n")
    if run:
        out.append(f"\n## Merge facts\n\n- hubbot {__version__}, Python {platform.python_version()}\n"
                   f"- hardware: {_hardware(run.device)}\n"
                   f"- duration: {run.seconds:.1f} s; {run.tensors} tensors; output {human_bytes(run.output_bytes)}\n"
                   f"- output layers: {plan.out_layers}\n")
    return "".join(out), extra


def write_card(plan: Plan, folder: Path, run: RunFacts | None, *, repo_id: str | None = None) -> None:
    """Write README.md (and the files it references) into an output folder; `repo_id` names the
    Hub repo it is published as (None: a local folder)."""
    card, extra = build_card(plan, repo_id=repo_id, run=run)
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


def _chat(plan: Plan) -> bool:
    """Whether the output speaks with a chat template (the usage example then uses it)."""
    tok = plan.tokenizer_source
    return bool(tok and ("chat_template.jinja" in tok.files() or _has_chat_template(tok))) or bool(
        isinstance(plan.recipe, Recipe) and plan.recipe.chat_template)


def _has_chat_template(tok) -> bool:
    if "tokenizer_config.json" not in tok.files():
        return False
    return b'"chat_template"' in tok.read_file("tokenizer_config.json")


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        try:
            import torch

            return f"{device} ({torch.cuda.get_device_name(device)})"
        except Exception:  # the name is a nicety; the device string is enough
            return device
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
