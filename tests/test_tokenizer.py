"""Tests for tokenizer.py: round trips, GPT-2 parity with tiktoken, reference == tiktoken export, special tokens,
save/load (also inside a weights_only checkpoint), deterministic and fast training, clear errors on bad input."""
import gzip
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import regex
import tiktoken
import tiktoken.load
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tokenizer  # noqa: E402
from tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, SPECIAL_TOKENS, Tokenizer, train  # noqa: E402

GPT2_DIR = ROOT / "data" / "gpt2"  # GPT-2's encoder.json + vocab.bpe, shipped with their MIT licence
GPT2_HASHES = ("196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",   # encoder.json, vocab.bpe
               "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5")   # (tiktoken_ext.openai_public)
MB = 1_000_000
STRINGS = [  # round-trip and parity cases
    "", " ", "   \n\n\t  ", "\r\n", "Hello, world! It's 2024; we'll see... DON'T stop 12345678.",
    "한국어 문장입니다. 대한민국의 수도는 서울이다.", "emoji 🎉👍🏽 👨‍👩‍👧 family 🇰🇷 flag",
    "mixed: English, 한국어, русский, العربية, 日本語, हिन्दी, ελληνικά — “quotes” ½ ∑",
    "trailing spaces   ", "  leading", "tabs\tand\u3000ideographic\u00a0spaces\x85next\u2028line \x1c",
    "<|endoftext|> typed <|end|> by a <|user|>", "a\n\n\nb  \n  c ' 's x'S 'll",
]


def read_corpus_bytes(n):
    with gzip.open(ROOT / "data" / "sotu.txt.gz", "rb") as f:
        return f.read(n)


@pytest.fixture(scope="module")
def corpus():
    """The first 3 MB of the shipped corpus as text: [0, 1 MB) trains, the rest is held out."""
    return read_corpus_bytes(3 * MB).decode("utf-8", errors="ignore")


@pytest.fixture(scope="module")
def tok4096(corpus):
    t0 = time.perf_counter()
    tok = train(corpus[:MB], 4096)
    tok.train_seconds = time.perf_counter() - t0
    return tok


@pytest.fixture(scope="module")
def tok300(corpus):
    return train(corpus[:100_000], 300)


@pytest.fixture(scope="module")
def gpt2_files():
    return GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe"   # shipped: a missing file fails, never skips


@pytest.fixture(scope="module")
def gpt2(gpt2_files):
    return Tokenizer.from_gpt2(*gpt2_files)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_files):
    """The reference nobody here wrote: tiktoken's own loader on the same two files, tiktoken's gpt2 pattern."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # "" = read the local files, write no cache copies to /tmp
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(  # the hashes tiktoken's own gpt2 encoding checks
            str(gpt2_files[1]), str(gpt2_files[0]), vocab_bpe_hash=GPT2_HASHES[1], encoder_json_hash=GPT2_HASHES[0])
    try:
        from tiktoken_ext.openai_public import r50k_pat_str as pattern  # tiktoken's (rewritten) gpt2 regex
    except ImportError:
        pattern = GPT2_SPLIT_PATTERN
    return tiktoken.Encoding("gpt2-reference", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


# --- round trips -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", STRINGS)
def test_round_trip_trained(tok300, text):
    ids = tok300.encode(text)
    assert tok300.decode(ids) == text
    assert ids == tok300.to_tiktoken().encode_ordinary(text)
    assert all(0 <= i < tok300.n_vocab for i in ids)


@pytest.mark.parametrize("text", STRINGS)
def test_round_trip_gpt2(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_invalid_utf8_decodes_with_replacement(tok300, gpt2):
    for tok in (tok300, gpt2):
        for raw in [b"\xff", b"\x80abc", "한".encode()[:2], "🎉".encode()[:3] + b"!", b"ok\xc3"]:
            ids = [tok.ranks[bytes([b])] for b in raw]  # one single-byte token per byte
            assert tok.decode(ids) == raw.decode("utf-8", errors="replace")
            assert "\ufffd" in tok.decode(ids)
            assert tok.decode(ids) == tok.to_tiktoken().decode(ids)
    # a token boundary inside a character: decoding the ids one by one cannot rebuild it, all together does
    ids = tok300.encode("서울")
    assert tok300.decode(ids) == "서울" and "\ufffd" in "".join(tok300.decode([i]) for i in ids)


def test_decode_accepts_int_like_ids_and_rejects_unknown_ids(tok300):
    ids = tok300.encode("the state of the union")
    assert tok300.decode(torch.tensor(ids)) == tok300.decode(ids)
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        tok300.decode([tok300.n_vocab])


# --- parity with tiktoken ----------------------------------------------------------------------------------------

def test_gpt2_parity_on_1mb_corpus(gpt2, tiktoken_gpt2, corpus):
    text = corpus[:MB]
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.to_tiktoken().encode_ordinary(text) == ids
    assert gpt2.decode(ids) == text
    assert gpt2.n_vocab == 50257 and gpt2.special_tokens == {"<|endoftext|>": 50256}


@pytest.mark.parametrize("text", STRINGS)
def test_gpt2_parity_strings(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]  # the ids every GPT-2 tutorial prints
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_trained_reference_equals_tiktoken_on_held_out_text(tok4096, corpus):
    text = corpus[MB:MB + 500_000]
    ids = tok4096.encode(text)
    assert ids == tok4096.to_tiktoken().encode_ordinary(text)
    assert tok4096.decode(ids) == text
    assert tok4096.to_tiktoken() is tok4096.to_tiktoken()  # built once


@pytest.mark.parametrize("pattern", [GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN])
def test_trained_reference_equals_tiktoken_on_multilingual_text(pattern):
    text = " ".join(STRINGS) * 3 + "서울 서울에서 서울은 🎉🎉 🎉🎉🎉 aaaa aaaaa 2024 20245"
    tok = train(text, 400, pattern=pattern)
    assert tok.pattern == pattern
    for s in STRINGS + [text]:
        assert tok.encode(s) == tok.to_tiktoken().encode_ordinary(s)


# --- training ----------------------------------------------------------------------------------------------------

def textbook_train(text, vocab_size, n_special):
    """The slow textbook algorithm: recount every pair after every merge (same tie-break: smallest pair ids)."""
    words = [[list(w.encode()), f] for w, f in Counter(regex.findall(GPT4_SPLIT_PATTERN, text)).items()]
    vocab = [bytes([b]) for b in range(256)]
    while len(vocab) < vocab_size - n_special:
        stats = Counter()
        for ids, f in words:
            for pair in zip(ids, ids[1:]):
                stats[pair] += f
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        token = vocab[pair[0]] + vocab[pair[1]]
        new_id = vocab.index(token) if token in vocab else len(vocab)
        vocab += [token] if new_id == len(vocab) else []
        for w in words:
            w[0] = tokenizer._merge(w[0], pair, new_id)
    return vocab


def test_incremental_training_equals_textbook_bpe(corpus):
    text = corpus[:20_000]
    tok = train(text, 400)
    expected = textbook_train(text, 400, len(SPECIAL_TOKENS))
    assert [tok.vocab[i] for i in range(len(expected))] == expected
    assert tok.n_vocab == 400 and tok.special_tokens == {s: 396 + i for i, s in enumerate(SPECIAL_TOKENS)}


def test_training_is_deterministic(corpus):
    text = corpus[:200_000]
    a, b = train(text, 600).state_dict(), train(text, 600).state_dict()
    assert a == b
    # also in a fresh interpreter with a different string-hash seed
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); import tokenizer; "
            f"text = open(sys.argv[1], encoding='utf-8').read(); print(json.dumps(tokenizer.train(text, 600).state_dict()))")
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"tok_det_{os.getpid()}.txt"
    path.write_text(text, encoding="utf-8")
    try:
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    finally:
        path.unlink()
    assert json.loads(out) == a


def test_training_1mb_to_4096_is_fast(tok4096):
    assert tok4096.n_vocab == 4096
    assert tok4096.train_seconds < 12, f"training took {tok4096.train_seconds:.1f} s, the target is <= 12 s"
    assert tok4096.encode(" the") == [tok4096.ranks[b" the"]]  # the most common word became one token


def test_special_strings_in_training_text_are_not_learned():
    text = "<|endoftext|>".join(["hello there friend"] * 50) + "<|user|>hi<|assistant|>hello<|end|>" * 20
    tok = train(text, 320)
    assert not any(b"<|" in t or b"|>" in t for t in tok.ranks)


def test_training_stops_when_pairs_run_out():
    tok = train("ab ab ab", 1000)
    assert tok.n_vocab == 256 + 2 + len(SPECIAL_TOKENS)  # merges "ab" and " ab", then nothing is left
    assert tok.special_tokens["<|endoftext|>"] == 258 and tok.encode(" ab") == [257]


def test_vocab_size_minimum_and_no_specials():
    assert train("hello", 256 + len(SPECIAL_TOKENS)).n_vocab == 260  # bytes + specials, no merges
    tok = train("hello hello", 258, special_tokens=[])
    assert tok.special_tokens == {} and tok.n_vocab == 258


# --- special tokens ----------------------------------------------------------------------------------------------

def test_special_tokens_only_when_allowed(tok300):
    sp = tok300.special_tokens
    text = "hi <|user|>hello<|assistant|>yes<|end|>"
    plain = tok300.encode(text)
    assert not set(plain) & set(sp.values())           # a user typing <|end|> gets ordinary text
    assert tok300.decode(plain) == text
    assert plain == tok300.encode_ordinary(text) == tok300.to_tiktoken().encode_ordinary(text)
    only_end = tok300.encode(text, allowed_special={"<|end|>"})
    assert only_end[-1] == sp["<|end|>"] and sp["<|user|>"] not in only_end
    assert tok300.encode(text, allowed_special="<|end|>") == only_end  # one name works as well as a set
    allowed = tok300.encode(text, allowed_special="all")
    assert [i for i in allowed if i in sp.values()] == [sp["<|user|>"], sp["<|assistant|>"], sp["<|end|>"]]
    assert tok300.decode(allowed) == text
    for a in [set(), {"<|end|>"}, "all"]:
        assert tok300.encode(text, allowed_special=a) == tok300.to_tiktoken().encode(
            text, allowed_special=a, disallowed_special=())
    with pytest.raises(ValueError, match="unknown special tokens"):
        tok300.encode(text, allowed_special={"<|system|>"})


def test_special_ids_come_after_the_merges(tok4096):
    assert list(tok4096.special_tokens) == SPECIAL_TOKENS
    assert sorted(tok4096.special_tokens.values()) == [4092, 4093, 4094, 4095]
    assert max(tok4096.ranks.values()) == 4091


# --- save / load -------------------------------------------------------------------------------------------------

def only_plain_values(x):
    if isinstance(x, dict):
        return all(isinstance(k, str) and only_plain_values(v) for k, v in x.items())
    if isinstance(x, list):
        return all(only_plain_values(v) for v in x)
    return type(x) in (str, int)


def test_save_load_identical(tok4096, corpus, tmp_path):
    path = tmp_path / "tok.json"
    tok4096.save(path)
    loaded = Tokenizer.load(path)
    text = corpus[2 * MB:2 * MB + 100_000] + " ".join(STRINGS)
    assert loaded.encode(text, allowed_special="all") == tok4096.encode(text, allowed_special="all")
    assert loaded.state_dict() == tok4096.state_dict() and loaded.n_vocab == tok4096.n_vocab
    assert loaded.to_tiktoken().encode_ordinary(text) == tok4096.to_tiktoken().encode_ordinary(text)


def test_state_dict_fits_weights_only_checkpoint(tok300, gpt2, tmp_path):
    for tok in (tok300, gpt2):
        state = tok.state_dict()
        assert only_plain_values(state)
        torch.save({"model": {"w": torch.zeros(2)}, "tokenizer": state}, tmp_path / "ckpt.pt")
        ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
        loaded = Tokenizer.from_state_dict(ckpt["tokenizer"])
        for s in STRINGS:
            assert loaded.encode(s, allowed_special="all") == tok.encode(s, allowed_special="all")
        assert loaded.ranks == tok.ranks and loaded.n_vocab == tok.n_vocab


def test_vocab_lines_are_readable(tok300):
    lines = tok300.vocab_lines()
    assert len(lines) == tok300.n_vocab
    assert lines[32] == "32\t' '" and lines[10] == "10\t'\\n'" and lines[255] == "255\t'\\xff'" and lines[92] == "92\t'\\\\'"
    assert f"{tok300.ranks[b' the']}\t' the'" in lines
    assert lines[tok300.special_tokens["<|end|>"]].endswith("<|end|> (special)")


def test_vocab_lines_gpt2(gpt2):
    lines = gpt2.vocab_lines()
    assert len(lines) == 50257 and lines[0] == "0\t'!'" and lines[50256] == "50256\t<|endoftext|> (special)"


# --- bad input: one clear error each -----------------------------------------------------------------------------

def test_vocab_size_too_small():
    with pytest.raises(ValueError, match=r"vocab_size 259 is too small.*256 byte tokens \+ 4 special tokens = 260"):
        train("hello world", 259)


@pytest.mark.parametrize("text", ["", "<|endoftext|>", "<|endoftext|><|end|>"])
def test_empty_training_text(text):
    with pytest.raises(ValueError, match="empty text"):
        train(text, 300)


def test_duplicate_special_tokens():
    with pytest.raises(ValueError, match="distinct"):
        train("hello", 300, special_tokens=["<|a|>", "<|a|>"])


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2, 3]",
    '{"kind": "byte-level-bpe", "pattern": "\\\\s+"}',                                   # no tokens
    '{"kind": "byte-level-bpe", "pattern": "\\\\s+", "special_tokens": {}, "tokens": ["zz"]}',  # bad hex
    '{"kind": "byte-level-bpe", "pattern": "\\\\s+", "special_tokens": {}, "tokens": ["00", "01"]}',  # bytes missing
    '{"kind": "byte-level-bpe", "pattern": "(", "special_tokens": {}, "tokens": []}',       # bad regex
])
def test_malformed_tokenizer_json(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=regex.escape(str(path)) + ": not a (JSON tokenizer file|valid tokenizer state)"):
        Tokenizer.load(path)


def test_malformed_state_dicts(tok300):
    good = tok300.state_dict()
    bad = [
        {**good, "tokens": good["tokens"] + [good["tokens"][300 - 5]]},       # a duplicate token
        {**good, "special_tokens": {"<|end|>": 3}},                            # special id collides with a byte
        {**good, "special_tokens": {"<|a|>": 400, "<|b|>": 400}},              # two specials, one id
        {**good, "pattern": 5},
        {**good, "kind": "sentencepiece"},
    ]
    for d in bad:
        with pytest.raises(ValueError, match="not a valid tokenizer state"):
            Tokenizer.from_state_dict(d)


def test_malformed_gpt2_files(gpt2_files, tmp_path):
    enc, bpe = gpt2_files
    bad_json = tmp_path / "encoder.json"
    bad_json.write_text('{"hello": 1}', encoding="utf-8")  # no <|endoftext|>
    with pytest.raises(ValueError, match=regex.escape(str(bad_json))):
        Tokenizer.from_gpt2(bad_json, bpe)
    bad_bpe = tmp_path / "vocab.bpe"
    lines = bpe.read_text(encoding="utf-8").split("\n")
    bad_bpe.write_text("\n".join(lines[:1] + lines[2:3] + lines[1:2] + lines[3:]), encoding="utf-8")  # swap 2 merges
    with pytest.raises(ValueError, match=regex.escape(str(bad_bpe)) + ".*merge 1"):
        Tokenizer.from_gpt2(enc, bad_bpe)
