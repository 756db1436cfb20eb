"""Deploy your own ChatGPT: a chat page and the OpenAI chat-completions API, for several at once.

    python serve.py                                      # out/ppo.pt (or out/sft.pt) on port 8000
    python serve.py --ckpt out/ppo.pt --ckpt out/sft.pt  # two models, ppo and sft: compare them
    python serve.py --api-key KEY                        # the API then asks for "Bearer KEY"

GET  /                      the chat page (serve.html), at http://127.0.0.1:8000
GET  /v1/models             the loaded checkpoints, each named after its file stem
POST /v1/chat/completions   OpenAI's request and response, for the fields this model can honour:
  model        a name from /v1/models (default: the first --ckpt)
  messages     user and assistant messages, alternating, the last one the user's; each pair is a
               turn of the chat template <|user|>..<|assistant|>..<|end|>, written as ordinary text
               (no one can type a control token). system (and developer) messages are accepted and
               left out: the model never saw one in training. content is a string or a list of
               {"type": "text", "text": ...} parts.
  temperature  0..2, 0 = greedy (default 1);  top_p  (0, 1] (default 1)
  max_tokens   (or max_completion_tokens) per choice (default --max-tokens). An answer also ends
               where the model's context (block_size) ends: larger values are cut to what is left
               there. finish_reason is "length" when an answer was cut, "stop" when the model
               ended it.
  n            1..--max-n choices;  seed  the same request with the same seed gives the same
               answers, in a batch or alone (its rows draw from their own generator)
  stream       server-sent events of "chat.completion.chunk" deltas, then "data: [DONE]";
               stream_options.include_usage adds a last chunk with the usage.
  Other fields are ignored. The context rule is chat.py's (web.fit_context): the newest whole
  turns that leave max_tokens for the answer; usage.dropped_messages counts the older messages
  left out. A last message that alone fills the context is a 400 "context_length_exceeded".
Errors are OpenAI's {"error": {"message", "type", "param", "code"}}: 400 a malformed body or
field, 401 no or a wrong key, 404 an unknown model or path, 411/413 no length or too large a body,
415 not JSON, 429 too many requests waiting, 500 the generation failed (the server goes on).

Several people at once: one thread per model generates (Batcher). The requests waiting for it,
those that came while it was busy or within --gather seconds of each other, run as ONE batch
through GPT._decode: left-padded rows, each with its own stop, length, temperature, top_p and seed,
and every client's stream is fed from its rows as the tokens come. A request that comes during a
batch waits for it to end (static batching: simple, and enough for a few people). A client that
leaves mid-stream frees its rows (one that waits for a whole answer is only seen to have left when
that answer is sent). It binds 127.0.0.1 unless --host says otherwise.
"""
import json
import os
import queue
import secrets
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import torch

from common import POLICY_STAGES, fail, load_model, pick_device
from data import encode_example, encode_prompt
from flags import flag, parse_config
from gpt import GPT
from web import AnswerText, fit_context, PageHandler, PageServer

MAX_BODY = 1 << 20        # a long chat's whole history is a few hundred KB at most
MAX_WAITING = 256         # rows waiting for a model; more requests get a 429
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.html")


@dataclass
class ServeConfig:
    ckpt: tuple = flag((), "a policy checkpoint, named after its file stem; repeat the flag for "
                       "several; none: out/ppo.pt, else out/sft.pt")
    host: str = flag("127.0.0.1", "the address to listen on (0.0.0.0: every network)")
    port: int = flag(8000, "the port to listen on; 0 picks a free one", ge=0, le=65535)
    api_key: str = flag("", "make the API require 'Authorization: Bearer KEY'; empty: no key")
    max_tokens: int = flag(64, "an answer's length when a request sets none", ge=1)
    max_n: int = flag(8, "the most choices (n) one request may ask for; at most --max-batch", ge=1)
    max_batch: int = flag(32, "the most rows in one batch (1: one request at a time)", ge=1)
    gather: float = flag(0.01, "seconds a request waits for others to join its batch", ge=0)
    device: str = flag("auto", "auto: cuda, else mps, else cpu",
                       choices=("auto", "cpu", "cuda", "mps"))


class ApiError(Exception):
    """A request answered with OpenAI's error object."""

    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Job:
    """One request: n rows of one context, with their settings. `events` tells the request's thread
    what its rows write: (choice, text, None, None) as the text comes, (choice, text, finish_reason,
    tokens) at a row's end, or an ApiError. cancelled: the client left, its rows stop."""

    def __init__(self, context, n, max_tokens, temperature, top_p, generator):
        self.context, self.n, self.max_tokens = context, n, max_tokens
        self.temperature, self.top_p, self.generator = temperature, top_p, generator
        self.events, self.cancelled = queue.SimpleQueue(), False


class Batcher:
    """The one thread that generates with a model: it runs every request waiting as one batch."""

    def __init__(self, model, tok, max_batch, gather):
        self.model, self.tok, self.max_batch, self.gather = model, tok, max_batch, gather
        self.device = model.wte.weight.device
        self.generator = torch.Generator(self.device)   # for the requests without a seed
        self.generator.seed()
        self.waiting, self.cond = [], threading.Condition()
        threading.Thread(target=self.run, daemon=True).start()

    def submit(self, job):
        """Queue a job; False when too many rows are already waiting."""
        with self.cond:
            if sum(j.n for j in self.waiting) + job.n > MAX_WAITING:
                return False
            self.waiting.append(job)
            self.cond.notify()
        return True

    def take(self):
        """Wait for a job, then up to `gather` seconds for others; return the oldest that fit in
        max_batch rows."""
        with self.cond:
            self.cond.wait_for(lambda: self.waiting)
            deadline = time.monotonic() + self.gather
            while sum(j.n for j in self.waiting) < self.max_batch and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
            jobs = [self.waiting.pop(0)]   # the first always fits: n <= --max-n <= --max-batch
            rows = jobs[0].n
            while self.waiting and rows + self.waiting[0].n <= self.max_batch:
                rows += self.waiting[0].n
                jobs.append(self.waiting.pop(0))
            return jobs

    def run(self):
        while True:
            jobs = self.take()
            try:
                self.generate(jobs)
            except Exception as e:   # a bug, or out of memory: these requests fail, we go on
                traceback.print_exc()
                message = f"generation failed ({type(e).__name__}: {e})"
                for job in jobs:
                    job.events.put(ApiError(500, message, kind="server_error"))

    def sampler(self, rows):
        """GPT._decode's sample() for these rows: rows that share temperature, top_p and generator
        (a seeded request's own, else the server's) are drawn in one call of GPT._sample."""
        groups = {}
        for r, (job, _) in enumerate(rows):
            generator = self.generator if job.generator is None else job.generator
            groups.setdefault((job.temperature, job.top_p, generator), []).append(r)
        groups = [(key, torch.tensor(rs, device=self.device), rs) for key, rs in groups.items()]

        def sample(logits):
            token = torch.empty(len(logits), dtype=torch.long, device=logits.device)
            logprob = torch.empty(len(logits))
            for (temperature, top_p, generator), index, rs in groups:
                token[index], logprob[rs] = GPT._sample(logits[index], temperature, None, top_p,
                                                        generator)
            return token, logprob
        return sample

    def generate(self, jobs):
        """One batch: a row per choice of each job. A row ends at a special token (stop), at its
        job's max_tokens or where the context ends (length), or when its client has left."""
        rows = [(job, i) for job in jobs for i in range(job.n)]
        texts = [AnswerText(self.tok) for _ in rows]
        counts, going = [0] * len(rows), [True] * len(rows)

        def finish(r, reason):
            job, i = rows[r]
            going[r] = False
            job.events.put((i, texts[r].close(), reason, counts[r]))

        contexts = [job.context for job, _ in rows]
        steps = self.model._decode(contexts, max(job.max_tokens for job in jobs),
                                   stop_token=self.tok.special_tokens["<|end|>"],
                                   sample=self.sampler(rows))
        for token, _, live in steps:
            token, live = token.tolist(), live.tolist()
            for r, (job, i) in enumerate(rows):
                if not going[r]:
                    continue
                if job.cancelled:
                    going[r] = False
                elif not live[r]:   # _decode stopped the row: its sequence filled the context
                    finish(r, "length")
                else:
                    piece = texts[r].push(token[r])
                    if piece is None:
                        finish(r, "stop")
                        continue
                    counts[r] += 1
                    if piece:
                        job.events.put((i, piece, None, None))
                    if counts[r] == job.max_tokens:
                        finish(r, "length")
            if not any(going):
                break
        steps.close()
        for r in range(len(rows)):   # _decode ended all the rows it had left: the context is full
            if going[r]:
                finish(r, "length")


def field(req, name, kind, default, ok=lambda v: True, want=""):
    """req[name] if it is a `kind` (a bool is no number here) for which ok() holds; default if
    absent or null."""
    value = req.get(name)
    if value is None:
        return default
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind) or not ok(value):
        raise ApiError(400, f"'{name}' must be {want}", param=name, code="invalid_value")
    return value


def message_text(content):
    """A message's content: a string, or a list of text parts (what newer clients send)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, "a message's 'content' must be a string or a list of text parts",
                   param="messages")


def turns_of(tok, messages):
    """OpenAI messages -> the chat template's turns (token lists), the last one the new
    <|user|>..<|assistant|>."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    said = []
    for m in messages:
        roles = ("system", "developer", "user", "assistant")
        if not isinstance(m, dict) or m.get("role") not in roles:
            raise ApiError(400, "each message needs a 'role': system, developer, user or assistant",
                           param="messages")
        text = message_text(m.get("content"))
        if m["role"] in ("user", "assistant"):   # system, developer: left out (see the docstring)
            said.append(text)
            if m["role"] != ("user", "assistant")[(len(said) - 1) % 2]:
                raise ApiError(400, "user and assistant messages must alternate, starting with "
                               "the user's", param="messages")
    if len(said) % 2 == 0:
        raise ApiError(400, "the last message must be the user's", param="messages")
    turns = [encode_example(tok, u, a)[0] for u, a in zip(said[0:-1:2], said[1::2])]
    return turns + [encode_prompt(tok, said[-1])]


class ChatServer(PageServer):
    """models: {name: (GPT, Tokenizer, checkpoint dict, path)}, each with its own Batcher."""

    def __init__(self, address, models, api_key="", max_tokens=64, max_n=8, max_batch=32,
                 gather=0.01):
        super().__init__(address, Handler, PAGE)
        self.api_key, self.max_tokens, self.max_n = api_key, max_tokens, max_n
        self.models = {}
        for name, (model, tok, ckpt, path) in models.items():
            model.eval()
            self.models[name] = (model, tok, ckpt, path, Batcher(model, tok, max_batch, gather))

    def model_list(self):
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": int(os.path.getmtime(path)),
             "owned_by": "local", "checkpoint": path, "stage": ckpt["stage"],
             "context_length": model.config.block_size}
            for name, (model, _, ckpt, path, _) in self.models.items()]}

    def job_for(self, req):
        """Check a chat-completions request: (model name, Job, prompt tokens, messages left out)."""
        if not isinstance(req, dict):
            raise ApiError(400, "the body must be a JSON object")
        name = field(req, "model", str, next(iter(self.models)), want="a string")
        if name not in self.models:
            raise ApiError(404, f"the model '{name}' does not exist; this server has: "
                           f"{', '.join(self.models)}", param="model", code="model_not_found")
        model, tok, _, _, batcher = self.models[name]
        number, positive = (int, float), lambda v: v >= 1
        temperature = field(req, "temperature", number, 1.0, lambda v: 0 <= v <= 2,
                            "a number from 0 to 2")
        top_p = field(req, "top_p", number, 1.0, lambda v: 0 < v <= 1, "a number in (0, 1]")
        max_tokens = field(req, "max_completion_tokens", int, None, positive, "a positive integer")
        max_tokens = max_tokens or field(req, "max_tokens", int, self.max_tokens, positive,
                                         "a positive integer")
        n = field(req, "n", int, 1, lambda v: 1 <= v <= self.max_n,
                  f"an integer from 1 to {self.max_n}")
        seed = field(req, "seed", int, None, lambda v: -2 ** 63 <= v < 2 ** 64, "a 64-bit integer")
        block = model.config.block_size
        context, dropped = fit_context(turns_of(tok, req.get("messages")), block, max_tokens)
        if context is None:
            raise ApiError(400, f"this model's context is {block} tokens, and the last message "
                           "alone fills it", param="messages", code="context_length_exceeded")
        generator = None if seed is None else torch.Generator(batcher.device).manual_seed(seed)
        job = Job(context, n, max_tokens, float(temperature), float(top_p), generator)
        return name, job, len(context), 2 * dropped


class Handler(PageHandler):
    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/":
            return self.reply(200, self.server.page, "text/html; charset=utf-8")
        self.api(lambda: self.server.model_list() if path == "/v1/models" else self.not_found())

    def do_POST(self):
        # the body first: a reply sent over an unread body can reach the client as a reset
        body = self.read_body(MAX_BODY)
        is_chat = self.path.split("?")[0] == "/v1/chat/completions"
        self.api(lambda: self.chat(*body) if is_chat else self.not_found())

    def not_found(self):
        raise ApiError(404, f"no such path: {self.command} {self.path}", code="not_found")

    def api(self, handle):
        """Check the key, run handle(), send its reply (None: it has answered) or its ApiError."""
        try:
            key, given = self.server.api_key, self.headers.get("Authorization", "")
            if key and not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
                raise ApiError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                               code="invalid_api_key")
            reply = handle()
            if reply is not None:
                self.reply(200, reply)
        except ApiError as e:
            self.reply(e.status, e.body)

    def chat(self, body, error):
        if error:
            raise ApiError(*error)
        try:
            req = json.loads(body)
        except (ValueError, RecursionError):   # UnicodeDecodeError is a ValueError
            raise ApiError(400, "the body is not valid JSON") from None
        name, job, prompt_tokens, dropped = self.server.job_for(req)
        stream = field(req, "stream", bool, False, want="true or false")
        options = field(req, "stream_options", dict, {}, want="an object")
        if not self.server.models[name][4].submit(job):
            raise ApiError(429, "too many requests are waiting; try again soon",
                           kind="rate_limit_error")
        head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()),
                "model": name}
        usage = lambda tokens: {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                                "total_tokens": prompt_tokens + tokens, "dropped_messages": dropped}
        if stream:
            return self.stream(job, head, usage if options.get("include_usage") is True else None)
        texts, reasons, tokens = [""] * job.n, [None] * job.n, 0
        try:
            while None in reasons:
                event = job.events.get()
                if isinstance(event, ApiError):
                    raise event
                i, text, reasons[i], count = event
                texts[i] += text
                tokens += count or 0
        finally:
            job.cancelled = True   # done, or the batch failed: nothing more to feed
        choices = [{"index": i, "message": {"role": "assistant", "content": text},
                    "finish_reason": reason, "logprobs": None}
                   for i, (text, reason) in enumerate(zip(texts, reasons))]
        return {**head, "object": "chat.completion", "choices": choices, "usage": usage(tokens)}

    def stream(self, job, head, usage):
        """Server-sent events: a chunk per piece of text as it comes (what waits: one write)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        event = lambda obj: b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
        kind = {**head, "object": "chat.completion.chunk"}
        chunk = lambda i, delta, reason=None: event({**kind, "choices": [
            {"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}]})
        going, tokens = job.n, 0
        try:
            self.wfile.write(b"".join(chunk(i, {"role": "assistant", "content": ""})
                                      for i in range(job.n)))
            while going:
                events, out = [job.events.get()], []
                while not job.events.empty():
                    events.append(job.events.get())
                for e in events:
                    if isinstance(e, ApiError):   # the status line is sent: the error is an event
                        self.wfile.write(event(e.body))
                        return
                    i, text, reason, count = e
                    if text:
                        out.append(chunk(i, {"content": text}))
                    if reason:
                        out.append(chunk(i, {}, reason))
                        going, tokens = going - 1, tokens + count
                self.wfile.write(b"".join(out))
            if usage:
                self.wfile.write(event({**kind, "choices": [], "usage": usage(tokens)}))
            self.wfile.write(b"data: [DONE]\n\n")
        except (ConnectionError, TimeoutError):   # the client left: its rows stop, nothing to print
            pass
        finally:
            job.cancelled = True


def load_models(paths, device):
    """{name: (GPT, Tokenizer, checkpoint dict, path)} of the --ckpt paths, named by file stem."""
    models = {}
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        if name in models:
            fail(f"--ckpt {path}: a model is already named {name!r} (models are named after their "
                 f"file stem)")
        models[name] = (*load_model(path, POLICY_STAGES, device, flag="--ckpt"), path)
    return models


def main(argv=None):
    # 1. the flags, and the one relation between them that a range cannot say
    cfg = parse_config(ServeConfig, __doc__, argv)
    if cfg.max_n > cfg.max_batch:
        fail(f"--max-n {cfg.max_n}: cannot be over --max-batch {cfg.max_batch}")
    # 2. the models
    default = "out/ppo.pt" if os.path.exists("out/ppo.pt") else "out/sft.pt"
    models = load_models(cfg.ckpt or [default], pick_device(cfg.device))
    # 3. listen, warn when other machines can reach the models, and serve until Ctrl-C
    try:
        server = ChatServer((cfg.host, cfg.port), models, cfg.api_key, cfg.max_tokens, cfg.max_n,
                            cfg.max_batch, cfg.gather)
    except OSError as e:
        fail(f"--host {cfg.host} --port {cfg.port}: cannot listen ({e.strerror})")
    host, port = server.server_address[:2]
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {cfg.host}: anyone who can reach this machine can use the models"
              f"{'' if cfg.api_key else ' (--api-key KEY asks for a key)'}", file=sys.stderr)
    print(f"serving {', '.join(models)} at http://{host}:{port}/  (API: http://{host}:{port}/v1; "
          f"Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()
