"""A screenshot of TensorBoard's first view of a run folder, taken in headless Chromium, for the README.

    lit-gpt fit --config configs/shakespeare_char_cpu.yaml
    python scripts/tensorboard_screenshot.py --logdir runs/shakespeare_char_cpu --out docs/tensorboard.png

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``) and ``selenium``.
TensorBoard is started on a free loopback port and stopped afterwards.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"tensorboard_screenshot: TensorBoard did not answer at {url} within {seconds:.0f} s")


def headless_chromium(chromium: str, driver: str, width: int, height: int):
    """A Selenium driver of headless Chromium (Debian's ``chromium`` and its ``chromedriver``); quit() it after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def screenshot(url: str, out: Path, chromium: str, driver: str, width: int, height: int) -> None:
    from selenium.webdriver.common.by import By

    browser = headless_chromium(chromium, driver, width, height)
    try:
        browser.get(url)
        deadline = time.monotonic() + 30
        while not browser.find_elements(By.CSS_SELECTOR, "card-view") and time.monotonic() < deadline:
            time.sleep(0.5)
        # The settings pane opens by default on a wide window: close it, so the charts have the page.
        for button in browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Close side pane']"):
            button.click()
        time.sleep(3)  # the charts draw after their data arrives
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(out))
    finally:
        browser.quit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", type=Path, required=True, help="what `tensorboard --logdir` would be given")
    parser.add_argument("--out", type=Path, default=Path("docs/tensorboard.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--driver", default="/usr/bin/chromedriver")
    parser.add_argument("--size", default="1400x1250", help="window WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    if not args.logdir.is_dir():
        raise SystemExit(f"tensorboard_screenshot: no folder {args.logdir}: train a run first (lit-gpt fit ...)")
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir), "--host", "127.0.0.1"]
    server = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url, 60)
        width, height = (int(v) for v in args.size.split("x"))
        screenshot(url, args.out, args.chromium, args.driver, width, height)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
