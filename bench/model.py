"""Benchmark gpt.py: training throughput (fp32 vs bf16 autocast) and generation with vs. without the KV cache.

(a) Training: forward + backward + AdamW step on batches of --batch x --block tokens (bytes of the shipped corpus
    as token ids), in tokens/s and GFLOP/s (gpt.py's flops_per_token: 6N + 12 L C T). The baseline is nanoGPT's
    model.py at the same config and dtype when --nanogpt points at it (git clone https://github.com/karpathy/nanoGPT),
    else gpt.py with pos=learned, mlp=gelu (nanoGPT's architecture, also timed). All models train in lockstep, one step each
    in turn, so that a busy machine slows them alike; each reports its median step time after --warmup steps.
    Then the held-out loss (fp32) of each model: bf16 and fp32 training started from the same weights and saw
    the same batches, so their losses should agree closely.
(b) Generation: greedy, --new-tokens after a --prompt-len prompt, at each --gen-batch, with the KV cache vs.
    rerunning the whole sequence at every step (generate(use_cache=False)). The model's block_size is raised to
    prompt + new tokens so that no row stops early. Cached runs: median of 3; uncached: one run (it is slow).
    "same tokens": both paths chose the same tokens (in bf16 they round differently, so a near-tie between
    the two top logits of the random-weight model can go either way).

    python bench/model.py                                 # the issue's config: L6/H6/d384, T256, B8, V4096
    python bench/model.py --nanogpt ../nanoGPT/model.py   # with nanoGPT's model.py as the training baseline
    python bench/model.py --skip-generate --steps 20      # a quicker look at training only
"""
import argparse
import contextlib
import gzip
import importlib.util
import io
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import autocast, cpu_has_bf16, pick_device  # noqa: E402
from gpt import GPT, GPTConfig  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--layers", type=int, default=6)
parser.add_argument("--heads", type=int, default=6)
parser.add_argument("--embd", type=int, default=384)
parser.add_argument("--block", type=int, default=256, help="training sequence length T (and block_size)")
parser.add_argument("--batch", type=int, default=8, help="training batch size B")
parser.add_argument("--vocab", type=int, default=4096)
parser.add_argument("--pos", default=GPTConfig.pos, choices=["learned", "rope"])
parser.add_argument("--mlp", default=GPTConfig.mlp, choices=["gelu", "swiglu"])
parser.add_argument("--bias", action="store_true", help="biases in Linear and LayerNorm (GPT-2); default off")
parser.add_argument("--threads", type=int, default=2, help="torch threads")
parser.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
parser.add_argument("--steps", type=int, default=50, help="training steps per model and precision")
parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
parser.add_argument("--lr", type=float, default=3e-4, help="no warm-up: at 1e-3 nanoGPT's model can diverge within 20 steps")
parser.add_argument("--nanogpt", help="path to nanoGPT's model.py: the training baseline")
parser.add_argument("--prompt-len", type=int, default=16)
parser.add_argument("--new-tokens", type=int, default=256)
parser.add_argument("--gen-batch", type=int, nargs="+", default=[1, 16])
parser.add_argument("--skip-train", action="store_true")
parser.add_argument("--skip-generate", action="store_true")
args = parser.parse_args()
if args.warmup >= args.steps:
    sys.exit(f"error: --warmup {args.warmup}: must be below --steps {args.steps}")
if args.nanogpt and not os.path.isfile(args.nanogpt):
    sys.exit(f"error: --nanogpt {args.nanogpt}: no such file")

torch.set_num_threads(args.threads)
device = pick_device(args.device)
config = GPTConfig(vocab_size=args.vocab, block_size=args.block, n_layer=args.layers, n_head=args.heads,
                   n_embd=args.embd, bias=args.bias, pos=args.pos, mlp=args.mlp)
print(f"config: L{args.layers}/H{args.heads}/d{args.embd}, T{args.block}, B{args.batch}, V{args.vocab}, "
      f"bias={args.bias}; device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
      f"CPU bf16: {cpu_has_bf16()}")


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- (a) training
def load_nanogpt(path, cfg):
    """nanoGPT's GPT at our config, and its own optimizer setup (its prints silenced)."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with contextlib.redirect_stdout(io.StringIO()):
        model = mod.GPT(mod.GPTConfig(block_size=cfg.block_size, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer,
                                      n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0, bias=cfg.bias))
        opt = model.configure_optimizers(0.1, args.lr, (0.9, 0.95), device)
    # the same FLOPs formula as gpt.py's: 6 per weight that multiplies a token (not wpe), plus attention
    flops = 6 * model.get_num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    return model, opt, flops


def train():
    with gzip.open(ROOT / "data" / "sotu.txt.gz", "rb") as f:
        data = torch.frombuffer(bytearray(f.read(2_000_000)), dtype=torch.uint8).long() % args.vocab
    B, T = args.batch, args.block
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(data) // 2, (args.steps, B), generator=g)

    def xy(starts):    # inputs and next-token targets, contiguous (nanoGPT .view()s them)
        return tuple(torch.stack([data[s + i:s + i + T] for s in starts]).to(device) for i in (0, 1))
    batches = [xy(row.tolist()) for row in starts]
    held_out = [xy(range(s0, s0 + B * T, T)) for s0 in range(len(data) // 2, len(data) // 2 + 4 * B * T, B * T)]

    runs = []    # (name, precision, model, optimizer, flops per token)
    names = [f"gpt.py {config.pos}+{config.mlp}"]    # the last one is the baseline
    if (config.pos, config.mlp) != ("learned", "gelu"):
        names.append("gpt.py learned+gelu")
    if args.nanogpt:
        names.append("nanoGPT model.py")
    for name in names:
        for precision in args.precision:
            torch.manual_seed(0)    # the same initial weights for both precisions
            if name.startswith("nanoGPT"):
                model, opt, flops = load_nanogpt(args.nanogpt, config)
            else:
                cfg = config if name == names[0] else GPTConfig(**{**vars(config), "pos": "learned", "mlp": "gelu"})
                model = GPT(cfg)
                opt, flops = model.configure_optimizer(0.1, args.lr), model.flops_per_token(T)
            runs.append(dict(name=name, precision=precision, model=model.to(device).train(), opt=opt,
                             flops=flops, times=[], losses=[]))

    print(f"\n(a) training: {args.steps} steps of {B}x{T} tokens per row below, all rows in lockstep "
          f"(median step after {args.warmup} warm-up steps)")
    for x, y in batches:
        for r in runs:
            sync()
            t0 = time.perf_counter()
            with autocast(device, r["precision"]):
                _, loss = r["model"](x, y)
            r["opt"].zero_grad(set_to_none=True)
            loss.backward()
            r["opt"].step()
            r["losses"].append(loss.item())    # (syncs)
            r["times"].append(time.perf_counter() - t0)
    for r in runs:
        r["model"].eval()
        with torch.no_grad():
            r["held_out"] = statistics.mean(r["model"](x, y)[1].item() for x, y in held_out)
        r["tok_s"] = B * T / statistics.median(r["times"][args.warmup:])

    base = {r["precision"]: r for r in runs if r["name"] == names[-1]}
    print(f"{'model':>22} {'dtype':>5} {'ms/step':>8} {'tok/s':>7} {'GFLOP/s':>8} {'vs ' + names[-1]:>24} "
          f"{'train loss':>10} {'held-out':>9}")
    for r in runs:
        ratio = r["tok_s"] / base[r["precision"]]["tok_s"]
        print(f"{r['name']:>22} {r['precision']:>5} {1e3 * B * T / r['tok_s']:8.0f} {r['tok_s']:7.0f} "
              f"{r['tok_s'] * r['flops'] / 1e9:8.2f} {ratio:23.2f}x {r['losses'][-1]:10.4f} {r['held_out']:9.4f}")
    if set(args.precision) == {"fp32", "bf16"}:
        for name in names:
            fp32, bf16 = (next(r for r in runs if r["name"] == name and r["precision"] == p) for p in ("fp32", "bf16"))
            diff = (bf16["held_out"] - fp32["held_out"]) / fp32["held_out"]
            print(f"{name}: bf16 autocast / fp32 throughput {bf16['tok_s'] / fp32['tok_s']:.2f}x; held-out loss "
                  f"after {args.steps} steps {bf16['held_out']:.4f} vs {fp32['held_out']:.4f} ({100 * diff:+.2f}%)")


# ----------------------------------------------------------------------------- (b) generation
def generate():
    cfg = GPTConfig(**{**vars(config), "block_size": max(args.block, args.prompt_len + args.new_tokens)})
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    print(f"\n(b) generation: greedy, {args.new_tokens} new tokens after a {args.prompt_len}-token prompt, "
          f"{cfg.pos}+{cfg.mlp}, block_size {cfg.block_size}")
    print(f"{'batch':>5} {'dtype':>5} {'cache s':>8} {'no-cache s':>10} {'cache tok/s':>11} {'no-cache tok/s':>14} "
          f"{'speedup':>8}  same tokens")
    for precision in args.precision:
        for B in args.gen_batch:
            g = torch.Generator().manual_seed(B)
            prompts = torch.randint(0, cfg.vocab_size, (B, args.prompt_len), generator=g).tolist()

            def run(use_cache, n=args.new_tokens):
                sync()
                t0 = time.perf_counter()
                with autocast(device, precision):
                    out, _ = model.generate(prompts, n, temperature=0, use_cache=use_cache)
                sync()
                assert all(len(o) == n for o in out)
                return time.perf_counter() - t0, out

            run(True, 8), run(False, 8)    # warm-up
            cached = [run(True) for _ in range(3)]
            t_cache, out_cache = statistics.median(t for t, _ in cached), cached[0][1]
            t_full, out_full = run(False)
            n = B * args.new_tokens
            print(f"{B:5d} {precision:>5} {t_cache:8.2f} {t_full:10.2f} {n / t_cache:11.0f} {n / t_full:14.0f} "
                  f"{t_full / t_cache:7.1f}x  {out_cache == out_full}")


if not args.skip_train:
    train()
if not args.skip_generate:
    generate()
