"""Stage 0: pretrain a small GPT by next-token prediction on a text corpus (GPT-1/2/3).

    python train_pretrain.py                       # the demo: SOTU corpus, a CPU-sized model
    python train_pretrain.py --resume              # continue out/pretrain.pt where it stopped
    torchrun --nproc_per_node=2 train_pretrain.py  # DistributedDataParallel (gloo on CPU)

It trains the tokenizer on the corpus (or takes --tokenizer), tokenizes the corpus once into a
uint16 token file cached under out/, keeps the last --val-fraction of it for validation, and
trains. `train()` below is the training loop; SFT (train_sft.py) runs the same loop on its data.
"""
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

import tokenizer as bpe
from common import (Log, autocast, cosine_lr, ddp_cleanup, ddp_setup, eval_mode, fail, load_checkpoint,
                    parse_config, pick_device, save_checkpoint)
from data import cached_tokens, get_lm_batch, read_corpus
from gpt import GPT, GPTConfig


@dataclass
class LoopConfig:
    """The knobs of train(), the loop pretraining and SFT share, with pretraining's defaults."""
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-3
    warmup_iters: int = 50
    max_iters: int = 550             # about 5.5 minutes on a 2-core CPU (bf16)
    max_minutes: float = 0.0         # stop early (and save) after this long; 0 = no limit
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_iters: int = 20
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"          # auto | bf16 | fp32


@dataclass
class PretrainConfig(LoopConfig):
    data: str = "data/sotu.txt.gz"   # a .txt/.txt.gz file or a folder of them
    out: str = "out/pretrain.pt"
    tokenizer: str = ""              # a tokenizer JSON; empty: train one on the corpus
    vocab_size: int = 2048
    resume: bool = False             # continue from --out: same weights, optimizer, step, data
    val_fraction: float = 0.05
    # model (GPTConfig)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 128
    pos: str = "rope"
    mlp: str = "swiglu"
    dropout: float = 0.0


def prepare_tokens(cfg, log_dir):
    """Corpus -> (tokenizer, uint16 token array). Both are cached in out/ under a hash of the
    corpus text and the tokenizer settings (data.cached_tokens), so a second run starts training at once."""
    text = read_corpus(cfg.data)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    if cfg.tokenizer:
        try:
            tok = bpe.Tokenizer.load(cfg.tokenizer)
        except (OSError, ValueError) as e:
            fail(f"--tokenizer {cfg.tokenizer}: {e}")
    else:
        tok_path = os.path.join(log_dir, f"tokenizer-{key}-{cfg.vocab_size}.json")
        if os.path.exists(tok_path):
            tok = bpe.Tokenizer.load(tok_path)
        else:
            print(f"training a {cfg.vocab_size}-token BPE on {len(text) / 1e6:.1f} M characters ...")
            try:
                tok = bpe.train(text.replace("<|endoftext|>", "\n"), cfg.vocab_size)
            except ValueError as e:
                fail(f"--vocab-size {cfg.vocab_size}: {e}")
            tok.save(tok_path)
    return tok, cached_tokens(text, tok, log_dir)


@torch.no_grad()
def lm_loss(model, get_batch, iters, ctx):
    """Mean loss over `iters` batches (dropout off)."""
    losses = []
    with eval_mode(model):
        for i in range(iters):
            x, y, mask = get_batch(i)
            with ctx:
                losses.append(model(x, y, pad_mask=mask)[1].item())
    return sum(losses) / len(losses)


def train(model, optimizer, cfg, get_batch, evaluate, save, log, step=0, rank=0, world=1):
    """The training loop shared by pretraining and SFT; cfg is a LoopConfig (PretrainConfig, SFTConfig).

    get_batch(step, micro) -> (x, targets, pad_mask) for that step: a pure function of the step,
    so a resumed run sees exactly the batches the uninterrupted run would have seen.
    evaluate() -> dict of metrics; save(step, metrics) writes the checkpoint (rank 0 only).
    """
    raw = model.module if world > 1 else model
    ctx = autocast(str(next(raw.parameters()).device).split(":")[0], cfg.precision)
    t_start, t_last, metrics, n_tokens = time.time(), time.time(), {}, 0
    model.train()
    while True:
        out_of_time = cfg.max_minutes > 0 and time.time() - t_start > cfg.max_minutes * 60
        last = step >= cfg.max_iters or out_of_time
        if rank == 0 and (step % cfg.eval_interval == 0 or last):
            metrics = {"step": step, **evaluate()}
            log(metrics, "eval  " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            if step > 0:
                save(step, metrics)
        if last:
            return metrics
        lr = cosine_lr(step, cfg.max_iters, cfg.lr, cfg.warmup_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(cfg.grad_accum):
            x, y, mask = get_batch(step, micro)
            if world > 1:  # all-reduce gradients only on the last micro-step
                model.require_backward_grad_sync = micro == cfg.grad_accum - 1
            with ctx:
                _, loss = model(x, y, pad_mask=mask)
            (loss / cfg.grad_accum).backward()
            n_tokens += x.numel() * world
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if rank == 0 and (step % 10 == 0 or step == cfg.max_iters):
            dt, t_last = time.time() - t_last, time.time()
            log({"step": step, "loss": loss.item(), "lr": lr, "grad_norm": norm.item()},
                f"step {step}/{cfg.max_iters}  loss {loss.item():.4f}  lr {lr:.2e}  "
                f"{n_tokens / dt:,.0f} tok/s  eta {log.eta(step, cfg.max_iters)}")
            n_tokens = 0


def main(argv=None):
    cfg = parse_config(PretrainConfig, __doc__.split("\n")[0], argv)
    rank, world, device = ddp_setup(pick_device(cfg.device))
    log_dir = os.path.dirname(os.path.abspath(cfg.out))
    os.makedirs(log_dir, exist_ok=True)
    if rank == 0:
        tok, tokens = prepare_tokens(cfg, log_dir)
    if world > 1:  # rank 0 builds the caches, the others read them
        torch.distributed.barrier()
        if rank != 0:
            tok, tokens = prepare_tokens(cfg, log_dir)
    n_val = int(len(tokens) * cfg.val_fraction)
    train_tokens, val_tokens = tokens[:-n_val] if n_val else tokens, tokens[-n_val:]
    if min(len(train_tokens), len(val_tokens)) <= cfg.block_size + 1:
        fail(f"--data {cfg.data}: {len(tokens)} tokens is too short for --block-size {cfg.block_size} "
             f"with a {cfg.val_fraction:.0%} validation split")

    torch.manual_seed(cfg.seed)
    model_cfg = GPTConfig(vocab_size=tok.n_vocab, block_size=cfg.block_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, pos=cfg.pos, mlp=cfg.mlp)
    model = GPT(model_cfg).to(device)
    model.scalar_head.requires_grad_(False)   # unused by the LM loss (and DDP insists every weight gets a grad)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr, eps=1e-8)
    step = 0
    if cfg.resume:
        ckpt = load_checkpoint(cfg.out, ("pretrain",), flag="--resume")
        if ckpt["config"] != asdict(model_cfg) or "optimizer" not in ckpt:
            fail(f"--resume {cfg.out}: its model config differs from these flags (or it has no optimizer state)")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        print(f"resuming from step {step}")
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    if rank == 0:
        print(f"{model_cfg}\n{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
              f"{len(train_tokens):,} training tokens, device {device}, {world} process(es)")

    def batch(tokens, seed):
        g = torch.Generator().manual_seed(seed)
        return get_lm_batch(tokens, cfg.batch_size, cfg.block_size, g, device)

    # Each (step, micro-step, rank) has its own seed: this is the "data position" a resume restores.
    get_batch = lambda step, micro: batch(train_tokens, cfg.seed + ((step * cfg.grad_accum + micro) * world + rank) * 7919)
    raw = model.module if world > 1 else model
    ctx = autocast(device.split(":")[0], cfg.precision)
    evaluate = lambda: {"val_loss": lm_loss(raw, lambda i: batch(val_tokens, i), cfg.eval_iters, ctx)}
    save = lambda step, metrics: save_checkpoint(
        cfg.out, stage="pretrain", model=raw, tokenizer=tok, step=step, args=asdict(cfg),
        metrics=metrics, optimizer=optimizer.state_dict())
    log = Log(os.path.splitext(cfg.out)[0] + ".log.jsonl", enabled=rank == 0, append=cfg.resume)
    metrics = train(model, optimizer, cfg, get_batch, evaluate, save, log, step, rank, world)
    if rank == 0:
        print(f"val loss {metrics['val_loss']:.4f} (perplexity {math.exp(metrics['val_loss']):.1f}); samples:")
        eot = tok.special_tokens["<|endoftext|>"]
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        tokens_out, _ = raw.generate([[eot]] * 3, 60, temperature=0.8, top_k=50, stop_token=eot, generator=g)
        for t in tokens_out:
            print("  >", tok.decode([i for i in t if i != eot]).strip().replace("\n", " "))
    ddp_cleanup()


if __name__ == "__main__":
    main()
