"""The screenshots of docs/app.md, made the way a person sees the app: `hubbot serve` in local mode
over tiny models in a fixed demo folder, so recipes read `./models/llama-base` and results sit
under that folder rather than under a test run's temporary path.

    PYTHONPATH=. .venv/bin/python -m tests.screenshots [--root /tmp/hubbot-demo] [--out docs/screenshots]

Needs Debian's Chromium (/usr/bin/chromium) and Playwright, as tests/test_browser.py does.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tests.app_server import ROOT, AppServer, tiny_gallery
from tests.test_browser import ARGS, BAD_EVERYWHERE, CHROMIUM, FILTERED_T, set_editor

MODELS = ("./models/llama-base", "./models/llama-ft1", "./models/llama-ft2")


def prepare(root: Path) -> AppServer:
    """A fresh demo folder: the tiny models, the gallery over them, and a server whose working folder
    it is (so `./models/...` in a recipe means that folder's models)."""
    from tests.models import make_family

    shutil.rmtree(root, ignore_errors=True)
    make_family(root / "models", "llama", 2)
    return AppServer(root / "data", tiny_gallery(root / "recipes", *MODELS))


def settle(page, path: Path) -> None:
    page.wait_for_timeout(800)  # the progress bars' transitions and the plot's drawing
    page.screenshot(path=str(path), full_page=True)


def desktop(browser, url: str, recipes: Path, out: Path) -> None:
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    expect(page.locator("#validate-button")).to_be_visible()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "desktop-start.png"))  # the first screen, as it opens

    set_editor(page, (recipes / "tiny-slerp.yml").read_text().replace("  t: [0, 0.5, 1]\n", FILTERED_T))
    page.locator("#validate-button").click()
    expect(page.locator("#status")).to_contain_text("Ready to merge")
    expect(page.locator("#curves svg").first).to_be_visible()
    settle(page, out / "desktop-validated.png")

    set_editor(page, BAD_EVERYWHERE)
    page.locator("#validate-button").click()
    expect(page.locator("#status")).to_contain_text("problems to fix")
    settle(page, out / "desktop-problems.png")

    set_editor(page, (recipes / "tiny-soup.yml").read_text())
    page.locator("#submit-button").click()
    expect(page.locator("#job-view [data-state='done']")).to_be_visible()
    page.locator("#download-button").click()
    expect(page.locator("#job-files a").first).to_be_visible()
    settle(page, out / "desktop-result.png")

    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-table [role=gridcell]", has_text="Tiny llama soup").first.click()
    expect(page.get_by_role("heading", name="Tiny llama soup")).to_be_visible()
    settle(page, out / "desktop-gallery.png")
    page.context.close()


def mobile(browser, url: str, recipes: Path, out: Path) -> None:
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2).new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    expect(page.locator("#validate-button")).to_be_visible()
    page.wait_for_timeout(1500)
    set_editor(page, (recipes / "tiny-slerp.yml").read_text().replace("  t: [0, 0.5, 1]\n", FILTERED_T))
    page.locator("#validate-button").click()
    expect(page.locator("#status")).to_contain_text("Ready to merge")
    expect(page.locator("#curves svg").first).to_be_visible()
    settle(page, out / "mobile-recipe.png")
    page.get_by_role("tab", name="Jobs").click()
    page.locator("#jobs-table [role=gridcell]").first.click()  # follow the desktop run's job
    expect(page.locator("#job-view [data-state='done']")).to_be_visible()
    settle(page, out / "mobile-jobs.png")
    page.get_by_role("tab", name="Gallery").click()
    expect(page.locator("#gallery-table [role=gridcell]").first).to_be_visible()
    settle(page, out / "mobile-gallery.png")
    page.context.close()


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/hubbot-demo"),
                        help="the demo folder (emptied first); its path shows in result views")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with prepare(args.root.resolve()) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            desktop(browser, server.url, server.recipes_dir, args.out)
            mobile(browser, server.url, server.recipes_dir, args.out)
        finally:
            browser.close()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
