"""A local web page where a person ranks a model's samples: InstructGPT's human feedback (step 2).

    python label.py --ckpt out/sft.pt             # open the URL it prints; -> out/rankings.jsonl
    python train_rm.py --data out/rankings.jsonl  # train the reward model on them

The page shows one prompt (labeler.training_prompts(), insult requests among them, or --prompts
file.jsonl) and K sampled responses in random order. The person orders them best..worst and
submits; each ranking becomes one line {"prompt", "responses": [best, ..., worst]} of --out,
appended with a single write under a lock, then flushed and fsync'd: a crash never leaves half a
line and concurrent submissions never interleave. Restarted on the same --out, it continues where
the file ends: prompts not ranked yet come first, and the samples are new ones. --out defaults to
out/, which git ignores like everything the scripts write; the rankings are a person's work, so
copy them elsewhere before clearing out/.
--rate B.pt: a blind comparison instead, one answer from --ckpt and one from B.pt side by side
(K = 2); each line also gets "models": [winner, loser] and the page shows the running win count.
The server is the standard library's, bound to 127.0.0.1 unless --host says otherwise.
"""
import itertools
import json
import os
import random
import secrets
import threading
from collections import Counter
from dataclasses import dataclass

import labeler
from common import POLICY_STAGES, fail, load_model, pick_device
from data import load_prompts, load_rankings, sample_responses
from flags import MAX_SEED, flag, parse_config
from web import answer_text, PageHandler, PageServer

MAX_BODY = 64 * 1024   # a submission is a few dozen bytes; anything this big is not one
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "label.html")


@dataclass
class LabelConfig:
    ckpt: str = flag("out/sft.pt", "the policy checkpoint to sample from")
    # not output=True: --out is appended to, and rankings_in() checks it is a file of rankings
    out: str = flag("", "the JSONL to append to, continued by a restart; empty: out/rankings.jsonl "
                    "(--rate: out/ratings.jsonl)")
    prompts: str = flag("", 'JSONL of {"prompt"} records; empty: labeler.training_prompts()')
    rate: str = flag("", "a second checkpoint: compare --ckpt with it, one answer each, instead of "
                     "ranking --k samples of --ckpt; empty: no comparison")
    k: int = flag(4, "responses per prompt (keys 1..9 pick them)", ge=2, le=9)
    max_new_tokens: int = flag(64, "longest response, in tokens", ge=1)
    temperature: float = flag(1.0, "sampling temperature; 0 (greedy) only with --rate", ge=0)
    top_k: int = flag(0, "sample among the k likeliest tokens only; 0: all of them", ge=0)
    seed: int = flag(0, "the seed of the prompts' order and of the samples", ge=0,
                     le=MAX_SEED)
    host: str = flag("127.0.0.1", "the address to listen on (0.0.0.0: every network)")
    port: int = flag(8000, "the port to listen on; 0 picks a free one", ge=0, le=65535)
    device: str = flag("auto", "auto: cuda, else mps, else cpu",
                       choices=("auto", "cpu", "cuda", "mps"))


class LabelServer(PageServer):
    """Hands out prompts with K responses (from sample(prompt, k) -> list of k strings), checks the
    rankings that come back, and appends them to `out`. `names` (rate mode): which model wrote each
    of the sample's responses. Prompts go in a seeded order, those `out` already ranks least often
    first, so a restart continues with what the last session had not reached."""

    def __init__(self, address, sample, prompts, out, k=4, names=None, seed=0):
        super().__init__(address, Handler, PAGE)
        self.sample, self.out, self.k, self.names = sample, out, k, names
        # the lock guards the prompts drawn, the issued items, the counts and the file
        self.lock = threading.Lock()
        self.count, self.wins, ranked = 0, {n: 0 for n in names or []}, Counter()
        if os.path.isfile(out) and os.path.getsize(out):   # go on from what is already there
            with open(out, "rb") as f:
                lines = [json.loads(line) for line in f.read().splitlines()
                         if line.strip()]
            self.count, ranked = len(lines), Counter(rec.get("prompt") for rec in lines)
            for rec in lines:
                try:
                    self.wins[rec["models"][0]] += 1
                except (KeyError, IndexError, TypeError):   # not a rating of these two models
                    pass
        order = random.Random(seed).sample(list(prompts), len(prompts))
        self.prompts = sorted(order, key=lambda p: ranked[p])   # stable: seeded among equals
        self.rng = random.Random(f"{seed} {self.count}")   # positions: not the last session's
        self.n_drawn, self.issued = 0, {}   # id -> (prompt, shown, source)

    def next_item(self):
        """A new prompt with K distinct responses, shown in random order, under a fresh id."""
        for _ in range(10):   # identical responses cannot be ranked: try the next prompt
            with self.lock:
                prompt = self.prompts[self.n_drawn % len(self.prompts)]
                self.n_drawn += 1
            responses = list(self.sample(prompt, self.k))
            if len(responses) == self.k and len(set(responses)) == self.k:
                break
        else:
            raise RuntimeError("the sampler keeps giving identical responses "
                               "(try a higher --temperature)")
        with self.lock:
            source = self.rng.sample(range(self.k), self.k)   # position on the page says nothing
            item_id = secrets.token_hex(8)
            self.issued[item_id] = (prompt, [responses[i] for i in source], source)
            while len(self.issued) > 1000:   # pages opened and left: forget the oldest
                del self.issued[next(iter(self.issued))]
            return {"id": item_id, "prompt": prompt, "responses": self.issued[item_id][1],
                    "count": self.count, "wins": dict(self.wins)}

    def submit(self, body):
        """Check {"id": ..., "ranking": [indices of the shown responses, best first]} and append it.
        Returns (HTTP status, reply)."""
        try:
            msg = json.loads(body)
        except (ValueError, RecursionError):   # UnicodeDecodeError is a ValueError
            return 400, {"error": "the body is not JSON"}
        if not (isinstance(msg, dict) and isinstance(msg.get("id"), str)
                and isinstance(msg.get("ranking"), list)):
            return 400, {"error": 'expected {"id": "...", "ranking": [best, ..., worst]}'}
        ranking = msg["ranking"]
        with self.lock:
            if msg["id"] not in self.issued:
                return 404, {"error": "unknown prompt id (never issued, or already ranked)"}
            prompt, shown, source = self.issued[msg["id"]]
            ints = all(type(i) is int for i in ranking)
            if not ints or sorted(ranking) != list(range(len(shown))):
                return 400, {"error": f"the ranking must hold each index 0..{len(shown) - 1} "
                                      "exactly once"}
            record = {"prompt": prompt, "responses": [shown[i] for i in ranking]}
            if self.names:
                record["models"] = [self.names[source[i]] for i in ranking]
            try:
                append_line(self.out, json.dumps(record, ensure_ascii=False))
            except OSError as e:   # nothing was written (append_line): the person may try again
                return 500, {"error": f"not saved: {e}"}
            del self.issued[msg["id"]]
            self.count += 1
            if self.names:
                self.wins[record["models"][0]] += 1
            return 200, {"count": self.count, "wins": dict(self.wins)}


def append_line(path, line):
    """One whole line with one write() on an O_APPEND file, then fsync. A short write (disk full) is
    cut off again, so the file only ever holds complete lines."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if os.write(fd, data) != len(data):
            os.ftruncate(fd, size)
            raise OSError(f"{path}: short write (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


class Handler(PageHandler):
    def do_GET(self):
        if self.path == "/":
            return self.reply(200, self.server.page, "text/html; charset=utf-8")
        if self.path == "/api/next":
            return self.reply(*self.safely(self.server.next_item))
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/api/submit":
            return self.reply(404, {"error": "not found"})
        body, error = self.read_body(MAX_BODY)
        if error:
            return self.reply(error[0], {"error": error[1]})
        status, reply = self.server.submit(body)
        if status == 200:   # saved; the next prompt comes with the answer (or the page asks)
            code, item = self.safely(self.server.next_item)
            reply["next"] = item if code == 200 else None
        self.reply(status, reply)

    def safely(self, make):
        """(200, make()), or (500, the error) when the sampler fails: the page says so, we go on."""
        try:
            return 200, make()
        except Exception as e:
            return 500, {"error": f"{type(e).__name__}: {e}"}


def model_sampler(path, option, cfg, device):
    """sample(prompt, k, seed): k responses of the checkpoint at `path` (given as `option`)."""
    model, tok, _ = load_model(path, POLICY_STAGES, device, flag=option)
    lock = threading.Lock()

    def sample(prompt, k, seed):
        with lock:   # the server's threads share one model
            ids = sample_responses(model, tok, [prompt] * k, cfg.max_new_tokens, cfg.temperature,
                                   cfg.top_k or None, seed=seed, device=device)
        return [answer_text(tok, r) for r in ids]   # no special tokens, no control characters
    return sample


def server_sampler(cfg, done, device):
    """(sample(prompt, k), names) for LabelServer: K samples of --ckpt, or with --rate one answer of
    each model (names: the two checkpoints; None without --rate). done: the lines --out holds."""
    models, names = [model_sampler(cfg.ckpt, "--ckpt", cfg, device)], None
    if cfg.rate:   # one answer from each model; the server shuffles them on the page
        models.append(model_sampler(cfg.rate, "--rate", cfg, device))
        names = [cfg.ckpt, cfg.rate]
    # Every generation takes the next seed of one stream: the two models of --rate must not share a
    # seed (two similar checkpoints would answer alike), and the stream depends on how long --out
    # already is, so that a restart shows new samples instead of the last session's.
    seeds = itertools.count(random.Random(f"{cfg.seed} {done}").getrandbits(32))
    lock = threading.Lock()

    def sample(prompt, k):
        with lock:   # the server's threads share the models and the seeds
            if len(models) == 1:
                return models[0](prompt, k, next(seeds))
            return [m(prompt, 1, next(seeds))[0] for m in models]
    return sample, names


def rankings_in(out):
    """How many rankings --out already holds; fail() unless it is a file label.py may append to and
    train_rm.py can read (JSON Lines, the last line whole)."""
    if os.path.isdir(out):
        fail(f"--out {out}: is a folder, expected a .jsonl file")
    if not (os.path.isfile(out) and os.path.getsize(out)):
        return 0
    done = load_rankings(out)
    with open(out, "rb") as f:
        text = f.read()
    if text.lstrip().startswith(b"["):
        fail(f"--out {out}: is one JSON array, and label.py appends JSON Lines; give another --out")
    if not text.endswith(b"\n"):
        fail(f"--out {out}: the last line has no newline; fix or move the file first")
    return len(done)


def main(argv=None):
    # 1. the flags, the prompts, and the file the rankings are appended to
    cfg = parse_config(LabelConfig, __doc__, argv)
    if cfg.temperature == 0 and not cfg.rate:
        fail("--temperature 0 (greedy) would give K identical responses; use a temperature > 0")
    prompts = load_prompts(cfg.prompts, "--prompts") if cfg.prompts else labeler.training_prompts()
    out = cfg.out or ("out/ratings.jsonl" if cfg.rate else "out/rankings.jsonl")
    done = rankings_in(out)
    # 2. the model(s) to sample from
    sample, names = server_sampler(cfg, done, pick_device(cfg.device))
    # 3. can we write there? Say so now, not at the first submission
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        open(out, "ab").close()
    except OSError as e:
        fail(f"--out {out}: cannot write ({e.strerror})")
    # 4. serve until Ctrl-C
    k = 2 if cfg.rate else cfg.k
    try:
        server = LabelServer((cfg.host, cfg.port), sample, prompts, out, k, names, cfg.seed)
    except OSError as e:
        fail(f"--host {cfg.host} --port {cfg.port}: cannot listen ({e.strerror})")
    host, port = server.server_address[:2]
    print(f"labeling at http://{host}:{port}/  ({len(prompts)} prompts; {out} holds {server.count} "
          f"lines, appending; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    print(f"{server.count} lines in {out}")


if __name__ == "__main__":
    main()
