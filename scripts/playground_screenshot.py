"""A screenshot of ``lit-gpt serve``'s playground after it streamed a completion, taken in headless Chromium, for
the README.

    lit-gpt fit --config configs/shakespeare_char_cpu.yaml
    python scripts/playground_screenshot.py --checkpoint runs/shakespeare_char_cpu --out docs/playground.png

Needs Debian's ``chromium`` and ``chromium-driver`` and ``selenium``. The server runs on a free loopback port and is
stopped afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import Server  # noqa: E402
from tensorboard_screenshot import headless_chromium  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="what `lit-gpt serve --checkpoint` would be given")
    parser.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--max_tokens", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--driver", default="/usr/bin/chromedriver")
    parser.add_argument("--size", default="1100x900", help="window WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    from selenium.webdriver.common.by import By

    server = Server(Path(args.checkpoint))
    try:
        width, height = (int(v) for v in args.size.split("x"))
        browser = headless_chromium(args.chromium, args.driver, width, height)
        try:
            browser.get(f"http://127.0.0.1:{server.port}/")
            for field, value in (("prompt", args.prompt), ("max_tokens", args.max_tokens), ("seed", args.seed)):
                element = browser.find_element(By.ID, field)
                element.clear()
                element.send_keys(str(value))
            browser.find_element(By.ID, "generate").click()
            deadline = time.monotonic() + 120
            while browser.find_element(By.ID, "stop").is_enabled() or not browser.find_element(By.ID, "stats").text:
                if time.monotonic() > deadline:
                    raise SystemExit("playground_screenshot: the completion did not finish within 120 s")
                time.sleep(0.2)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(args.out))
        finally:
            browser.quit()
    finally:
        server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
