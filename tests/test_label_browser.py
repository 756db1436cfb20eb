"""label.py's page in a real browser: headless Chromium driven by Selenium ranks the responses with the
keyboard and then with clicks, submits, and the test reads the new lines of the JSONL file.
Needs Debian's chromium and chromium-driver (.ci/run installs them) and `selenium` (requirements-test.txt)."""
import json
import threading

import pytest

from conftest import need_browser

import label

need_browser()
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def server(tmp_path):
    sample = lambda prompt, k: [f"{prompt} (answer {i}) <b>not bold</b>" for i in range(k)]
    srv = label.LabelServer(("127.0.0.1", 0), sample, ["Write a cheerful sentence about peace.",
                                                       "Write a gloomy sentence about taxes."], str(tmp_path / "r.jsonl"))
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_rank_with_keyboard_and_clicks(server, browser):
    browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
    wait = WebDriverWait(browser, 30)
    shown = lambda: [b.find_elements(By.TAG_NAME, "span")[1].text for b in browser.find_elements(By.CSS_SELECTOR, ".resp")]
    keys = lambda: [b.find_element(By.CLASS_NAME, "key").text for b in browser.find_elements(By.CSS_SELECTOR, ".resp")]
    wait.until(lambda d: len(shown()) == 4)
    prompt, responses = browser.find_element(By.ID, "prompt").text, shown()
    assert "<b>not bold</b>" in responses[0]      # model text is shown as text, never as HTML
    submit = browser.find_element(By.ID, "submit")

    # keyboard: 3, 1, 4 (the last one left is then the worst), Backspace undoes 4, 4 again, Enter
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("3", "1", "4")
    assert keys() == ["#2", "#4 worst", "#1 best", "#3"] and submit.is_enabled()
    body.send_keys(Keys.BACKSPACE)
    assert keys() == ["#2", "[2]", "#1 best", "[4]"] and not submit.is_enabled()
    body.send_keys("4", Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "count").text == "1 ranking saved")
    assert read_lines(server.out) == [{"prompt": prompt, "responses": [responses[i] for i in (2, 0, 3, 1)]}]

    # mouse: a new prompt is on the page; click 2, 4, 1, then Submit
    wait.until(lambda d: d.find_element(By.ID, "prompt").text != prompt and len(shown()) == 4)
    prompt2, responses2 = browser.find_element(By.ID, "prompt").text, shown()
    for i in (1, 3, 0):
        browser.find_elements(By.CSS_SELECTOR, ".resp")[i].click()
    submit.click()
    wait.until(lambda d: d.find_element(By.ID, "count").text == "2 rankings saved")
    assert read_lines(server.out)[1] == {"prompt": prompt2, "responses": [responses2[i] for i in (1, 3, 0, 2)]}
    assert browser.find_element(By.ID, "status").text == ""
    from data import load_rankings   # what train_rm.py --data reads
    assert load_rankings(server.out) == [(prompt, [responses[i] for i in (2, 0, 3, 1)]),
                                         (prompt2, [responses2[i] for i in (1, 3, 0, 2)])]
