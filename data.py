"""Data in and out of the stages: the corpus, the JSON Lines formats, the chat template, padding.

Chat template (see DESIGN.md): a turn is  <|user|>{prompt}<|assistant|>{response}<|end|>.
Generation starts after <|assistant|> and stops at <|end|>. User text is always encoded as
ordinary text, so typing "<|end|>" cannot inject a control token.
"""
import gzip
import json
import os

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


# ----------------------------------------------------------------------------- JSON Lines (or one array)
def read_jsonl(path, flag="--data"):
    """JSON Lines (every non-blank line one JSON object), or one JSON array of objects, the way
    Alpaca ships alpaca_data.json. Returns [(where, record)]: `where` names the file and line
    ("demos.jsonl:3") or the array's item ("alpaca.json[2]", counted from 0 as jq does), so that
    a bad record is an error pointing at it."""
    if not os.path.isfile(path):
        fail(f"{flag} {path}: no such file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        fail(f"{path}:{line}: not UTF-8 text")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"{path}:{e.lineno}: not valid JSON ({e.msg}), reading the file as one JSON array")
        records = [(f"{path}[{i}]", rec) for i, rec in enumerate(items)]
    else:
        records = []
        for n, line in enumerate(text.split("\n"), 1):   # not splitlines(): JSON strings may hold U+2028
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                fail(f"{path}:{n}: not valid JSON ({e.msg})")
    for where, rec in records:
        if not isinstance(rec, dict):
            fail(f"{where}: expected a JSON object")
    if not records:
        fail(f"{flag} {path}: the file holds no records")
    return records


def _text(rec, key, where):
    value = rec.get(key)
    if not isinstance(value, str):
        fail(f"{where}: field {key!r} must be a string")
    return value


def load_demonstrations(path):
    """{"prompt","response"} records, or Alpaca {"instruction","input","output"}."""
    out = []
    for where, rec in read_jsonl(path):
        if "instruction" in rec:  # Alpaca: the optional input goes after the instruction
            prompt = _text(rec, "instruction", where)
            if rec.get("input"):
                prompt += "\n\n" + _text(rec, "input", where)
            out.append((prompt, _text(rec, "output", where)))
        else:
            out.append((_text(rec, "prompt", where), _text(rec, "response", where)))
    return out


def load_rankings(path):
    """K-wise {"prompt","responses":[best,...,worst]} or pairs {"prompt","chosen","rejected"}
    (a pair is a ranking with K=2). Returns [(prompt, [best, ..., worst])]."""
    out = []
    for where, rec in read_jsonl(path):
        prompt = _text(rec, "prompt", where)
        if "responses" in rec:
            responses = rec["responses"]
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                fail(f"{where}: 'responses' must be a list of strings")
        elif "chosen" in rec:
            responses = [_text(rec, "chosen", where), _text(rec, "rejected", where)]
        else:
            fail(f"{where}: expected 'responses' (a ranking) or 'chosen'/'rejected' (a pair)")
        if len(responses) < 2:
            fail(f"{where}: a ranking needs at least 2 responses, got {len(responses)}")
        if len(set(responses)) < len(responses):
            fail(f"{where}: the ranking holds the same response twice")
        out.append((prompt, responses))
    return out


def load_prompts(path, flag="--data"):
    return [_text(rec, "prompt", where) for where, rec in read_jsonl(path, flag)]


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
