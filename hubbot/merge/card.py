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


TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

This model is a merge of {{ sources | length }} pre-trained language models, made with hubbot using **{{ method.title }}**.
{% if warnings %}
> [!WARNING]
{% for w in warnings %}> {{ w }}
{% endfor %}{% endif %}
## Method

{{ method.summary }}{% if method.paper %} ({{ method.paper }}){% endif %}

## Sources

| model | revision | license | parameters |
|---|---|---|---|
{% for s in sources %}| {{ s.ref }} | {{ s.revision or "local files" }} | {{ s.license or "unknown" }} | {{ params.get(s.ref, "") }} |
{% endfor %}{% if plot %}
## Parameters per layer

![parameter values per output layer](parameters.svg)
{% endif %}
## Recipe

As submitted:

```yaml
{{ recipe }}
```

Resolved, with every source pinned to the commit that was merged:

```yaml
{{ resolved }}
```
{% if coverage %}
{{ coverage }}{% endif %}
## Use it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{{ target }}", dtype="auto")
tokenizer = AutoTokenizer.from_pretrained("{{ target }}")
{% if chat %}messages = [{"role": "user", "content": "What is model merging?"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
{% else %}inputs = tokenizer("Model merging is", return_tensors="pt").input_ids
{% endif %}outputs = model.generate(inputs, max_new_tokens=64)
print(tokenizer.decode(outputs[0], skip_special_tokens=True))
```

## Reproduce it

The recipe is in this repo as `{{ recipe_file }}`:

```bash
pip install hubbot
hubbot merge {{ recipe_file }} --out merged/
```

It is also a valid {{ tool }} configuration.
{% if run %}
## Merge facts

- hubbot {{ version }}, Python {{ python }}
- hardware: {{ hardware }}
- duration: {{ "%.1f" | format(run.seconds) }} s; {{ run.tensors }} tensors; output {{ output }}
- output layers: {{ out_layers }}
{% endif %}"""


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
    curves = plan.param_curves()
    extra = {"parameters.svg": parameters_svg(curves).encode()} if curves else {}
    is_moe = isinstance(plan.recipe, MoeRecipe)
    card = ModelCard.from_template(
        data, template_str=TEMPLATE,
        name=repo_id.split("/")[-1] if repo_id else "Merged model",
        method=method, sources=facts, warnings=_license_warnings(facts, license_), params=_source_parameters(plan),
        plot=bool(curves), recipe=plan.recipe.text.rstrip(), resolved=resolved_recipe(plan).rstrip(),
        coverage="\n".join(coverage.markdown(plan.coverage)),
        target=repo_id or "path/to/merged-model", chat=_chat(plan), recipe_file=plan.recipe.FILE_NAME,
        tool="mergekit-moe" if is_moe else "mergekit", run=run, version=__version__,
        python=platform.python_version(), hardware=_hardware(run.device) if run else None,
        output=human_bytes(run.output_bytes) if run else None, out_layers=plan.out_layers,
    )
    return str(card), extra


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
