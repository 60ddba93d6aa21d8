"""The web page in headless Chromium (Debian's package, driven by Playwright) against the whole
pipeline: sign in, ask for a video, click the choices, confirm, watch the progress, and the video
element plays the finished video. Screenshots are saved under var/test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.e2e.conftest import Pipeline

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
REQUEST = "make a video of a red fox running through fresh snow"
# The browser's notification service and tab visibility, under the test's control: a recording
# stand-in for `Notification` (granted), and `document.hidden` that follows `__hideTab`.
BROWSER_SHIMS = """
window.__notifications = [];
window.Notification = class {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.__notifications.push({ title, ...options }); }
  close() {}
};
Object.defineProperty(Document.prototype, "hidden", {
  configurable: true,
  get() { return !!window.__hideTab; },
});
"""

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is not installed (scripts/ensure-browser.sh)"
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


def _key(p: Pipeline) -> str:
    return str(p.api.http.headers["Authorization"]).removeprefix("Bearer ")


async def _shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=False)
    print(f"screenshot: {path}")
    return path


async def _sign_in(page: Page, p: Pipeline) -> None:
    await page.goto(p.settings.public_url + "/")
    await page.fill("#api-key", "rf_not-a-real-key")
    await page.click("#signin-button")
    error = page.locator("#signin-error")
    await error.wait_for(state="visible")
    assert "wasn't accepted" in await error.inner_text()  # an error in words
    await page.fill("#api-key", _key(p))
    await page.click("#signin-button")
    await page.locator("#app").wait_for(state="visible")


async def test_sign_in_ask_choose_confirm_watch_and_play(
    pipeline: Pipeline, browser: Browser
) -> None:
    p = pipeline
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.add_init_script(BROWSER_SHIMS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None,
    )

    await _sign_in(page, p)
    problems.clear()  # the refused key's 401 above was on purpose
    # The key is kept in the browser, not in any URL.
    assert await page.evaluate("localStorage.getItem('reelflow.apiKey')") == _key(p)

    # An empty message is refused in words, before anything is sent.
    await page.click("#send-button")
    assert await page.locator("#composer-error").inner_text() == "Please type a message first."

    # Ask; the assistant asks for the format and the length, as clickable choices.
    await page.fill("#composer-input", REQUEST)
    await page.press("#composer-input", "Enter")
    await page.locator(".questions-card .choice[data-value='9:16']").wait_for(timeout=30_000)
    await _shot(page, "web-1-questions.png")
    await page.click(".questions-card .choice[data-value='9:16']")
    # One answered: the assistant asks for what is left, the length.
    aspect = page.locator(".questions-card .choice[data-value='9:16']")
    await aspect.wait_for(state="detached", timeout=30_000)
    only_length = page.locator(".questions-card .choice[data-value='4']")
    await only_length.wait_for(timeout=30_000)
    assert await page.locator(".questions-card .question").count() == 1
    await only_length.click()

    # The confirmation card: parameters and cost, Confirm/Cancel.
    card = page.locator(".confirm-card")
    await card.wait_for(timeout=30_000)
    text = await card.inner_text()
    assert "9:16 · vertical" in text and "4 seconds" in text and "$0.00" in text
    await _shot(page, "web-2-confirm.png")
    await page.click(".confirm-button")
    await page.evaluate("() => { window.__hideTab = true; }")  # the user switches tabs

    # Live progress, then the video, which plays.
    # (Functions, not expressions: the page's CSP forbids eval, which expressions would need.)
    await page.wait_for_function(
        "() => window.reelflowDebug.progress.some(p => p.status === 'processing')",
        timeout=60_000,
    )
    video = page.locator(".msg video").first
    await video.wait_for(timeout=90_000)
    await page.wait_for_function(
        "() => { const v = document.querySelector('.msg video');"
        " return v && v.readyState >= 2 && v.duration > 0; }",
        timeout=30_000,
    )
    state = await video.evaluate(
        "async v => { await v.play(); await new Promise(r => setTimeout(r, 700));"
        " return {ready: v.readyState, duration: v.duration, time: v.currentTime,"
        " poster: v.poster, width: v.videoWidth, height: v.videoHeight}; }"
    )
    assert state["ready"] >= 2 and state["duration"] > 0, state
    assert state["time"] > 0, state  # it actually played
    assert (state["width"], state["height"]) == (720, 1280)  # vertical, as chosen
    assert "/media/" in state["poster"] and "sig=" in state["poster"]  # the thumbnail
    stages = await page.evaluate("window.reelflowDebug.progress.map(p => p.status)")
    assert "processing" in stages
    # Finished while the tab was hidden: a browser notification said so.
    notes = await page.evaluate("() => window.__notifications")
    assert [n["title"] for n in notes] == ["Your video is ready"]
    assert notes[0]["body"] == REQUEST and "/media/" in notes[0]["icon"]
    await page.evaluate("() => { window.__hideTab = false; }")
    await video.evaluate("v => v.pause()")
    await _shot(page, "web-3-video.png")

    # History: the generation, filterable by status.
    await page.click("#tab-history")
    item = page.locator(".history-item").first
    await item.wait_for()
    assert "Ready" in await item.inner_text()
    await page.select_option("#status-filter", "failed")
    await page.locator("#history-empty").wait_for(state="visible")
    await page.select_option("#status-filter", "completed")
    await page.locator(".history-item").first.wait_for()
    await _shot(page, "web-4-history.png")

    # Phone width: the same page, nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.click("#tab-chat")
    await page.locator(".msg video").first.wait_for()
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    await _shot(page, "web-5-phone.png")
    await page.click("#menu-button")
    await page.wait_for_function(
        "() => document.querySelector('#sidebar.open')?.getBoundingClientRect().left >= 0"
    )
    await _shot(page, "web-6-phone-drawer.png")

    assert problems == []
