"""Data in and out of the stages: the corpus, the JSON Lines formats, the chat template, padding.

Chat template (see DESIGN.md): a turn is  <|user|>{prompt}<|assistant|>{response}<|end|>.
Generation starts after <|assistant|> and stops at <|end|>. User text is always encoded as
ordinary text, so typing "<|end|>" cannot inject a control token.
"""
import codecs
import gzip
import json
import os
import re

import torch

from common import fail

# ----------------------------------------------------------------------------- corpus
def read_corpus(path):
    """A .txt/.txt.gz file, or a folder of them. Documents (paragraphs separated by blank lines
    in each file; the SOTU corpus holds one address per paragraph) are joined by <|endoftext|>."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".txt", ".txt.gz")))
        if not files:
            fail(f"--data {path}: folder holds no .txt or .txt.gz files")
    elif os.path.isfile(path):
        files = [path]
    else:
        fail(f"--data {path}: no such file or folder")
    docs = []
    for f in files:
        try:
            with (gzip.open(f, "rt", encoding="utf-8") if f.endswith(".gz") else open(f, encoding="utf-8")) as fh:
                text = fh.read()
        except (UnicodeDecodeError, OSError, EOFError) as e:
            fail(f"--data {f}: cannot read as UTF-8 text ({e})")
        docs += [d.strip() for d in text.replace("\r\n", "\n").split("\n\n") if d.strip()]
    if not docs:
        fail(f"--data {path}: the corpus is empty")
    return "<|endoftext|>".join(docs)


# ----------------------------------------------------------------------------- JSON Lines
def read_jsonl(path, flag="--data"):
    """Every non-blank line must be a JSON object; a bad one is an error naming file and line."""
    if not os.path.isfile(path):
        fail(f"{flag} {path}: no such file")
    records = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                fail(f"{path}:{n}: not UTF-8 text")
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path}:{n}: not valid JSON ({e.msg})")
            if not isinstance(rec, dict):
                fail(f"{path}:{n}: expected a JSON object")
            records.append((n, rec))
    if not records:
        fail(f"{flag} {path}: the file holds no records")
    return records


def _text(rec, key, path, n):
    value = rec.get(key)
    if not isinstance(value, str):
        fail(f"{path}:{n}: field {key!r} must be a string")
    return value


def load_demonstrations(path):
    """{"prompt","response"} records, or Alpaca {"instruction","input","output"}."""
    out = []
    for n, rec in read_jsonl(path):
        if "instruction" in rec:  # Alpaca: the optional input goes after the instruction
            prompt = _text(rec, "instruction", path, n)
            if rec.get("input"):
                prompt += "\n\n" + _text(rec, "input", path, n)
            out.append((prompt, _text(rec, "output", path, n)))
        else:
            out.append((_text(rec, "prompt", path, n), _text(rec, "response", path, n)))
    return out


def load_rankings(path):
    """K-wise {"prompt","responses":[best,...,worst]} or pairs {"prompt","chosen","rejected"}
    (a pair is a ranking with K=2). Returns [(prompt, [best, ..., worst])]."""
    out = []
    for n, rec in read_jsonl(path):
        prompt = _text(rec, "prompt", path, n)
        if "responses" in rec:
            responses = rec["responses"]
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                fail(f"{path}:{n}: 'responses' must be a list of strings")
        elif "chosen" in rec:
            responses = [_text(rec, "chosen", path, n), _text(rec, "rejected", path, n)]
        else:
            fail(f"{path}:{n}: expected 'responses' (a ranking) or 'chosen'/'rejected' (a pair)")
        if len(responses) < 2:
            fail(f"{path}:{n}: a ranking needs at least 2 responses, got {len(responses)}")
        if len(set(responses)) < len(responses):
            fail(f"{path}:{n}: the ranking holds the same response twice")
        out.append((prompt, responses))
    return out


def load_prompts(path, flag="--data"):
    return [_text(rec, "prompt", path, n) for n, rec in read_jsonl(path, flag)]


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- chat template
def encode_prompt(tok, prompt):
    """<|user|>{prompt}<|assistant|>: the context a response is generated from."""
    sp = tok.special_tokens
    return [sp["<|user|>"]] + tok.to_tiktoken().encode_ordinary(prompt) + [sp["<|assistant|>"]]


def encode_example(tok, prompt, response):
    """One SFT example: (ids, targets). targets[t] is the token the model must predict at t,
    or -1 (ignored) where that token belongs to the prompt: the loss covers the response and
    its <|end|>, never the prompt (InstructGPT trains on the labelers' demonstrations only)."""
    prompt_ids = encode_prompt(tok, prompt)
    response_ids = tok.to_tiktoken().encode_ordinary(response) + [tok.special_tokens["<|end|>"]]
    ids = prompt_ids + response_ids
    targets = [-1] * (len(prompt_ids) - 1) + response_ids + [-1]
    return ids, targets


def fit_context(turns, block_size, reserve):
    """The context rule of chat.py and serve.py. turns: token lists, oldest first, each a whole
    <|user|>..<|assistant|>..<|end|> turn but the last, the new <|user|>{text}<|assistant|>. Keep the newest
    whole turns that leave `reserve` tokens of the block for the answer; the new turn is kept whenever it
    leaves at least one (the answer is then cut short). Returns (ids, dropped): the context and how many
    old turns were left out, for the caller to say so; ids is None when the new turn alone fills the block."""
    if len(turns[-1]) >= block_size:
        return None, len(turns) - 1
    kept, n = 1, len(turns[-1])
    while kept < len(turns) and n + len(turns[-kept - 1]) <= block_size - reserve:
        n += len(turns[-kept - 1])
        kept += 1
    return [t for turn in turns[-kept:] for t in turn], len(turns) - kept


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")   # C0 and C1 control characters but \t and \n


class AnswerText:
    """An answer's text as its tokens arrive, fit for a terminal or a page: push() returns the characters
    completed by a token (a token may end inside a UTF-8 character: it waits for the rest), never a control
    character, and None at a special token, where the answer ends (<|end|>, or a template token the model
    should not write). close() returns what is left (an unfinished character becomes U+FFFD)."""

    def __init__(self, tok):
        self.enc, self.specials = tok.to_tiktoken(), set(tok.special_tokens.values())
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token):
        if token in self.specials:
            return None
        return CONTROL.sub("", self.utf8.decode(self.enc.decode_single_token_bytes(token)))

    def close(self):
        return CONTROL.sub("", self.utf8.decode(b"", final=True))


def answer_text(tok, ids):
    """The whole text of an answer (token ids), cut and cleaned as AnswerText does."""
    text, pieces = AnswerText(tok), []
    for t in ids:
        piece = text.push(t)
        if piece is None:
            break
        pieces.append(piece)
    return "".join(pieces) + text.close()


def left_pad(seqs, pad_id=0, device="cpu"):
    """Rows of different lengths -> (idx (B,T), pad_mask (B,T), True = real token), padded on the
    left so that every row's last real token sits at T-1 (where generation continues)."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            idx[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = True
    return idx.to(device), mask.to(device)
