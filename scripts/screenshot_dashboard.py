"""Screenshots of a `chatsae dashboard` site in headless Chromium (the images under docs/).

    python scripts/screenshot_dashboard.py runs/embedded_mid_fast_jumprelu/sae/dashboard --latent 3146 \
        --index docs/dashboard_index.png --feature docs/dashboard.png

Needs selenium (a dev dependency) and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path


def browser(width: int, height: int):  # noqa: ANN201 - a selenium WebDriver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not driver_path or not Path(chromium).exists():
        raise SystemExit("needs chromium + chromium-driver (apt-get install -y chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chatsae-shot-")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ]
    for flag in flags:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("site", type=Path, help="dashboard directory (holds index.html)")
    ap.add_argument("--latent", type=int, required=True, help="latent whose feature page is shot")
    ap.add_argument("--index", type=Path, help="PNG of the feature list")
    ap.add_argument("--feature", type=Path, help="PNG of the feature page")
    ap.add_argument("--sort", default="freq", help="column to sort the list by before the shot")
    ap.add_argument("--size", default="1300x1000", help="window size WxH")
    args = ap.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    width, height = (int(v) for v in args.size.split("x"))
    driver = browser(width, height)
    try:
        if args.index:
            driver.get((args.site / "index.html").resolve().as_uri())
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.row"))
            driver.find_element(By.CSS_SELECTOR, f"th[data-key={args.sort}]").click()
            driver.save_screenshot(str(args.index))
        if args.feature:
            driver.get((args.site / "feature.html").resolve().as_uri() + f"#{args.latent}")
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#contexts .tok.on"))
            driver.save_screenshot(str(args.feature))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
