"""Drive a running demo in headless Chromium like a person would, and save a screenshot.

    python demo/screenshot.py --url http://127.0.0.1:7860 --image runs/shapes/images/test/000000.png \\
        --question "how many objects are there ?" --caption-task caption --out docs/demo.png

Uploads the image, types the question, clicks Submit and reads the answer; then switches the
task to captioning, submits again and reads the caption. Prints JSON: the answer, the caption,
and every request the page made outside the demo's own server (there should be none). Uses
Debian's Chromium (/usr/bin/chromium): Playwright cannot download its own browser offline.
"""

from __future__ import annotations

import argparse
import json
from urllib.parse import urlparse

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def wait_for_time(page, filled: bool, timeout_ms: int) -> None:
    """Wait until the "Time taken" box is filled (an answer arrived) or empty (cleared)."""
    page.wait_for_function(
        "([sel, filled]) => { const e = document.querySelector(sel); "
        "return e && (e.value !== '') === filled; }",
        arg=["#time textarea", filled], timeout=timeout_ms)


def submit_and_read(page, timeout_ms: int) -> str:
    """Click Submit on a page whose outputs are empty; return the answer once it arrives."""
    wait_for_time(page, False, timeout_ms)
    page.locator("#submit").click()
    wait_for_time(page, True, timeout_ms)
    return page.locator("#answer textarea").input_value()


def drive(url: str, image: str, question: str, caption_task: str | None, out: str,
          timeout_ms: int = 60_000) -> dict:
    outside: list[str] = []
    host = urlparse(url).netloc
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: outside.append(r.url) if urlparse(r.url).scheme in
                ("http", "https", "ws", "wss") and urlparse(r.url).netloc != host else None)
        page.goto(url, wait_until="networkidle")
        page.locator("#image input[type=file]").set_input_files(image)
        page.locator("#image img").first.wait_for(timeout=timeout_ms)
        page.locator("#question textarea").fill(question)
        answer = submit_and_read(page, timeout_ms)
        caption = None
        if caption_task:  # switching the task clears the outputs
            page.locator("#task input").click()
            page.get_by_role("option", name=caption_task).first.click()
            caption = submit_and_read(page, timeout_ms)
        page.screenshot(path=out, full_page=True)
        browser.close()
    return {"answer": answer, "caption": caption, "outside_requests": outside}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--question", required=True)
    parser.add_argument("--caption-task", help="task selector label prefix to switch to")
    parser.add_argument("--out", required=True, help="screenshot PNG")
    args = parser.parse_args()
    print(json.dumps(drive(args.url, args.image, args.question, args.caption_task, args.out)))


if __name__ == "__main__":
    main()
