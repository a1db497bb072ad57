"""The web page in a real headless Chromium (Debian's chromium + chromedriver) against a real server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import ROOT, Server

pytestmark = [pytest.mark.java, pytest.mark.browser]  # a real browser on a served index

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "artifacts" / "test-screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail("the web page test needs Debian's chromium and chromium-driver (make setup installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()




def test_search_page_shows_scored_results(browser, tiny_server: Server, synthetic_dataset: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # The grid is re-rendered by each search, so an element found a moment ago may be gone: look again.
    wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(tiny_server.base + "/")
    wait.until(lambda d: "32 images" in d.find_element(By.ID, "index-info").text)
    browser.find_element(By.ID, "text").send_keys("a red square on blue")
    browser.find_element(By.ID, "search").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .hit")))
    hits = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    assert len(hits) == 24  # the page asks for 24
    first = hits[0]
    assert [b.text.split("\n")[0] for b in first.find_elements(By.CSS_SELECTOR, ".bar span:first-child")] == [
        "dense", "sparse", "fused"]
    assert first.find_elements(By.CSS_SELECTOR, ".chips.matched .chip")  # matched-term chips
    assert browser.find_elements(By.CSS_SELECTOR, "#query-terms .chip")
    image = first.find_element(By.TAG_NAME, "img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image))
    status = browser.find_element(By.ID, "status").text
    assert "24 of" in status and "hybrid" in status

    # Slide fully to dense: the fused ranking becomes the dense ranking.
    slider = browser.find_element(By.ID, "weight")
    browser.execute_script("arguments[0].value = 0; arguments[0].dispatchEvent(new Event('change'))", slider)
    wait.until(lambda d: "w_sparse 0.000" in d.find_element(By.ID, "status").text)

    # Captions side, then an image upload.
    browser.execute_script("document.getElementById('side').value = 'texts'")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: "#" in d.find_element(By.CSS_SELECTOR, "#results .hit").get_attribute("data-id"))
    upload = synthetic_dataset / "images" / "img_0001.jpg"
    browser.find_element(By.ID, "text").clear()
    browser.find_element(By.ID, "image").send_keys(str(upload))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit .caption")
               and "candidates" in d.find_element(By.ID, "status").text)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "web-page.png"))

    # An error is shown on the page, not swallowed.
    browser.find_element(By.ID, "text").send_keys("x" * 1000)
    browser.execute_script("document.getElementById('text').value += 'yy'")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: "Error" in d.find_element(By.ID, "status").text)


def test_api_docs_render_offline(browser, tiny_server: Server) -> None:  # type: ignore[no-untyped-def]
    """/docs renders Swagger UI from this server's own assets (the machine has no route to a CDN)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(tiny_server.base + "/docs")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#swagger-ui .opblock"))
    assert "/v1/search" in browser.find_element(By.ID, "swagger-ui").text
    sources = browser.execute_script(
        "return [...document.scripts].map(s => s.src).concat("
        "[...document.querySelectorAll('link[rel=stylesheet]')].map(l => l.href)).filter(Boolean)")
    assert sources and all(source.startswith(tiny_server.base + "/docs-assets/") for source in sources)
