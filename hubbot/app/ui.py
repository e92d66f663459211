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


def build_ui(service: "Service", settings: "Settings", gallery: Gallery | None = None) -> gr.Blocks:
    """The whole app. `gallery` defaults to the recipes folder the settings name."""
    gallery = gallery or Gallery(settings.recipes_dir)
    service_mode = settings.mode == "service"
    signin_available = get_space() is not None  # Gradio serves real OAuth only on a Space
    method_choices = [(f"{m.title} · {name}", name) for name, m in methods.all_methods().items()]

    # ---- handlers ---------------------------------------------------------------------------

    def account_note(profile: gr.OAuthProfile | None) -> str:
        if profile is not None:
            return (f"Signed in as **{views.md(profile.username)}**. Merges publish to repos you can write, "
                    "with your token for this request only.")
        if service_mode:
            how = "Use the button above" if signin_available else "Open this app on its Space"
            return (f"**Sign in with Hugging Face to publish merges.** {how} to sign in; "
                    "validating recipes works without an account.")
        return ("**Local mode**: leave *Publish to* empty to save the merge in a local folder, "
                "or name a Hub repo to push it with this machine's Hugging Face token.")

    @_friendly
    def validate(recipe_text: str) -> tuple[str, Any]:
        v = service.validate(recipe_text or "")
        if not v.curves:
            return views.validation_markdown(v), gr.LinePlot(value=None, visible=False)
        return views.validation_markdown(v), gr.LinePlot(value=views.curves_frame(v.curves), visible=True)

    def follow_updates(job: "Job", logs: dict | None = None) -> tuple:
        """Outputs that show `job` in the Jobs tab: id, store, view, result, cancel, log, timer."""
        active = job.state in views.ACTIVE_STATES
        lines = (logs or {}).get("lines", [])
        return (job.id, job.id, views.job_html(job), views.result_markdown(job),
                gr.Button(visible=active), "\n".join(lines[-LOG_LINES_SHOWN:]),
                {"job": job.id, "lines": lines, "state": job.state}, gr.Timer(active=active))

    @_friendly
    def submit(recipe_text: str, target: str, private: bool, pr: bool,
               profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None) -> tuple:
        skip = (gr.skip(),) * 10
        target = (target or "").strip() or None
        if service_mode and profile is None:
            return (views.notice("error", "Sign in to publish", "The merge is pushed to a repo in your namespace "
                                 "with your token, so sign in with Hugging Face first."), *skip)
        if service_mode and target is None:
            return (views.notice("error", "Name the repo to publish to",
                                 f"in *Publish to*, e.g. `{profile.username}/my-merge`."), *skip)
        try:
            job = service.submit(recipe_text or "", owner=_owner(profile), target=target, private=bool(private),
                                 pr=bool(pr), token=_token(oauth_token))
        except HubbotError as exc:
            return (_error_markdown("Not submitted", exc), *skip)
        where = f"`{views.md(target)}`" if target else "a local folder"
        note = views.notice("ok", "Submitted", f"job `{job.id}`; the result goes to {where}. Follow it under **Jobs**.")
        return (note, *follow_updates(job, {"lines": []}), gr.Tabs(selected="jobs"),
                jobs_rows(profile))

    def jobs_rows(profile: gr.OAuthProfile | None) -> list[list[Any]]:
        if service_mode and profile is None:
            return []
        return views.jobs_rows(service.list(owner=_owner(profile)))

    @_friendly
    def list_jobs(profile: gr.OAuthProfile | None) -> list[list[Any]]:
        return jobs_rows(profile)

    @_friendly
    def follow(job_id: str, logs: dict | None, profile: gr.OAuthProfile | None) -> tuple:
        """One poll: the job's state and progress, new log lines, and whether to keep polling."""
        job_id = (job_id or "").strip()
        if not job_id:
            return ("", "", views.job_html(None), "", gr.Button(visible=False), "",
                    {"job": "", "lines": []}, gr.Timer(active=False), gr.skip())
        try:
            job = service.get(job_id, owner=_owner(profile))
        except JobNotFound:
            missing = views.notice("error", "No such job", f"`{job_id}`: check the id, or pick one under *My jobs*.")
            return (job_id, "", views.job_html(None), missing, gr.Button(visible=False), "", {"job": "", "lines": []},
                    gr.Timer(active=False), gr.skip())
        logs = logs if logs and logs.get("job") == job.id else {"job": job.id, "lines": []}
        lines = list(logs["lines"]) + list(service.log(job.id, since=len(logs["lines"]), owner=_owner(profile)))
        changed = logs.get("state") != job.state
        return (*follow_updates(job, {"lines": lines}), jobs_rows(profile) if changed else gr.skip())

    @_friendly
    def cancel(job_id: str, logs: dict | None, profile: gr.OAuthProfile | None) -> tuple:
        if not job_id:
            raise gr.Error("No job selected to cancel.", print_exception=False)
        service.cancel(job_id, owner=_owner(profile))
        return follow(job_id, logs, profile)

    def pick_job(table: Any, evt: gr.SelectData) -> tuple:
        rows, row = _rows(table), _row_index(evt)
        if row is None or row >= len(rows):
            return gr.skip(), gr.skip()
        return rows[row][0], gr.Timer(active=True)

    @_friendly
    def restore(stored_job: str, profile: gr.OAuthProfile | None) -> tuple:
        """On page load: the account note, the user's jobs, and the job this browser followed last."""
        return (account_note(profile), jobs_rows(profile), stored_job or "", gr.Timer(active=bool(stored_job)))

    # gallery

    def gallery_view(query: str, tag: str) -> tuple[list[list[str]], list[str]]:
        entries = gallery.search(query or "", None if tag in (None, "", ALL_TAGS) else tag)
        return views.gallery_rows(entries), [e.slug for e in entries]

    @_friendly
    def search_gallery(query: str, tag: str) -> tuple:
        return gallery_view(query, tag)

    @_friendly
    def pick_recipe(slugs: list[str], evt: gr.SelectData) -> tuple:
        row = _row_index(evt)
        if row is None or row >= len(slugs):
            return gr.skip(), gr.skip(), gr.skip()
        entry = gallery.load(slugs[row])
        return entry.slug, views.entry_markdown(entry), entry.text

    @_friendly
    def use_recipe(slug: str) -> tuple:
        if not slug:
            raise gr.Error("Pick a recipe in the list first.", print_exception=False)
        entry = gallery.load(slug)
        return (entry.text, gr.Tabs(selected="recipe"), "", gr.LinePlot(value=None, visible=False),
                f"Loaded **{views.md(entry.title)}** from the gallery. Validate it to see the plan.")

    @_friendly
    def import_from_hub(model_id: str, oauth_token: gr.OAuthToken | None) -> tuple:
        if not (model_id or "").strip():
            raise gr.Error("Paste the id of a merged model, e.g. mlabonne/NeuralBeagle14-7B.", print_exception=False)
        text = import_recipe(model_id, token=_token(oauth_token))
        return (text, gr.Tabs(selected="recipe"), "", gr.LinePlot(value=None, visible=False),
                f"Imported the recipe of **{views.md(model_id.strip())}**. Validate it, change it, merge it.")

    @_friendly
    def share_recipe(recipe_text: str, title: str, description: str, tags: str, destination: str,
                     oauth_token: gr.OAuthToken | None) -> str:
        token = _token(oauth_token)
        if token is None and service_mode:
            return views.notice("error", "Sign in to share", "The pull request is opened in your name.")
        repo_id = settings.recipes_dataset if destination == "dataset" else settings.space_id
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

    @_friendly
    def watch(recipe_text: str, target: str, private: bool, pr: bool, profile: gr.OAuthProfile | None,
              oauth_token: gr.OAuthToken | None) -> tuple:
        """Register the watch; its first run starts at once and the Jobs tab follows it."""
        target = (target or "").strip()
        if service_mode and profile is None:
            return views.notice("error", "Sign in to watch", "Re-merges publish in your name."), gr.skip(), gr.skip()
        if not target:
            return (views.notice("error", "Name the result repo", "the re-merges publish to, e.g. `you/my-merge`."),
                    gr.skip(), gr.skip())
        try:
            info = service.watch(recipe_text or "", owner=_owner(profile), target=target, private=bool(private),
                                 pr=bool(pr), token=_token(oauth_token))
        except HubbotError as exc:
            return _error_markdown("Not watching", exc), gr.skip(), gr.skip()
        first = info.get("last_job_id")
        return views.watch_markdown(info), first or gr.skip(), gr.Timer(active=bool(first))

    # form

    def form_method_changed(method_name: str, rows: Any) -> tuple:
        m = methods.get(method_name)
        columns = recipe_form.model_columns(method_name)
        models = [r[0] for r in _rows(rows) if r and r[0]] or [""] * 2
        info = f"**{views.md(m.title)}**: {views.md(m.summary)}" + (f"  \n*{views.md(m.paper)}*" if m.paper else "")
        params = ", ".join(f"`{p.name}`" for p in m.params) or "none"
        info += f"  \nParameters: {params}."
        return (gr.Dataframe(value=[[name] + [""] * (len(columns) - 1) for name in models], headers=columns,
                             column_count=len(columns)),
                gr.Textbox(visible=m.base != "none"), info)

    @_friendly
    def form_to_editor(method_name: str, base: str, rows: Any, shared: Any, dtype: str) -> tuple:
        text = recipe_form.to_yaml(method_name, base if methods.get(method_name).base != "none" else "",
                                   _rows(rows), _rows(shared), dtype)
        return text, "Wrote the recipe from the form. Validate it to see the plan."

    # ---- layout -----------------------------------------------------------------------------

    first_rows, first_slugs = gallery_view("", ALL_TAGS)
    first_entry = gallery.load(first_slugs[0]) if first_slugs else None
    default_method = "linear"

    with gr.Blocks(title="hubbot · merge models on the Hub") as demo:
        job_store = gr.BrowserState("", storage_key="hubbot-job")
        logs_state = gr.State({"job": "", "lines": []})
        slugs_state = gr.State(first_slugs)
        picked_slug = gr.State(first_entry.slug if first_entry else "")
        timer = gr.Timer(POLL_SECONDS, active=False)

        with gr.Row(elem_classes="hb-header"):
            with gr.Column(scale=3):
                gr.Markdown("# hubbot\nMerge language models where they live: write a recipe, check it "
                            "against the models' headers, and publish the result to the Hub.")
            with gr.Column(scale=2, min_width=280):
                if signin_available:
                    gr.LoginButton(size="md")
                account = gr.Markdown(account_note(None), elem_classes="hb-account")

        with gr.Tabs(selected="recipe") as tabs:
            with gr.Tab("Recipe", id="recipe"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        editor = gr.Code(STARTER, language="yaml", lines=20, max_lines=36,
                                         label="Recipe (mergekit YAML)", elem_id="recipe-editor", wrap_lines=True)
                        editor_note = gr.Markdown(elem_classes="hb-note")
                        with gr.Accordion("Build a recipe with a form", open=False):
                            with gr.Row():
                                form_method = gr.Dropdown(method_choices, value=default_method, label="Method", scale=2)
                                form_dtype = gr.Dropdown(list(recipe_form.DTYPES), value="bfloat16", label="dtype", scale=1)
                            form_info = gr.Markdown()
                            form_base = gr.Textbox(label="Base model", placeholder="org/name of the common base",
                                                   visible=methods.get(default_method).base != "none")
                            form_models = gr.Dataframe(
                                value=[["", "", ""], ["", "", ""]], headers=recipe_form.model_columns(default_method),
                                type="array", interactive=True, label="Models",
                            )
                            gr.Markdown("One model per row. A cell takes a number, `true`/`false`, or a per-layer "
                                        "curve such as `0, 0.5, 1`. *layers* is a range such as `0-24` "
                                        "(end excluded), required for passthrough.", elem_classes="hb-note")
                            form_shared = gr.Dataframe(
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
                        submit_status = gr.Markdown(elem_id="submit-status")
                    with gr.Column(scale=2):
                        validation = gr.Markdown(
                            "Validate the recipe to see the plan: the models and their revisions, the output size, "
                            "the estimated time and memory, the per-layer parameters, and any problem with what "
                            "to do about it. Only headers are read; nothing is downloaded.",
                            elem_id="validation",
                        )
                        curves = gr.LinePlot(x="layer", y="value", color="parameter", title="Per-layer parameters",
                                             x_title="layer", y_title="value", height=280, visible=False, elem_id="curves")

            with gr.Tab("Jobs", id="jobs"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        with gr.Row():
                            job_id = gr.Textbox(label="Job id", placeholder="paste a job id to follow it", scale=4,
                                                elem_id="job-id")
                            follow_btn = gr.Button("Follow", scale=1, size="md")
                        job_view = gr.HTML(views.job_html(None), elem_id="job-view")
                        result = gr.Markdown(elem_id="job-result")
                        cancel_btn = gr.Button("Cancel this job", variant="stop", visible=False, size="md")
                        log_box = gr.Textbox(label="Log", lines=14, max_lines=14, interactive=False, autoscroll=True,
                                             elem_classes="hb-log")
                    with gr.Column(scale=2):
                        with gr.Row():
                            gr.Markdown("### My jobs")
                            refresh_btn = gr.Button("Refresh", size="sm", scale=0)
                        jobs_table = gr.Dataframe(headers=views.JOB_COLUMNS, interactive=False, wrap=True,
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
                        gallery_table = gr.Dataframe(first_rows, headers=views.GALLERY_COLUMNS, interactive=False,
                                                     wrap=True, column_count=len(views.GALLERY_COLUMNS),
                                                     max_height=420, elem_id="gallery-table",
                                                     column_widths=["50%", "18%", "32%"])
                        with gr.Accordion("Import the recipe of a merged model on the Hub", open=False):
                            with gr.Row():
                                import_id = gr.Textbox(show_label=False, placeholder="org/name, e.g. mlabonne/NeuralBeagle14-7B",
                                                       scale=4)
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
                            share_status = gr.Markdown()
                    with gr.Column(scale=2):
                        entry_view = gr.Markdown(views.entry_markdown(first_entry))
                        entry_code = gr.Code(first_entry.text if first_entry else "", language="yaml", interactive=False, lines=12, max_lines=24, label="Recipe",
                                             wrap_lines=True)
                        use_btn = gr.Button("Use this recipe", variant="primary", elem_id="use-recipe")

            with gr.Tab("Watch", id="watch"):
                gr.Markdown("### Re-merge when a source model changes\nThe recipe in the editor runs again "
                            "whenever one of its source models gets a new commit on the Hub, and the result "
                            "repo gets a new commit (or a pull request) whose card names the new revisions.")
                with gr.Row():
                    watch_target = gr.Textbox(label="Result repo", placeholder="org/name", scale=3)
                    watch_private = gr.Checkbox(label="Private repo", scale=1)
                    watch_pr = gr.Checkbox(label="Publish re-merges as pull requests", scale=1)
                watch_btn = gr.Button("Watch the sources", variant="primary")
                watch_status = gr.Markdown()

        # ---- events ---------------------------------------------------------------------------

        follow_outputs = [job_id, job_store, job_view, result, cancel_btn, log_box, logs_state, timer, jobs_table]
        validate_btn.click(validate, [editor], [validation, curves], api_name="validate")
        submit_btn.click(submit, [editor, target, private, as_pr],
                         [submit_status, *follow_outputs[:-1], tabs, jobs_table], api_name="submit")
        timer.tick(follow, [job_id, logs_state], follow_outputs, api_name="follow", show_progress="hidden")
        follow_btn.click(follow, [job_id, logs_state], follow_outputs, api_name=False)
        job_id.submit(follow, [job_id, logs_state], follow_outputs, api_name=False)
        cancel_btn.click(cancel, [job_id, logs_state], follow_outputs, api_name="cancel")
        refresh_btn.click(list_jobs, None, [jobs_table], api_name="jobs")
        jobs_table.select(pick_job, [jobs_table], [job_id, timer], api_name=False).then(
            follow, [job_id, logs_state], follow_outputs, api_name=False, show_progress="hidden")
        demo.load(restore, [job_store], [account, jobs_table, job_id, timer], api_name=False).then(
            follow, [job_id, logs_state], follow_outputs, api_name=False, show_progress="hidden")

        gr.on([search.change, tag.change], search_gallery, [search, tag], [gallery_table, slugs_state],
              api_name="gallery", show_progress="hidden")
        gallery_table.select(pick_recipe, [slugs_state], [picked_slug, entry_view, entry_code], api_name=False)
        use_btn.click(use_recipe, [picked_slug], [editor, tabs, validation, curves, editor_note], api_name=False)
        import_btn.click(import_from_hub, [import_id], [editor, tabs, validation, curves, editor_note],
                         api_name="import_recipe")
        share_btn.click(share_recipe, [editor, share_title, share_desc, share_tags, share_dest], [share_status],
                        api_name="share")
        watch_btn.click(watch, [editor, watch_target, watch_private, watch_pr], [watch_status, job_id, timer],
                        api_name="watch")
        target.change(lambda t: t, [target], [watch_target], api_name=False, show_progress="hidden")

        form_method.change(form_method_changed, [form_method, form_models], [form_models, form_base, form_info],
                           api_name=False)
        demo.load(form_method_changed, [form_method, form_models], [form_models, form_base, form_info], api_name=False)
        form_write.click(form_to_editor, [form_method, form_base, form_models, form_shared, form_dtype],
                         [editor, editor_note], api_name=False)

    demo.queue(default_concurrency_limit=CONCURRENT_EVENTS)
    return demo
