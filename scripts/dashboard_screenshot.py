"""Take the README's screenshot of the dashboard (docs/dashboard.png) from a local workdir, in headless chromium.

    python scripts/dashboard_screenshot.py --workdir .sigma0 --output docs/dashboard.png     (after `make demo`)

Serves the workdir with the dashboard's own server (sigma0.dashboard) on a free port of 127.0.0.1, opens it in
Debian's chromium through its chromedriver (as tests/browser.py does) and saves the whole page.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from sigma0.dashboard.server import make_server
from sigma0.dashboard.sources import LocalSource


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".sigma0")
    parser.add_argument("--output", default="docs/dashboard.png")
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        print("chromium and chromedriver are needed: bash scripts/setup.sh", file=sys.stderr)
        return 2
    server = make_server(LocalSource(Path(args.workdir)), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={args.width},1000",
    ):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service(driver))
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(args.width, height + 20)
        browser.save_screenshot(args.output)
    finally:
        browser.quit()
        server.shutdown()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
