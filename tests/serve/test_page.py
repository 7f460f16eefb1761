"""The chat page in a real headless browser (Debian chromium via Playwright): type a message, watch the reply stream
in, press Stop (the server frees the row), and save a screenshot to runs/test-artifacts/serve-chat.png.

Slow tier. Needs `apt-get install chromium` (`make test-slow` does it) and the `playwright` package; Playwright's
own browser download cannot work offline, so Debian's binary is launched."""

import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCREENSHOT = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts" / "serve-chat.png"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium binary; run: apt-get install chromium")


def test_page_streams_a_reply_and_stop_frees_the_row(live, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    batch = live.scheduler.batch
    step = batch._step

    def slow_step(*args):  # a few seconds of streaming, so Stop lands mid-reply
        time.sleep(0.08)
        return step(*args)

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(live.url + "/")
        page.wait_for_function("document.getElementById('model-info').textContent.includes('parameters')")
        assert live.name in page.text_content("#model-info")

        # 1. a reply streams in and finishes
        page.fill("#max_tokens", "16")
        page.fill("#temperature", "0")
        page.fill("#input", "Hello there")
        page.click("#send")
        page.wait_for_selector(".msg.assistant.done", timeout=30_000)
        assert page.text_content(".msg.user .content") == "Hello there"
        first_reply = page.text_content(".msg.assistant .content")
        assert first_reply and "done (length)" in page.text_content("#status")

        # 2. a long reply is stopped mid-stream; the server drops the request
        batch._step = slow_step
        try:
            page.fill("#max_tokens", "40")
            page.fill("#input", "A story")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelectorAll('.msg.assistant')[1]"
                                   "?.querySelector('.content').textContent.length > 3", timeout=30_000)
            assert page.is_enabled("#stop") and not page.is_enabled("#send")
            page.click("#stop")
            page.wait_for_function("document.getElementById('status').textContent === 'stopped'", timeout=10_000)
            deadline = time.monotonic() + 5
            while batch.active and time.monotonic() < deadline:
                time.sleep(0.05)
            assert batch.active == 0
        finally:
            batch._step = step
        stopped = page.text_content(".msg.assistant.stopped .content")
        assert 0 < len(stopped)
        assert page.locator(".msg").count() == 4  # history kept: two user messages, two replies
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        browser.close()
    assert SCREENSHOT.stat().st_size > 5_000
