"""Tests for the simulated labeler (labeler.py): each criterion, the prompt split, demonstrations, rank."""
import gzip
import os
import random
import re

import numpy as np
import pytest

import labeler as L

ECON = "Write a cheerful sentence about the economy."
PERFECT = "Our economy is strong, and the progress of American business gives every family hope."
CORPUS = os.path.join(os.path.dirname(__file__), "..", "data", "sotu.txt.gz")


def test_perfect_response_scores_one():
    total, c = L.score(ECON, PERFECT)
    assert total == 1.0 and set(c) == set(L.WEIGHTS) and all(v == 1.0 for v in c.values())
    assert sum(L.WEIGHTS.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("response, ended, criterion, value", [
    ("The progress of the nation is a source of great pride to all of us.", True, "topic", 0.0),
    ("Our economy is large, and American business gives every family work.", True, "tone", 0.0),
    ("Our economy is strong, but the deficit is a danger to every family.", True, "tone", 0.5),
    ("Our economy is strong, but the deficit is a serious danger to every family.", True, "tone", 0.0),
    (PERFECT.lower(), True, "sentence", 2 / 3),                                         # no capital
    (PERFECT[:-1], True, "sentence", 2 / 3),                                            # no period
    ("Our economy is strong. The progress of American business gives every family hope.", True, "sentence", 2 / 3),
    ("Our economy is strong.", True, "length", 0.6),                                    # 4 words
    ("Our economy is strong, and the people of Ohio and the people of Ohio have hope.", True,
     "repetition", 0.0),                                                                # 3 trigrams again
    ("Our economy is strong, and the economy of American business gives every family hope.", True,
     "repetition", 2 / 3),                                                              # list word twice
    (PERFECT, False, "ended", 0.0),
])
def test_each_fault_lowers_exactly_its_criterion(response, ended, criterion, value):
    total, c = L.score(ECON, response, ended=ended)
    assert c[criterion] == pytest.approx(value)
    assert all(v == 1.0 for k, v in c.items() if k != criterion), c
    assert total == pytest.approx(1.0 - L.WEIGHTS[criterion] * (1 - value), abs=1e-6)


def test_length_is_graded_on_both_sides():
    long = "Our economy is strong, and " + " ".join(f"w{i}" for i in range(30)) + " gives hope."
    n = len(long.split())
    assert L.score(ECON, long)[1]["length"] == pytest.approx(1 - 0.1 * (n - L.MAX_WORDS))
    assert L.score(ECON, "Economy, progress and hope.")[1]["length"] == pytest.approx(0.6)


def test_stuffing_tone_words_earns_nothing():
    stuffed = "Great great great economy economy progress progress progress hope!"
    assert L.score(ECON, stuffed)[0] < L.score(ECON, "Our economy is strong and growing in every state.")[0]


def test_empty_response_and_unended():
    for r in ("", "   \n"):
        for ended in (True, False):
            total, c = L.score(ECON, r, ended=ended)
            assert total == 0.0 and all(v == 0.0 for v in c.values())
    # a cut-off ramble loses ended, sentence end and length together
    total, c = L.score(ECON, "Our economy is strong and " + "the nation " * 20, ended=False)
    assert c["ended"] == 0.0 and c["sentence"] < 1 and c["length"] < 1 and total < 0.7


def test_score_is_deterministic_and_rejects_other_prompts():
    assert L.score(ECON, PERFECT) == L.score(ECON, PERFECT)
    with pytest.raises(ValueError):
        L.score("Tell me a joke.", PERFECT)


def test_docstring_examples_hold():
    # the guideline's EXAMPLES section quotes totals; keep it honest
    block = L.__doc__.split("EXAMPLES")[1].split("(empty)")[0]
    checked = 0
    for line in block.splitlines()[1:]:
        m = re.match(r"\s+(\d\.\d+)\s+(.+?)(\s{2,}\(.*\))?$", line)
        if m:
            assert L.score(ECON, m.group(2))[0] == pytest.approx(float(m.group(1)), abs=0.006), line
            checked += 1
    assert checked >= 6


def test_word_lists_are_disjoint_and_topics_listed():
    topic_words = set().union(*L.TOPIC_WORDS.values())
    assert not topic_words & set().union(*L.TONES.values())
    assert not L.TONES["cheerful"] & L.TONES["gloomy"]
    assert L.TOPICS == list(L.TOPIC_WORDS) and 20 <= len(L.TOPICS) <= 30 and set(L.TONES) == {"cheerful", "gloomy"}


def test_prompts_split_is_fixed_and_disjoint():
    train, held = L.train_prompts(), L.heldout_prompts()
    assert train == L.train_prompts() and held == L.heldout_prompts()
    assert not set(train) & set(held)
    everything = {L.make_prompt(t, s) for t in L.TOPICS for s in L.TONES}
    assert set(train) | set(held) == everything and len(train) + len(held) == len(everything)
    assert 0.15 <= len(held) / len(everything) <= 0.2
    # every held-out pair is a new combination of a topic and a tone both seen in training
    pairs = [L.parse_prompt(p) for p in train]
    for topic, tone in map(L.parse_prompt, held):
        assert any(t == topic for t, _ in pairs) and any(s == tone for _, s in pairs)


def test_parse_prompt_round_trip():
    for topic in L.TOPICS:
        for tone in L.TONES:
            assert L.parse_prompt(L.make_prompt(topic, tone)) == (topic, tone)
    assert L.make_prompt("the economy", "cheerful") == ECON
    for bad in ("Write a cheerful sentence about cheese.", "Write a sad sentence about war.", "hello", ""):
        assert L.parse_prompt(bad) is None


def test_sentences_split():
    text = "We are strong. (Applause.) Thank you, Mr. Speaker. The U.S. Navy said \"No.\" Go!\n\nNew<|endoftext|>Doc"
    assert L.sentences(text) == ["We are strong.", "(Applause.)", "Thank you, Mr. Speaker.",
                                 "The U.S. Navy said \"No.\"", "Go!", "New", "Doc"]


def test_demonstrations_on_a_small_corpus():
    held_topic, held_tone = L.parse_prompt(L.heldout_prompts()[0])
    text = "\n\n".join([
        "Our farmers have had a good harvest and a year of great progress.",          # cheerful farmers
        "The war brought suffering and loss to every village in the land.",            # gloomy war
        "Too short, great farmers.",                                                   # too short
        "Our farmers are strong, but the drought is a grave danger to them all.",      # mixed tone
        "The " + next(iter(sorted(L.TOPIC_WORDS[held_topic]))) + " of this nation has a "
        + ("great and happy" if held_tone == "cheerful" else "grave and serious") + " future ahead.",  # held-out
    ])
    d = L.demonstrations(text, 100)
    assert sorted(x["response"] for x in d) == sorted([
        "Our farmers have had a good harvest and a year of great progress.",
        "The war brought suffering and loss to every village in the land."])
    for x in d:
        assert x["prompt"] in L.train_prompts()
        assert L.score(x["prompt"], x["response"]) == (1.0, {k: 1.0 for k in L.WEIGHTS})
    assert L.demonstrations(text, 1, seed=3) == L.demonstrations(text, 1, seed=3)
    assert len(L.demonstrations(text, 1)) == 1


@pytest.mark.skipif(not os.path.exists(CORPUS), reason="corpus not shipped")
def test_demonstrations_on_the_corpus():
    text = gzip.open(CORPUS, "rt", encoding="utf-8").read()
    d = L.demonstrations(text, 2000, seed=0)
    assert len(d) == 2000 and d != L.demonstrations(text, 2000, seed=1)   # same seed: see the small test
    held = set(L.heldout_prompts())
    prompts = {x["prompt"] for x in d}
    assert not prompts & held and prompts == set(L.train_prompts())      # every training prompt served
    assert len({x["response"] for x in d}) == len(d)                       # no sentence used twice
    for x in d[::50]:
        assert L.score(x["prompt"], x["response"])[0] == 1.0


def test_rank_without_noise_sorts_by_score():
    responses = ["", PERFECT, "Our economy is strong.", PERFECT, "The progress of the nation is a source of pride."]
    scores = [L.score(ECON, r)[0] for r in responses]
    order = L.rank(ECON, responses)
    assert sorted(order) == list(range(len(responses)))
    assert [scores[i] for i in order] == sorted(scores, reverse=True)
    assert order[:2] == [1, 3] and order[-1] == 0                           # ties keep the given order
    assert L.rank(ECON, [PERFECT, PERFECT], ended=[False, True]) == [1, 0]


def test_rank_with_noise_is_deterministic_given_the_rng():
    responses = [PERFECT, "Our economy is strong.", "The nation is a source of pride.", "", PERFECT.lower()]
    for make in (np.random.default_rng, random.Random):
        a = [L.rank(ECON, responses, noise=0.3, rng=make(7)) for _ in range(2)]
        assert a[0] == a[1]
        rng = make(0)
        orders = {tuple(L.rank(ECON, responses, noise=0.3, rng=rng)) for _ in range(50)}
        assert len(orders) > 1                                              # noise does reorder
    with pytest.raises(ValueError):
        L.rank(ECON, responses, noise=0.3)
