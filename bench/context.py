"""How many turns of the demo task fit a model's context, under the context rule chat.py and serve.py share
(web.fit_context: the newest whole turns that leave --reserve tokens for the answer).

A turn is <|user|>{labeler prompt}<|assistant|>{demonstration}<|end|>, with the demonstrations SFT trains on
(labeler.demonstrations) and the default pretraining tokenizer (train_pretrain.prepare_tokens, cached in out/).
For conversations of three random turns, it counts how many of the two earlier turns the third one sees.

    python bench/context.py
    python bench/context.py --block-size 128 256 --reserve 64 48
"""
import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import labeler  # noqa: E402
from data import encode_example, encode_prompt, read_corpus  # noqa: E402
from web import fit_context
from train_pretrain import PretrainConfig, prepare_tokens  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--block-size", type=int, nargs="+", default=[128, 192, 256])
parser.add_argument("--reserve", type=int, nargs="+", default=[64, 48], help="tokens left for the answer")
parser.add_argument("--conversations", type=int, default=10_000)
args = parser.parse_args()

cfg = PretrainConfig()
tok, _ = prepare_tokens(cfg, str(ROOT / "out"))
demos = labeler.demonstrations(read_corpus(str(ROOT / cfg.data)), 2000)
turns = [encode_example(tok, d["prompt"], d["response"])[0] for d in demos]
prompts = [encode_prompt(tok, d["prompt"]) for d in demos]
describe = lambda xs: f"mean {statistics.mean(xs):.1f}, p90 {np.percentile(xs, 90):.0f}, max {max(xs)}"
print(f"{len(demos)} demonstrations, {tok.n_vocab}-token BPE. Tokens of a new prompt: {describe(list(map(len, prompts)))}; "
      f"of an answer with <|end|>: {describe([len(t) - len(p) for t, p in zip(turns, prompts)])}; "
      f"of a whole turn: {describe(list(map(len, turns)))}")
rng = np.random.default_rng(0)
picks = rng.integers(len(demos), size=(args.conversations, 3))
print(f"three whole turns: {describe([sum(len(turns[i]) for i in p) for p in picks])} tokens")
for block in args.block_size:
    for reserve in args.reserve:
        seen = [fit_context([turns[a], turns[b], prompts[c]], block, reserve)[1] for a, b, c in picks]
        share = lambda dropped: sum(s == dropped for s in seen) / len(seen)
        print(f"block_size {block}, {reserve} tokens for the answer: the third turn sees both earlier turns in "
              f"{share(0):.1%} of conversations, one in {share(1):.1%}, none in {share(2):.1%}")
