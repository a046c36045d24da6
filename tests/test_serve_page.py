"""The page at / in a real headless Chromium (Selenium with the system chromedriver)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from serve_models import pair_onnx, running_server, sentiment_onnx

from export.serve import Settings, create_app
from export.text import TextEncoder

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

CHROMEDRIVER = shutil.which("chromedriver")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMEDRIVER is None or BROWSER is None:
        pytest.skip("no chromium + chromedriver here (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    sentiment, pair = sentiment_onnx(tmp_path_factory), pair_onnx(tmp_path_factory)
    with running_server(create_app(Settings(models=(str(sentiment), str(pair))))) as url:
        yield f"http://{url}", sentiment


def _rgba_alpha(style: str) -> float:
    match = re.search(r"rgba\(255, 140, 0, ([0-9.]+)\)", style)
    return float(match.group(1)) if match else 1.0 if "rgb(255, 140, 0)" in style else 0.0


def test_page_lists_models_and_classifies_with_attention(browser, site):
    import onnxruntime as ort

    url, sentiment = site
    browser.get(url + "/")
    sections = {s.get_attribute("data-model"): s for s in browser.find_elements(By.CSS_SELECTOR, "section.model")}
    assert set(sections) == {"sentiment", "pair"}
    pair_inputs = [td.text for td in sections["pair"].find_elements(By.CSS_SELECTOR, "table.inputs td code")]
    assert pair_inputs == ["a", "b"]
    outputs = [td.text for td in sections["sentiment"].find_elements(By.CSS_SELECTOR, "table.outputs td code")]
    assert sorted(outputs) == ["attention", "probability"]

    text = "A wonderful, moving film with a dull ending zyxxq"
    section = sections["sentiment"]
    section.find_element(By.CSS_SELECTOR, "textarea.text").send_keys(text)
    section.find_element(By.CSS_SELECTOR, "button.run").click()
    WebDriverWait(browser, 20).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "section[data-model=sentiment] .label"))
    )

    # The reference: a plain onnxruntime session on the padded ids.
    session = ort.InferenceSession(str(sentiment), providers=["CPUExecutionProvider"])
    encoder = TextEncoder.from_json(session.get_modelmeta().custom_metadata_map["text_encoder"])
    ids = encoder.encode([text])
    probability, attention = session.run(["probability", "attention"], {"tokens": ids})
    p = float(probability[0, 0])
    label = "positive" if p >= 0.5 else "negative"
    words = encoder.tokens(text)
    weights = attention[0, : len(words), : len(words)].mean(axis=0)

    assert section.find_element(By.CSS_SELECTOR, ".label").text.split()[0] == label
    rows = {r.get_attribute("data-label"): r.text for r in section.find_elements(By.CSS_SELECTOR, "table.scores tr")}
    assert set(rows) == {"negative", "positive"}
    assert float(rows["positive"].split()[-1]) == pytest.approx(p, abs=1e-3)
    spans = section.find_elements(By.CSS_SELECTOR, ".attention .word")
    assert [s.text for s in spans] == words
    shown = np.array([float(s.get_attribute("data-weight")) for s in spans])
    np.testing.assert_allclose(shown, weights, rtol=1e-5, atol=1e-6)
    # Coloured highlights: the most attended word is the strongest colour.
    alphas = [_rgba_alpha(s.get_attribute("style")) for s in spans]
    assert int(np.argmax(alphas)) == int(np.argmax(weights))
    assert max(alphas) == pytest.approx(1.0) and min(alphas) < max(alphas)


def test_page_shows_a_server_error_line(browser, site):
    url, _ = site
    browser.get(url + "/")
    section = browser.find_element(By.CSS_SELECTOR, "section[data-model=pair]")
    box = section.find_element(By.CSS_SELECTOR, "textarea.request")
    assert '"name": "a"' in box.get_attribute("value")  # an example request to edit
    section.find_element(By.CSS_SELECTOR, "button.run").click()
    WebDriverWait(browser, 20).until(lambda _: section.find_element(By.CSS_SELECTOR, "pre").text)
    assert '"model_name": "pair"' in section.find_element(By.CSS_SELECTOR, "pre").text
    box.clear()
    box.send_keys('{"inputs": []}')
    section.find_element(By.CSS_SELECTOR, "button.run").click()
    WebDriverWait(browser, 20).until(lambda _: section.find_element(By.CSS_SELECTOR, ".error").text)
    assert section.find_element(By.CSS_SELECTOR, ".error").text.startswith("400: ")
