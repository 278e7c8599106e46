"""Static dashboard: generated files and data, and the pages in a real headless Chromium (selenium)."""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from chatsae.interp.dashboard import build_dashboard

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")


def read_js(path: Path, prefix: str) -> object:
    text = path.read_text()
    assert text.startswith(prefix)
    return json.loads(text[len(prefix) :].strip().rstrip(";").rstrip(")"))


@pytest.fixture(scope="module")
def dashboard(interp_features, tmp_path_factory):
    data = interp_features[0]
    root = tmp_path_factory.mktemp("dash")
    named = data.fired().tolist()[:3]
    auto = {
        "latents": {
            str(j): {
                "fast": {"status": "ok", "score": 5 - i, "name": f"zebra concept {j}"},
                "detection": {"balanced_accuracy": 0.75},
            }
            for i, j in enumerate(named)
        },
        "summary": {"fast": {"top_range_share": 2 / 3}},
    }
    (root / "auto.json").write_text(json.dumps(auto))
    index = build_dashboard(data, root / "site", chunk_size=10, autointerp=root / "auto.json")
    return data, index, named


def test_dashboard_files_and_data(dashboard):
    data, index, named = dashboard
    site = index.parent
    assert {p.name for p in site.iterdir()} == {"index.html", "feature.html", "data", ".chatsae"}
    payload = read_js(site / "data" / "index.js", "window.CHATSAE = ")
    rows = {r["id"]: r for r in payload["features"]}
    assert len(rows) == data.d_sae and payload["meta"]["fast_top_range"] == pytest.approx(2 / 3)
    for j in range(data.d_sae):
        assert rows[j]["freq"] == pytest.approx(float(data.frequency[j]), rel=1e-3)
        assert rows[j]["max"] == pytest.approx(float(data.max_act[j]), rel=1e-3)
    assert rows[named[0]]["name"] == f"zebra concept {named[0]}" and rows[named[0]]["score"] == 5
    chunks = sorted((site / "data" / "chunks").iterdir())
    assert len(chunks) == math.ceil(data.d_sae / 10)
    chunk = json.loads(re.match(r"chatsaeChunk\(0, (.*)\);\s*$", chunks[0].read_text(), re.S).group(1))
    detail = chunk["3"]
    top = data.contexts(3, "top")
    assert [c["t"] for c in detail["top"]] == [c.tokens for c in top]
    assert detail["top"][0]["a"] == pytest.approx(top[0].acts, rel=1e-3, abs=1e-6)
    assert sum(detail["hist"]["counts"]) == int(data.fire_count[3])
    assert len(detail["template"]) == len(data.template_stats(3))
    vocab = read_js(site / "data" / "vocab.js", "window.CHATSAE_VOCAB = ")
    assert all(str(t) in vocab for c in detail["top"] for t in c["t"])
    for page in ("index.html", "feature.html"):  # self-contained: nothing fetched from the network
        html = (site / page).read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
        assert "{{" not in html and "<style>" in html


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not (CHROMEDRIVER and Path(CHROMIUM).exists()):
        pytest.skip(
            "headless browser test needs Debian's chromium + chromium-driver "
            "(apt-get install -y chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chatsae-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1300,1000",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_dashboard_in_headless_chromium(dashboard, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data, index, named = dashboard
    browser.get(index.resolve().as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.row")
    assert len(rows) == data.d_sae
    assert console_errors(browser) == []
    # search by auto-interp name filters the list
    box = browser.find_element(By.ID, "search")
    box.send_keys(f"zebra concept {named[1]}")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.row")
    assert [r.get_attribute("data-id") for r in rows] == [str(named[1])]
    assert browser.find_element(By.ID, "count").text.startswith("1 of")
    box.clear()
    box.send_keys("zebra")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.row")) == len(named)
    box.clear()
    box.send_keys("x")  # clear() does not fire input events: type something and delete it
    box.send_keys("\b")
    # sort by frequency (descending on first click)
    browser.find_element(By.CSS_SELECTOR, "th[data-key=freq]").click()
    first = browser.find_elements(By.CSS_SELECTOR, "tr.row")[0].get_attribute("data-id")
    assert float(data.frequency[int(first)]) == pytest.approx(float(data.frequency.max()))
    browser.save_screenshot(str(tmp_path / "index.png"))
    # a feature page shows highlighted tokens with their values on hover
    j = named[0]
    browser.find_element(By.CSS_SELECTOR, f"tr.row[data-id='{j}'] a").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#contexts .tok.on"))
    assert browser.current_url.endswith(f"feature.html#{j}")
    assert f"zebra concept {j}" in browser.find_element(By.ID, "feature-head").text
    on = browser.find_elements(By.CSS_SELECTOR, "#contexts .tok.on")
    assert "rgba(234, 88, 12" in on[0].get_attribute("style")
    ActionChains(browser).move_to_element(on[0]).perform()
    tip = browser.find_element(By.ID, "tooltip")
    assert tip.is_displayed() and "act" in tip.text
    assert float(on[0].get_attribute("data-act")) > 0
    assert browser.find_elements(By.CSS_SELECTOR, "svg rect")  # the histogram
    assert "<|im_start|>" in browser.find_element(By.ID, "special").text
    # hash navigation loads another chunk
    other = data.d_sae - 1
    browser.get(index.parent.joinpath("feature.html").resolve().as_uri() + f"#{other}")
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "feature-head"))
    assert f"Latent {other}" in browser.find_element(By.ID, "feature-head").text
    assert console_errors(browser) == []
    browser.save_screenshot(str(tmp_path / "feature.png"))
    assert (tmp_path / "feature.png").stat().st_size > 10_000
