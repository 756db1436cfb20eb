"""Byte-level BPE tokenizer: train, encode, decode, special tokens, save/load, GPT-2's files,
tiktoken export.

Byte-pair encoding (Sennrich et al. 2016; GPT-2, Radford et al. 2019) turns text into integer ids.
Text is first cut into chunks by a regex (words, numbers, punctuation runs, whitespace; merges never
cross chunks) and each chunk becomes its UTF-8 bytes, so the 256 byte values are the first tokens
and no text is ever "unknown". Training makes the most frequent adjacent pair of tokens a new token
(e.g. b" t" + b"he" -> b" the"), again and again until the vocabulary is full (train() shows the
textbook loop). Encoding replays this on new text: inside each chunk, merge the adjacent pair whose
merged bytes were learned earliest (lowest rank = lowest id) until no adjacent pair forms a known
token. Decoding just concatenates each id's bytes. The model is therefore nothing but `ranks`: token
bytes -> id, where the id is also the merge priority; this is tiktoken's "mergeable ranks" form,
which also holds GPT-2's vocabulary (whose single-byte tokens have permuted ids) and which
`to_tiktoken()` hands to tiktoken's Rust encoder, the fast path every stage uses. `encode` here is
the slow, readable reference that the tests hold equal to tiktoken.
"""
import heapq
import json
from collections import Counter, defaultdict

import regex
import tiktoken

# How text is cut into chunks before BPE. GPT-2's pattern (Radford et al. 2019, encoder.py) and
# GPT-4's (cl100k_base): case-insensitive contractions, letters with one leading non-letter, numbers
# of at most 3 digits, punctuation runs, newlines; both avoid `$`, whose meaning differs between
# Python and Rust regexes.
GPT2_SPLIT_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+"""
                      r"""| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
GPT4_SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}"""
                      r"""| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]  # the project's specials
INF = float("inf")


def _merge(ids, pair, new_id):
    """Replace every occurrence of `pair` in `ids`, left to right, by `new_id`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _check_specials(special_tokens, vocab_size):
    """train()'s arguments checked: the special tokens as a list, distinct, with room for them."""
    special_tokens = list(special_tokens)
    if len(set(special_tokens)) != len(special_tokens) \
            or not all(isinstance(s, str) and s for s in special_tokens):
        raise ValueError(f"special tokens must be distinct non-empty strings, got {special_tokens}")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size {vocab_size} is too small: it needs at least 256 byte tokens "
                         f"+ {len(special_tokens)} special tokens = {256 + len(special_tokens)}")
    return special_tokens


def _distinct_chunks(text, special_tokens, pattern):
    """(words, freqs): each distinct chunk of text as its byte ids, once, and how often it occurs.
    Special-token strings are cut out first, so no chunk crosses or holds one."""
    if special_tokens:
        parts = regex.split("|".join(regex.escape(s) for s in special_tokens), text)
    else:
        parts = [text]
    chunk_counts = Counter(c for part in parts for c in regex.findall(pattern, part))
    if not chunk_counts:
        raise ValueError("cannot train a tokenizer on empty text")
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    return words, freqs


def _count_pairs(words, freqs):
    """(stats, where): pair -> its count in all chunks (times their frequency); pair -> the chunks
    that hold it."""
    stats, where = defaultdict(int), defaultdict(set)
    for w, (ids, f) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            stats[pair] += f
            where[pair].add(w)
    return stats, where


def _merge_everywhere(pair, new_id, words, freqs, stats, where):
    """Replace `pair` by `new_id` in every chunk that holds it, updating the pair counts `stats` and
    the index `where` in place. Returns the pairs that contain new_id: only they can have gained
    counts, so only they need new heap entries."""
    grown = set()
    for w in where.pop(pair):
        old = words[w]
        new = _merge(old, pair, new_id)
        if len(new) == len(old):  # index entry gone stale: this chunk no longer holds the pair
            continue
        words[w], f = new, freqs[w]
        for p in zip(old, old[1:]):
            stats[p] -= f
        for p in zip(new, new[1:]):
            stats[p] += f
            if new_id in p:
                where[p].add(w)
                grown.add(p)
    return grown


def train(text, vocab_size, special_tokens=SPECIAL_TOKENS, pattern=GPT4_SPLIT_PATTERN):
    """Learn a vocabulary of `vocab_size` ids: 256 bytes, then merges, then `special_tokens` (ids
    after the merges).

    The textbook loop (Sennrich et al. 2016, Algorithm 1; minbpe's BasicTokenizer;
    tests/test_tokenizer.py's textbook_train, which this function must equal):

        while len(vocab) < n_tokens:
            stats = count of every adjacent pair (a, b) in every chunk, times the chunk's frequency
            pair = the most frequent pair in stats (ties: the smallest (a, b))
            add the token vocab[a] + vocab[b]; in every chunk, replace each (a, b) by its id

    This version gives the same merges fast, without rescanning the corpus: each distinct chunk is
    stored once with its count, pair counts are kept up to date by re-counting only the chunks that
    hold the merged pair (`where` indexes pair -> chunks), and the best pair comes off a max-heap
    whose stale entries are skipped when popped ("lazy invalidation"). The tie-break makes training
    deterministic. Special-token strings in `text` (e.g. <|endoftext|> between documents) are cut
    out, never learned. If the text runs out of pairs first, the vocabulary is smaller than asked;
    `n_vocab` says how big it is.
    """
    special_tokens = _check_specials(special_tokens, vocab_size)
    words, freqs = _distinct_chunks(text, special_tokens, pattern)
    vocab = [bytes([b]) for b in range(256)]                          # id -> token bytes
    ids_of = {tok: i for i, tok in enumerate(vocab)}                  # token bytes -> id
    stats, where = _count_pairs(words, freqs)
    heap = [(-count, pair) for pair, count in stats.items()]          # max-heap via negated counts
    heapq.heapify(heap)
    n_tokens = vocab_size - len(special_tokens)
    while len(vocab) < n_tokens and heap:
        # the most frequent pair
        neg_count, pair = heapq.heappop(heap)
        count = stats[pair]
        if count != -neg_count:  # stale: the count fell since it was pushed; re-queue the truth
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        # its token; the same bytes may already be a token reached via another split: reuse its id
        # (bytes -> id must stay one-to-one for tiktoken)
        token = vocab[pair[0]] + vocab[pair[1]]
        new_id = ids_of.get(token)
        if new_id is None:
            new_id = ids_of[token] = len(vocab)
            vocab.append(token)
        # merge it in every chunk that holds it; pairs with new_id get heap entries
        # (push order is irrelevant: heap entries are totally ordered tuples)
        for p in _merge_everywhere(pair, new_id, words, freqs, stats, where):
            heapq.heappush(heap, (-stats[p], p))
    specials = {s: len(vocab) + i for i, s in enumerate(special_tokens)}
    return Tokenizer({tok: i for i, tok in enumerate(vocab)}, specials, pattern)


class Tokenizer:
    """A trained (or GPT-2's) byte-level BPE: `ranks` (token bytes -> id) + `special_tokens` +
    split `pattern`."""

    def __init__(self, ranks, special_tokens, pattern):
        self.ranks = dict(ranks)                     # token bytes -> id, also its merge priority
        self.special_tokens = dict(special_tokens)   # name -> id
        self.pattern = pattern
        if sorted(self.ranks.values()) != list(range(len(self.ranks))) or b"" in self.ranks \
                or any(bytes([b]) not in self.ranks for b in range(256)):
            raise ValueError("token ids must be 0..N-1, one distinct non-empty token each, all 256 "
                             "bytes included")
        special_ids = self.special_tokens.values()
        if len(set(special_ids)) != len(self.special_tokens) or \
                any(type(i) is not int or i < len(self.ranks) for i in special_ids):
            raise ValueError(f"special token ids must be distinct ints after the {len(self.ranks)} "
                             f"merged tokens")
        self.vocab = {i: tok for tok, i in self.ranks.items()}  # id -> bytes, for decode
        self.vocab |= {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        self.n_vocab = max(self.vocab) + 1           # the model's vocab_size
        self._split = regex.compile(pattern)         # (raises regex.error for a bad pattern)
        self._cache = {}                             # chunk -> ids (GPT-2's encoder): words repeat
        self._enc = None

    def _bpe(self, chunk):
        """One chunk's bytes -> ids: merge the adjacent pair whose merged bytes have the lowest
        rank, until no pair forms a token. As in tiktoken, one merge at a time; equal ranks (a
        repeated pair) go leftmost first."""
        parts = [bytes([b]) for b in chunk]
        while len(parts) > 1:
            ranks = [self.ranks.get(a + b, INF) for a, b in zip(parts, parts[1:])]
            i = min(range(len(ranks)), key=ranks.__getitem__)  # the first (leftmost) lowest rank
            if ranks[i] == INF:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [self.ranks[p] for p in parts]

    def encode_ordinary(self, text):
        """Text -> ids, treating everything (including "<|end|>" typed by a user) as plain text."""
        ids = []
        for chunk in self._split.findall(text):
            if chunk not in self._cache:
                self._cache[chunk] = self._bpe(chunk.encode("utf-8"))
            ids.extend(self._cache[chunk])
        return ids

    def encode(self, text, allowed_special=()):
        """Text -> ids. Special-token strings become their ids only if named in `allowed_special`
        ("all" or a set of names, or one name); otherwise they are ordinary text, so a chat user
        cannot inject control tokens."""
        allowed = set(self.special_tokens) if allowed_special == "all" else \
            {allowed_special} if isinstance(allowed_special, str) else set(allowed_special)
        if allowed - set(self.special_tokens):
            raise ValueError(f"unknown special tokens {sorted(allowed - set(self.special_tokens))}"
                             f"; this tokenizer has {sorted(self.special_tokens)}")
        if not allowed:
            return self.encode_ordinary(text)
        # split around the allowed specials, longest first; the (group) keeps them in the output,
        # at odd positions
        longest_first = sorted(allowed, key=len, reverse=True)
        specials_re = "(" + "|".join(regex.escape(s) for s in longest_first) + ")"
        ids = []
        for i, part in enumerate(regex.split(specials_re, text)):
            ids.extend([self.special_tokens[part]] if i % 2 else self.encode_ordinary(part))
        return ids

    def decode(self, ids):
        """Ids -> text. Byte sequences that are not valid UTF-8 (a token can end mid-character)
        become U+FFFD."""
        try:
            return b"".join(self.vocab[int(i)] for i in ids).decode("utf-8", errors="replace")
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in this tokenizer's vocabulary "
                             f"(0..{self.n_vocab - 1})") from None

    def to_tiktoken(self):
        """The same tokenizer as a tiktoken.Encoding (Rust, much faster), built once and cached."""
        if self._enc is None:
            self._enc = tiktoken.Encoding(f"bpe{self.n_vocab}", pat_str=self.pattern,
                                          mergeable_ranks=self.ranks,
                                          special_tokens=self.special_tokens)
        return self._enc

    def vocab_lines(self):
        """A readable dump, one token per line: id, then its bytes as text in quotes. Bytes that are
        not valid UTF-8 show as \\xNN; control characters and the backslash itself are escaped, so
        every line is unambiguous."""
        def show(tok):
            chars = tok.decode("utf-8", errors="surrogateescape")  # invalid byte 0xNN -> U+DCNN
            esc = lambda c: (f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                             else c.encode("unicode_escape").decode())
            return "".join(c if c.isprintable() and c != "\\" else esc(c) for c in chars)
        names = {i: s for s, i in self.special_tokens.items()}
        return [f"{i}\t{names[i]} (special)" if i in names else f"{i}\t'{show(tok)}'"
                for i, tok in sorted(self.vocab.items())]

    # --- saving: plain JSON values only (token bytes as hex): torch.load(weights_only=True) ---
    def state_dict(self):
        by_id = sorted(self.ranks.items(), key=lambda kv: kv[1])
        return {"kind": "byte-level-bpe", "pattern": self.pattern,
                "special_tokens": dict(self.special_tokens),
                "tokens": [tok.hex() for tok, _ in by_id]}

    @classmethod
    def from_state_dict(cls, d):
        try:
            if not isinstance(d, dict) or d.get("kind") != "byte-level-bpe":
                raise ValueError("expected a dict with kind 'byte-level-bpe'")
            pattern, specials, tokens = d.get("pattern"), d.get("special_tokens"), d.get("tokens")
            if not (isinstance(pattern, str) and isinstance(tokens, list)
                    and isinstance(specials, dict) and all(isinstance(k, str) for k in specials)):
                raise ValueError("expected 'pattern' (str), 'tokens' (list of hex str), "
                                 "'special_tokens' (str -> id)")
            # list index = id
            return cls({bytes.fromhex(t): i for i, t in enumerate(tokens)}, specials, pattern)
        except (TypeError, ValueError, regex.error) as e:
            raise ValueError(f"not a valid tokenizer state: {e}") from None

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.state_dict(), f)

    @classmethod
    def load(cls, path):
        with open(path, "rb") as f:
            try:
                d = json.loads(f.read().decode("utf-8"))
            except ValueError as e:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
                raise ValueError(f"{path}: not a JSON tokenizer file ({e})") from None
        try:
            return cls.from_state_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_gpt2(cls, encoder_json_path, vocab_bpe_path):
        """GPT-2's own vocabulary from its `encoder.json` (token string -> id) and `vocab.bpe` (the
        merges in order).

        GPT-2 writes each byte as a printable character: bytes that are printable and not a space
        stand for themselves, the other 68 are shifted to chr(256), chr(257), ... in byte order. Its
        ids already follow merge order (256 + line in vocab.bpe), so they are the ranks; vocab.bpe
        is used to check exactly that."""
        keep = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
        shifted = [b for b in range(256) if b not in keep]
        char_to_byte = {chr(b): b for b in keep} | {chr(256 + n): b for n, b in enumerate(shifted)}
        to_bytes = lambda s: bytes(char_to_byte[c] for c in s)  # KeyError: not a GPT-2 byte char
        try:
            with open(encoder_json_path, encoding="utf-8") as f:
                encoder = json.load(f)
            eot = encoder.pop("<|endoftext|>")
            tok = cls({to_bytes(s): i for s, i in encoder.items()}, {"<|endoftext|>": eot},
                      GPT2_SPLIT_PATTERN)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{encoder_json_path}: not a GPT-2 encoder.json "
                             f"({type(e).__name__}: {e})") from None
        with open(vocab_bpe_path, encoding="utf-8", errors="replace") as f:
            # line 0 is a version comment
            merges = [line for line in f.read().split("\n")[1:] if line]
        for n, line in enumerate(merges):
            pair = line.split()
            if len(pair) != 2 or any(c not in char_to_byte for c in pair[0] + pair[1]) \
                    or tok.ranks.get(to_bytes(pair[0]) + to_bytes(pair[1])) != 256 + n:
                raise ValueError(f"{vocab_bpe_path}: merge {n + 1} ({line!r}) does not match "
                                 f"{encoder_json_path}")
        return tok
