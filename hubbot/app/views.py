"""What the Space shows: validations, jobs and gallery entries rendered as Markdown, HTML and
tables. Pure functions of the service's records, so they are tested without a browser."""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..jobs.states import ACTIVE, QUEUED, STATES, WAITING_KEY
from ..recipe.refs import ModelRef
from ..sizes import human_bytes

if TYPE_CHECKING:
    import pandas as pd

    from ..jobs.service import Job, Validation
    from .estimates import Estimate
    from .gallery import Entry

ACTIVE_STATES = (QUEUED, *ACTIVE)  # the page keeps following these
STATE_LABELS = {state: "Merging" if state == "running" else state.capitalize() for state in STATES}
JOB_COLUMNS = ["job", "state", "method", "target", "submitted (UTC)"]
GALLERY_COLUMNS = ["recipe", "method", "tags"]
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|])")
_CODE_SPAN = re.compile(r"(`[^`]+`)")


def md(text: Any) -> str:
    """Text shown literally inside Markdown (tensor names such as self_attn keep their underscores)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def md_code(text: Any) -> str:
    """Our own prose (method summaries) in Markdown: `code spans` render as code, the rest literally."""
    return "".join(part if _CODE_SPAN.fullmatch(part) else md(part) for part in _CODE_SPAN.split(str(text)))


def notice(kind: str, title: str, body: str = "") -> str:
    """A status line: a coloured pill (`ok`, `error` or `warn`) with a short title, then Markdown."""
    return f'<span class="hb-pill hb-{kind}">{html.escape(title)}</span> {body}'.rstrip()


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = max(0.0, float(s))
    if s < 1:
        return "under a second"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    seconds = (now - when).total_seconds()
    return "just now" if seconds < 5 else f"{human_seconds(seconds)} ago"


# ---- validation -----------------------------------------------------------------------------


def validation_markdown(v: "Validation", estimate: "Estimate | None" = None) -> str:
    """The plan from headers: verdict, sizes, time and memory, models with revisions, then every
    problem and warning (each already says what to do). `estimate` replaces the service's rough
    time with one measured on this machine."""
    n = len(v.problems)
    if v.ok:
        head = notice("ok", "Ready to merge", "Nothing is downloaded until you merge.")
    else:
        head = notice("error", f"{n} problem{'s' if n != 1 else ''} to fix" if n else "Not valid",
                      "Fix these, then validate again.")
    out = [head]
    if v.problems:
        out += ["", *(f"- {md(p)}" for p in v.problems)]
    if v.models:
        out += ["", "| Model | Revision |", "|---|---|"]
        for m in v.models:
            rev = m.get("revision")
            out.append(f"| {md(m.get('ref', '?'))} | {f'`{rev[:12]}`' if rev else 'local folder'} |")
    if v.ok or v.output_bytes:
        seconds = estimate.seconds if estimate else v.est_seconds
        out += ["", "| Output | Reads | Peak memory | Estimated time |", "|---|---|---|---|",
                f"| {human_bytes(v.output_bytes)} | {human_bytes(v.input_bytes)} | {human_bytes(v.peak_bytes)} "
                f"| {'about ' if seconds >= 1 else ''}{human_seconds(seconds)} |"]
        if estimate:
            out.append(f"\n<span class=\"hb-note\">The time is an estimate: {md(estimate.basis)}.</span>")
    if v.warnings:
        out += ["", "**Warnings**", *(f"- {md(w)}" for w in v.warnings)]
    if v.summary and v.summary.strip():
        out += ["", "<details><summary>Plan summary</summary>", "", "```text", v.summary.strip(), "```", "", "</details>"]
    return "\n".join(out)


def stale_markdown() -> str:
    """The status once the editor changed after a validation: the old plan no longer applies."""
    return notice("warn", "Edited since the last check", "Validate again to check the recipe as it is now.")


def waiting_markdown(action: str, models: list[str], seconds: float, endpoint: str) -> str:
    """What a check that takes more than a second is waiting for."""
    hub = [m for m in models if not ModelRef.parse(m).local]
    local = [m for m in models if ModelRef.parse(m).local]
    lines = [notice("warn", f"{action}… {seconds:.0f} s")]
    if hub:
        lines += ["", f"Waiting for {endpoint}: `config.json`, the weights index and the safetensors headers "
                      "(byte ranges only) of", *(f"- {md(m)}" for m in hub)]
    if local:
        lines += ["", "Reading the headers in the local folders", *(f"- `{m}`" for m in local)]
    if not models:
        lines += ["", "Checking the recipe."]
    return "\n".join(lines)


def curve_label(label: str, filters: list[str]) -> str:
    """A plot legend entry named by the recipe's filter the curve's tensors match (`t · self_attn`)
    rather than by the first tensor of the group."""
    name, _, tensor = label.partition(" · ")
    for f in filters:
        if f and f in tensor:
            return f"{name} · {f}"
    return f"{name} · other tensors" if filters else name


def curves_frame(curves: dict[str, list[float]]) -> "pd.DataFrame":
    """Per-layer parameter curves as a long table (layer, value, parameter) for a line plot."""
    import pandas as pd

    rows = [(int(layer), float(value), name) for name, values in curves.items() for layer, value in enumerate(values)]
    return pd.DataFrame(rows, columns=["layer", "value", "parameter"])


CURVE_COLORS = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
                "#bab0ac")


def curve_colors(names: list[str]) -> dict[str, str]:
    """One colour per curve, in order, shared by the plot and its legend."""
    return {name: CURVE_COLORS[i % len(CURVE_COLORS)] for i, name in enumerate(names)}


def legend_html(colors: dict[str, str]) -> str:
    """The plot's legend as HTML under it: its entries wrap on a narrow screen, where the plot's own
    one-row legend would run past the plot's edge."""
    keys = "".join(f'<span class="hb-key"><i style="background:{c}"></i>{html.escape(name)}</span>'
                   for name, c in colors.items())
    return f'<div class="hb-legend" role="list" aria-label="Curves">{keys}</div>'


# ---- jobs -----------------------------------------------------------------------------------


def _fraction(done: Any, total: Any) -> float:
    try:
        return max(0.0, min(1.0, float(done) / float(total))) if total else 0.0
    except (TypeError, ValueError):
        return 0.0


def _bar(label: str, value_text: str, fraction: float, state: str) -> str:
    return (f'<div class="hb-bar-label"><span>{label}</span><span>{html.escape(value_text)}</span></div>'
            f'<div class="hb-bar hb-{state}"><div style="width:{fraction * 100:.1f}%"></div></div>')


def job_html(job: "Job | None") -> str:
    """The followed job: state badge, queue position or timing, and progress bars for tensors and
    bytes (for a soup or search while it searches: evaluations, and the best recipe so far)."""
    if job is None:
        return '<div class="hb-job hb-empty">No job selected. Submit a recipe, or pick one under <b>My jobs</b>.</div>'
    p = job.progress or {}
    state = job.state
    facts = [f'<span class="hb-badge hb-{state}">{STATE_LABELS.get(state, state)}</span>',
             f'<span class="hb-id">job {html.escape(job.id)}</span>']
    if state == "queued" and p.get(WAITING_KEY):  # on Hugging Face Jobs, waiting for its owner since a restart
        facts.append(f"<span>{html.escape(str(p[WAITING_KEY]))}</span>")
    elif state == "queued" and job.position:
        facts.append("<span>next in the queue</span>" if job.position == 1
                     else f"<span>number {job.position} in the queue</span>")
    if job.started_at and state in ACTIVE_STATES:
        facts.append(f"<span>started {_ago(job.started_at)}</span>")
    elif job.finished_at:
        facts.append(f"<span>finished {_ago(job.finished_at)}</span>")
    if job.attempts and job.attempts > 1:
        facts.append(f"<span>attempt {job.attempts}</span>")
    tensors_total, bytes_total = p.get("tensors_total") or 0, p.get("bytes_total") or 0
    done = state == "done"
    t_frac = 1.0 if done else _fraction(p.get("tensors_done"), tensors_total)
    b_frac = 1.0 if done else _fraction(p.get("bytes_done"), bytes_total)
    bars = [
        _bar("Tensors", f"{p.get('tensors_done', 0) if not done else tensors_total or p.get('tensors_done', 0)}"
                        f" / {tensors_total or '?'}", t_frac, state),
        _bar("Bytes", f"{human_bytes(p.get('bytes_done', 0) if not done else bytes_total or p.get('bytes_done', 0))}"
                      f" / {human_bytes(bytes_total) if bytes_total else '?'}", b_frac, state),
    ]
    if p.get("evaluations_total") and not done:  # a soup or search job, while it searches
        bars = [_bar("Evaluations", f"{p.get('evaluations_done', 0)} / {p['evaluations_total']}",
                     _fraction(p.get("evaluations_done"), p["evaluations_total"]), state)]
        if p.get("best_recipe"):
            best = p.get("best_score")
            score = f"{p.get('metric', 'score')} {best:.4g}" if isinstance(best, (int, float)) else ""
            bars.append(f'<details class="hb-best"><summary>Best recipe so far {html.escape(score)}</summary>'
                        f'<pre>{html.escape(p["best_recipe"])}</pre></details>')
    return (f'<div class="hb-job" data-state="{state}"><div class="hb-facts">{"".join(facts)}</div>'
            f'{"".join(bars)}</div>')


def result_markdown(job: "Job | None", files: list[tuple[str, int]] | None = None) -> str:
    """Where the result is and how to use it: for a Hub result the repo, the commit and a loading
    snippet; for a local folder its files and sizes and a snippet; or why there is none."""
    if job is None:
        return ""
    if job.state == "failed":
        return f"**The merge failed.** {md(job.error or 'No reason was recorded; see the log.')}"
    if job.state == "cancelled":
        return "**Cancelled.** Nothing was published."
    if job.state != "done":
        return ""
    r = job.result or {}
    lines = []
    if r.get("pr_url"):
        lines.append(f"**Pull request opened:** [{md(r['pr_url'])}]({r['pr_url']})")
    if r.get("url"):
        commit = f" · commit `{r['commit'][:12]}`" if r.get("commit") else ""
        lines.append(f"**Published:** [{md(job.target or r['url'])}]({r['url']}){commit}. "
                     "Its model card documents the recipe, the sources and their revisions.")
        revision = f', revision="{r["commit"]}"' if r.get("commit") else ""
        lines.append(_snippet(f'"{job.target}"{revision}' if job.target else f'"{r["url"]}"'))
    if r.get("folder"):
        lines.append(f"**Saved to** `{r['folder']}`, ready for `from_pretrained`.")
        if files:
            rows = "\n".join(f"| `{name}` | {human_bytes(size)} |" for name, size in files)
            total = human_bytes(sum(size for _, size in files))
            lines.append(f"| File | Size |\n|---|---|\n{rows}\n| **{len(files)} files** | **{total}** |")
        lines.append(_snippet(f'"{r["folder"]}"'))
    return "\n\n".join(lines) or "**Done.**"


def _snippet(where: str) -> str:
    return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({where})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({where})\n```")


def duplicate_markdown(job: "Job") -> str:
    """A submission that matched an existing job: say so, and link it."""
    state = STATE_LABELS.get(job.state, job.state).lower()
    return notice("warn", "Identical merge exists",
                  f"job [`{job.id}`](?job={job.id}) ({state}) has the same recipe, sources and target, so nothing "
                  "new was queued. It is shown under **Jobs**.")


def jobs_rows(jobs: list["Job"]) -> list[list[Any]]:
    rows = []
    for j in jobs:
        rows.append([j.id, STATE_LABELS.get(j.state, j.state), method_of(j.recipe),
                     j.target or "local folder", _when(j.created_at)])
    return rows


KIND_LABELS = {"experts": "moe", "soup": "greedy soup", "evolve": "merge search"}


def method_of(recipe_text: str) -> str:
    """A recipe's method (or kind), read without parsing, so even a broken recipe has one."""
    m = re.search(r"^merge_method:\s*([\w-]+)", recipe_text or "", re.MULTILINE)
    if m:
        return m.group(1)
    kind = re.search(r"^(experts|soup|evolve):", recipe_text or "", re.MULTILINE)
    return KIND_LABELS[kind.group(1)] if kind else "?"


def _when(when: datetime | None) -> str:
    if when is None:
        return "-"
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%b %d, %H:%M")


def watch_markdown(watch: dict) -> str:
    """A registered watch: what it re-merges into, the source revisions it starts from, its first run."""
    target = watch.get("target")
    where = f"into `{target}`" + (" as pull requests" if watch.get("pr") else "") if target else "into a local folder"
    lines = [notice("ok", "Watching", f"a new commit on any source re-merges {where}.")]
    sources = watch.get("sources") or {}
    if sources:
        lines += ["", "| Source | Revision now |", "|---|---|"]
        lines += [f"| {md(ref)} | {f'`{rev[:12]}`' if rev else 'local folder'} |" for ref, rev in sources.items()]
    if watch.get("last_job_id"):
        lines += ["", f"The first run is job `{watch['last_job_id']}`; follow it under **Jobs**."]
    return "\n".join(lines)


# ---- gallery --------------------------------------------------------------------------------


def gallery_rows(entries: list["Entry"]) -> list[list[str]]:
    return [[e.title, e.method, ", ".join(e.tags)] for e in entries]


def entry_markdown(entry: "Entry | None") -> str:
    if entry is None:
        return "Pick a recipe from the list to see what it does."
    models = "\n".join(f"- `{m}`" if ModelRef.parse(m).local else f"- [{md(m)}](https://huggingface.co/{m})"
                       for m in entry.models)
    tags = " ".join(f"`{t}`" for t in entry.tags)
    return f"### {md(entry.title)}\n\n{md(entry.description)}\n\n{tags}\n\n**Known to work with**\n\n{models}"
