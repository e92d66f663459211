"""What the Space shows: validations, jobs and gallery entries rendered as Markdown, HTML and
tables. Pure functions of the service's records, so they are tested without a browser."""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..jobs.states import ACTIVE, QUEUED, STATES
from ..recipe.refs import ModelRef
from ..sizes import human_bytes

if TYPE_CHECKING:
    import pandas as pd

    from ..jobs.service import Job, Validation
    from .gallery import Entry

ACTIVE_STATES = (QUEUED, *ACTIVE)  # the page keeps following these
STATE_LABELS = {state: "Merging" if state == "running" else state.capitalize() for state in STATES}
JOB_COLUMNS = ["job", "state", "method", "target", "submitted"]
GALLERY_COLUMNS = ["recipe", "method", "tags"]
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|])")


def md(text: Any) -> str:
    """Text shown literally inside Markdown (tensor names such as self_attn keep their underscores)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


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


def validation_markdown(v: "Validation") -> str:
    """The plan from headers: verdict, sizes, time and memory, models with revisions, then every
    problem and warning (each already says what to do)."""
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
        out += ["", "| Output | Reads | Peak memory | Estimated time |", "|---|---|---|---|",
                f"| {human_bytes(v.output_bytes)} | {human_bytes(v.input_bytes)} | {human_bytes(v.peak_bytes)} "
                f"| {human_seconds(v.est_seconds)} |"]
    if v.warnings:
        out += ["", "**Warnings**", *(f"- {md(w)}" for w in v.warnings)]
    if v.summary and v.summary.strip():
        out += ["", "<details><summary>Plan summary</summary>", "", "```text", v.summary.strip(), "```", "", "</details>"]
    return "\n".join(out)


def curves_frame(curves: dict[str, list[float]]) -> "pd.DataFrame":
    """Per-layer parameter curves as a long table (layer, value, parameter) for a line plot."""
    import pandas as pd

    rows = [(layer, float(value), name) for name, values in curves.items() for layer, value in enumerate(values)]
    return pd.DataFrame(rows, columns=["layer", "value", "parameter"])


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
    if state == "queued" and job.position:
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


def result_markdown(job: "Job | None") -> str:
    """Where the result is (repo, pull request, card or folder), or why there is none."""
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
    if r.get("folder"):
        lines.append(f"**Saved to** `{r['folder']}`, ready for `from_pretrained`.")
    return "\n\n".join(lines) or "**Done.**"


def jobs_rows(jobs: list["Job"]) -> list[list[Any]]:
    rows = []
    for j in jobs:
        rows.append([j.id, STATE_LABELS.get(j.state, j.state), _method_of(j.recipe),
                     j.target or "local folder", _when(j.created_at)])
    return rows


KIND_LABELS = {"experts": "moe", "soup": "greedy soup", "evolve": "merge search"}


def _method_of(recipe_text: str) -> str:
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
