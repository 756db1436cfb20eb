"""serve.py's chat page in a real browser (headless Chromium driven by Selenium): an answer grows while it streams,
a second turn sees the first, a third one says which turns no longer fit, and compare mode asks two models side
by side. Each answer is checked against what the model itself generates at temperature 0."""
import time

import pytest

from conftest import make_checkpoint, need_browser
from test_serve import PROMPT, greedy, start

from data import encode_example, encode_prompt
from gpt import GPT
from web import fit_context

need_browser()
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture
def server(tmp_path, tiny_tok, monkeypatch):
    """ppo and sft, block_size 128; every generation step takes 20 ms, so that the page has time to show it grow.
    srv.contexts: the context of each row the server generated for."""
    contexts, decode = [], GPT._decode

    def slow(self, *args, **kwargs):
        seen = set()
        for step in decode(self, *args, **kwargs):
            contexts.extend(row.prompt for row in step[0] if id(row) not in seen)
            seen.update(id(row) for row in step[0])
            time.sleep(0.02)
            yield step
    monkeypatch.setattr(GPT, "_decode", slow)
    ckpts = {"ppo": make_checkpoint(tmp_path / "ppo.pt", "ppo", tiny_tok, scale=10, block_size=128),
             "sft": make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok, seed=1, scale=10, block_size=128)}
    srv = start(ckpts)
    srv.ckpts, srv.contexts = ckpts, contexts
    yield srv
    srv.shutdown()
    srv.server_close()


def test_chat_streams_turns_and_compares(server, browser, tiny_tok):
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    set_value = lambda id, value: browser.execute_script("document.getElementById(arguments[0]).value = arguments[1]",
                                                        id, value)
    set_value("temperature", "0")
    set_value("max-tokens", "20")
    answers = lambda: browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")
    text_of = lambda el: el.find_element(By.CLASS_NAME, "text").get_property("textContent")
    metas = lambda el: [m.get_property("textContent") for m in el.find_elements(By.CLASS_NAME, "meta")]

    def say(text, replies=1):
        """Type text, press Enter; return the lengths the newest answer was seen at while it streamed."""
        before = len(answers())
        browser.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
        wait.until(lambda d: len(answers()) == before + replies)
        seen = []
        while not all(metas(el) for el in answers()[before:]):
            seen.append(len(text_of(answers()[-1])))
        return seen

    # turn 1: the answer grows, and ends as what the model says
    seen = say(PROMPT)
    want1 = greedy(server.ckpts["ppo"], encode_prompt(tiny_tok, PROMPT), 20)[0]
    assert text_of(answers()[0]) == want1 and len(want1) > 5
    assert len({n for n in seen if 0 < n < len(want1)}) >= 2            # seen part-way, at two lengths at least
    assert metas(answers()[0]) == [f"ppo \u00b7 {server.ckpts['ppo']} \u00b7 cut off"]   # 20 tokens: max tokens

    # turn 2 sees turn 1 (the page sends the whole conversation; the context rule keeps it all)
    say("And the navy?")
    turns = [encode_example(tiny_tok, PROMPT, want1)[0], encode_prompt(tiny_tok, "And the navy?")]
    assert server.contexts[-1] == turns[0] + turns[1]
    assert text_of(answers()[1]) == greedy(server.ckpts["ppo"], server.contexts[-1], 20)[0]

    # turn 3 asks for up to 100 tokens: the oldest turns no longer fit, and the page says so
    set_value("max-tokens", "100")
    say("Peace?")
    turns[1] = encode_example(tiny_tok, "And the navy?", text_of(answers()[1]))[0]
    context, dropped = fit_context(turns + [encode_prompt(tiny_tok, "Peace?")], 128, 100)
    assert dropped == 2 and server.contexts[-1] == context
    assert metas(answers()[2])[1] == "4 earlier messages left out: they no longer fit ppo's 128-token context"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.user")) == 3

    # compare mode: a new chat, one message, two models side by side
    browser.find_element(By.ID, "compare").click()
    assert Select(browser.find_element(By.ID, "model2")).first_selected_option.get_attribute("value") == "sft"
    set_value("max-tokens", "20")
    assert answers() == []                                                # a new chat
    say(PROMPT, replies=2)
    columns = browser.find_elements(By.CSS_SELECTOR, "#columns .column")
    assert [c.find_element(By.TAG_NAME, "h2").text for c in columns] == ["ppo", "sft"]
    for column, name in zip(columns, ["ppo", "sft"]):
        reply = column.find_element(By.CSS_SELECTOR, ".msg.assistant")
        assert text_of(reply) == greedy(server.ckpts[name], encode_prompt(tiny_tok, PROMPT), 20)[0]
        assert metas(reply)[0].startswith(f"{name} \u00b7 {server.ckpts[name]}")
    assert text_of(columns[0].find_element(By.CSS_SELECTOR, ".msg.assistant")) != \
        text_of(columns[1].find_element(By.CSS_SELECTOR, ".msg.assistant"))
    assert browser.find_element(By.ID, "status").text == ""
