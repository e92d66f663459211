"""Sign-in-free local use in headless Chromium: load a gallery recipe, validate it, merge it, watch
the progress reach done, and find the job again after a reload. Screenshots of each step go to
tests/artifacts/ (git-ignored)."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian Chromium is not installed at /usr/bin/chromium "
                                                     "(apt-get install chromium; scripts/test installs it)"),
]


@pytest.fixture(scope="module")
def browser(space_app):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    sync_api.expect.set_options(timeout=30_000)  # a first page load on a busy machine takes a while
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    """A fresh browser context per test: the editor text a page keeps in local storage (and puts
    back on load) is that test's own, never an earlier test's."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def shot(page, name: str) -> None:
    page.wait_for_timeout(800)  # let the progress bars finish their transition
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def pick_recipe(page, title: str) -> None:
    page.wait_for_timeout(1500)  # let the restore on load put back the stored editor text first
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-table [role=gridcell]", has_text=title).first.click()


def use_picked(page) -> None:
    """Use this recipe, replacing the editor's text even when it holds earlier tests' edits."""
    from playwright.sync_api import expect

    page.locator("#use-recipe").click()
    replace = page.locator("#confirm-replace-yes")
    loaded = page.locator("#status", has_text="Loaded")
    expect(replace.or_(loaded).first).to_be_visible()
    if replace.is_visible():
        replace.click()
    expect(loaded).to_be_visible()


def editor_text(page) -> str:
    return page.locator("#recipe-editor .cm-content").inner_text()


def test_gallery_validate_merge_follow(page, space_app):
    from playwright.sync_api import expect

    page.goto(space_app.url)
    expect(page.locator("#validate-button")).to_be_visible()
    expect(page.get_by_text("Local mode")).to_be_visible()  # signed out locally: results go to a folder
    shot(page, "01-start")

    pick_recipe(page, "Tiny llama soup")
    expect(page.get_by_role("heading", name="Tiny llama soup")).to_be_visible()
    shot(page, "02-gallery")
    use_picked(page)
    expect(page.locator("#recipe-editor")).to_be_visible()
    expect(page.locator("#recipe-editor .cm-content")).to_contain_text("merge_method: linear")
    assert "title: Tiny llama soup" in editor_text(page)

    page.locator("#validate-button").click()
    expect(page.locator("#status")).to_contain_text("Ready to merge")
    expect(page.locator("#status")).to_contain_text("Estimated time")
    shot(page, "03-validated")

    page.locator("#submit-button").click()
    expect(page.locator("#job-view")).to_be_visible()
    expect(page.locator("#job-view [data-state='done']")).to_be_visible(timeout=180_000)
    expect(page.locator("#job-view")).to_contain_text("Done")
    expect(page.locator("#job-result")).to_contain_text("Saved to")
    job_id = page.locator("#job-id textarea, #job-id input").first.input_value()
    assert job_id
    shot(page, "04-done")

    page.reload()  # the browser remembers the job it followed
    page.get_by_role("tab", name="Jobs").click()
    expect(page.locator("#job-view [data-state='done']")).to_be_visible()
    expect(page.locator("#job-view")).to_contain_text(job_id)
    shot(page, "05-after-reload")


def test_bad_recipe_shows_readable_problems(page, space_app):
    from playwright.sync_api import expect

    page.goto(space_app.url)
    editor = page.locator("#recipe-editor .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text("merge_method: slerpp\nmodels:\n  - model: ./nowhere\n")
    page.locator("#validate-button").click()
    expect(page.locator("#status")).to_contain_text("to fix")
    expect(page.locator("#status")).to_contain_text("did you mean 'slerp'")
    page.locator("#submit-button").click()
    expect(page.locator("#status")).to_contain_text("Not submitted")
    assert "Traceback" not in page.content()
    shot(page, "06-bad-recipe")


def test_validation_plots_per_layer_curves(page, space_app):
    from playwright.sync_api import expect

    page.goto(space_app.url)
    pick_recipe(page, "Tiny llama SLERP with a curve")
    use_picked(page)
    expect(page.locator("#recipe-editor .cm-content")).to_contain_text("title: Tiny llama SLERP")
    page.locator("#validate-button").click()
    expect(page.locator("#status")).to_contain_text("Ready to merge")
    expect(page.locator("#curves")).to_be_visible()
    expect(page.locator("#curves")).to_contain_text("Per-layer parameters")
    shot(page, "07-curves")


# ---- the Space as people use it ------------------------------------------------------------------

BAD_EVERYWHERE = """merge_method: ties
base_model: ./nowhere/base
models:
  - model: ./nowhere/a
    parameters: {wieght: 1, density: 2}
  - model: ./nowhere/b
    parameters: {weight: 1, density: 0.5}
dtype: bfloat17
"""


def set_editor(page, text: str) -> None:
    page.locator("#recipe-editor .cm-content").click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)


def soup_text(space_app) -> str:
    return (Path(space_app.recipes_dir) / "tiny-soup.yml").read_text()


def test_first_load_shows_validate_and_merge_without_scrolling(page, space_app):
    from playwright.sync_api import expect

    page.goto(space_app.url)
    expect(page.locator("#submit-button")).to_be_visible()
    for button in ("#validate-button", "#submit-button"):
        box = page.locator(button).bounding_box()
        assert box["y"] + box["height"] <= 1000, f"{button} is below the fold at 1400x1000: {box}"


def test_status_follows_the_editor(page, space_app):
    """Validate a good recipe, then point a model at a missing folder: the status says the check
    is stale at once, and Merge's answer replaces it in the same place (no green badge beside it)."""
    from playwright.sync_api import expect

    page.goto(space_app.url)
    text = soup_text(space_app)
    set_editor(page, text)
    page.locator("#validate-button").click()
    expect(page.locator("#status")).to_contain_text("Ready to merge")
    set_editor(page, text.replace("llama-ft2", "no-such-folder"))
    expect(page.locator("#status")).to_contain_text("Edited since the last check")
    expect(page.locator("#status")).not_to_contain_text("Ready to merge")
    expect(page.locator("#curves")).to_be_hidden()
    page.locator("#submit-button").click()
    expect(page.locator("#status")).to_contain_text("Not submitted")
    expect(page.locator("#status")).to_contain_text("no such folder")
    expect(page.get_by_text("Ready to merge")).to_have_count(0)


def test_every_problem_at_once(page, space_app):
    from playwright.sync_api import expect

    page.goto(space_app.url)
    set_editor(page, BAD_EVERYWHERE)
    page.locator("#validate-button").click()
    status = page.locator("#status")
    expect(status).to_contain_text("6 problems to fix")
    for text in ("bfloat17", "did you mean 'weight'", "density: 2 is outside", "nowhere/base", "nowhere/a",
                 "nowhere/b"):
        expect(status).to_contain_text(text)
    shot(page, "08-all-problems")


def test_reload_keeps_the_editor(page, space_app):
    from playwright.sync_api import expect

    page.goto(space_app.url)
    set_editor(page, "merge_method: linear\n# half-written, kept across a reload\n")
    page.wait_for_timeout(500)
    page.reload()
    expect(page.locator("#recipe-editor .cm-content")).to_contain_text("kept across a reload")
    expect(page.locator("#editor-note")).to_contain_text("Restored the recipe")


def test_merge_result_resubmit_and_edit_a_copy(page, space_app):
    """The result view lists the files with a download and a snippet; submitting the same merge
    again names the existing job; the job's recipe reopens in the editor (asking first, since the
    editor holds other edits)."""
    from playwright.sync_api import expect

    page.goto(space_app.url)
    text = soup_text(space_app).replace("weight: 0.5\n  - model", "weight: 0.4\n  - model", 1)
    set_editor(page, text)
    page.locator("#submit-button").click()
    expect(page.locator("#job-view [data-state='done']")).to_be_visible(timeout=180_000)
    result = page.locator("#job-result")
    expect(result).to_contain_text("config.json")
    expect(result).to_contain_text("model.safetensors")
    expect(result).to_contain_text("from_pretrained")
    page.locator("#download-button").click()
    expect(page.locator("#job-files a[href$='/config.json']")).to_have_count(1)  # each file downloads
    shot(page, "09-result")

    page.get_by_role("tab", name="Recipe").click()
    page.locator("#submit-button").click()
    expect(page.locator("#status")).to_contain_text("Identical merge exists")
    link = page.locator("#status a[href*='?job=']")
    expect(link).to_have_count(1)
    job_id = link.get_attribute("href").split("?job=")[1]
    page.goto(f"{space_app.url}/?job={job_id}")  # the link opens that job
    expect(page.locator("#job-view")).to_contain_text(job_id)

    page.get_by_role("tab", name="Recipe").click()
    set_editor(page, "merge_method: linear\n# something else of mine\n")
    page.get_by_role("tab", name="Jobs").click()
    page.locator("#job-recipe-box").get_by_text("The recipe this job ran").click()
    expect(page.locator("#job-recipe")).to_contain_text("weight: 0.4")
    page.locator("#edit-copy").click()
    expect(page.locator("#confirm-replace-yes")).to_be_visible()  # asked first: the editor holds edits
    page.locator("#confirm-replace-yes").click()
    expect(page.locator("#recipe-editor .cm-content")).to_contain_text("weight: 0.4")


def test_form_row_buttons_and_fixed_headers(page, space_app):
    from playwright.sync_api import expect

    page.goto(space_app.url)
    page.locator("#form").get_by_text("Build a recipe with a form").click()
    grid = page.locator("#form-models [role=grid]")
    expect(grid).to_have_attribute("aria-rowcount", "3")  # the header and two models
    page.locator("#add-model").click()
    expect(grid).to_have_attribute("aria-rowcount", "4")
    page.locator("#remove-model").click()
    expect(grid).to_have_attribute("aria-rowcount", "3")
    header = page.locator("#form-models thead th").first
    assert header.evaluate("el => getComputedStyle(el).pointerEvents") == "none"


def test_tab_leaves_the_editor_and_controls_have_names(page, space_app):
    from playwright.sync_api import expect

    from hubbot.app.ui import EDITOR_NAME

    page.goto(space_app.url)
    editor = page.get_by_role("textbox", name=EDITOR_NAME)
    expect(editor).to_be_visible()
    editor.click()
    page.keyboard.press("Tab")
    inside = page.evaluate("() => !!document.activeElement.closest('#recipe-editor')")
    assert not inside, "Tab stayed inside the editor"
    page.get_by_role("tab", name="Gallery").click()
    expect(page.get_by_label("Search the gallery")).to_be_visible()
    page.get_by_text("Import the recipe of a merged model on the Hub").click()
    expect(page.get_by_label("Merged model on the Hub")).to_be_visible()


TABLES = "#status, #job-result, #jobs-table, #gallery-table, #form-models, #form-shared"
CHECK_CELLS = """(roots) => {
  // every shown cell of the tables under `roots`: a word split across lines (a break is fine only at a
  // space or right after a hyphen, as in "fine-|tune"), and text clipped by the cell or by anything
  // around it that hides what overflows instead of scrolling to it (an ellipsis included)
  const out = {cells: 0, broken: [], clipped: []};
  const hides = (el) => ["hidden", "clip"].includes(getComputedStyle(el).overflowX) && el.scrollWidth > el.clientWidth + 1;
  for (const root of document.querySelectorAll(roots)) {
    const cells = [...root.querySelectorAll("td, th, [role=gridcell], [role=columnheader]")]
      .filter((cell) => !cell.closest(".sizing-body") && cell.getClientRects().length && cell.innerText.trim());
    for (const cell of cells) {  // (.sizing-body is the dataframe's hidden measuring copy)
      out.cells++;
      const name = cell.innerText.trim().slice(0, 40);
      for (const el of cell.querySelectorAll("*")) {
        const ellipsis = getComputedStyle(el).textOverflow === "ellipsis" && el.scrollWidth > el.clientWidth + 1;
        if (hides(el) || ellipsis) out.clipped.push(`${name} (in ${el.tagName.toLowerCase()}.${el.className})`);
      }
      for (let el = cell; el && el !== root.parentElement; el = el.parentElement)
        if (hides(el)) out.clipped.push(`${name} (by ${el.tagName.toLowerCase()}.${el.className})`);
      const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const re = /[^\\s-]+-*/g;
        let m;
        while ((m = re.exec(node.textContent))) {
          const range = document.createRange();
          range.setStart(node, m.index);
          range.setEnd(node, m.index + m[0].length);
          const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
          if (lines.size > 1) out.broken.push(m[0]);
        }
      }
    }
  }
  return out;
}"""
LEGEND_OUTSIDE = """() => {
  // legend entries (the page's own under the plot, and any the plot draws) that leave the screen or the plot
  const box = (el) => el.getBoundingClientRect();
  const plot = box(document.querySelector("#curves"));
  const keys = [...document.querySelectorAll("#curves-legend .hb-key")];
  const out = keys.filter((k) => box(k).left < 0 || box(k).right > innerWidth).map((k) => k.innerText);
  for (const g of document.querySelectorAll("#curves .role-legend"))
    if (box(g).left < plot.left || box(g).right > plot.right) out.push("the plot's own legend");
  return {keys: keys.map((k) => k.innerText), outside: out};
}"""
FILTERED_T = """  t:
    - filter: self_attn
      value: [0, 0.5, 1]
    - filter: mlp
      value: [1, 0.5, 0]
    - value: 0.5
"""


def check_tables(page, roots: str = TABLES) -> None:
    found = page.evaluate(CHECK_CELLS, roots)
    assert found["cells"], f"no table cell is shown under {roots}"
    assert found["broken"] == [], f"words split across lines: {found['broken']}"
    assert found["clipped"] == [], f"cells whose text is cut off: {found['clipped']}"


def test_mobile_tables_wrap_between_words_and_the_legend_fits(browser, space_app):
    """At 390 px, with a recipe validated and a finished job listed: no table cell breaks a word or
    cuts its text off (a table wider than the screen scrolls sideways), and the plot's legend stays
    on screen."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(space_app.url)
        expect(page.locator("#recipe-editor .cm-content")).to_be_visible()
        expect(page.locator("#validate-button")).to_be_visible()  # the page polls: it never goes network-idle
        text = (Path(space_app.recipes_dir) / "tiny-slerp.yml").read_text().replace("  t: [0, 0.5, 1]\n", FILTERED_T)
        set_editor(page, text)
        page.locator("#submit-button").click()
        expect(page.locator("#job-view [data-state='done']")).to_be_visible(timeout=180_000)
        expect(page.locator("#job-result")).to_contain_text("config.json")
        expect(page.locator("#jobs-table [role=gridcell]").first).to_be_visible()
        check_tables(page, "#jobs-table, #job-result")
        shot(page, "m2-jobs")

        page.get_by_role("tab", name="Recipe").click()
        page.locator("#validate-button").click()
        expect(page.locator("#status")).to_contain_text("Ready to merge")
        page.locator("#form").get_by_text("Build a recipe with a form").click()
        expect(page.locator("#form-shared [role=columnheader]").first).to_be_visible()
        expect(page.locator("#curves-legend")).to_contain_text("t · self_attn")
        expect(page.locator("#curves svg").first).to_be_visible()
        check_tables(page, "#status, #form-models, #form-shared")
        legend = page.evaluate(LEGEND_OUTSIDE)
        assert set(legend["keys"]) == {"t · self_attn", "t · mlp", "t · other tensors"}
        assert legend["outside"] == [], f"legend entries cut off at 390 px: {legend['outside']}"
        shot(page, "m1-recipe")

        page.get_by_role("tab", name="Gallery").click()
        expect(page.locator("#gallery-table [role=gridcell]").first).to_be_visible()
        check_tables(page, "#gallery-table")
        shot(page, "m3-gallery")
    finally:
        context.close()


# ---- waits that say what for, and cancel that asks first -------------------------------------------


def hub_copy(hub, repo_id: str, folder: Path) -> None:
    """A tiny local model as a public repo on the Hub stand-in."""
    hub.create_repo_direct(repo_id, {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()})


def test_a_slow_hub_shows_what_is_awaited_and_cancel_asks_first(page, space_app, hub, families):
    """Every read of the models' safetensors on the Hub stand-in is held for a while: the check says
    which models and which requests it waits for; the job that follows stays running, so cancelling it
    can be asked, declined (the job runs on) and then confirmed."""
    from playwright.sync_api import expect

    base, ft1, _ = families("llama")
    hub_copy(hub, "alice/slow-base", base)
    hub_copy(hub, "alice/slow-ft", ft1)
    hub.inject("*", r"^/alice/slow-[a-z]+/resolve/.*\.safetensors$", "slow", delay=2.0, times=None)
    text = ("merge_method: slerp\nbase_model: alice/slow-base\nmodels:\n  - model: alice/slow-base\n"
            "  - model: alice/slow-ft\nparameters:\n  t: 0.5\ndtype: bfloat16\n")
    try:
        page.goto(space_app.url)
        set_editor(page, text)
        page.locator("#validate-button").click()
        status = page.locator("#status")
        expect(status).to_contain_text("Checking the recipe", timeout=20_000)
        for awaited in ("alice/slow-base", "alice/slow-ft", "config.json", "safetensors headers", hub.url):
            expect(status).to_contain_text(awaited)
        shot(page, "10-waiting")
        expect(status).to_contain_text("Ready to merge", timeout=120_000)

        page.locator("#submit-button").click()
        active = page.locator("#job-view [data-state='queued'], #job-view [data-state='validating'], "
                              "#job-view [data-state='running']")
        expect(active).to_have_count(1, timeout=120_000)
        confirm = page.locator("#confirm-cancel").first  # (Gradio gives a group's id to its wrapper too)
        page.locator("#cancel-button").click()
        expect(confirm).to_be_visible()
        expect(confirm).to_contain_text("Cancel this job?")
        shot(page, "11-confirm-cancel")
        page.get_by_role("button", name="Keep it running").click()
        expect(confirm).to_be_hidden()
        page.wait_for_timeout(1500)  # a few polls later the job is still under way
        expect(active).to_have_count(1)
        page.locator("#cancel-button").click()
        page.locator("#confirm-cancel-yes").click()
        expect(page.locator("#job-view [data-state='cancelled']")).to_be_visible()
        expect(page.locator("#job-result")).to_contain_text("Nothing was published")
    finally:
        hub.clear_faults()
