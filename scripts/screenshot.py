"""Screenshot of the live page (docs/dashboard.png) from a running worker.

    .venv/bin/python scripts/screenshot.py [http://localhost:6066] [docs/dashboard.png] [user]

Uses Debian's Chromium through Playwright (no browser download).
"""

from __future__ import annotations

import asyncio
import sys

from playwright.async_api import async_playwright


async def main(url: str, out: str, user: str) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(url + "/")
            await page.wait_for_timeout(6000)  # a few polls, so the charts have points
            await page.fill("#lookup-user", user)
            await page.click("#lookup-form button")
            await page.wait_for_selector("#lookup-features")
            await page.screenshot(path=out)
        finally:
            await browser.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(
            args[0] if args else "http://localhost:6066",
            args[1] if len(args) > 1 else "docs/dashboard.png",
            args[2] if len(args) > 2 else "heavy-00",
        )
    )
