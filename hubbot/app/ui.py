"""The Space: write or build a recipe, validate it from headers, submit it, follow the job, and
find, import and share community recipes.

The page talks only to `jobs.Service` (and to the recipe gallery); it never runs a merge itself.
A signed-in user's OAuth token goes straight from the request to `Service.submit`/`watch` and is
neither kept in the page state nor logged.
"""

from __future__ import annotations

import functools
import html
import logging
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr
from gradio.utils import get_space

from .. import methods
from ..errors import HubbotError, JobNotFound
from ..recipe import form as recipe_form
from . import views
from .gallery import Gallery, import_recipe, share

if TYPE_CHECKING:
    from ..jobs.service import Job, Service
    from ..jobs.settings import Settings

log = logging.getLogger("hubbot.app.ui")

POLL_SECONDS = 1.0
ALL_TAGS = "All tags"
CONCURRENT_EVENTS = 16  # validation reads headers over the network: let several users wait at once
LOG_LINES_SHOWN = 400
STARTER = """\
# Write a recipe here, build one with the form below, or start from the gallery.
merge_method: slerp
base_model: meta-llama/Llama-3.1-8B-Instruct
models:
  - model: meta-llama/Llama-3.1-8B-Instruct
  - model: NousResearch/Hermes-3-Llama-3.1-8B
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""
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
footer { display: none !important; }
"""


def launch_options() -> dict[str, Any]:
    """Keyword arguments for `Blocks.launch` / `gr.mount_gradio_app` (Gradio 6 takes the theme
    and stylesheet there, not in the Blocks constructor)."""
    return {"theme": THEME, "css": CSS}


def _friendly(fn: Callable) -> Callable:
    """Turn errors into readable messages in the page: hubbot's own errors verbatim, anything
    else as a short notice (the details go to the server log), never a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except HubbotError as exc:
            raise gr.Error(_html_text(str(exc)), title="Cannot do that", print_exception=False) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error("Something went wrong on the server; the details were logged. Try again, "
                           "and report it if it happens again.", print_exception=False) from None

    return wrapper


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
    logs_state: gr.State
    slugs_state: gr.State
    picked_slug: gr.State
    editor: gr.Code
    editor_note: gr.Markdown
    form_method: gr.Dropdown
    form_dtype: gr.Dropdown
    form_info: gr.Markdown
    form_base: gr.Textbox
    form_models: gr.Dataframe
    form_shared: gr.Dataframe
    validation: gr.Markdown
    curves: gr.LinePlot
    submit_status: gr.Markdown
    job_id: gr.Textbox
    job_view: gr.HTML
    result: gr.Markdown
    cancel_btn: gr.Button
    log_box: gr.Textbox
    jobs_table: gr.Dataframe
    gallery_table: gr.Dataframe
    entry_view: gr.Markdown
    entry_code: gr.Code
    share_status: gr.Markdown
    watch_status: gr.Markdown
    watch_target: gr.Textbox

    def follow_outputs(self) -> list[Any]:
        """Everything one poll of the followed job may change."""
        return [self.job_id, self.job_store, self.job_view, self.result, self.cancel_btn, self.log_box,
                self.logs_state, self.timer, self.jobs_table]

    def loaded_outputs(self) -> list[Any]:
        """Everything that changes when a recipe is put into the editor from elsewhere."""
        return [self.editor, self.tabs, self.validation, self.curves, self.editor_note]


class Handlers:
    """What the page does, one method per event, each returning `{component: update}`. Holds the
    service, the settings and the gallery; no state of its own (per-browser state lives in the
    page's State components)."""

    def __init__(self, service: "Service", settings: "Settings", gallery: Gallery, page: Page):
        self.service, self.settings, self.gallery, self.p = service, settings, gallery, page
        self.service_mode = settings.mode == "service"
        self.signin_available = get_space() is not None  # Gradio serves real OAuth only on a Space

    # ---- account and recipe -------------------------------------------------------------------

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
    def validate(self, recipe_text: str) -> dict:
        p = self.p
        v = self.service.validate(recipe_text or "")
        if not v.curves:
            return {p.validation: views.validation_markdown(v), p.curves: gr.LinePlot(value=None, visible=False)}
        return {p.validation: views.validation_markdown(v),
                p.curves: gr.LinePlot(value=views.curves_frame(v.curves), visible=True)}

    # ---- jobs -----------------------------------------------------------------------------------

    def show_job(self, job: "Job", lines: list[str]) -> dict:
        """The Jobs tab showing `job`: id, stored id, view, result, cancel button, log and timer."""
        p = self.p
        active = job.state in views.ACTIVE_STATES
        return {p.job_id: job.id, p.job_store: job.id, p.job_view: views.job_html(job),
                p.result: views.result_markdown(job), p.cancel_btn: gr.Button(visible=active),
                p.log_box: "\n".join(lines[-LOG_LINES_SHOWN:]),
                p.logs_state: {"job": job.id, "lines": lines, "state": job.state}, p.timer: gr.Timer(active=active)}

    def no_job(self, job_id: str = "", note: str = "") -> dict:
        p = self.p
        return {p.job_id: job_id, p.job_store: "", p.job_view: views.job_html(None), p.result: note,
                p.cancel_btn: gr.Button(visible=False), p.log_box: "", p.logs_state: {"job": "", "lines": []},
                p.timer: gr.Timer(active=False)}

    @_friendly
    def submit(self, recipe_text: str, target: str, private: bool, pr: bool,
               profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> dict:
        p = self.p
        target = (target or "").strip() or None
        if self.service_mode and profile is None:
            return {p.submit_status: views.notice("error", "Sign in to publish", "The merge is pushed to a repo in "
                                                  "your namespace with your token, so sign in with Hugging Face first.")}
        if self.service_mode and target is None:
            return {p.submit_status: views.notice("error", "Name the repo to publish to",
                                                  f"in *Publish to*, e.g. `{profile.username}/my-merge`.")}
        try:
            job = self.service.submit(recipe_text or "", owner=_owner(profile), target=target, private=bool(private),
                                      pr=bool(pr), token=_token(oauth_token))
        except HubbotError as exc:
            return {p.submit_status: _error_markdown("Not submitted", exc)}
        where = f"`{views.md(target)}`" if target else "a local folder"
        note = views.notice("ok", "Submitted", f"job `{job.id}`; the result goes to {where}. Follow it under **Jobs**.")
        return {p.submit_status: note, **self.show_job(job, []), p.tabs: gr.Tabs(selected="jobs"),
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
            job = self.service.get(job_id)
        except JobNotFound:
            return self.no_job(job_id, views.notice("error", "No such job",
                                                    f"`{job_id}`: check the id, or pick one under *My jobs*."))
        logs = logs if logs and logs.get("job") == job.id else {"job": job.id, "lines": []}
        lines = list(logs["lines"]) + list(self.service.log(job.id, since=len(logs["lines"])))
        out = self.show_job(job, lines)
        if logs.get("state") != job.state:
            out[self.p.jobs_table] = self.jobs_rows(profile)
        return out

    @_friendly
    def cancel(self, job_id: str, logs: dict | None, profile: gr.OAuthProfile | None) -> dict:
        if not job_id:
            raise gr.Error("No job selected to cancel.", print_exception=False)
        self.service.cancel(job_id, owner=_owner(profile))
        return self.follow(job_id, logs, profile)

    def pick_job(self, table: Any, evt: gr.SelectData) -> dict:
        rows, row = _rows(table), _row_index(evt)
        if row is None or row >= len(rows):
            return {}
        return {self.p.job_id: rows[row][0], self.p.timer: gr.Timer(active=True)}

    @_friendly
    def restore(self, stored_job: str, profile: gr.OAuthProfile | None) -> dict:
        """On page load: the account note, the user's jobs, and the job this browser followed last."""
        p = self.p
        return {p.account: self.account_note(profile), p.jobs_table: self.jobs_rows(profile),
                p.job_id: stored_job or "", p.timer: gr.Timer(active=bool(stored_job))}

    # ---- gallery --------------------------------------------------------------------------------

    def gallery_view(self, query: str, tag: str) -> dict:
        entries = self.gallery.search(query or "", None if tag in (None, "", ALL_TAGS) else tag)
        return {self.p.gallery_table: views.gallery_rows(entries), self.p.slugs_state: [e.slug for e in entries]}

    @_friendly
    def search_gallery(self, query: str, tag: str) -> dict:
        return self.gallery_view(query, tag)

    @_friendly
    def pick_recipe(self, slugs: list[str], evt: gr.SelectData) -> dict:
        row = _row_index(evt)
        if row is None or row >= len(slugs):
            return {}
        entry = self.gallery.load(slugs[row])
        p = self.p
        return {p.picked_slug: entry.slug, p.entry_view: views.entry_markdown(entry), p.entry_code: entry.text}

    def load_into_editor(self, text: str, note: str) -> dict:
        """A recipe from elsewhere put into the editor; the old validation no longer applies."""
        p = self.p
        return {p.editor: text, p.tabs: gr.Tabs(selected="recipe"), p.validation: "",
                p.curves: gr.LinePlot(value=None, visible=False), p.editor_note: note}

    @_friendly
    def use_recipe(self, slug: str) -> dict:
        if not slug:
            raise gr.Error("Pick a recipe in the list first.", print_exception=False)
        entry = self.gallery.load(slug)
        return self.load_into_editor(entry.text, f"Loaded **{views.md(entry.title)}** from the gallery. "
                                                 "Validate it to see the plan.")

    @_friendly
    def import_from_hub(self, model_id: str, oauth_token: gr.OAuthToken | None) -> dict:
        if not (model_id or "").strip():
            raise gr.Error("Paste the id of a merged model, e.g. mlabonne/NeuralBeagle14-7B.", print_exception=False)
        text = import_recipe(model_id, token=_token(oauth_token))
        return self.load_into_editor(text, f"Imported the recipe of **{views.md(model_id.strip())}**. "
                                           "Validate it, change it, merge it.")

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
        info = f"**{views.md(m.title)}**: {views.md(m.summary)}" + (f"  \n*{views.md(m.paper)}*" if m.paper else "")
        params = ", ".join(f"`{p.name}`" for p in m.params) or "none"
        info += f"  \nParameters: {params}."
        return {p.form_models: gr.Dataframe(value=[[name] + [""] * (len(columns) - 1) for name in models],
                                            headers=columns, column_count=len(columns)),
                p.form_base: gr.Textbox(visible=m.base != "none"), p.form_info: info}

    @_friendly
    def form_to_editor(self, method_name: str, base: str, rows: Any, shared: Any, dtype: str) -> dict:
        text = recipe_form.to_yaml(method_name, base if methods.get(method_name).base != "none" else "",
                                   _rows(rows), _rows(shared), dtype)
        return {self.p.editor: text, self.p.editor_note: "Wrote the recipe from the form. Validate it to see the plan."}


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
    default_method = "linear"

    with gr.Blocks(title="hubbot · merge models on the Hub") as demo:
        p.job_store = gr.BrowserState("", storage_key="hubbot-job")
        p.logs_state = gr.State({"job": "", "lines": []})
        p.slugs_state = gr.State(first_slugs)
        p.picked_slug = gr.State(first_entry.slug if first_entry else "")
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
                        p.editor = gr.Code(STARTER, language="yaml", lines=20, max_lines=36,
                                           label="Recipe (mergekit YAML)", elem_id="recipe-editor", wrap_lines=True)
                        p.editor_note = gr.Markdown(elem_classes="hb-note")
                        with gr.Accordion("Build a recipe with a form", open=False):
                            with gr.Row():
                                p.form_method = gr.Dropdown(method_choices, value=default_method, label="Method",
                                                            scale=2)
                                p.form_dtype = gr.Dropdown(list(recipe_form.DTYPES), value="bfloat16", label="dtype",
                                                           scale=1)
                            p.form_info = gr.Markdown()
                            p.form_base = gr.Textbox(label="Base model", placeholder="org/name of the common base",
                                                     visible=methods.get(default_method).base != "none")
                            p.form_models = gr.Dataframe(
                                value=[["", "", ""], ["", "", ""]], headers=recipe_form.model_columns(default_method),
                                type="array", interactive=True, label="Models",
                            )
                            gr.Markdown("One model per row. A cell takes a number, `true`/`false`, or a per-layer "
                                        "curve such as `0, 0.5, 1`. *layers* is a range such as `0-24` "
                                        "(end excluded), required for passthrough.", elem_classes="hb-note")
                            p.form_shared = gr.Dataframe(
                                value=[["", "", ""]], headers=recipe_form.SHARED_COLUMNS, type="array",
                                interactive=True,
                                label="Shared parameters and per-layer curves",
                            )
                            gr.Markdown("*filter* limits a row to tensors whose name contains it (e.g. `self_attn`, "
                                        "`mlp`); the row without a filter applies to the rest.", elem_classes="hb-note")
                            form_write = gr.Button("Write the recipe into the editor")
                        with gr.Row():
                            target = gr.Textbox(
                                label="Publish to",
                                placeholder="org/name on the Hub" + ("" if service_mode else " (empty: local folder)"),
                                scale=3,
                            )
                            with gr.Column(scale=2, min_width=200):
                                private = gr.Checkbox(label="Private repo")
                                as_pr = gr.Checkbox(label="As a pull request to an existing repo")
                        with gr.Row():
                            validate_btn = gr.Button("Validate", variant="secondary", elem_id="validate-button")
                            submit_btn = gr.Button("Merge", variant="primary", elem_id="submit-button")
                        p.submit_status = gr.Markdown(elem_id="submit-status")
                    with gr.Column(scale=2):
                        p.validation = gr.Markdown(
                            "Validate the recipe to see the plan: the models and their revisions, the output size, "
                            "the estimated time and memory, the per-layer parameters, and any problem with what "
                            "to do about it. Only headers are read; nothing is downloaded.",
                            elem_id="validation",
                        )
                        p.curves = gr.LinePlot(x="layer", y="value", color="parameter", title="Per-layer parameters",
                                               x_title="layer", y_title="value", height=280, visible=False,
                                               elem_id="curves")

            with gr.Tab("Jobs", id="jobs"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        with gr.Row():
                            p.job_id = gr.Textbox(label="Job id", placeholder="paste a job id to follow it", scale=4,
                                                  elem_id="job-id")
                            follow_btn = gr.Button("Follow", scale=1, size="md")
                        p.job_view = gr.HTML(views.job_html(None), elem_id="job-view")
                        p.result = gr.Markdown(elem_id="job-result")
                        p.cancel_btn = gr.Button("Cancel this job", variant="stop", visible=False, size="md")
                        p.log_box = gr.Textbox(label="Log", lines=14, max_lines=14, interactive=False,
                                               autoscroll=True, elem_classes="hb-log")
                    with gr.Column(scale=2):
                        with gr.Row():
                            gr.Markdown("### My jobs")
                            refresh_btn = gr.Button("Refresh", size="sm", scale=0)
                        p.jobs_table = gr.Dataframe(headers=views.JOB_COLUMNS, interactive=False, wrap=True,
                                                    column_count=len(views.JOB_COLUMNS), max_height=520,
                                                    column_widths=["27%", "14%", "16%", "23%", "20%"])
                        gr.Markdown("Select a row to follow that job. Jobs keep running when you close the page.",
                                    elem_classes="hb-note")

            with gr.Tab("Gallery", id="gallery"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        with gr.Row():
                            search = gr.Textbox(placeholder="Search: llama, slerp, code, reasoning…",
                                                show_label=False, scale=3, elem_id="gallery-search")
                            tag = gr.Dropdown([ALL_TAGS, *gallery.tags()], value=ALL_TAGS, show_label=False, scale=1)
                        p.gallery_table = gr.Dataframe(views.gallery_rows(first_entries),
                                                       headers=views.GALLERY_COLUMNS, interactive=False, wrap=True,
                                                       column_count=len(views.GALLERY_COLUMNS), max_height=420,
                                                       elem_id="gallery-table", column_widths=["50%", "18%", "32%"])
                        with gr.Accordion("Import the recipe of a merged model on the Hub", open=False):
                            with gr.Row():
                                import_id = gr.Textbox(show_label=False, scale=4,
                                                       placeholder="org/name, e.g. mlabonne/NeuralBeagle14-7B")
                                import_btn = gr.Button("Import", scale=1)
                            gr.Markdown("Reads the model's `mergekit_config.yml`, or the YAML recipe in its card.",
                                        elem_classes="hb-note")
                        with gr.Accordion("Share the recipe in the editor", open=False):
                            share_title = gr.Textbox(label="Title")
                            share_desc = gr.Textbox(label="Description", lines=2,
                                                    placeholder="What the merge is for and why these settings")
                            share_tags = gr.Textbox(label="Tags", placeholder="comma separated, e.g. chat, llama-3.1")
                            share_dest = gr.Radio([(v, k) for k, v in SHARE_DESTINATIONS.items()], value="dataset",
                                                  label="Where")
                            share_btn = gr.Button("Open a pull request")
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
        validate_btn.click(h.validate, [p.editor], [p.validation, p.curves], api_name="validate")
        submit_btn.click(h.submit, [p.editor, target, private, as_pr],
                         [p.submit_status, *follow_outputs[:-1], p.tabs, p.jobs_table], api_name="submit")
        p.timer.tick(h.follow, follow_inputs, follow_outputs, api_name="follow", show_progress="hidden")
        follow_btn.click(h.follow, follow_inputs, follow_outputs, api_name=False)
        p.job_id.submit(h.follow, follow_inputs, follow_outputs, api_name=False)
        p.cancel_btn.click(h.cancel, follow_inputs, follow_outputs, api_name="cancel")
        refresh_btn.click(h.list_jobs, None, [p.jobs_table], api_name="jobs")
        p.jobs_table.select(h.pick_job, [p.jobs_table], [p.job_id, p.timer], api_name=False).then(
            h.follow, follow_inputs, follow_outputs, api_name=False, show_progress="hidden")
        demo.load(h.restore, [p.job_store], [p.account, p.jobs_table, p.job_id, p.timer], api_name=False).then(
            h.follow, follow_inputs, follow_outputs, api_name=False, show_progress="hidden")

        gr.on([search.change, tag.change], h.search_gallery, [search, tag], [p.gallery_table, p.slugs_state],
              api_name="gallery", show_progress="hidden")
        p.gallery_table.select(h.pick_recipe, [p.slugs_state], [p.picked_slug, p.entry_view, p.entry_code],
                               api_name=False)
        use_btn.click(h.use_recipe, [p.picked_slug], p.loaded_outputs(), api_name=False)
        import_btn.click(h.import_from_hub, [import_id], p.loaded_outputs(), api_name="import_recipe")
        share_btn.click(h.share_recipe, [p.editor, share_title, share_desc, share_tags, share_dest], [p.share_status],
                        api_name="share")
        watch_btn.click(h.watch, [p.editor, p.watch_target, watch_private, watch_pr],
                        [p.watch_status, p.job_id, p.timer], api_name="watch")
        target.change(lambda t: t, [target], [p.watch_target], api_name=False, show_progress="hidden")

        form_outputs = [p.form_models, p.form_base, p.form_info]
        p.form_method.change(h.form_method_changed, [p.form_method, p.form_models], form_outputs, api_name=False)
        demo.load(h.form_method_changed, [p.form_method, p.form_models], form_outputs, api_name=False)
        form_write.click(h.form_to_editor, [p.form_method, p.form_base, p.form_models, p.form_shared, p.form_dtype],
                         [p.editor, p.editor_note], api_name=False)

    demo.queue(default_concurrency_limit=CONCURRENT_EVENTS)
    return demo, h
