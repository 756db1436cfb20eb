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

Several people at once: one thread per model generates (Batcher). A request queues a row per
choice, each with its own stop, length, temperature, top_p and random draws, and GPT._decode takes
a waiting row whenever a slot of its batch (--max-batch rows) is free: a request that comes while
others are being answered joins them at the next step (continuous batching), and every client's
stream is fed from its rows as the tokens come. A client that leaves mid-stream frees its rows
(one that waits for a whole answer is only seen to have left when that answer is sent).
It binds 127.0.0.1 unless --host says otherwise.
"""
import json
import os
import queue
import secrets
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass

import torch

from common import POLICY_STAGES, fail, load_model, pick_device
from data import encode_example, encode_prompt
from flags import flag, parse_config
from gpt import Row
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
    device: str = flag("auto", "auto: cuda, else mps, else cpu",
                       choices=("auto", "cpu", "cuda", "mps"))


class ApiError(Exception):
    """A request answered with OpenAI's error object."""

    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Job:
    """One request: n rows of one context, with their settings (seed: None, or the seed of its
    rows' draws). `events` tells the request's thread what its rows write: (choice, text, None,
    None) as the text comes, (choice, text, finish_reason, tokens) at a row's end, or an ApiError.
    cancelled: the client left, its rows stop."""

    def __init__(self, context, n, max_tokens, temperature, top_p, seed):
        self.context, self.n, self.max_tokens = context, n, max_tokens
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.events, self.cancelled, self.going = queue.SimpleQueue(), False, n


class Choice:
    """A row of a Job as the Batcher follows it: its answer's text so far, its token count."""

    def __init__(self, job, index, tok):
        self.job, self.index, self.text, self.count = job, index, AnswerText(tok), 0


class Batcher:
    """The one thread that generates with a model. A request queues a row per choice, and
    GPT._decode takes a waiting row whenever a slot of its batch is free: a request that comes
    while others are being answered joins them at the next step (continuous batching)."""

    def __init__(self, model, tok, max_batch):
        self.model, self.tok, self.max_batch = model, tok, max_batch
        self.generator = torch.Generator()   # the draws of the requests without a seed
        self.generator.seed()
        self.queue, self.cond = deque(), threading.Condition()
        self.pending = set()   # the jobs not answered yet: they fail if generation fails
        threading.Thread(target=self.run, daemon=True).start()

    def submit(self, job):
        """Queue a row per choice with its own random draws (a seeded job's come from its seed,
        so its answers do not depend on the rows beside them). False when too many rows wait."""
        own = job.seed is not None
        with self.cond:
            if len(self.queue) + job.n > MAX_WAITING:
                return False
            generator = torch.Generator().manual_seed(job.seed) if own else self.generator
            # a draw per token a row may write: never more than the context (GPT._decode cuts
            # max_tokens there, and uses no more draws)
            draws = min(job.max_tokens, self.model.config.block_size)
            uniforms = torch.rand(job.n, draws, generator=generator)
            self.queue.extend(Row(job.context, job.max_tokens, job.temperature, job.top_p,
                                  uniforms[i], tag=Choice(job, i, self.tok))
                              for i in range(job.n))
            self.pending.add(job)
            self.cond.notify()
        return True

    def run(self):
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.queue)
            try:
                self.decode()
            except Exception as e:   # a bug, or out of memory: these requests fail, we go on
                traceback.print_exc()
                with self.cond:
                    failed, self.pending = self.pending, set()
                    self.queue.clear()
                for job in failed:
                    job.events.put(ApiError(500, f"generation failed ({type(e).__name__}: {e})",
                                            kind="server_error"))

    def decode(self):
        """Decode until no row is left. A row ends at a special token (stop), at its job's
        max_tokens or where the context ends (length), or when its client has left."""
        steps = self.model._decode(self.queue, self.max_batch,
                                   stop_token=self.tok.special_tokens["<|end|>"])
        for rows, token, _, ended in steps:
            for row, t, last in zip(rows, token.tolist(), ended.tolist()):
                choice, job = row.tag, row.tag.job
                if job.cancelled:
                    row.cancelled = True
                    self.finish(choice, None)
                    continue
                piece = choice.text.push(t)
                if piece is None:   # <|end|>, or another special token: the row stops
                    row.cancelled = True
                    self.finish(choice, "stop")
                    continue
                choice.count += 1
                if piece:
                    job.events.put((choice.index, piece, None, None))
                if last:
                    self.finish(choice, "length")

    def finish(self, choice, reason):
        """Tell the client that a row ended (reason None: its client left, no one to tell)."""
        job = choice.job
        if reason is not None:
            job.events.put((choice.index, choice.text.close(), reason, choice.count))
        job.going -= 1
        if job.going == 0 or job.cancelled:
            with self.cond:
                self.pending.discard(job)


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

    def __init__(self, address, models, api_key="", max_tokens=64, max_n=8, max_batch=32):
        super().__init__(address, Handler, PAGE)
        self.api_key, self.max_tokens, self.max_n = api_key, max_tokens, max_n
        self.models = {}
        for name, (model, tok, ckpt, path) in models.items():
            model.eval()
            self.models[name] = (model, tok, ckpt, path, Batcher(model, tok, max_batch))

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
        model, tok = self.models[name][:2]
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
        job = Job(context, n, max_tokens, float(temperature), float(top_p), seed)
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
                            cfg.max_batch)
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
