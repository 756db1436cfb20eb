"""Benchmark sampling against the forward pass: how close generation comes to its roofline.

On a policy checkpoint (default out/sft.pt), in bf16 autocast where the CPU has it, on the labeler's
training prompts in the chat template, at temperature 1:
  forward   one forward pass over the finished rows of `respond` (B x T, every position): what
            generation could reach at this size, since each new token needs one position of it
  generate  B rows, --new-tokens new tokens each, no stop token
  respond   B rows that stop at <|end|> (tokens of the responses)
  stream    --prompts prompts through B slots that stop at <|end|>: the reward model's sampling
            (data.sample_responses), where a finished row's slot goes to a waiting prompt
Each is timed --repeat times, in turn, and reports its median. --baseline PATH runs the same rows
through another gpt.py on the same weights (its stream: batch after batch of B, as it can), e.g.

    git show eb12b1e:gpt.py > /tmp/gpt_eb12b1e.py
    python bench/sample.py --baseline /tmp/gpt_eb12b1e.py
"""
import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import labeler  # noqa: E402
from common import autocast, load_model  # noqa: E402
from data import encode_prompt  # noqa: E402
from gpt import left_pad  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--ckpt", default="out/sft.pt")
parser.add_argument("--batch", type=int, default=256, help="rows decoded at once (B)")
parser.add_argument("--new-tokens", type=int, default=64)
parser.add_argument("--prompts", type=int, default=1024, help="prompts of the stream run")
parser.add_argument("--repeat", type=int, default=3)
parser.add_argument("--threads", type=int, default=2, help="torch threads")
parser.add_argument("--baseline", help="another gpt.py to time on the same weights")
args = parser.parse_args()
torch.set_num_threads(args.threads)


def baseline_model(path, model):
    """The checkpoint's weights in the GPT class of another gpt.py."""
    spec = importlib.util.spec_from_file_location("gpt_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    other = module.GPT(module.GPTConfig(**vars(model.config)))
    other.load_state_dict(model.state_dict())
    return other.eval()


def runs(model, prompts, end, batched):
    """{name: (function, returning the tokens it counts)} for one model."""
    def sample(rows, stop, n_new=args.new_tokens):
        g = torch.Generator().manual_seed(0)
        if batched:   # the decoder takes a queue of rows and keeps B of them going
            return model.generate(rows, n_new, stop_token=stop, generator=g,
                                  max_batch=args.batch)[0]
        out = []      # the decoder takes a batch: batch after batch
        for i in range(0, len(rows), args.batch):
            out += model.generate(rows[i:i + args.batch], n_new, stop_token=stop, generator=g)[0]
        return out
    batch = prompts[:args.batch]
    return {"generate": lambda: sum(map(len, sample(batch, None))),
            "respond": lambda: sum(map(len, sample(batch, end))),
            "stream": lambda: sum(map(len, sample(prompts[:args.prompts], end)))}


def forward_run(model, prompts, end):
    """One forward pass over the finished rows of `respond` (prompt + response, left-padded)."""
    g = torch.Generator().manual_seed(0)
    batch = prompts[:args.batch]
    responses = model.generate(batch, args.new_tokens, stop_token=end, generator=g)[0]
    idx, mask = left_pad([p + r for p, r in zip(batch, responses)])
    return lambda: (model(idx, pad_mask=mask), idx.numel())[1]


def main():
    model, tok, _ = load_model(args.ckpt)
    model.eval()
    end = tok.special_tokens["<|end|>"]
    texts = labeler.training_prompts()
    prompts = [encode_prompt(tok, texts[i % len(texts)]) for i in range(args.prompts)]
    ctx = autocast("cpu")
    with ctx, torch.no_grad():
        todo = {"forward": forward_run(model, prompts, end)}
        todo.update(runs(model, prompts, end, True))
        if args.baseline:
            old = baseline_model(args.baseline, model)
            todo.update({f"{name} (baseline)": f for name, f in
                         runs(old, prompts, end, False).items()})
        times, tokens = {name: [] for name in todo}, {}
        for _ in range(args.repeat):
            for name, f in todo.items():
                start = time.perf_counter()
                tokens[name] = f()
                times[name].append(time.perf_counter() - start)
    rate = {name: tokens[name] / statistics.median(times[name]) for name in todo}
    print(f"{args.ckpt}, B = {args.batch}, {args.new_tokens} new tokens, {args.threads} threads")
    print("| what | tokens | tokens/s | of the forward pass |")
    print("|---|---|---|---|")
    for name in todo:
        print(f"| {name} | {tokens[name]:,} | {rate[name]:,.0f} | "
              f"{rate[name] / rate['forward']:.1%} |")


if __name__ == "__main__":
    main()
