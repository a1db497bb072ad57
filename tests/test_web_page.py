"""The web page in a real headless Chromium (Debian's chromium + chromedriver) against a real server."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.server import ROOT, Server

pytestmark = [pytest.mark.java, pytest.mark.browser]  # a real browser on a served index
SCREENSHOTS = ROOT / "artifacts" / "test-screenshots"

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
    assert "q=" not in browser.current_url and "side=texts" in browser.current_url  # a file cannot be in a URL
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "web-page.png"))

    # An error is shown on the page, not swallowed.
    browser.find_element(By.ID, "text").send_keys("x" * 1000)
    browser.execute_script("document.getElementById('text').value += 'yy'")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: "Error" in d.find_element(By.ID, "status").text)


def test_search_url_is_shareable_and_back_restores_it(browser, tiny_server: Server) -> None:  # type: ignore[no-untyped-def]
    """A link with ?q= and the controls runs that search; each search is a history entry that back and forward
    restore (controls and results); a hit's id element carries the full id."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    weights = tiny_server.request("GET", "/v1/indexes").json()["default_weights"]

    def value(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).get_attribute("value"))

    def shown(mode: str) -> list[str]:
        """The hits' ids once the status reports a finished search in ``mode``."""
        wait.until(lambda d: f"candidates · {mode} ·" in d.find_element(By.ID, "status").text)
        return [str(hit.get_attribute("data-id")) for hit in browser.find_elements(By.CSS_SELECTOR, "#results .hit")]

    first = "a red square on blue"
    browser.get(tiny_server.base + "/?" + urlencode({"q": first, "side": "texts", "mode": "dense", "weight": "0.25"}))
    first_ids = shown("dense")
    assert [value(i) for i in ("text", "side", "mode", "weight")] == [first, "texts", "dense", "0.25"]
    assert all("#" in hit for hit in first_ids)  # captions: the texts side
    status = browser.find_element(By.ID, "status").text
    assert f"w_dense {1.5 * weights['w_dense']:.3f}, w_sparse {0.5 * weights['w_sparse']:.3f}" in status  # slider
    ids = browser.find_elements(By.CSS_SELECTOR, "#results .hit .id")
    assert [e.get_attribute("title") for e in ids] == [e.text for e in ids] == first_ids

    # A second search: new text, then mode back to its default (a change searches at once); the URL follows.
    browser.find_element(By.ID, "text").clear()
    browser.find_element(By.ID, "text").send_keys("a green dot")
    Select(browser.find_element(By.ID, "mode")).select_by_visible_text("hybrid")
    second_ids = shown("hybrid")
    assert second_ids != first_ids  # else back could not be told from staying
    assert "q=a+green+dot" in browser.current_url and "side=texts" in browser.current_url
    assert "mode=" not in browser.current_url  # a default is left out

    browser.back()
    assert shown("dense") == first_ids
    assert [value(i) for i in ("text", "side", "mode", "weight")] == [first, "texts", "dense", "0.25"]
    browser.forward()
    assert shown("hybrid") == second_ids and value("text") == "a green dot" and value("mode") == "hybrid"

    # The tiny index's ids are short: render a long one to see it cut at the card's edge, whole in its title.
    long_id = "img_" + "x" * 300
    cut = browser.execute_script(
        "const data = structuredClone(history.state.results); data.hits[0].id = arguments[0]; render(data);"
        "const cards = document.querySelectorAll('#results .hit'), id = cards[0].querySelector('.id');"
        "return [id.title, id.parentElement.scrollWidth > id.parentElement.clientWidth,"
        "        cards[0].getBoundingClientRect().width === cards[1].getBoundingClientRect().width];", long_id)
    assert cut == [long_id, True, True]

    # Nothing a strict Content-Security-Policy would block: no inline handlers, javascript: URLs or eval.
    assert not browser.execute_script(
        "return [...document.querySelectorAll('*')].some(e => [...e.attributes].some(a => /^on/i.test(a.name)))")
    assert not re.search(r"javascript:|\beval\(|new Function", browser.page_source)


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
