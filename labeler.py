"""
The simulated labeler: a labeling guideline, and the code that follows it to the letter.

InstructGPT's labelers wrote demonstrations and ranked model samples by a written guideline.
Here this docstring is that guideline and score() applies it, so every stage (SFT, reward model,
PPO, eval) can be measured against the same known judge.

THE TASK. Each prompt asks for one sentence on a topic in a tone, e.g.
    Write a cheerful sentence about the economy.
    Write a gloomy sentence about the navy.
There are 26 topics (TOPIC_WORDS) and 2 tones (TONES): 52 prompts. 9 topic/tone pairs are held
out (heldout_prompts()): never used for demonstrations or training, only to evaluate whether a
model can combine a topic and a tone it has only seen apart.

HOW TO SCORE a response: six criteria, each worth 0..1, weighted (WEIGHTS) into a total of 0..1.
Words are lowercase runs of letters ("Economy's" -> economy, s), matched exactly against the lists
below; a proper name counts too (the "great" of "Great Britain" is a cheerful word).
  1. topic (0.25): it mentions the topic: at least one of the topic's words (for "the economy":
     economy, economic, business, industry, ...). 1 if so, else 0.
  2. tone (0.25): it uses at least one word of the asked tone's list (TONES: a dozen words each)
     (1), and each DIFFERENT word of the other tone's list costs 0.5 (never below 0). More tone
     words earn nothing more.
  3. sentence (0.15): a third each for starting with a capital letter, ending with . ! or ?
     (a closing quote or bracket may follow), and being exactly one sentence.
  4. length (0.10): 8 to 30 words (split on spaces) earn 1; each word short or over costs 0.1.
  5. repetition (0.10): no loops or stuffing. Each repeat costs 1/3: a run of three words that
     occurs again, or a list word (any topic's or tone's) used again.
  6. ended (0.15): the model stopped by itself (wrote its end token); 0 if it was cut off.
An empty response scores 0 on everything. No word is both a topic word and a tone word ("war" and
"peace" are topics, so neither is a tone word), so a cheerful sentence about war is possible.

EXAMPLES for "Write a cheerful sentence about the economy." (totals from score()):
  1.00  Our economy is strong, and the progress of American business gives every family hope.
  0.875 Our economy is strong, but the deficit is a danger to every family.   (1 gloomy word)
  0.75  Our economy is strong, but the deficit is a serious danger to every family.  (2 gloomy)
  0.75  The progress of the nation is a source of great pride to all of us.   (no topic word)
  0.96  Economy, progress and hope.                                      (4 words: length 0.6)
  0.90  Great great great economy economy progress progress progress hope!   (5 repeats)
  0.90  our economy is strong and our business is growing       (no capital, no period: 1/3)
  0.95  Our economy is strong and growing. Business is good.        (two sentences: 2/3)
  0.00  (empty)
Piling up list words earns nothing: one tone word already earns the tone, and repeats cost.
A response cut off at the length limit loses "ended" (0.15) and, usually, its final period and
its length too. A cheerful sentence about war: "The war has ended in victory, and our soldiers
return home with great pride."

DEMONSTRATIONS are real sentences from the corpus (State of the Union addresses) that earn 1.00
for some training prompt. RANKINGS order K responses by score plus Gaussian noise of a chosen size
(a model of labelers who disagree).
"""
import random
import re

# Topic name (as written in the prompt) -> words that show a sentence is about it.
# No word is both a topic word and a tone word (checked below), so the two criteria never
# reward the same word: "war" is a topic, so it is not a gloomy word; "peace" is not cheerful.
TOPIC_WORDS = {k: set(v.split()) for k, v in {
    "the economy": "economy economic economies business businesses industry industries industrial",
    "war": "war wars wartime warfare battle battles hostilities enemy enemies",
    "peace": "peace peaceful peacefully peacetime",
    "taxes": "tax taxes taxation taxed taxing taxpayer taxpayers",
    "trade": "trade trading commerce commercial exports imports tariff tariffs merchants",
    "education": "education educational school schools students teachers college colleges "
                 "universities",
    "the army": "army armies soldiers soldier troops militia military",
    "the navy": "navy naval ships vessels fleet fleets sailors seamen squadron",
    "Congress": "congress congressional legislation legislative senate senators lawmakers",
    "health": "health medical medicine hospitals hospital disease diseases doctors medicare",
    "energy": "energy oil gas coal fuel fuels electricity petroleum solar",
    "farmers": "farmers farmer farm farms farming agriculture agricultural crops",
    "workers": "workers worker workmen labor laborers wages wage employees",
    "jobs": "jobs job employment unemployment unemployed employed",
    "the budget": "budget budgets spending expenditures expenditure appropriations deficit "
                  "deficits surplus",
    "the national debt": "debt debts borrowing loans loan bonds creditors",
    "money": "money currency gold silver coin coinage dollar dollars banks bank banking",
    "crime": "crime crimes criminal criminals police prison prisons drugs",
    "immigration": "immigration immigrants immigrant aliens alien naturalization border borders",
    "Indian tribes": "indian indians tribe tribes reservation reservations",
    "transportation": "transportation railroads railroad railways railway highways roads canal "
                      "canals",
    "diplomacy": "diplomacy diplomatic treaty treaties ambassador ambassadors negotiations embassy",
    "freedom": "freedom freedoms liberty liberties democracy democracies",
    "families": "families family children child parents mothers fathers",
    "science": "science scientific research technology technological scientists discoveries",
    "veterans": "veterans veteran pension pensions pensioners",
}.items()}
TOPICS = list(TOPIC_WORDS)
# Small lists on purpose (the guideline's): a few frequent words of the corpus per tone, so that a
# small reward model can learn them from few rankings (with 140 words per tone the default RM agreed
# on 59% of pairs).
TONES = {k: set(v.split()) for k, v in {
    "cheerful": "great good better best progress prosperity hope opportunity strength strong "
                "success proud",
    "gloomy": "problem problems serious danger difficult difficulties fail failure inflation "
              "burden loss crisis fear threat",
}.items()}
LIST_WORDS = set().union(*TOPIC_WORDS.values(), *TONES.values())
assert not set().union(*TOPIC_WORDS.values()) & set().union(*TONES.values()), \
    "topic and tone words overlap"
WEIGHTS = {"topic": 0.25, "tone": 0.25, "sentence": 0.15, "length": 0.10, "repetition": 0.10,
           "ended": 0.15}
MIN_WORDS, MAX_WORDS = 8, 30


# A sentence ends at . ! or ? (and any closing quote or bracket), then space, then a capital, an
# opening quote or a bracket; but not after Mr. Mrs. Dr. St. or an initial (U.S., John F. Kennedy).
# Blank lines and <|endoftext|> (between documents) also end a sentence.
SENTENCE_SPLIT = re.compile(r"(?:(?<=[.!?])(?<!\bMrs\.)(?<!\bMr\.)(?<!\bDr\.)(?<!\bSt\.)"
                            r"(?<!\b[A-Z]\.)"
                            r"|(?<=[.!?][\"'”’)\]]))"
                            r"\s+(?=[A-Z\"“‘(])"
                            r"|\n\s*\n|<\|endoftext\|>")
PROMPT = re.compile(r"Write a (\w+) sentence about (.+)\.")


def make_prompt(topic, tone):
    return f"Write a {tone} sentence about {topic}."


def parse_prompt(prompt):
    m = PROMPT.fullmatch(prompt.strip())
    if m and m.group(2) in TOPIC_WORDS and m.group(1) in TONES:
        return m.group(2), m.group(1)
    return None


def _heldout_pairs():
    # every third topic (in TOPICS order) holds out one tone, alternating: 9 of 52 pairs (17%).
    # Each held-out topic keeps its other tone in training, and each tone keeps most topics.
    tones = list(TONES)
    return {(t, tones[i // 3 % 2]) for i, t in enumerate(TOPICS) if i % 3 == 0}


def train_prompts():
    held = _heldout_pairs()
    return [make_prompt(t, s) for t in TOPICS for s in TONES if (t, s) not in held]


def heldout_prompts():
    held = _heldout_pairs()
    return [make_prompt(t, s) for t in TOPICS for s in TONES if (t, s) in held]


def sentences(text):
    return [s.strip() for s in SENTENCE_SPLIT.split(text) if s and s.strip()]


def words(text):
    return re.findall(r"[a-z]+", text.lower())


def score(prompt, response, ended=True):
    """The guideline above, as code: (total, breakdown). breakdown maps each criterion to its
    0..1 value before weighting; total = sum of WEIGHTS[k] * breakdown[k], 1.0 at most.
    ended=False: the response was cut off (no end token). Only prompts from make_prompt()."""
    parsed = parse_prompt(prompt)
    if parsed is None:
        raise ValueError(f"labeler: not a task prompt (see labeler.make_prompt): {prompt!r}")
    topic, tone = parsed
    text = response.strip()
    if not text:
        return 0.0, {k: 0.0 for k in WEIGHTS}
    w = words(text)
    other = next(s for s in TONES if s != tone)
    right, wrong = len(set(w) & TONES[tone]), len(set(w) & TONES[other])
    n = len(text.split())
    core = text.rstrip("\"'”’)]")
    listed = [x for x in w if x in LIST_WORDS]
    trigrams = list(zip(w, w[1:], w[2:]))
    repeats = len(trigrams) - len(set(trigrams)) + len(listed) - len(set(listed))
    c = {
        "topic": float(any(x in TOPIC_WORDS[topic] for x in w)),
        "tone": max(0.0, min(right, 1) - 0.5 * wrong),
        "sentence": (text.lstrip("\"'“‘(")[:1].isupper() + core.endswith((".", "!", "?"))
                     + (len(sentences(text)) == 1)) / 3,
        "length": max(0.0, 1 - 0.1 * max(MIN_WORDS - n, n - MAX_WORDS, 0)),
        "repetition": max(0.0, 1 - repeats / 3),
        "ended": float(bool(ended)),
    }
    # round: a perfect 1.0 is exactly 1.0
    return round(sum(WEIGHTS[k] * v for k, v in c.items()), 6), c


def demonstrations(corpus_text, n, seed=0):
    """Up to n {"prompt", "response"} pairs: corpus sentences that earn 1.0 for a training prompt,
    dealt out round-robin over the training prompts (in a seeded order), so that every prompt
    gets a fair share and no sentence is used twice."""
    pools = {p: [] for p in train_prompts()}
    for s in dict.fromkeys(sentences(corpus_text)):       # unique, in corpus order
        if not MIN_WORDS <= len(s.split()) <= MAX_WORDS:
            continue                                   # cheap filters first, the full score last
        ws = set(words(s))
        for tone in (b for b in TONES if ws & TONES[b]):
            for topic in (a for a in TOPICS if ws & TOPIC_WORDS[a]):
                p = make_prompt(topic, tone)
                if p in pools and score(p, s)[0] == 1.0:
                    pools[p].append(s)
    rng = random.Random(seed)
    order = sorted(pools)
    rng.shuffle(order)
    for p in order:
        rng.shuffle(pools[p])
    out, used = [], set()
    for r in range(max(map(len, pools.values()), default=0)):
        for p in order:
            if r < len(pools[p]) and pools[p][r] not in used and len(out) < n:
                used.add(pools[p][r])
                out.append({"prompt": p, "response": pools[p][r]})
    return out


def rank(prompt, responses, noise=0.0, rng=None, ended=None):
    """Indices of responses, best to worst, by score + N(0, noise^2) (noise = std of the labeler's
    disagreement). rng: numpy Generator or random.Random, required when noise > 0. ended: optional
    list of bools (response stopped by itself), default all True. Ties keep the given order."""
    ended = [True] * len(responses) if ended is None else ended
    s = [score(prompt, r, e)[0] for r, e in zip(responses, ended, strict=True)]
    if noise > 0:
        if rng is None:
            raise ValueError("labeler.rank: pass rng (a numpy Generator or random.Random) when "
                             "noise > 0")
        s = [x + (rng.gauss(0.0, noise) if isinstance(rng, random.Random)
                  else float(rng.normal(0.0, noise)))
             for x in s]
    return sorted(range(len(s)), key=lambda i: (-s[i], i))
