"""Data in and out of the stages: the corpus and its batches, the JSON Lines formats, the chat
template, responses.

Chat template (see DESIGN.md): a turn is  <|user|>{prompt}<|assistant|>{response}<|end|>.
Generation starts after <|assistant|> and stops at <|end|>. User text is always encoded as
ordinary text, so typing "<|end|>" cannot inject a control token.
"""
import gzip
import hashlib
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from common import eval_mode, fail, write_atomically
from gpt import left_pad

# ----------------------------------------------------------------------------- corpus
def read_corpus(path, flag="--data"):
    """A .txt/.txt.gz file, or a folder of them. Documents (paragraphs separated by blank lines
    in each file; the SOTU corpus holds one address per paragraph) are joined by <|endoftext|>.
    flag: the command-line flag that named the path, for the error line."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.endswith((".txt", ".txt.gz")))
        if not files:
            fail(f"{flag} {path}: folder holds no .txt or .txt.gz files")
    elif os.path.isfile(path):
        files = [path]
    else:
        fail(f"{flag} {path}: no such file or folder")
    docs = []
    for f in files:
        try:
            with (gzip.open(f, "rt", encoding="utf-8") if f.endswith(".gz")
                  else open(f, encoding="utf-8")) as fh:
                text = fh.read()
        except (UnicodeDecodeError, OSError, EOFError) as e:
            fail(f"{flag} {f}: cannot read as UTF-8 text ({e})")
        docs += [d.strip() for d in text.replace("\r\n", "\n").split("\n\n") if d.strip()]
    if not docs:
        fail(f"{flag} {path}: the corpus is empty")
    return "<|endoftext|>".join(docs)


def cached_tokens(text, tok, cache_dir):
    """The corpus as a uint16 token array, cached in cache_dir under a hash of the text and the
    tokenizer, so a second run (or eval.py reading pretraining's validation split) does not
    tokenize again."""
    if tok.n_vocab > 65536:
        fail(f"tokenizer has {tok.n_vocab} tokens; the token file stores uint16 ids (< 65536)")
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    tok_key = hashlib.sha256(repr(tok.state_dict()).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"tokens-{key}-{tok_key}.bin")
    if not os.path.exists(path):
        ids = tok.to_tiktoken().encode(text, allowed_special={"<|endoftext|>"},
                                       disallowed_special=())
        write_atomically(path, lambda tmp: np.array(ids, dtype=np.uint16).tofile(tmp))
    return np.fromfile(path, dtype=np.uint16)


def get_lm_batch(tokens, batch_size, block_size, generator, device):
    """Random windows of block_size+1 tokens: x is the window, y the window shifted by one."""
    starts = torch.randint(len(tokens) - block_size - 1, (batch_size,), generator=generator,
                           device=generator.device)
    windows = [tokens[s: s + block_size + 1] for s in starts.tolist()]
    rows = torch.from_numpy(np.stack(windows).astype(np.int64))
    return rows[:, :-1].to(device), rows[:, 1:].to(device), None


# ----------------------------------------------------------------------------- JSON Lines
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
        # split("\n"), not splitlines(): JSON strings may hold U+2028
        for n, line in enumerate(text.split("\n"), 1):
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
    """One JSON object per line, UTF-8, written atomically (common.write_atomically)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    write_atomically(path, write)


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


# ----------------------------------------------------------------------------- responses
# The one rule for every stage: a response is the token list the model generated, ending with its
# <|end|> if it wrote one (else it was cut off), as GPT.generate(..., stop_token=<|end|>) returns
# it. The reward model reads it at that <|end|>, PPO counts the <|end|> as an action;
# response_text() leaves it out of the text.

SAMPLE_BATCH = 256   # rows generated at once: per-step overhead dominates a small model, so wide
                     # batches sample faster on a CPU than narrow ones (the KV cache for 256 rows
                     # is a few MB)


@torch.no_grad()
def sample_responses(model, tok, prompts, max_new_tokens, temperature=1.0, top_k=None, seed=0,
                     batch_size=64, device="cpu"):
    """One response per prompt (a string, in the chat template), batch_size rows decoded at once
    (a finished row's slot goes to the next prompt), in eval mode."""
    end = tok.special_tokens["<|end|>"]
    gen = torch.Generator(device=device).manual_seed(seed)
    with eval_mode(model):
        return model.generate([encode_prompt(tok, p) for p in prompts], max_new_tokens,
                              temperature=temperature, top_k=top_k, stop_token=end,
                              generator=gen, max_batch=batch_size)[0]


def response_text(tok, response):
    """(text, ended) of a response: its text leaves out the closing <|end|>."""
    ended = list(response[-1:]) == [tok.special_tokens["<|end|>"]]
    return tok.decode(list(response[:-1] if ended else response)), ended


# Episodes (PPO's rollouts, eval's KL): rows prompt+response left-padded to (B, T), and per-token
# quantities on a (B, T-1) grid whose column t is what the model says at position t about token
# t+1: the action a_t = idx[:, t+1] in state s_t = idx[:, :t+1]. `mask` (B, T-1) is True where a_t
# is a response token.

def pad_episodes(prompts, responses, device):
    """Rows prompt+response, left-padded: (idx, pad_mask, mask), where mask (B, T-1) marks the
    action columns of the response tokens. Each response is the last len(r) tokens of its row, so
    its actions are the columns >= T-1-len(r)."""
    idx, pad_mask = left_pad([p + r for p, r in zip(prompts, responses)], device=device)
    lens = torch.tensor([len(r) for r in responses], device=device)
    mask = torch.arange(idx.shape[1] - 1, device=device)[None] >= (idx.shape[1] - 1 - lens)[:, None]
    return idx, pad_mask, mask


def action_logprobs(logits, idx, temperature):
    """log pi(a_t | s_t) = log softmax(logits_t / T)[idx_{t+1}]: the logits at position t predict
    token t+1. Divide by the sampling temperature T here too, or the ratio and the KL are wrong."""
    logp = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    return logp.gather(-1, idx[:, 1:, None]).squeeze(-1)
