"""Stage 0: pretrain a small GPT by next-token prediction on a text corpus (GPT-1/2/3).

    python train_pretrain.py                       # the demo: SOTU corpus, a CPU-sized model
    python train_pretrain.py --resume              # continue out/pretrain.pt (Ctrl-C saves)
    python train_pretrain.py --resume --max-iters 1000   # ... and train it longer
    torchrun --nproc_per_node=2 train_pretrain.py  # DistributedDataParallel (gloo on CPU)

It trains the tokenizer on the corpus (or takes --tokenizer), tokenizes the corpus once into a
uint16 token file cached under out/, keeps the last --val-fraction of it for validation, and
trains. `train()` below is the training loop; SFT (train_sft.py) runs the same loop on its data.
Next to --out: the log (.log.jsonl) and its picture (.svg, training and validation loss).
"""
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

import tokenizer as bpe
from common import (Log, autocast, cosine_lr, ctrl_c_stops, ddp_cleanup, ddp_setup, eta, eval_mode,
                    fail, interrupted, load_resume, pick_device, run_script, save_checkpoint,
                    warn_warmup, write_atomically)
from data import cached_tokens, get_lm_batch, read_corpus
from flags import OptimizerConfig, flag, parse_config
from gpt import GPT, GPTConfig
from plot import svg_chart


@dataclass
class LoopConfig(OptimizerConfig):
    """The knobs of train(), the loop pretraining and SFT share, with pretraining's defaults
    (the optimizer's flags: flags.OptimizerConfig)."""
    batch_size: int = flag(16, "sequences per step (per process under torchrun)", ge=1)
    grad_accum: int = flag(1, "micro-batches whose gradients add up to one step", ge=1)
    max_iters: int = flag(550, "steps in all (550: about 5.5 minutes on a 2-core CPU)", ge=1)
    max_minutes: float = flag(0.0, "stop early (and save) after this many minutes; 0: no limit",
                              ge=0)
    eval_interval: int = flag(100, "steps between evaluations", ge=1)
    eval_iters: int = flag(20, "validation batches per evaluation", ge=1)
    save_interval: int = flag(100, "steps between checkpoints (also at the end, and on Ctrl-C)",
                              ge=1)


@dataclass
class PretrainConfig(LoopConfig):
    data: str = flag("data/sotu.txt.gz", "the corpus: a .txt/.txt.gz file or a folder of them",
                     fixed=True)
    out: str = "out/pretrain.pt"   # help: flags.RunConfig
    tokenizer: str = flag("", "a tokenizer JSON file; empty: train a BPE on the corpus", fixed=True)
    vocab_size: int = flag(2048, "tokens of the BPE trained on the corpus (256 bytes, merges, "
                           "4 special)", ge=260, le=65536, fixed=True)
    val_fraction: float = flag(0.05, "share of the corpus (its end) kept for validation",
                               gt=0, lt=1, fixed=True)
    # the model (GPTConfig)
    n_layer: int = flag(4, "transformer blocks", ge=1, fixed=True)
    n_head: int = flag(4, "attention heads (--n-embd must be a multiple of it)", ge=1, fixed=True)
    n_embd: int = flag(256, "width of the residual stream", ge=1, fixed=True)
    block_size: int = flag(256, "context length in tokens (256 holds three turns of the demo task)",
                           ge=2, fixed=True)
    pos: str = flag("rope", "positions: rotary (RoFormer) or a learned table (GPT-2)",
                    choices=("rope", "learned"), fixed=True)
    mlp: str = flag("swiglu", "MLP: SiLU-gated (Shazeer 2020) or GELU (GPT-2)",
                    choices=("swiglu", "gelu"), fixed=True)
    dropout: float = flag(0.0, "dropout probability", ge=0, lt=1)


def prepare_tokens(cfg, log_dir, tok=None):
    """Corpus -> (tokenizer, uint16 token array). Both are cached in out/ under a hash of the
    corpus text and the tokenizer settings (data.cached_tokens), so a second run starts training
    at once. tok: the tokenizer of a resumed run's checkpoint (then none is trained or loaded)."""
    text = read_corpus(cfg.data)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    if tok is None and cfg.tokenizer:
        try:
            tok = bpe.Tokenizer.load(cfg.tokenizer)
        except (OSError, ValueError) as e:
            fail(f"--tokenizer {cfg.tokenizer}: {e}")
    elif tok is None:
        tok_path = os.path.join(log_dir, f"tokenizer-{key}-{cfg.vocab_size}.json")
        if os.path.exists(tok_path):
            tok = bpe.Tokenizer.load(tok_path)
        else:
            print(f"training a {cfg.vocab_size}-token BPE on "
                  f"{len(text) / 1e6:.1f} M characters ...")
            try:
                tok = bpe.train(text.replace("<|endoftext|>", "\n"), cfg.vocab_size)
            except ValueError as e:
                fail(f"--vocab-size {cfg.vocab_size}: {e}")
            write_atomically(tok_path, tok.save)   # a killed run leaves no half-written cache
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


def loss_panel(records, title):
    """The picture of a pretraining or SFT log: training loss (one batch, every 10 steps) and
    validation loss."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    return {"title": title, "xlabel": "step", "ylabel": "loss (nats per token)",
            "series": [("training loss", train), ("validation loss", val, "line+dots")]}


def loop_start(model, cfg, ckpt, rank=0):
    """(optimizer, step) where train() starts: a resumed run (ckpt) gets back its weights,
    optimizer state and step."""
    # unused by the LM loss (and DDP insists every weight gets a grad)
    model.scalar_head.requires_grad_(False)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr, eps=1e-8)
    if ckpt is None:
        return optimizer, 0
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if rank == 0:
        print(f"resuming from step {ckpt['step']}")
    return optimizer, ckpt["step"]


def train(model, optimizer, cfg, get_batch, evaluate, save, log, step=0, rank=0, world=1,
          metrics=None, stop=None):
    """The training loop shared by pretraining and SFT; cfg is a LoopConfig (PretrainConfig,
    SFTConfig).

    get_batch(step, micro) -> (x, targets, pad_mask) for that step: a pure function of the step,
    so a resumed run sees exactly the batches the uninterrupted run would have seen.
    evaluate() -> dict of metrics; save(step, metrics) writes the checkpoint (rank 0 only) every
    --save-interval steps, at the end, and when stop() (common.ctrl_c_stops: Ctrl-C was pressed)
    ends the loop between two steps.
    step, metrics: where a resumed run starts, and its checkpoint's metrics (that step's evaluation
    is in the log). Returns (metrics of the last evaluation, the step stop() ended the loop at or
    None).
    """
    raw = model.module if world > 1 else model
    ctx = autocast(str(next(raw.parameters()).device).split(":")[0], cfg.precision)
    if rank == 0:
        warn_warmup(cfg.warmup_iters, cfg.max_iters)
    start, t_last, metrics, n_tokens = step, time.time(), metrics or {}, 0
    model.train()
    while True:
        # the end: max_iters, --max-minutes, or Ctrl-C (stop() says the same in every process)
        out_of_time = cfg.max_minutes > 0 and time.time() - log.t0 > cfg.max_minutes * 60
        last, stopped = step >= cfg.max_iters or out_of_time, stop is not None and stop()
        # evaluate every eval_interval steps and at the end (a resumed run's first step was)
        evaluate_now = step % cfg.eval_interval == 0 or last
        if rank == 0 and evaluate_now and not stopped and (step > start or step == 0):
            metrics = {"step": step, **evaluate()}
            log(metrics, "eval  " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        # save every save_interval steps, at the end, and when stopped
        if rank == 0 and (stopped or step > start and (step % cfg.save_interval == 0 or last)):
            save(step, metrics)
        if last or stopped:
            return metrics, step if stopped else None
        # one optimizer step
        lr, loss, norm, tokens = train_step(model, optimizer, cfg, get_batch, step, world, ctx)
        n_tokens += tokens
        step += 1
        # a progress line every 10 steps
        if rank == 0 and (step % 10 == 0 or step == cfg.max_iters):
            dt, t_last = time.time() - t_last, time.time()
            log({"step": step, "loss": loss.item(), "lr": lr, "grad_norm": norm.item()},
                f"step {step}/{cfg.max_iters}  loss {loss.item():.4f}  lr {lr:.2e}  "
                f"{n_tokens / dt:,.0f} tok/s  "
                f"eta {eta(log.t0, step - start, cfg.max_iters - start)}")
            n_tokens = 0


def train_step(model, optimizer, cfg, get_batch, step, world, ctx):
    """One step of train(): the learning rate of this step (common.cosine_lr), the gradients of
    cfg.grad_accum micro-batches summed, clipped to cfg.grad_clip, and an AdamW update.
    Returns (lr, the last micro-batch's loss, the gradient norm before clipping, tokens seen by
    all processes)."""
    lr = cosine_lr(step, cfg.max_iters, cfg.lr, cfg.warmup_iters)
    for group in optimizer.param_groups:
        group["lr"] = lr
    n_tokens = 0
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
    return lr, loss, norm, n_tokens


def check_model_flags(cfg):
    """fail() on a shape the model cannot take: heads must split --n-embd evenly, and rotary
    positions rotate pairs of features, so they need an even head size."""
    if cfg.n_embd % cfg.n_head:
        fail(f"--n-embd {cfg.n_embd}: must be a multiple of --n-head {cfg.n_head}")
    if cfg.pos == "rope" and cfg.n_embd // cfg.n_head % 2:
        fail(f"--n-embd {cfg.n_embd} --n-head {cfg.n_head}: rotary positions (--pos rope) need an "
             f"even head size, not {cfg.n_embd // cfg.n_head}")


def split_tokens(cfg, ckpt, rank, world):
    """(tokenizer, training tokens, validation tokens): the corpus's last --val-fraction is kept
    for validation. Under torchrun rank 0 builds the caches (prepare_tokens), the others read
    them."""
    log_dir = os.path.dirname(os.path.abspath(cfg.out))
    saved_tok = bpe.Tokenizer.from_state_dict(ckpt["tokenizer"]) if ckpt else None
    if rank == 0:
        tok, tokens = prepare_tokens(cfg, log_dir, saved_tok)
    if world > 1:
        torch.distributed.barrier()
        if rank != 0:
            tok, tokens = prepare_tokens(cfg, log_dir, saved_tok)
    n_val = int(len(tokens) * cfg.val_fraction)
    train_tokens, val_tokens = tokens[:-n_val] if n_val else tokens, tokens[-n_val:]
    if min(len(train_tokens), len(val_tokens)) <= cfg.block_size + 1:
        fail(f"--data {cfg.data}: {len(tokens)} tokens is too short for --block-size "
             f"{cfg.block_size} with a {cfg.val_fraction:.0%} validation split")
    return tok, train_tokens, val_tokens


def batch_seed(cfg, step, micro, rank, world):
    """Each (step, micro-step, rank) has its own seed: this is the "data position" a resume
    restores."""
    return cfg.seed + ((step * cfg.grad_accum + micro) * world + rank) * 7919


def show_samples(model, tok, metrics, cfg, device):
    """The end of a run: its validation loss and three samples, each started at <|endoftext|>."""
    val_loss = metrics["val_loss"]
    print(f"val loss {val_loss:.4f} (perplexity {math.exp(val_loss):.1f}); samples:")
    eot = tok.special_tokens["<|endoftext|>"]
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    tokens_out, _ = model.generate([[eot]] * 3, 60, temperature=0.8, top_k=50, stop_token=eot,
                                   generator=g)
    for t in tokens_out:
        print("  >", tok.decode([i for i in t if i != eot]).strip().replace("\n", " "))


def main(argv=None):
    # 1. the flags, the processes (torchrun), the checkpoint a --resume continues
    cfg = parse_config(PretrainConfig, __doc__, argv, stage="pretrain")
    check_model_flags(cfg)
    rank, world, device = ddp_setup(pick_device(cfg.device))
    ckpt = load_resume(cfg, "pretrain")
    # 2. the tokenizer and the corpus's tokens
    tok, train_tokens, val_tokens = split_tokens(cfg, ckpt, rank, world)
    # 3. the model (wrapped in DDP under torchrun) and its optimizer
    torch.manual_seed(cfg.seed)
    model_cfg = GPTConfig(vocab_size=tok.n_vocab, block_size=cfg.block_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, pos=cfg.pos,
                          mlp=cfg.mlp)
    raw = GPT(model_cfg).to(device)
    optimizer, step = loop_start(raw, cfg, ckpt, rank)
    model = torch.nn.parallel.DistributedDataParallel(raw) if world > 1 else raw
    if rank == 0:
        print(f"{model_cfg}\n{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
              f"{len(train_tokens):,} training tokens, device {device}, {world} process(es)")

    # 4. what train() calls: batches, evaluation, the log, checkpoints
    def batch(tokens, seed):
        g = torch.Generator().manual_seed(seed)
        return get_lm_batch(tokens, cfg.batch_size, cfg.block_size, g, device)

    get_batch = lambda step, micro: batch(train_tokens, batch_seed(cfg, step, micro, rank, world))
    ctx = autocast(device.split(":")[0], cfg.precision)
    evaluate = lambda: {"val_loss": lm_loss(raw, lambda i: batch(val_tokens, i), cfg.eval_iters,
                                            ctx)}
    log = Log(os.path.splitext(cfg.out)[0] + ".log.jsonl", enabled=rank == 0,
              resume_at=step if ckpt else None)

    def save(step, metrics):
        save_checkpoint(cfg.out, stage="pretrain", model=raw, tokenizer=tok, step=step,
                        args=asdict(cfg), metrics=metrics, optimizer=optimizer.state_dict())
        svg_chart(os.path.splitext(cfg.out)[0] + ".svg", [loss_panel(log.records, "pretraining")])

    # 5. train; Ctrl-C stops it between two steps, saved
    with ctrl_c_stops() as stop:
        metrics, stopped_at = train(model, optimizer, cfg, get_batch, evaluate, save, log, step,
                                    rank, world, ckpt["metrics"] if ckpt else None, stop)
    if stopped_at is not None:
        ddp_cleanup()
        if rank == 0:
            interrupted("train_pretrain.py", cfg.out, stopped_at)
        raise SystemExit(130)
    # 6. the result
    if rank == 0:
        show_samples(raw, tok, metrics, cfg, device)
    ddp_cleanup()
    return metrics


if __name__ == "__main__":
    run_script(main)
