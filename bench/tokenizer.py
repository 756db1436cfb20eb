"""Benchmark tokenizer.py: train on the first 1 MB of the shipped corpus, then encode the next 1 MB.

Prints, per vocabulary size: training seconds, encode throughput (MB/s) of the pure-Python reference encoder
(a fresh tokenizer, so its chunk cache starts empty) and of the tiktoken export, and bytes per token on the
held-out megabyte (higher = better compression). GPT-2's tokenizer (data/gpt2/) is added as a yardstick.

    python bench/tokenizer.py                      # vocab 512, 1024, 4096 on 1 MB
    python bench/tokenizer.py --mb 4 --vocab 8192
"""
import argparse
import gzip
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tokenizer  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default=str(ROOT / "data" / "sotu.txt.gz"), help=".txt or .txt.gz corpus")
parser.add_argument("--mb", type=float, default=1.0, help="megabytes (10^6 bytes) to train on, and to encode")
parser.add_argument("--vocab", type=int, nargs="+", default=[512, 1024, 4096], help="vocabulary sizes to train")
args = parser.parse_args()

opener = gzip.open if args.data.endswith(".gz") else open
with opener(args.data, "rb") as f:
    raw = f.read()
n = int(args.mb * 1e6)
if len(raw) < 2 * n:
    sys.exit(f"error: {args.data}: has {len(raw)} bytes, the benchmark needs {2 * n} (train + held-out)")
train_text = raw[:n].decode("utf-8", errors="ignore")       # (ignore: a cut may split a character)
test_text = raw[n:2 * n].decode("utf-8", errors="ignore")
test_mb = len(test_text.encode("utf-8")) / 1e6
print(f"corpus {args.data}: train on the first {len(train_text.encode()) / 1e6:.2f} MB, encode the next {test_mb:.2f} MB"
      f" ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
print(f"{'tokenizer':>12} {'train s':>8} {'ref MB/s':>9} {'tiktoken MB/s':>14} {'bytes/token':>12}  ids equal")


def row(name, tok, train_s):
    t0 = time.perf_counter()
    ref = tok.encode(test_text)
    ref_s = time.perf_counter() - t0
    enc = tok.to_tiktoken()
    t0 = time.perf_counter()
    fast = enc.encode_ordinary(test_text)
    fast_s = time.perf_counter() - t0
    train_col = f"{train_s:8.2f}" if train_s is not None else f"{'-':>8}"
    print(f"{name:>12} {train_col} {test_mb / ref_s:9.2f} {test_mb / fast_s:14.2f} {test_mb * 1e6 / len(fast):12.2f}"
          f"  {ref == fast}")


for vocab_size in args.vocab:
    t0 = time.perf_counter()
    tok = tokenizer.train(train_text, vocab_size)
    row(f"bpe {tok.n_vocab}", tok, time.perf_counter() - t0)

gpt2 = ROOT / "data" / "gpt2"
row("gpt2 50257", tokenizer.Tokenizer.from_gpt2(gpt2 / "encoder.json", gpt2 / "vocab.bpe"), None)
