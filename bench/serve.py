"""Benchmark serve.py: total tokens/s and time to first token (TTFT) at 1, 4 and 16 concurrent clients, batched
(serve.py's default) against serving the same requests one at a time (--max-batch 1), in the same run; with
--baseline DIR, also the batched server of another checkout (e.g. `git worktree add /tmp/old eb12b1e`).

Both servers run as their own processes (python serve.py ...) on one checkpoint: --ckpt, or by default a random
model of the default pretraining config (train_pretrain.PretrainConfig: 4 layers, d256, rotary, SwiGLU, block 256)
with a 2,048-token BPE trained on the first MB of the corpus. Random weights cost what trained ones cost; they
seldom write <|end|>, so most answers run to --max-tokens. Each client streams --requests requests one after
another (the labeler's task prompts, temperature 1); tokens/s = all the answers' tokens / wall time, TTFT = from
sending a request to its first piece of text. With --arrival S each client waits a random 0..S seconds before
each request, so that requests come at random times rather than all at once. The servers take turns, so a busy
machine slows them alike.

    python bench/serve.py
    python bench/serve.py --clients 1 16 --arrival 0.5 --baseline /tmp/old
    python bench/serve.py --ckpt out/sft.pt --clients 1 4 16 --requests 4 --max-tokens 64
"""
import argparse
import gzip
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import labeler  # noqa: E402
import tokenizer  # noqa: E402
from common import save_checkpoint  # noqa: E402
from gpt import GPT, GPTConfig  # noqa: E402
from train_pretrain import PretrainConfig  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--ckpt", default="", help="a policy checkpoint (default: a random model of the default config)")
parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
parser.add_argument("--requests", type=int, default=4, help="requests each client sends, one after another")
parser.add_argument("--max-tokens", type=int, default=64)
parser.add_argument("--threads", type=int, default=2, help="torch threads of each server (OMP_NUM_THREADS)")
parser.add_argument("--device", default="cpu")
parser.add_argument("--arrival", type=float, default=0.0, help="each request waits a random 0..S seconds first")
parser.add_argument("--baseline", help="another checkout whose serve.py to time too (batched)")
args = parser.parse_args()
if min(args.clients) < 1 or min(args.requests, args.max_tokens, args.threads) < 1:
    sys.exit("error: --clients, --requests, --max-tokens and --threads must be positive")
if args.arrival < 0:
    sys.exit(f"error: --arrival {args.arrival}: must be >= 0")
if args.baseline and not (Path(args.baseline) / "serve.py").is_file():
    sys.exit(f"error: --baseline {args.baseline}: has no serve.py")


def random_checkpoint(folder):
    cfg = PretrainConfig()
    with gzip.open(ROOT / "data" / "sotu.txt.gz", "rt", encoding="utf-8") as f:
        tok = tokenizer.train(f.read(1_000_000), cfg.vocab_size)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{k: v for k, v in asdict(cfg).items() if k in GPTConfig.__dataclass_fields__}))
    path = os.path.join(folder, "random.pt")
    save_checkpoint(path, stage="sft", model=model, tokenizer=tok)
    return path


def start_server(ckpt, max_batch, root=ROOT):
    proc = subprocess.Popen([sys.executable, str(Path(root) / "serve.py"), "--ckpt", ckpt, "--port", "0", "--device",
                             args.device, "--max-batch", str(max_batch), "--max-n", "1"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        sys.exit(f"error: serve.py did not start: {line!r}")
    return proc, int(line.split()[3].rsplit(":", 1)[1].strip("/"))


def ask(port, prompt):
    """Stream one request; (seconds to the first text, seconds in all, answer tokens)."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": args.max_tokens,
                       "stream": True, "stream_options": {"include_usage": True}})
    t0, first, tokens = time.perf_counter(), None, None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 200, reply.read()
    for line in reply:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
            first = time.perf_counter() - t0
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    return first if first is not None else time.perf_counter() - t0, time.perf_counter() - t0, tokens


def run(port, n_clients):
    """n_clients threads, each sending --requests requests in turn. (tokens/s, TTFTs)."""
    prompts = labeler.train_prompts()
    results = [[] for _ in range(n_clients)]

    def client(c):
        wait = random.Random(c)   # the same arrival times for every server
        for r in range(args.requests):
            time.sleep(wait.uniform(0, args.arrival))
            results[c].append(ask(port, prompts[(c * args.requests + r) % len(prompts)]))
    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = [x for rs in results for x in rs]
    return sum(tokens for _, _, tokens in flat) / wall, [first for first, _, _ in flat]


with tempfile.TemporaryDirectory() as tmp:
    ckpt = args.ckpt or random_checkpoint(tmp)
    servers = {"one at a time": start_server(ckpt, 1), "batched": start_server(ckpt, max(args.clients))}
    if args.baseline:
        servers["baseline"] = start_server(ckpt, max(args.clients), args.baseline)
    try:
        for _, port in servers.values():
            ask(port, "Warm up.")
        print(f"{ckpt if args.ckpt else 'random default-config model'}, {args.requests} requests per client, "
              f"max_tokens {args.max_tokens}, device {args.device}, {args.threads} threads per server, "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs")
        print(f"{'clients':>7}  {'mode':<14} {'tokens/s':>9}  {'TTFT median':>11}  {'TTFT max':>9}  {'speed-up':>8}")
        for n in args.clients:
            base = None
            for mode, (_, port) in servers.items():
                rate, ttft = run(port, n)
                base = base or rate
                print(f"{n:>7}  {mode:<14} {rate:>9.0f}  {statistics.median(ttft):>10.3f}s  {max(ttft):>8.3f}s  "
                      f"{rate / base:>7.2f}x", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
