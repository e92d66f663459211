"""The Space: write or build a recipe, validate it from headers, submit it, follow the job, and
find, import and share community recipes.

The page talks only to `jobs.Service` (and to the recipe gallery); it never runs a merge itself.
A signed-in user's OAuth token goes straight from the request to `Service.submit`/`watch` and is
neither kept in the page state nor logged.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import inspect
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as WaitTimeout
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import gradio as gr
from gradio.utils import get_space

from .. import methods
from ..errors import HubbotError, JobNotFound
from ..recipe import form as recipe_form
from ..recipe.refs import model_refs_of
from ..recipe.text import load_yaml
from . import views
from .estimates import estimate
from .gallery import Gallery, import_recipe, share

if TYPE_CHECKING:
    from ..jobs.service import Job, Service
    from ..jobs.settings import Settings

log = logging.getLogger("hubbot.app.ui")

POLL_SECONDS = 1.0
ALL_TAGS = "All tags"
CONCURRENT_EVENTS = 16  # validation reads headers over the network: let several users wait at once
LOG_LINES_SHOWN = 400
WAIT_NOTICE_SECONDS = 1.0  # a check that takes longer says what it is waiting for
DEFAULT_METHOD = "slerp"
EDITOR_LINES = 8  # Gradio sizes the editor at about two text lines per "line": room for the starter, no more
STARTER = """\
# Write a recipe here, build one with the form below, or start from the gallery.
# Two small models of one family, so checking and merging take seconds.
merge_method: slerp
base_model: Qwen/Qwen2.5-0.5B-Instruct
models:
  - model: Qwen/Qwen2.5-0.5B-Instruct
  - model: Qwen/Qwen2.5-Coder-0.5B-Instruct
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""
AUTO_FLAVOR = ("auto (from the estimate)", "")
SHARE_DESTINATIONS = {
    "dataset": "Community recipes dataset (pull request)",
    "space": "This Space's gallery (pull request)",
}

THEME = gr.themes.Soft(
    primary_hue="indigo", secondary_hue="slate", neutral_hue="slate",
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica Neue", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)
CSS = """
.hb-header { align-items: center; border-bottom: 1px solid var(--border-color-primary); padding-bottom: 8px; }
.hb-header h1 { margin: 0; font-size: 1.6rem; letter-spacing: -0.01em; }
.hb-header p { margin: 2px 0 0; color: var(--body-text-color-subdued); }
.hb-account { text-align: right; font-size: 0.9rem; }
.hb-account p { margin: 0; }
.hb-job { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 14px 16px;
          background: var(--block-background-fill); }
.hb-job.hb-empty { color: var(--body-text-color-subdued); }
.hb-facts { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin-bottom: 10px;
            font-size: 0.9rem; color: var(--body-text-color-subdued); }
.hb-id { font-family: var(--font-mono); }
.hb-badge { font-weight: 600; font-size: 0.8rem; padding: 2px 10px; border-radius: 999px;
            color: white; background: #64748b; }
.hb-badge.hb-validating, .hb-badge.hb-running { background: #4f46e5; }
.hb-badge.hb-publishing { background: #7c3aed; }
.hb-badge.hb-done { background: #16a34a; }
.hb-badge.hb-failed { background: #dc2626; }
.hb-badge.hb-cancelled { background: #d97706; }
.hb-bar-label { display: flex; justify-content: space-between; font-size: 0.85rem; margin: 6px 0 3px; }
.hb-bar { height: 10px; border-radius: 6px; background: var(--border-color-primary); overflow: hidden; }
.hb-bar > div { height: 100%; background: #4f46e5; transition: width 0.6s ease; }
.hb-bar.hb-done > div { background: #16a34a; }
.hb-bar.hb-failed > div { background: #dc2626; }
.hb-bar.hb-cancelled > div { background: #d97706; }
.hb-log textarea { font-family: var(--font-mono) !important; font-size: 0.8rem !important; }
.hb-note { font-size: 0.9rem; color: var(--body-text-color-subdued); }
.hb-pill { display: inline-block; font-weight: 600; font-size: 0.85rem; padding: 1px 10px; border-radius: 999px;
           margin-right: 4px; color: white; }
.hb-pill.hb-ok { background: #16a34a; }
.hb-pill.hb-error { background: #dc2626; }
.hb-pill.hb-warn { background: #d97706; }
.hb-confirm { border: 1px solid #d97706; border-radius: 10px; padding: 8px 12px; }
/* table cells wrap between words only, never inside one, and never end in an ellipsis: a word wider
   than its cell widens the column and the table scrolls sideways (on a phone too) */
#jobs-table span.text, #gallery-table span.text, .hb-form-table span.text,
#jobs-table .header, #gallery-table .header, .hb-form-table .header,
.hb-tables td, .hb-tables th {
  white-space: normal !important; overflow-wrap: normal !important; word-break: normal !important;
  text-overflow: clip !important; overflow: visible !important; hyphens: none; }
#jobs-table [data-col="1"] span.text { white-space: nowrap !important; }
.hb-tables table { display: block; max-width: 100%; overflow-x: auto; border: none !important; }
@media (max-width: 640px) {
  #jobs-table, #gallery-table { font-size: 0.8rem; }
  /* the gallery's titles and tag lists are prose: narrower columns wrap them between words (the jobs
     table holds ids and dates, each column as wide as its longest) */
  #gallery-table .table-wrap { --df-max-col-width: 180px !important; }
}
/* the form's column headers are fixed: they name recipe fields */
.hb-form-table thead th { pointer-events: none; }
#status table { font-size: 0.9rem; }
#curves { min-height: 300px; }
.hb-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.85rem; padding: 0 8px; }
.hb-key { white-space: nowrap; display: inline-flex; align-items: center; gap: 6px; }
.hb-key i { display: inline-block; width: 14px; height: 3px; border-radius: 2px; }
footer { display: none !important; }
"""
# Tab leaves the recipe editor (YAML is indented with spaces, which the editor inserts itself),
# and the editor gets a name screen readers announce.
EDITOR_NAME = "Recipe (mergekit YAML). Tab moves to the next control; indent with spaces."
HEAD = """<script>
(() => {
  const NAME = %r;
  const focusable = () => [...document.querySelectorAll(
    'a[href], button:not([disabled]), input:not([disabled]):not([type=hidden]), textarea:not([disabled]), ' +
    'select:not([disabled]), [contenteditable=true], [tabindex]:not([tabindex="-1"])')]
    .filter((el) => el.offsetParent !== null);
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Tab" || event.ctrlKey || event.altKey || event.metaKey) return;
    const editor = event.target.closest && event.target.closest("#recipe-editor .cm-content");
    if (!editor) return;
    event.preventDefault();
    event.stopPropagation();
    const all = focusable();
    const next = all[(all.indexOf(editor) + (event.shiftKey ? all.length - 1 : 1)) %% all.length];
    if (next) next.focus();
  }, true);
  const name = () => document.querySelectorAll(
      '#recipe-editor .cm-content, #recipe-editor [aria-label="Code input container"]')
    .forEach((el) => { if (el.getAttribute("aria-label") !== NAME) el.setAttribute("aria-label", NAME); });
  new MutationObserver(name).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>""" % EDITOR_NAME


def launch_options() -> dict[str, Any]:
    """Keyword arguments for `Blocks.launch` / `gr.mount_gradio_app` (Gradio 6 takes the theme
    and stylesheet there, not in the Blocks constructor)."""
    return {"theme": THEME, "css": CSS, "head": HEAD}


def _friendly(fn: Callable) -> Callable:
    """Turn errors into readable messages in the page: hubbot's own errors verbatim, anything
    else as a short notice (the details go to the server log), never a stack trace. Handlers
    that show progress are generators; they are wrapped as generators."""

    def translate(exc: Exception) -> gr.Error:
        if isinstance(exc, HubbotError):
            return gr.Error(_html_text(str(exc)), title="Cannot do that", print_exception=False)
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error("Something went wrong on the server; the details were logged. Try again, "
                        "and report it if it happens again.", print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise translate(exc) from None

        return generator

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise translate(exc) from None

    return wrapper


def oauth_missing() -> list[str]:
    """The packages Gradio's sign-in needs (`gradio[oauth]`) that are not installed."""
    return [name for name in ("authlib", "itsdangerous") if importlib.util.find_spec(name) is None]


def _html_text(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def _error_markdown(prefix: str, exc: HubbotError) -> str:
    problems = getattr(exc, "problems", None) or [str(exc)]
    if len(problems) == 1:
        return views.notice("error", prefix, views.md(problems[0]))
    return views.notice("error", prefix) + "\n\n" + "\n".join(f"- {views.md(p)}" for p in problems)


def _owner(profile: gr.OAuthProfile | None) -> str | None:
    return profile.username if profile is not None else None


def _token(oauth_token: gr.OAuthToken | None) -> str | None:
    return oauth_token.token if oauth_token is not None else None


def _rows(table: Any) -> list[list[Any]]:
    """A table's rows, whether Gradio hands over a DataFrame or lists."""
    return table.values.tolist() if hasattr(table, "values") else list(table or [])


def _row_index(evt: gr.SelectData) -> int | None:
    return evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index


class Page:
    """The components the handlers update, created by `build_ui`'s layout. Handlers return
    `{component: update}` maps keyed by these, so each can be called and checked on its own."""

    account: gr.Markdown
    tabs: gr.Tabs
    timer: gr.Timer
    job_store: gr.BrowserState
    recipe_store: gr.BrowserState
    logs_state: gr.State
    slugs_state: gr.State
    picked_slug: gr.State
    checked: gr.State  # the text the status describes, or None once the editor changed
    pristine: gr.State  # the text the app last put into the editor (edits beyond it are the user's)
    pending: gr.State  # a recipe waiting for "Replace" while the editor holds edits
    editor: gr.Code
    editor_note: gr.Markdown
    confirm_box: gr.Group
    confirm_text: gr.Markdown
    form_method: gr.Dropdown
    form_dtype: gr.Dropdown
    form_out_dtype: gr.Dropdown
    form_info: gr.Markdown
    form_base: gr.Textbox
    form_models: gr.Dataframe
    form_shared: gr.Dataframe
    flavor: gr.Dropdown
    status: gr.Markdown
    curves: gr.LinePlot
    legend: gr.HTML
    job_id: gr.Textbox
    job_view: gr.HTML
    result: gr.Markdown
    download_btn: gr.Button
    files: gr.File
    cancel_btn: gr.Button
    cancel_box: gr.Group
    log_box: gr.Textbox
    job_recipe: gr.Code
    jobs_table: gr.Dataframe
    gallery_table: gr.Dataframe
    gallery_note: gr.Markdown
    entry_view: gr.Markdown
    entry_code: gr.Code
    share_status: gr.Markdown
    watch_status: gr.Markdown
    watch_target: gr.Textbox

    def follow_outputs(self) -> list[Any]:
        """Everything one poll of the followed job may change (the jobs table last)."""
        return [self.job_id, self.job_store, self.job_view, self.result, self.cancel_btn, self.cancel_box,
                self.download_btn, self.files, self.log_box, self.logs_state, self.timer, self.job_recipe,
                self.jobs_table]

    def editor_outputs(self) -> list[Any]:
        """Everything that changes when a recipe is put into the editor from elsewhere."""
        return [self.editor, self.tabs, self.status, self.curves, self.checked, self.editor_note, self.pristine,
                self.pending, self.confirm_box, self.confirm_text, self.legend]


class Handlers:
    """What the page does, one method per event, each returning `{component: update}` (or
    yielding them, while it waits). Holds the service, the settings and the gallery; per-browser
    state lives in the page's State components."""

    def __init__(self, service: "Service", settings: "Settings", gallery: Gallery, page: Page):
        self.service, self.settings, self.gallery, self.p = service, settings, gallery, page
        self.service_mode = settings.mode == "service"
        self.signin_available = get_space() is not None  # Gradio serves real OAuth only on a Space
        if self.signin_available and oauth_missing():
            raise HubbotError("signing in on a Space needs gradio[oauth]; this server lacks "
                               f"{', '.join(oauth_missing())}: pip install 'gradio[oauth]' (space/requirements.txt "
                               "lists it)")

    # ---- account ------------------------------------------------------------------------------

    def account_note(self, profile: gr.OAuthProfile | None) -> str:
        if profile is not None:
            return (f"Signed in as **{views.md(profile.username)}**. Merges publish to repos you can write, "
                    "with your token for this request only.")
        if self.service_mode:
            how = "Use the button above" if self.signin_available else "Open this app on its Space"
            return (f"**Sign in with Hugging Face to publish merges.** {how} to sign in; "
                    "validating recipes works without an account.")
        return ("**Local mode**: leave *Publish to* empty to save the merge in a local folder, "
                "or name a Hub repo to push it with this machine's Hugging Face token.")

    @_friendly
    def restore(self, stored_job: str, stored_recipe: str, profile: gr.OAuthProfile | None,
                request: gr.Request | None = None) -> dict:
        """On page load: the account note, the user's jobs, the recipe being edited before the
        reload, and the job this browser followed last (or the one a `?job=` link names)."""
        p = self.p
        linked = (request.query_params.get("job") if request is not None else None) or ""
        job = linked or stored_job or ""
        out = {p.account: self.account_note(profile), p.jobs_table: self.jobs_rows(profile), p.job_id: job,
               p.timer: gr.Timer(active=bool(job))}
        if stored_recipe and stored_recipe != STARTER:
            out.update({p.editor: stored_recipe,
                        p.editor_note: "Restored the recipe you were editing in this browser."})
        if linked:
            out[p.tabs] = gr.Tabs(selected="jobs")
        return out

    def flavor_choices(self) -> list[tuple[str, str]]:
        """The Hardware picker's choices where merges may run on Hugging Face Jobs (none where the
        backend is local): the service's own pick from the estimate, then each allowed flavour."""
        if self.settings.backend == "local":
            return []
        return [AUTO_FLAVOR, *((f, f) for f in self.settings.jobs_flavors)]

    # ---- the recipe: checking and editing -----------------------------------------------------

    def _waiting(self, action: str, text: str, call: Callable[[], Any]) -> Iterator[dict]:
        """Run `call` on a thread; after a second, say what is being waited for until it returns.
        The result is the generator's return value."""
        models = model_refs_of(text)
        started = time.monotonic()
        with ThreadPoolExecutor(1, thread_name_prefix="hubbot-ui") as pool:
            future = pool.submit(call)
            while True:
                try:
                    return future.result(timeout=WAIT_NOTICE_SECONDS / 2)
                except WaitTimeout:
                    waited = time.monotonic() - started
                    if waited >= WAIT_NOTICE_SECONDS:
                        yield {self.p.status: views.waiting_markdown(action, models, waited, self._endpoint())}

    def _endpoint(self) -> str:
        return self.settings.hub_endpoint or "huggingface.co"

    @_friendly
    def validate(self, recipe_text: str) -> Iterator[dict]:
        p = self.p
        text = recipe_text or ""
        v = yield from self._waiting("Checking the recipe", text, lambda: self.service.validate(text))
        guess = None
        if v.ok:
            method = views.method_of(text)
            guess = estimate(method, v.output_bytes, v.est_seconds, self.service.list(limit=200))
        curves = None
        if v.curves:
            filters = _filters(text)
            curves = {views.curve_label(label, filters): values for label, values in v.curves.items()}
            curves = {**_fallback_lines(text, curves), **curves}
        yield {p.status: views.validation_markdown(v, guess), p.checked: text, **self.plot(curves)}

    def plot(self, curves: dict[str, list[float]] | None) -> dict:
        """The per-layer plot and its legend, or neither. The legend is HTML under the plot, in the
        plot's colours, so that on a phone it wraps instead of running past the plot's edge."""
        p = self.p
        if not curves:
            return {p.curves: gr.LinePlot(value=None, visible=False), p.legend: gr.HTML("", visible=False)}
        colors = views.curve_colors(list(curves))
        return {p.curves: gr.LinePlot(value=views.curves_frame(curves), color_map=colors, visible=True),
                p.legend: gr.HTML(views.legend_html(colors), visible=True)}

    def edited(self, recipe_text: str, checked: str | None) -> dict:
        """The editor changed: a status about another text no longer applies."""
        if checked is None or (recipe_text or "") == checked:
            return _unchanged(self.p.checked)
        p = self.p
        return {p.status: views.stale_markdown(), **self.plot(None), p.checked: None}

    def offer(self, text: str, note: str, current: str, pristine: str) -> dict:
        """Put `text` into the editor, unless the editor holds edits of the user's: then ask first."""
        p = self.p
        if (current or "").strip() in ("", (pristine or "").strip(), text.strip()):
            return self.replace((text, note))
        return {p.pending: (text, note), p.confirm_box: gr.Group(visible=True), p.tabs: gr.Tabs(selected="recipe"),
                p.confirm_text: f"The editor holds edits of yours. Replace them with {note}"}

    def replace(self, pending: tuple[str, str] | list | None) -> dict:
        p = self.p
        if not pending:
            return self.keep()
        text, note = pending
        return {p.editor: text, p.pristine: text, p.tabs: gr.Tabs(selected="recipe"),
                p.status: f"Loaded {note}. Validate it to see the plan.",
                **self.plot(None), p.checked: None, p.editor_note: "",
                **self.keep()}

    def keep(self) -> dict:
        return {self.p.pending: None, self.p.confirm_box: gr.Group(visible=False)}

    # ---- jobs -----------------------------------------------------------------------------------

    def show_job(self, job: "Job", lines: list[str]) -> dict:
        """The Jobs tab showing `job`: its state, result, log, recipe, and whether to keep polling."""
        p = self.p
        active = job.state in views.ACTIVE_STATES
        files = self._result_files(job)
        return {p.job_id: job.id, p.job_store: job.id, p.job_view: views.job_html(job),
                p.result: views.result_markdown(job, files), p.cancel_btn: gr.Button(visible=active),
                p.download_btn: gr.Button(visible=bool(files)), p.log_box: "\n".join(lines[-LOG_LINES_SHOWN:]),
                p.logs_state: {"job": job.id, "lines": lines, "state": job.state}, p.timer: gr.Timer(active=active),
                p.job_recipe: job.recipe, **({} if active else {p.cancel_box: gr.Group(visible=False)})}

    def _result_files(self, job: "Job") -> list[tuple[str, int]]:
        """A local result's files and sizes (local mode only: a service shows Hub results)."""
        folder = (job.result or {}).get("folder") if job.state == "done" and self.settings.local else None
        if not folder or not Path(folder).is_dir():
            return []
        return [(f.name, f.stat().st_size) for f in sorted(Path(folder).iterdir()) if f.is_file()]

    def no_job(self, job_id: str = "", note: str = "") -> dict:
        p = self.p
        return {p.job_id: job_id, p.job_store: "", p.job_view: views.job_html(None), p.result: note,
                p.cancel_btn: gr.Button(visible=False), p.cancel_box: gr.Group(visible=False),
                p.download_btn: gr.Button(visible=False), p.files: gr.File(value=None, visible=False),
                p.log_box: "", p.logs_state: {"job": "", "lines": []}, p.timer: gr.Timer(active=False),
                p.job_recipe: ""}

    @_friendly
    def submit(self, recipe_text: str, target: str, private: bool, pr: bool, flavor: str,
               profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> Iterator[dict]:
        """Queue the merge; `flavor` (the Hardware picker, empty for auto) sends it to Hugging Face Jobs."""
        p = self.p
        target = (target or "").strip() or None
        if self.service_mode and profile is None:
            yield {p.status: views.notice("error", "Sign in to publish", "The merge is pushed to a repo in your "
                                          "namespace with your token, so sign in with Hugging Face first.")}
            return
        if self.service_mode and target is None:
            yield {p.status: views.notice("error", "Name the repo to publish to",
                                          f"in *Publish to*, e.g. `{profile.username}/my-merge`.")}
            return
        text = recipe_text or ""
        asked = datetime.now(timezone.utc)
        try:
            job = yield from self._waiting("Checking and queueing the merge", text, lambda: self.service.submit(
                text, owner=_owner(profile), target=target, private=bool(private), pr=bool(pr),
                token=_token(oauth_token), flavor=(flavor or "").strip() or None))
        except HubbotError as exc:
            yield {p.status: _error_markdown("Not submitted", exc), p.checked: text,
                   **self.plot(None)}
            return
        if _utc(job.created_at) < asked:
            note = views.duplicate_markdown(job)
        else:
            where = f"`{views.md(target)}`" if target else "a local folder"
            note = views.notice("ok", "Submitted", f"job `{job.id}`; the result goes to {where}. "
                                "Follow it under **Jobs**.")
        yield {p.status: note, p.checked: text, **self.show_job(job, []), p.tabs: gr.Tabs(selected="jobs"),
               p.jobs_table: self.jobs_rows(profile)}

    def jobs_rows(self, profile: gr.OAuthProfile | None) -> list[list[Any]]:
        if self.service_mode and profile is None:
            return []
        return views.jobs_rows(self.service.list(owner=_owner(profile)))

    @_friendly
    def list_jobs(self, profile: gr.OAuthProfile | None) -> dict:
        return {self.p.jobs_table: self.jobs_rows(profile)}

    @_friendly
    def follow(self, job_id: str, logs: dict | None, profile: gr.OAuthProfile | None) -> dict:
        """One poll: the job's state and progress, new log lines, and whether to keep polling."""
        job_id = (job_id or "").strip()
        if not job_id:
            return self.no_job()
        try:
            job = self.service.get(job_id, owner=_owner(profile))
        except JobNotFound:
            return self.no_job(job_id, views.notice("error", "No such job",
                                                    f"`{job_id}`: check the id, or pick one under *My jobs*."))
        logs = logs if logs and logs.get("job") == job.id else {"job": job.id, "lines": []}
        lines = list(logs["lines"]) + list(self.service.log(job.id, since=len(logs["lines"]), owner=_owner(profile)))
        out = self.show_job(job, lines)
        if logs.get("state") != job.state:
            out[self.p.jobs_table] = self.jobs_rows(profile)
        else:
            del out[self.p.job_recipe]  # unchanged since the last poll
        return out

    def ask_cancel(self) -> dict:
        return {self.p.cancel_box: gr.Group(visible=True)}

    @_friendly
    def cancel(self, job_id: str, logs: dict | None, profile: gr.OAuthProfile | None) -> dict:
        if not job_id:
            raise gr.Error("No job selected to cancel.", print_exception=False)
        self.service.cancel(job_id, owner=_owner(profile))
        return {**self.follow(job_id, logs, profile), self.p.cancel_box: gr.Group(visible=False)}

    @_friendly
    def download(self, job_id: str, profile: gr.OAuthProfile | None) -> dict:
        """The result folder's files, offered one by one (only on request: they can be large)."""
        job = self.service.get((job_id or "").strip(), owner=_owner(profile))
        files = self._result_files(job)
        if not files:
            raise gr.Error("This job has no local result folder to download.", print_exception=False)
        folder = Path(job.result["folder"])
        gr.set_static_paths([folder])  # served in place, not copied into Gradio's cache
        return {self.p.files: gr.File(value=[str(folder / name) for name, _ in files], visible=True)}

    def pick_job(self, table: Any, evt: gr.SelectData) -> dict:
        rows, row = _rows(table), _row_index(evt)
        if row is None or row >= len(rows):
            return _unchanged(self.p.job_id)
        return {self.p.job_id: rows[row][0], self.p.timer: gr.Timer(active=True)}

    def edit_copy(self, job_id: str, recipe_text: str, current: str, pristine: str) -> dict:
        if not (recipe_text or "").strip():
            raise gr.Error("Follow a job first; its recipe appears here.", print_exception=False)
        return self.offer(recipe_text, f"the recipe of job `{views.md(job_id)}`", current, pristine)

    # ---- gallery --------------------------------------------------------------------------------

    def gallery_view(self, query: str, tag: str, picked: str = "") -> dict:
        p = self.p
        entries = self.gallery.search(query or "", None if tag in (None, "", ALL_TAGS) else tag)
        slugs = [e.slug for e in entries]
        out = {p.gallery_table: views.gallery_rows(entries), p.slugs_state: slugs,
               p.gallery_note: "" if entries else "No recipe matches; try another word or *All tags*."}
        if picked not in slugs:  # "Use this recipe" never loads one the list no longer shows
            out.update({p.picked_slug: "", p.entry_view: views.entry_markdown(None), p.entry_code: ""})
        return out

    @_friendly
    def search_gallery(self, query: str, tag: str, picked: str) -> dict:
        return self.gallery_view(query, tag, picked)

    @_friendly
    def pick_recipe(self, slugs: list[str], evt: gr.SelectData) -> dict:
        row = _row_index(evt)
        if row is None or row >= len(slugs):
            return _unchanged(self.p.picked_slug)
        entry = self.gallery.load(slugs[row])
        p = self.p
        return {p.picked_slug: entry.slug, p.entry_view: views.entry_markdown(entry), p.entry_code: entry.text}

    @_friendly
    def use_recipe(self, slug: str, current: str, pristine: str) -> dict:
        if not slug:
            raise gr.Error("Pick a recipe in the list first.", print_exception=False)
        entry = self.gallery.load(slug)
        return self.offer(entry.text, f"**{views.md(entry.title)}** from the gallery", current, pristine)

    @_friendly
    def import_from_hub(self, model_id: str, current: str, pristine: str,
                        oauth_token: gr.OAuthToken | None) -> dict:
        if not (model_id or "").strip():
            raise gr.Error("Paste the id of a merged model, e.g. mlabonne/NeuralBeagle14-7B.", print_exception=False)
        text = import_recipe(model_id, token=_token(oauth_token))
        return self.offer(text, f"the recipe of **{views.md(model_id.strip())}**", current, pristine)

    def share_destinations(self) -> dict[str, str]:
        """Where this server can open a sharing pull request (nothing configured: nowhere)."""
        repos = {"dataset": self.settings.recipes_dataset, "space": self.settings.space_id}
        return {k: v for k, v in SHARE_DESTINATIONS.items() if repos[k]}

    @_friendly
    def share_recipe(self, recipe_text: str, title: str, description: str, tags: str, destination: str,
                     oauth_token: gr.OAuthToken | None) -> dict:
        return {self.p.share_status: self._share(recipe_text, title, description, tags, destination,
                                                 _token(oauth_token))}

    def _share(self, recipe_text: str, title: str, description: str, tags: str, destination: str,
               token: str | None) -> str:
        if token is None and self.service_mode:
            return views.notice("error", "Sign in to share", "The pull request is opened in your name.")
        repo_id = self.settings.recipes_dataset if destination == "dataset" else self.settings.space_id
        if not repo_id:
            variable = "HUBBOT_RECIPES_DATASET" if destination == "dataset" else "SPACE_ID"
            return views.notice("error", "Nowhere to share", f"this server has no {variable} set.")
        try:
            url = share(recipe_text or "", title=title or "", description=description or "",
                        tags=[t.strip() for t in (tags or "").split(",") if t.strip()],
                        repo_id=repo_id, repo_type=destination, token=token)
        except HubbotError as exc:
            return _error_markdown("Not shared", exc)
        return views.notice("ok", "Pull request opened", f"[{views.md(url)}]({url})")

    # ---- watch ----------------------------------------------------------------------------------

    @_friendly
    def watch(self, recipe_text: str, target: str, private: bool, pr: bool, profile: gr.OAuthProfile | None,
              oauth_token: gr.OAuthToken | None) -> dict:
        """Register the watch; its first run starts at once and the Jobs tab follows it."""
        p = self.p
        target = (target or "").strip()
        if self.service_mode and profile is None:
            return {p.watch_status: views.notice("error", "Sign in to watch", "Re-merges publish in your name.")}
        if not target:
            return {p.watch_status: views.notice("error", "Name the result repo",
                                                 "the re-merges publish to, e.g. `you/my-merge`.")}
        try:
            info = self.service.watch(recipe_text or "", owner=_owner(profile), target=target, private=bool(private),
                                      pr=bool(pr), token=_token(oauth_token))
        except HubbotError as exc:
            return {p.watch_status: _error_markdown("Not watching", exc)}
        out = {p.watch_status: views.watch_markdown(info)}
        if info.get("last_job_id"):
            out.update({p.job_id: info["last_job_id"], p.timer: gr.Timer(active=True)})
        return out

    # ---- form -----------------------------------------------------------------------------------

    def form_method_changed(self, method_name: str, rows: Any) -> dict:
        p = self.p
        m = methods.get(method_name)
        columns = recipe_form.model_columns(method_name)
        models = [r[0] for r in _rows(rows) if r and r[0]] or [""] * 2
        info = f"**{views.md(m.title)}**: {views.md_code(m.summary)}" + (f"  \n*{views.md(m.paper)}*" if m.paper else "")
        params = ", ".join(f"`{p.name}`" for p in m.params) or "none"
        info += f"  \nParameters: {params}."
        return {p.form_models: _table([[name] + [""] * (len(columns) - 1) for name in models], columns),
                p.form_base: gr.Textbox(visible=m.base != "none"), p.form_info: info}

    def add_row(self, table: Any, columns: list[str]) -> Any:
        rows = _rows(table)
        width = len(rows[0]) if rows else len(columns)
        return _table([*rows, [""] * width], columns)

    def remove_row(self, table: Any, columns: list[str]) -> Any:
        rows = _rows(table)
        return _table(rows[:-1] if len(rows) > 1 else [[""] * len(rows[0] if rows else columns)], columns)

    def add_model(self, table: Any, method_name: str) -> dict:
        return {self.p.form_models: self.add_row(table, recipe_form.model_columns(method_name))}

    def remove_model(self, table: Any, method_name: str) -> dict:
        return {self.p.form_models: self.remove_row(table, recipe_form.model_columns(method_name))}

    def add_shared(self, table: Any) -> dict:
        return {self.p.form_shared: self.add_row(table, recipe_form.SHARED_COLUMNS)}

    def remove_shared(self, table: Any) -> dict:
        return {self.p.form_shared: self.remove_row(table, recipe_form.SHARED_COLUMNS)}

    @_friendly
    def form_to_editor(self, method_name: str, base: str, rows: Any, shared: Any, dtype: str, out_dtype: str,
                       current: str, pristine: str) -> dict:
        text = recipe_form.to_yaml(method_name, base if methods.get(method_name).base != "none" else "",
                                   _rows(rows), _rows(shared), dtype, out_dtype)
        return self.offer(text, "the recipe written from the form", current, pristine)


def _unchanged(component: Any) -> dict:
    """No update at all (Gradio reads an empty map as one output value, not as none)."""
    return {component: gr.skip()}


def _table(rows: list[list[Any]], columns: list[str]) -> Any:
    """A form table update whose columns stay those of the recipe fields."""
    return gr.Dataframe(value=rows, headers=columns, column_count=len(columns))


def _filters(recipe_text: str) -> list[str]:
    """The `filter:` values the recipe writes, in order, to name the plot's curves by."""
    import re

    return list(dict.fromkeys(re.findall(r"filter:\s*['\"]?([^'\"\s#}]+)", recipe_text or "")))


def _fallback_lines(recipe_text: str, curves: dict[str, list[float]]) -> dict[str, list[float]]:
    """Flat lines for the fallback rule (`- value: 0.5` without a filter) of a parameter whose
    filtered rules are plotted: the plan leaves constants out, but the rule applies all the same."""
    try:
        data = load_yaml(recipe_text)
    except HubbotError:
        return {}
    layers = max((len(values) for values in curves.values()), default=0)
    params = data.get("parameters") if isinstance(data, dict) else None
    out = {}
    for name, rules in (params or {}).items() if isinstance(params, dict) else ():
        if not isinstance(rules, list) or f"{name} · other tensors" in curves:
            continue
        for rule in rules:
            if isinstance(rule, dict) and "filter" not in rule and isinstance(rule.get("value"), (int, float)):
                out[f"{name} · other tensors"] = [float(rule["value"])] * layers
    return out


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def build_ui(service: "Service", settings: "Settings", gallery: Gallery | None = None) -> gr.Blocks:
    """The whole app. `gallery` defaults to the recipes folder the settings name."""
    return build_app(service, settings, gallery)[0]


def build_app(service: "Service", settings: "Settings", gallery: Gallery | None = None) -> tuple[gr.Blocks, Handlers]:
    """The page's layout and its events; the handlers come back too, for tests that call them."""
    gallery = gallery or Gallery(settings.recipes_dir)
    p = Page()
    h = Handlers(service, settings, gallery, p)
    service_mode = h.service_mode
    method_choices = [(f"{m.title} · {name}", name) for name, m in methods.all_methods().items()]
    first_entries = gallery.search("", None)
    first_slugs = [e.slug for e in first_entries]
    first_entry = gallery.load(first_slugs[0]) if first_slugs else None
    destinations = h.share_destinations()
    model_columns = recipe_form.model_columns(DEFAULT_METHOD)

    with gr.Blocks(title="hubbot · merge models on the Hub") as demo:
        p.job_store = gr.BrowserState("", storage_key="hubbot-job")
        p.recipe_store = gr.BrowserState("", storage_key="hubbot-recipe")
        p.logs_state = gr.State({"job": "", "lines": []})
        p.slugs_state = gr.State(first_slugs)
        p.picked_slug = gr.State(first_entry.slug if first_entry else "")
        p.checked = gr.State(None)
        p.pristine = gr.State(STARTER)
        p.pending = gr.State(None)
        p.timer = gr.Timer(POLL_SECONDS, active=False)

        with gr.Row(elem_classes="hb-header"):
            with gr.Column(scale=3):
                gr.Markdown("# hubbot\nMerge language models where they live: write a recipe, check it "
                            "against the models' headers, and publish the result to the Hub.")
            with gr.Column(scale=2, min_width=280):
                if h.signin_available:
                    gr.LoginButton(size="md")
                p.account = gr.Markdown(h.account_note(None), elem_classes="hb-account")

        with gr.Tabs(selected="recipe") as p.tabs:
            with gr.Tab("Recipe", id="recipe"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        p.editor = gr.Code(STARTER, language="yaml", lines=EDITOR_LINES, max_lines=18,
                                           label="Recipe (mergekit YAML)", elem_id="recipe-editor", wrap_lines=True)
                        p.editor_note = gr.Markdown("Tab moves to the next control; the editor indents with spaces "
                                                    "on Enter.", elem_classes="hb-note", elem_id="editor-note")
                        with gr.Group(visible=False, elem_classes="hb-confirm", elem_id="confirm-replace") \
                                as p.confirm_box:
                            p.confirm_text = gr.Markdown()
                            with gr.Row():
                                replace_btn = gr.Button("Replace my edits", variant="stop", size="sm",
                                                        elem_id="confirm-replace-yes")
                                keep_btn = gr.Button("Keep my edits", size="sm", elem_id="confirm-replace-no")
                        with gr.Row():
                            target = gr.Textbox(
                                label="Publish to",
                                placeholder="org/name on the Hub" + ("" if service_mode else " (empty: local folder)"),
                                scale=3,
                            )
                            with gr.Column(scale=2, min_width=200):
                                private = gr.Checkbox(label="Private repo")
                                as_pr = gr.Checkbox(label="As a pull request to an existing repo")
                        flavors = h.flavor_choices()
                        p.flavor = gr.Dropdown(
                            flavors or [AUTO_FLAVOR], value="", label="Hardware", visible=bool(flavors),
                            elem_id="hardware", info="A flavour runs the merge on Hugging Face Jobs, billed to your "
                            "account; auto lets the service choose from the memory and time estimate.")
                        with gr.Row():
                            validate_btn = gr.Button("Validate", variant="secondary", elem_id="validate-button")
                            submit_btn = gr.Button("Merge", variant="primary", elem_id="submit-button")
                        with gr.Accordion("Build a recipe with a form", open=False, elem_id="form"):
                            with gr.Row():
                                p.form_method = gr.Dropdown(method_choices, value=DEFAULT_METHOD, label="Method",
                                                            scale=2)
                                p.form_dtype = gr.Dropdown(list(recipe_form.DTYPES), value="bfloat16", label="dtype",
                                                           scale=1)
                                p.form_out_dtype = gr.Dropdown(
                                    [("as dtype", ""), *((d, d) for d in recipe_form.OUT_DTYPES)], value="",
                                    label="out_dtype", scale=1, elem_id="form-out-dtype",
                                    info="; ".join(f"{d} {note}" for d, note in recipe_form.OUT_DTYPE_NOTES.items()))
                            p.form_info = gr.Markdown()
                            p.form_base = gr.Textbox(label="Base model", placeholder="org/name of the common base",
                                                     visible=methods.get(DEFAULT_METHOD).base != "none")
                            p.form_models = gr.Dataframe(
                                value=[[""] * len(model_columns)] * 2, headers=model_columns, type="array",
                                interactive=True, label="Models", column_count=len(model_columns),
                                elem_id="form-models", elem_classes="hb-form-table",
                            )
                            with gr.Row():
                                add_model_btn = gr.Button("Add a model", size="sm", elem_id="add-model")
                                remove_model_btn = gr.Button("Remove the last model", size="sm",
                                                             elem_id="remove-model")
                            gr.Markdown("One model per row. A cell takes a number, `true`/`false`, or a per-layer "
                                        "curve such as `0, 0.5, 1`. *layers* is a range such as `0-24` "
                                        "(end excluded), required for passthrough.", elem_classes="hb-note")
                            shared_columns = recipe_form.SHARED_COLUMNS
                            p.form_shared = gr.Dataframe(
                                value=[[""] * len(shared_columns)], headers=shared_columns, type="array",
                                interactive=True, label="Shared parameters and per-layer curves",
                                column_count=len(shared_columns),
                                elem_id="form-shared", elem_classes="hb-form-table",
                            )
                            with gr.Row():
                                add_shared_btn = gr.Button("Add a parameter row", size="sm", elem_id="add-shared")
                                remove_shared_btn = gr.Button("Remove the last parameter row", size="sm")
                            gr.Markdown("*filter* limits a row to tensors whose name contains it (e.g. `self_attn`, "
                                        "`mlp`); the row without a filter applies to the rest.", elem_classes="hb-note")
                            form_write = gr.Button("Write the recipe into the editor", elem_id="form-write")
                    with gr.Column(scale=2):
                        p.status = gr.Markdown(
                            "Validate the recipe to see the plan: the models and their revisions, the output size, "
                            "the estimated time and memory, the per-layer parameters, and any problem with what "
                            "to do about it. Only headers are read; nothing is downloaded.",
                            elem_id="status", elem_classes="hb-tables",
                        )
                        p.curves = gr.LinePlot(x="layer", y="value", color="parameter", title="Per-layer parameters",
                                               x_title="layer", y_title="value", x_axis_format="d", height=300,
                                               colors_in_legend=[], visible=False, elem_id="curves")
                        p.legend = gr.HTML("", visible=False, elem_id="curves-legend")

            with gr.Tab("Jobs", id="jobs"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        with gr.Row():
                            p.job_id = gr.Textbox(label="Job id", placeholder="paste a job id to follow it", scale=4,
                                                  elem_id="job-id")
                            follow_btn = gr.Button("Follow", scale=1, size="md")
                        p.job_view = gr.HTML(views.job_html(None), elem_id="job-view")
                        p.result = gr.Markdown(elem_id="job-result", elem_classes="hb-tables")
                        p.download_btn = gr.Button("Download the files", visible=False, size="md",
                                                   elem_id="download-button")
                        p.files = gr.File(label="Files of the result", file_count="multiple", visible=False,
                                          interactive=False, elem_id="job-files")
                        p.cancel_btn = gr.Button("Cancel this job", variant="stop", visible=False, size="md",
                                                 elem_id="cancel-button")
                        with gr.Group(visible=False, elem_classes="hb-confirm", elem_id="confirm-cancel") as p.cancel_box:
                            gr.Markdown("Cancel this job? The work done so far is discarded and nothing is published.")
                            with gr.Row():
                                cancel_yes = gr.Button("Yes, cancel it", variant="stop", size="sm",
                                                       elem_id="confirm-cancel-yes")
                                cancel_no = gr.Button("Keep it running", size="sm")
                        p.log_box = gr.Textbox(label="Log", lines=12, max_lines=12, interactive=False,
                                               autoscroll=True, elem_classes="hb-log")
                        with gr.Accordion("The recipe this job ran", open=False, elem_id="job-recipe-box"):
                            p.job_recipe = gr.Code("", language="yaml", interactive=False, lines=8, max_lines=24,
                                                   label="Recipe", wrap_lines=True, elem_id="job-recipe")
                            edit_copy_btn = gr.Button("Edit a copy", size="sm", elem_id="edit-copy")
                    with gr.Column(scale=2):
                        with gr.Row():
                            gr.Markdown("### My jobs")
                            refresh_btn = gr.Button("Refresh", size="sm", scale=0)
                        p.jobs_table = gr.Dataframe(headers=views.JOB_COLUMNS, interactive=False, wrap=True,
                                                    column_count=len(views.JOB_COLUMNS), max_height=520,
                                                    elem_id="jobs-table")
                        gr.Markdown("Select a row to follow that job and see its recipe. Jobs keep running when you "
                                    "close the page.", elem_classes="hb-note")

            with gr.Tab("Gallery", id="gallery"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        with gr.Row():
                            search = gr.Textbox(label="Search the gallery", scale=3, elem_id="gallery-search",
                                                placeholder="llama, slerp, code, reasoning…")
                            tag = gr.Dropdown([ALL_TAGS, *gallery.tags()], value=ALL_TAGS, label="Tag", scale=1)
                        p.gallery_table = gr.Dataframe(views.gallery_rows(first_entries),
                                                       headers=views.GALLERY_COLUMNS, interactive=False, wrap=True,
                                                       column_count=len(views.GALLERY_COLUMNS), max_height=420,
                                                       elem_id="gallery-table")
                        p.gallery_note = gr.Markdown(elem_id="gallery-note", elem_classes="hb-note")
                        with gr.Accordion("Import the recipe of a merged model on the Hub", open=False):
                            with gr.Row():
                                import_id = gr.Textbox(label="Merged model on the Hub", scale=4, elem_id="import-id",
                                                       placeholder="org/name, e.g. mlabonne/NeuralBeagle14-7B")
                                import_btn = gr.Button("Import", scale=1)
                            gr.Markdown("Reads the model's `mergekit_config.yml`, or the YAML recipe in its card.",
                                        elem_classes="hb-note")
                        with gr.Accordion("Share the recipe in the editor", open=False, elem_id="share"):
                            if not destinations:
                                gr.Markdown("Sharing is off on this server: it has no community recipes dataset "
                                            "(`HUBBOT_RECIPES_DATASET`) and is not a Space (`SPACE_ID`).",
                                            elem_classes="hb-note", elem_id="share-off")
                            share_title = gr.Textbox(label="Title", interactive=bool(destinations))
                            share_desc = gr.Textbox(label="Description", lines=2, interactive=bool(destinations),
                                                    placeholder="What the merge is for and why these settings")
                            share_tags = gr.Textbox(label="Tags", placeholder="comma separated, e.g. chat, llama-3.1",
                                                    interactive=bool(destinations))
                            share_dest = gr.Radio([(v, k) for k, v in (destinations or SHARE_DESTINATIONS).items()],
                                                  value=next(iter(destinations or SHARE_DESTINATIONS)), label="Where",
                                                  interactive=bool(destinations))
                            share_btn = gr.Button("Open a pull request", interactive=bool(destinations))
                            p.share_status = gr.Markdown()
                    with gr.Column(scale=2):
                        p.entry_view = gr.Markdown(views.entry_markdown(first_entry))
                        p.entry_code = gr.Code(first_entry.text if first_entry else "", language="yaml",
                                               interactive=False, lines=12, max_lines=24, label="Recipe",
                                               wrap_lines=True)
                        use_btn = gr.Button("Use this recipe", variant="primary", elem_id="use-recipe")

            with gr.Tab("Watch", id="watch"):
                gr.Markdown("### Re-merge when a source model changes\nThe recipe in the editor runs again "
                            "whenever one of its source models gets a new commit on the Hub, and the result "
                            "repo gets a new commit (or a pull request) whose card names the new revisions.")
                with gr.Row():
                    p.watch_target = gr.Textbox(label="Result repo", placeholder="org/name", scale=3)
                    watch_private = gr.Checkbox(label="Private repo", scale=1)
                    watch_pr = gr.Checkbox(label="Publish re-merges as pull requests", scale=1)
                watch_btn = gr.Button("Watch the sources", variant="primary")
                p.watch_status = gr.Markdown()

        # ---- events ---------------------------------------------------------------------------

        follow_outputs = p.follow_outputs()
        follow_inputs = [p.job_id, p.logs_state]
        editor_outputs = p.editor_outputs()
        current = [p.editor, p.pristine]
        validate_btn.click(h.validate, [p.editor], [p.status, p.curves, p.checked, p.legend], api_name="validate")
        submit_btn.click(h.submit, [p.editor, target, private, as_pr, p.flavor],
                         [p.status, *follow_outputs, p.checked, p.curves, p.tabs, p.legend], api_name="submit")
        p.editor.input(h.edited, [p.editor, p.checked], [p.status, p.curves, p.checked, p.legend], api_name=False,
                       show_progress="hidden", trigger_mode="always_last")
        p.editor.change(None, [p.editor], [p.recipe_store], js="(text) => text", api_name=False)
        replace_btn.click(h.replace, [p.pending], editor_outputs, api_name=False)
        keep_btn.click(h.keep, None, [p.pending, p.confirm_box], api_name=False)

        p.timer.tick(h.follow, follow_inputs, follow_outputs, api_name="follow", show_progress="hidden")
        follow_btn.click(h.follow, follow_inputs, follow_outputs, api_name=False)
        p.job_id.submit(h.follow, follow_inputs, follow_outputs, api_name=False)
        p.cancel_btn.click(h.ask_cancel, None, [p.cancel_box], api_name=False)
        cancel_no.click(lambda: gr.Group(visible=False), None, [p.cancel_box], api_name=False)
        cancel_yes.click(h.cancel, follow_inputs, follow_outputs, api_name="cancel")
        p.download_btn.click(h.download, [p.job_id], [p.files], api_name=False)
        edit_copy_btn.click(h.edit_copy, [p.job_id, p.job_recipe, *current], editor_outputs, api_name=False)
        refresh_btn.click(h.list_jobs, None, [p.jobs_table], api_name="jobs")
        p.jobs_table.select(h.pick_job, [p.jobs_table], [p.job_id, p.timer], api_name=False).then(
            h.follow, follow_inputs, follow_outputs, api_name=False, show_progress="hidden")
        demo.load(h.restore, [p.job_store, p.recipe_store],
                  [p.account, p.jobs_table, p.job_id, p.timer, p.editor, p.editor_note, p.tabs], api_name=False,
                  show_progress="hidden").then(
            h.follow, follow_inputs, follow_outputs, api_name=False, show_progress="hidden")

        gallery_outputs = [p.gallery_table, p.slugs_state, p.gallery_note, p.picked_slug, p.entry_view, p.entry_code]
        gr.on([search.change, tag.change], h.search_gallery, [search, tag, p.picked_slug], gallery_outputs,
              api_name="gallery", show_progress="hidden")
        p.gallery_table.select(h.pick_recipe, [p.slugs_state], [p.picked_slug, p.entry_view, p.entry_code],
                               api_name=False)
        use_btn.click(h.use_recipe, [p.picked_slug, *current], editor_outputs, api_name=False)
        import_btn.click(h.import_from_hub, [import_id, *current], editor_outputs, api_name="import_recipe")
        share_btn.click(h.share_recipe, [p.editor, share_title, share_desc, share_tags, share_dest], [p.share_status],
                        api_name="share")
        watch_btn.click(h.watch, [p.editor, p.watch_target, watch_private, watch_pr],
                        [p.watch_status, p.job_id, p.timer], api_name="watch")
        target.change(lambda t: t, [target], [p.watch_target], api_name=False, show_progress="hidden")

        form_outputs = [p.form_models, p.form_base, p.form_info]
        p.form_method.change(h.form_method_changed, [p.form_method, p.form_models], form_outputs, api_name=False)
        demo.load(h.form_method_changed, [p.form_method, p.form_models], form_outputs, api_name=False,
                  show_progress="hidden")
        add_model_btn.click(h.add_model, [p.form_models, p.form_method], [p.form_models], api_name=False)
        remove_model_btn.click(h.remove_model, [p.form_models, p.form_method], [p.form_models], api_name=False)
        add_shared_btn.click(h.add_shared, [p.form_shared], [p.form_shared], api_name=False)
        remove_shared_btn.click(h.remove_shared, [p.form_shared], [p.form_shared], api_name=False)
        form_write.click(h.form_to_editor, [p.form_method, p.form_base, p.form_models, p.form_shared, p.form_dtype,
                                            p.form_out_dtype, *current], editor_outputs, api_name=False)

    demo.queue(default_concurrency_limit=CONCURRENT_EVENTS)
    return demo, h
