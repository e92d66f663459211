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
def page(space_app):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            browser.close()


def shot(page, name: str) -> None:
    page.wait_for_timeout(800)  # let the progress bars finish their transition
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def pick_recipe(page, title: str) -> None:
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-table [role=gridcell]", has_text=title).first.click()


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
    page.locator("#use-recipe").click()
    expect(page.locator("#recipe-editor")).to_be_visible()
    expect(page.locator("#recipe-editor .cm-content")).to_contain_text("merge_method: linear")
    assert "title: Tiny llama soup" in editor_text(page)

    page.locator("#validate-button").click()
    expect(page.locator("#validation")).to_contain_text("Ready to merge")
    expect(page.locator("#validation")).to_contain_text("Estimated time")
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
    expect(page.locator("#validation")).to_contain_text("to fix")
    expect(page.locator("#validation")).to_contain_text("did you mean 'slerp'")
    page.locator("#submit-button").click()
    expect(page.locator("#submit-status")).to_contain_text("Not submitted")
    assert "Traceback" not in page.content()
    shot(page, "06-bad-recipe")


def test_validation_plots_per_layer_curves(page, space_app):
    from playwright.sync_api import expect

    page.goto(space_app.url)
    pick_recipe(page, "Tiny llama SLERP with a curve")
    page.locator("#use-recipe").click()
    expect(page.locator("#recipe-editor .cm-content")).to_contain_text("merge_method: slerp")
    page.locator("#validate-button").click()
    expect(page.locator("#validation")).to_contain_text("Ready to merge")
    expect(page.locator("#curves")).to_be_visible()
    expect(page.locator("#curves")).to_contain_text("Per-layer parameters")
    shot(page, "07-curves")
