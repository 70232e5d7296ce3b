"""A real headless browser for the dashboard's tests: Debian's chromium, driven through its chromedriver by
Selenium. Missing chromium fails the test (scripts/setup.sh installs it): a browser test that skips proves nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = ("chromium", "chromium-browser")


@contextmanager
def chromium(width: int = 1400, height: int = 1100) -> Iterator[webdriver.Chrome]:
    binary = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail(
            "chromium and chromedriver are needed for the dashboard's browser tests: run scripts/setup.sh "
            "(apt-get install chromium chromium-driver)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    # The system's chromedriver, named: Selenium Manager never looks for (or downloads) another.
    browser = webdriver.Chrome(options=options, service=Service(driver))
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()
