"""Shared fixtures: a small slice of the shipped corpus, a tiny tokenizer, tiny checkpoints."""
import gzip
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def corpus_text():
    """The first ~300 KB of the SOTU corpus (the same paragraph layout as the real file)."""
    with gzip.open(ROOT / "data" / "sotu.txt.gz", "rt", encoding="utf-8") as f:
        return f.read(300_000).rsplit("\n\n", 1)[0]


@pytest.fixture(scope="session")
def tiny_tok(corpus_text):
    import tokenizer
    return tokenizer.train(corpus_text[:100_000], 320)


def make_checkpoint(path, stage, tok, seed=0, scale=1.0, **config):
    """A tiny random GPT saved as a checkpoint of `stage` (what the stage scripts read). scale multiplies the
    blocks' matrices: at 10 the greedy answer depends on the prompt (at the usual init a 1-layer model mostly
    repeats its last input token, after <|assistant|> a special token: an empty answer)."""
    import torch
    from common import save_checkpoint
    from gpt import GPT, GPTConfig
    torch.manual_seed(seed)
    cfg = dict(vocab_size=tok.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=32)
    model = GPT(GPTConfig(**{**cfg, **config}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks") and p.dim() == 2:
                p.mul_(scale)
    extra = {"rm_gain": 1.0, "rm_bias": 0.0} if stage == "rm" else {}
    save_checkpoint(str(path), stage=stage, model=model, tokenizer=tok, **extra)
    return str(path)


def reset_connection(sock):
    """Close a client socket with a TCP reset, as a browser tab that is closed mid-request can."""
    import socket
    import struct
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
