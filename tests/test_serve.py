"""serve.py: the OpenAI API through the official `openai` client and raw HTTP, its errors, the shared context rule,
clean streamed text, 16 clients at once (some leaving mid-stream), and the command line. Tiny random checkpoints:
what is checked is that the server gives exactly what the model generates, not that the text is good."""
import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import torch

from conftest import ROOT, make_checkpoint, reset_connection

import serve
from common import load_model
from data import encode_example, encode_prompt
from web import answer_text, fit_context
from gpt import GPT

PROMPT = "Write a cheerful sentence about the economy."


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny_tok):   # block_size 64; scale 10: answers that depend on the prompt
    folder = tmp_path_factory.mktemp("serve")
    return {"ppo": make_checkpoint(folder / "ppo.pt", "ppo", tiny_tok, scale=10),
            "sft": make_checkpoint(folder / "sft.pt", "sft", tiny_tok, seed=1, scale=10)}


def start(ckpts, **kwargs):
    models = {name: (*load_model(path), path) for name, path in ckpts.items()}
    srv = serve.ChatServer(("127.0.0.1", 0), models, **kwargs)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    return srv


@pytest.fixture(scope="module")
def server(ckpts):
    srv = start(ckpts)
    yield srv
    srv.shutdown()
    srv.server_close()


def client(srv, key="none"):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=60)


def greedy(path, context, max_tokens):
    """What the model itself says at temperature 0 after `context`: (text, tokens, finish_reason)."""
    model, tok, _ = load_model(path)
    model.eval()
    out = model.generate([context], max_tokens, temperature=0, stop_token=tok.special_tokens["<|end|>"])[0][0]
    specials = set(tok.special_tokens.values())
    n = next((i for i, t in enumerate(out) if t in specials), len(out))
    return answer_text(tok, out), n, "stop" if n < len(out) else "length"


def post(url, body, headers=None):
    """(status, parsed reply) of a raw POST; body: bytes, or anything else to send as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_openai_client_plain_streamed_n_and_models(server, ckpts, tiny_tok):
    api = client(server)
    models = api.models.list().data
    assert [m.id for m in models] == ["ppo", "sft"] and models[1].context_length == 64
    assert models[1].checkpoint == ckpts["sft"] and models[1].stage == "sft"
    messages = [{"role": "user", "content": PROMPT}]
    text, tokens, finish = greedy(ckpts["sft"], encode_prompt(tiny_tok, PROMPT), 20)
    assert text   # the test means something: the model says something here

    r = api.chat.completions.create(model="sft", messages=messages, temperature=0, max_tokens=20)
    assert r.object == "chat.completion" and r.model == "sft" and len(r.choices) == 1
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == text
    assert r.choices[0].finish_reason == finish
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(encode_prompt(tiny_tok, PROMPT)), tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + tokens

    chunks = list(api.chat.completions.create(model="sft", messages=messages, temperature=0, max_tokens=20,
                                              stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [finish]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1    # it came in pieces
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == tokens

    ask = lambda seed: api.chat.completions.create(model="ppo", messages=messages, n=2, seed=seed, max_tokens=16)
    a, b, c = ask(7), ask(7), ask(8)
    answers = lambda r: [ch.message.content for ch in sorted(r.choices, key=lambda ch: ch.index)]
    assert [ch.index for ch in a.choices] == [0, 1] and answers(a)[0] != answers(a)[1]
    assert answers(a) == answers(b) != answers(c)        # the seed fixes the samples
    assert a.usage.completion_tokens >= 2


def test_a_seeded_request_gives_the_same_answers_in_a_batch(ckpts, recorded):
    """Its rows draw from their own random draws, whatever else is in the batch: alone, and in steps
    shared with four other requests (other prompts, temperatures and top_p), it gets the same answers."""
    steps, delay = recorded
    delay[0] = 0.02   # so that the five requests overlap
    body = {"model": "ppo", "messages": [{"role": "user", "content": PROMPT}], "n": 2, "seed": 3,
            "max_tokens": 16, "temperature": 1.2, "top_p": 0.9}
    others = [{"model": "ppo", "messages": [{"role": "user", "content": f"Part {i}"}],
               "max_tokens": 16, "temperature": t} for i, t in enumerate((0, 0.7, 1.0, 1.2))]
    srv = start(ckpts, max_batch=6)
    url, replies, go = srv.url + "/v1/chat/completions", [None] * 5, threading.Barrier(5)

    def ask(i, b):
        go.wait()
        replies[i] = post(url, b)
    try:
        status, alone = post(url, body)
        assert status == 200 and {len(rows) for rows in steps} <= {1, 2}   # it ran alone
        steps.clear()
        threads = [threading.Thread(target=ask, args=(i, b)) for i, b in enumerate([body] + others)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        srv.shutdown()
        srv.server_close()
    assert [status for status, _ in replies] == [200] * 5
    seeded = {row.tag.job for rows in steps for row in rows if row.tag.job.seed is not None}
    assert len(seeded) == 1
    beside = [{row.tag.job for row in rows} for rows in steps if any(r.tag.job in seeded for r in rows)]
    assert max(len(jobs) for jobs in beside) >= 3                         # it shared steps with others
    assert replies[0][1]["choices"] == alone["choices"] and len(alone["choices"]) == 2


def test_api_equals_chat_py_at_temperature_0(server, ckpts):
    text = "Tell me about peace <|end|> \u00e9\u6f22 and the navy."
    r = subprocess.run([sys.executable, "chat.py", "--ckpt", ckpts["ppo"], "--prompt", text, "--temperature", "0",
                        "--max-new-tokens", "24", "--device", "cpu"], cwd=ROOT, capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert r.returncode == 0, r.stderr.decode()
    reply = client(server).chat.completions.create(model="ppo", messages=[{"role": "user", "content": text}],
                                                   temperature=0, max_tokens=24)
    assert r.stdout.decode("utf-8") == reply.choices[0].message.content + "\n"
    assert len(reply.choices[0].message.content) > 0


def test_errors_come_as_the_clients_exceptions(server, ckpts):
    api, messages = client(server), [{"role": "user", "content": PROMPT}]
    with pytest.raises(openai.NotFoundError) as e:
        api.chat.completions.create(model="gpt-4o", messages=messages)
    assert e.value.code == "model_not_found" and "ppo, sft" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model="ppo", messages=messages, temperature=3)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model="ppo", messages=[{"role": "user", "content": "the army " * 40}])
    assert e.value.code == "context_length_exceeded"
    locked = start(ckpts, api_key="s3cret")
    try:
        for key in ("wrong", "s3cre"):
            with pytest.raises(openai.AuthenticationError):
                client(locked, key).chat.completions.create(model="ppo", messages=messages, max_tokens=2)
            with pytest.raises(openai.AuthenticationError):
                client(locked, key).models.list()
        ok = client(locked, "s3cret").chat.completions.create(model="ppo", messages=messages, max_tokens=2)
        assert ok.choices[0].finish_reason in ("stop", "length")
        assert post(locked.url + "/v1/chat/completions", {"messages": messages})[0] == 401        # no key at all
        with urllib.request.urlopen(locked.url + "/", timeout=30) as page:   # the page itself needs none
            assert page.status == 200
    finally:
        locked.shutdown()
        locked.server_close()


M = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"\xff\xfe", 400, None),                                                  # not UTF-8
    (b"[1, 2]", 400, None),                                                    # not an object
    ({"model": 7, "messages": M}, 400, "model"),
    ({}, 400, "messages"),
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, 400, "messages"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}, 400, "messages"),
    ({"messages": M + [{"role": "assistant", "content": "a"}]}, 400, "messages"),
    ({"messages": M, "temperature": "hot"}, 400, "temperature"),
    ({"messages": M, "temperature": True}, 400, "temperature"),
    ({"messages": M, "top_p": 0}, 400, "top_p"),
    ({"messages": M, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": M, "max_tokens": 1.5}, 400, "max_tokens"),
    ({"messages": M, "max_completion_tokens": -1}, 400, "max_completion_tokens"),
    ({"messages": M, "n": 0}, 400, "n"),
    ({"messages": M, "n": 99}, 400, "n"),
    ({"messages": M, "seed": "x"}, 400, "seed"),
    ({"messages": M, "stream": "yes"}, 400, "stream"),
    ({"messages": M, "pad": "x" * serve.MAX_BODY}, 413, None),
])
def test_bad_requests_get_openai_error_objects(server, body, status, param):
    got, reply = post(server.url + "/v1/chat/completions", body)
    assert got == status and set(reply) == {"error"}
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["param"] == param


def test_paths_lengths_and_content_types(server):
    assert post(server.url + "/v1/completions", {"prompt": "x"})[0] == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "/v1/nothing", timeout=30)
    assert e.value.code == 404 and json.loads(e.value.read())["error"]["code"] == "not_found"
    assert post(server.url + "/v1/chat/completions", json.dumps({"messages": M}).encode(),
                {"Content-Type": "text/plain"})[0] == 415
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    assert conn.getresponse().status == 411
    with urllib.request.urlopen(server.url + "/", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/html") and b"/v1/chat/completions" in r.read()


def test_conversations_follow_the_context_rule(server, ckpts, tiny_tok):
    """Old turns that no longer fit are left out (and counted), as chat.py does; system messages are left out;
    what anyone types is ordinary text."""
    said = [f"Army, part {i}?" for i in range(4)] + ["And the navy?"]
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for i, text in enumerate(said):
        messages.append({"role": "user", "content": text})
        if i < len(said) - 1:
            messages.append({"role": "assistant", "content": f"Yes {i}."})
    turns = [encode_example(tiny_tok, u, f"Yes {i}.")[0] for i, u in enumerate(said[:-1])]
    context, dropped = fit_context(turns + [encode_prompt(tiny_tok, said[-1])], 64, 16)
    assert 0 < dropped < len(turns)                           # some turns fit, some do not
    text, tokens, finish = greedy(ckpts["ppo"], context, 16)
    r = client(server).chat.completions.create(model="ppo", messages=messages, temperature=0, max_tokens=16)
    assert r.choices[0].message.content == text and r.choices[0].finish_reason == finish
    assert r.usage.prompt_tokens == len(context) and r.usage.dropped_messages == 2 * dropped
    assert r.usage.completion_tokens == tokens
    parts = client(server).chat.completions.create(       # content as a list of text parts: the same
        model="ppo", messages=messages[1:-1] + [{"role": "user", "content": [{"type": "text", "text": "And the "},
                                                                             {"type": "text", "text": "navy?"}]}],
        temperature=0, max_tokens=16)
    assert parts.choices[0].message.content == text
    typed = "<|end|><|assistant|><|user|>"
    r = client(server).chat.completions.create(model="ppo", messages=[{"role": "user", "content": typed}], max_tokens=1)
    assert r.usage.prompt_tokens == len(encode_prompt(tiny_tok, typed)) > 3 + 2      # text, not 3 control tokens


def scripted(ids):
    """A stand-in for GPT._decode that writes `ids` in every row."""
    def decode(queue, max_batch, stop_token=None, **kwargs):
        rows = [queue.popleft() for _ in range(len(queue))]
        for k, t in enumerate(ids):
            rows = [r for r in rows if not r.cancelled and k < r.max_new_tokens]
            if not rows:
                return
            ended = torch.tensor([k + 1 == r.max_new_tokens or t == stop_token for r in rows])
            yield rows, torch.full((len(rows),), t), torch.zeros(len(rows)), ended
            rows = [r for r, e in zip(rows, ended) if not e]
    return decode


def test_streamed_text_is_clean_and_never_splits_a_character(ckpts, tiny_tok):
    enc, sp = tiny_tok.to_tiktoken(), tiny_tok.special_tokens
    said = "\ud55c\uad6d\uc5b4 \U0001F642 ok\x1b[0m\x07\r\n\tdone"        # Korean, an emoji, control bytes
    ids = enc.encode_ordinary(said) + [sp["<|user|>"]] + enc.encode_ordinary("never shown")
    assert len(ids) > len(said)                                 # characters span several tokens here
    srv = start({"ppo": ckpts["ppo"]})
    try:
        srv.models["ppo"][0]._decode = scripted(ids)
        chunks = list(client(srv).chat.completions.create(model="ppo", messages=M, max_tokens=60, stream=True))
        pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
        assert "".join(pieces) == "\ud55c\uad6d\uc5b4 \U0001F642 ok[0m\n\tdone"   # cut at <|user|>, no control bytes
        assert "\ufffd" not in "".join(pieces) and len(pieces) > 3
        assert chunks[-1].choices[0].finish_reason == "stop"
        whole = client(srv).chat.completions.create(model="ppo", messages=M, max_tokens=60)
        assert whole.choices[0].message.content == "".join(pieces) and whole.usage.completion_tokens == len(enc.encode_ordinary(said))
    finally:
        srv.shutdown()
        srv.server_close()


def read_stream(port, body, leave_after=None):
    """Stream a request over a raw socket. Returns (text per choice, finish per choice, saw [DONE]); with
    leave_after=k, reset the connection after the k-th content delta and return None."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    f = sock.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.0 200")
    while f.readline() not in (b"\r\n", b""):   # headers
        pass
    texts, finish, done, deltas = {}, {}, False, 0
    for line in f:
        if not line.strip():
            continue
        assert line.startswith(b"data: ") and line.endswith(b"\n"), line
        if line == b"data: [DONE]\n":
            done = True
            continue
        for choice in json.loads(line[6:])["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["delta"].get("content", "")
            finish[choice["index"]] = choice["finish_reason"] or finish.get(choice["index"])
            deltas += bool(choice["delta"].get("content"))
        if leave_after is not None and deltas >= leave_after:
            reset_connection(sock)
            return None
    sock.close()
    return texts, finish, done


@pytest.fixture
def recorded(monkeypatch):
    """Record each step GPT._decode takes, as the list of rows that drew a token in it; a step takes at
    least `delay` seconds."""
    steps, decode, delay = [], GPT._decode, [0.0]

    def recording(self, *args, **kwargs):
        for step in decode(self, *args, **kwargs):
            steps.append(list(step[0]))
            time.sleep(delay[0])
            yield step
    monkeypatch.setattr(GPT, "_decode", recording)
    return steps, delay


def test_16_clients_at_once_some_leaving(ckpts, tiny_tok, recorded, capsys):
    """16 streams start together and share the batch's steps; 4 clients drop mid-stream; the 12 others get exactly
    what the model says for their prompt, well-formed to the end, and the server stays up."""
    steps, delay = recorded
    delay[0] = 0.01   # so that the leaving clients leave while the batch still runs
    prompts = [f"Tell me about the army, part {i}." for i in range(16)]
    want = [greedy(ckpts["sft"], encode_prompt(tiny_tok, p), 24) for p in prompts]
    assert len({text for text, _, _ in want}) > 8 and {finish for _, _, finish in want} == {"stop", "length"}
    steps.clear()
    srv = start(ckpts, max_batch=16)
    results, go = [None] * 16, threading.Barrier(16)

    def one(i):
        go.wait()
        body = {"model": "sft", "messages": [{"role": "user", "content": prompts[i]}], "temperature": 0,
                "max_tokens": 24, "stream": True}
        results[i] = read_stream(srv.server_address[1], body, leave_after=1 if i % 4 == 3 else None)
    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i, (text, _, finish) in enumerate(want):
            if i % 4 != 3:
                assert results[i] == ({0: text}, {0: finish}, True), i
        assert max(len({row.tag.job for row in rows}) for rows in steps) >= 12   # they ran together
        status, reply = post(srv.url + "/v1/chat/completions", {"messages": M, "max_tokens": 3})
        assert status == 200 and reply["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        srv.shutdown()
        srv.server_close()
    assert "Traceback" not in capsys.readouterr().err


def test_a_client_that_leaves_frees_its_rows(ckpts, tiny_tok, recorded, capsys):
    steps, delay = recorded
    delay[0] = 0.02
    text, tokens, _ = greedy(ckpts["ppo"], encode_prompt(tiny_tok, PROMPT), 30)
    assert tokens == 30                                                  # alone, it would write 30 tokens
    steps.clear()
    srv = start(ckpts)
    try:
        body = {"model": "ppo", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
                "max_tokens": 30, "stream": True}
        assert read_stream(srv.server_address[1], body, leave_after=1) is None
        time.sleep(0.5)
        assert 0 < len(steps) < 15                                       # its row stopped soon after
        assert read_stream(srv.server_address[1], body)[0] == {0: text}  # and the next one is whole
    finally:
        srv.shutdown()
        srv.server_close()
    assert "Traceback" not in capsys.readouterr().err


def first_line(proc, timeout=60):
    """The first line a server started with Popen prints; if none comes within timeout seconds (or
    it ends first), its stderr instead, once it is killed: for the assertion's message."""
    if select.select([proc.stdout], [], [], timeout)[0]:
        line = proc.stdout.readline()
        if line:
            return line
    proc.kill()
    return proc.stderr.read()


def test_command_line(ckpts):
    proc = subprocess.Popen([sys.executable, "serve.py", "--ckpt", ckpts["ppo"], "--ckpt", ckpts["sft"], "--port", "0",
                             "--host", "0.0.0.0", "--device", "cpu"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = first_line(proc)
        assert line.startswith("serving ppo, sft at http://0.0.0.0:"), line
        port = int(line.split()[4].rsplit(":", 1)[1].strip("/"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as r:
            assert [m["id"] for m in json.loads(r.read())["data"]] == ["ppo", "sft"]
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert "warning: --host 0.0.0.0: anyone who can reach this machine can use the models" in proc.stderr.read()


@pytest.mark.parametrize("flags, error", [
    (["--ckpt", "{ppo}", "--ckpt", "{tmp}/ppo.pt"], "--ckpt .*/ppo.pt: a model is already named 'ppo'"),
    (["--max-n", "9", "--max-batch", "4"], "--max-n 9: cannot be over --max-batch 4"),
    (["--max-tokens", "0"], "--max-tokens 0: must be >= 1"),
    (["--max-batch", "0"], "--max-batch 0: must be >= 1"),
    (["--port", "70000"], "--port 70000: must be in \\[0, 65535\\]"),
    (["--max-n", "0"], "--max-n 0: must be >= 1"),
    (["--ckpt", "{tmp}/rm.pt"], "--ckpt .*rm.pt: is a 'rm' checkpoint"),
    (["--ckpt", "{tmp}/none.pt"], "--ckpt .*none.pt: no such file"),
])
def test_bad_flags_are_one_error_line(ckpts, tiny_tok, tmp_path, flags, error):
    make_checkpoint(tmp_path / "ppo.pt", "ppo", tiny_tok)
    make_checkpoint(tmp_path / "rm.pt", "rm", tiny_tok)
    flags = [f.format(tmp=tmp_path, ppo=ckpts["ppo"]) for f in flags]
    with pytest.raises(SystemExit, match="^error: " + error):
        serve.main(["--port", "0", "--device", "cpu"] + (flags if "--ckpt" in flags else ["--ckpt", ckpts["ppo"]] + flags))


def wait_for(done, timeout=30):
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_too_many_waiting_rows_get_a_429(ckpts, recorded, monkeypatch):
    steps, delay = recorded
    delay[0] = 0.05
    monkeypatch.setattr(serve, "MAX_WAITING", 2)
    srv = start(ckpts, max_batch=1)   # one row at a time: the others wait
    replies = []
    ask = lambda body: replies.append(post(srv.url + "/v1/chat/completions", body))
    try:
        running = threading.Thread(target=ask, args=({"messages": M, "max_tokens": 30, "temperature": 0},))
        running.start()
        wait_for(lambda: steps)                                       # it runs (30 steps of 50 ms)
        waiting = threading.Thread(target=ask, args=({"messages": M, "max_tokens": 2, "n": 2},))
        waiting.start()
        wait_for(lambda: len(srv.models["ppo"][4].queue) == 2)        # two rows wait: the most allowed
        with pytest.raises(openai.RateLimitError):
            client(srv).chat.completions.create(model="ppo", messages=M, max_tokens=2)
        running.join(60)
        waiting.join(60)
        assert [status for status, _ in replies] == [200, 200]
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_request_joins_the_running_batch(ckpts, recorded):
    """A request that comes while another is being answered starts at the next step, beside it, and is
    answered before it ends (continuous batching); its answer is the one it gets alone."""
    steps, delay = recorded
    delay[0] = 0.05
    srv = start(ckpts)
    url, replies = srv.url + "/v1/chat/completions", []
    long = {"model": "ppo", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 30, "temperature": 0}
    short = {"model": "ppo", "messages": M, "max_tokens": 3, "temperature": 0}
    try:
        status, alone = post(url, short)
        assert status == 200
        steps.clear()
        running = threading.Thread(target=lambda: replies.append(post(url, long)))
        running.start()
        wait_for(lambda: len(steps) >= 3)                            # the long answer is under way
        came = len(steps)
        status, joined = post(url, short)
        assert status == 200 and running.is_alive()                  # answered while the other goes on
        running.join(60)
        assert replies[0][0] == 200 and replies[0][1]["usage"]["completion_tokens"] == 30
    finally:
        srv.shutdown()
        srv.server_close()
    first = next(i for i, rows in enumerate(steps) if len({row.tag.job for row in rows}) == 2)
    assert came <= first <= came + 2                                 # it joined at once, beside the long one
    assert joined["choices"][0]["message"] == alone["choices"][0]["message"]


def test_a_huge_max_tokens_is_cut_to_the_context(server):
    """max_tokens is a cap: a request may ask for 10**12 tokens and gets what the context holds, without the server
    drawing (or storing) a random number per token asked for."""
    status, reply = post(server.url + "/v1/chat/completions", {"model": "ppo", "messages": M, "max_tokens": 10 ** 12,
                                                              "n": 8, "temperature": 1.5})
    block = server.models["ppo"][0].config.block_size
    assert status == 200 and len(reply["choices"]) == 8
    assert 0 < reply["usage"]["completion_tokens"] <= 8 * block
