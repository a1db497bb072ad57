"""The web page in a real headless Chromium (Debian's chromium + chromedriver) against a real server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlparse

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


def test_filters_narrow_the_search_and_travel_in_the_url(browser, tiny_server: Server,  # type: ignore[no-untyped-def]
                                                         synthetic_dataset: Path) -> None:
    """The Filters section is the collection's payload schema: split listed with its facet counts, a many-valued
    integer as min/max. Picking split=val narrows a text search to val items (the plan and rows shown), the URL keeps
    the filter and a reload restores it; an image query is filtered too; a refused filter's message is shown; clear
    filters empties it."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    facets = tiny_server.request("GET", "/v1/facets/split?side=images").json()["values"]
    counts = {f["value"]: f["count"] for f in facets}
    assert set(counts) == {"test", "val"}

    def listed(field: str) -> dict[str, str]:
        """A listed field's values as shown: value -> its count's text."""
        labels = browser.find_elements(By.CSS_SELECTOR, f'.filter[data-field="{field}"] .values label')
        return {str(label.get_attribute("data-value")): label.find_element(By.CLASS_NAME, "count").text
                for label in labels}

    def box(field: str, value: str):  # type: ignore[no-untyped-def]
        return browser.find_element(By.CSS_SELECTOR, f'.filter[data-field="{field}"] label[data-value="{value}"] input')

    def toggle(field: str, value: str) -> None:
        """Click a value's checkbox (the lists are re-rendered as counts arrive: a box may have just been replaced)."""
        wait.until(lambda _: box(field, value).click() or True)

    def finished() -> list[str]:
        """The hits' ids once the status reports a filtered search."""
        wait.until(lambda d: "match the filter" in d.find_element(By.ID, "status").text)
        return [str(hit.get_attribute("data-id")) for hit in browser.find_elements(By.CSS_SELECTOR, "#results .hit")]

    def split_of(item_id: str) -> str:
        return str(tiny_server.request("GET", "/v1/items/" + item_id.split("#")[0]).json()["split"])

    browser.get(tiny_server.base + "/")
    wait.until(lambda _: listed("split") == {value: f"({count})" for value, count in counts.items()})
    file_bytes = browser.find_elements(By.CSS_SELECTOR, '.filter[data-field="file_bytes"] input[type=number]')
    assert [i.get_attribute("placeholder") for i in file_bytes] == ["min", "max"]  # many values: a range
    assert not browser.find_element(By.ID, "clear-filters").is_enabled()

    toggle("split", "val")
    # The other fields' counts follow the filter (a field's own counts do not: its other values stay choosable).
    wait.until(lambda _: listed("orientation") == {"square": f"({counts['val']})"})
    assert listed("split") == {value: f"({count})" for value, count in counts.items()}
    browser.find_element(By.ID, "text").send_keys("a red square on blue")
    browser.find_element(By.ID, "search").click()
    ids = finished()
    assert len(ids) == counts["val"] < 24  # every val image, and nothing else
    assert {split_of(i) for i in ids} == {"val"}
    chips = browser.find_elements(By.CSS_SELECTOR, "#results .hit .chips.payload .chip")
    assert len(chips) == len(ids) and {c.text for c in chips} == {"split: val"}
    assert re.search(rf"· (exact|index|mixed) plan · {counts['val']} items match the filter",
                     browser.find_element(By.ID, "status").text)
    query = parse_qs(urlparse(browser.current_url).query)
    assert json.loads(query["filter"][0]) == {"must": [{"key": "split", "match": {"value": "val"}}]}
    assert query["q"] == ["a red square on blue"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "web-page-filters.png"))

    # The link restores the filter: a reload shows it chosen and runs the same filtered search.
    browser.refresh()
    assert finished() == ids
    wait.until(lambda _: box("split", "val").is_selected() and not box("split", "test").is_selected())
    assert browser.find_element(By.ID, "clear-filters").is_enabled()

    # An image query (a multipart form) is filtered too: now the test split.
    toggle("split", "val")
    toggle("split", "test")  # each change searches again
    wait.until(lambda d: '"value":"test"' in unquote(d.current_url))
    assert {split_of(i) for i in finished()} == {"test"}
    browser.find_element(By.ID, "text").clear()
    browser.find_element(By.ID, "image").send_keys(str(synthetic_dataset / "images" / "img_0001.jpg"))
    wait.until(lambda d: "q=" not in d.current_url)
    image_ids = finished()
    assert len(image_ids) == counts["test"] and {split_of(i) for i in image_ids} == {"test"}
    assert "filter=" in browser.current_url

    # A filter the service refuses: its message, naming the field, in the error area; kept apart from the controls.
    bad = {"must": [{"key": "no_such_field", "match": {"value": "x"}}]}
    browser.get(tiny_server.base + "/?" + urlencode({"q": "a green dot", "filter": json.dumps(bad)}))
    wait.until(lambda d: "no_such_field" in d.find_element(By.ID, "status").text)
    status = browser.find_element(By.ID, "status")
    assert status.get_attribute("class") == "error" and "no payload index" in status.text
    assert "no_such_field" in browser.find_element(By.ID, "filter-extra").text

    # Clear filters: none left, in the page or its URL, and the search runs unfiltered.
    browser.find_element(By.ID, "clear-filters").click()
    wait.until(lambda d: "candidates · hybrid ·" in d.find_element(By.ID, "status").text)
    assert "match the filter" not in browser.find_element(By.ID, "status").text
    assert "filter=" not in browser.current_url and not browser.find_elements(By.ID, "filter-extra")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .hit")) == 24


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


@pytest.fixture(scope="module")
def word_server(tiny_grounded_index: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The grounded word model's index, served."""
    from tests.server import serving

    with serving(tiny_grounded_index, tmp_path_factory.mktemp("logs") / "words.log") as running:
        yield running


def test_the_page_shows_words_the_model_has_no_term_for(browser, word_server: Server) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(word_server.base + "/?" + urlencode({"q": "a red zebra"}))
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#query-terms .chip"))
    query = [c.text.split()[0] for c in browser.find_elements(By.CSS_SELECTOR, "#query-terms .chip.query")]
    unmatched = browser.find_elements(By.CSS_SELECTOR, "#query-terms .chip.unmatched")
    assert query == ["red"] and [c.text for c in unmatched] == ["zebra"]
    assert "no sparse term" in unmatched[0].get_attribute("title")
