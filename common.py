"""What every stage shares: errors, device and precision, checkpoints, logging, DDP.

Each training script imports these instead of writing its own, so a checkpoint written by
one stage is read the same way by every other one.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import asdict

import torch

STAGES = ("pretrain", "sft", "rm", "ppo")
POLICY_STAGES = ("pretrain", "sft", "ppo")  # checkpoints that can generate text


def fail(msg):
    """Bad input: one clear line on stderr and a non-zero exit (no traceback)."""
    raise SystemExit(f"error: {msg}")


def check_flags(positive=(), nonnegative=()):
    """fail() on the first (flag, value) pair out of range."""
    for flag, value in positive:
        if value <= 0:
            fail(f"{flag} {value}: must be positive")
    for flag, value in nonnegative:
        if value < 0:
            fail(f"{flag} {value}: cannot be negative")


def last_index(mask):
    """Column of each row's last True entry: the last real token (left or right padding)."""
    cols = torch.arange(mask.shape[1], device=mask.device)
    return (mask * cols).argmax(1)


def parse_config(cls, description, argv=None):
    """Flags from a stage's config dataclass: every field becomes --field-name, its default the
    demo's value (bools become --x/--no-x). One place, so each stage lists its knobs once."""
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag, type=kind, default=f.default, metavar=kind.__name__.upper())
    return cls(**vars(parser.parse_args(argv)))


# ----------------------------------------------------------------------------- device
def pick_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name not in ("cpu", "cuda", "mps"):
        fail(f"--device: unknown device {name!r} (choose auto, cpu, cuda or mps)")
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        fail("--device mps: no MPS device is available")
    return name


def cpu_has_bf16():
    # Native bf16 matmuls need AVX512-BF16 or AMX; without them bf16 autocast is slower than fp32.
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device, precision="auto"):
    """bf16 autocast on CUDA and on bf16-capable CPUs (about 1.7x faster here), else fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        fail(f"--precision: unknown precision {precision!r} (choose auto, bf16 or fp32)")
    if precision == "auto":
        precision = "bf16" if device == "cuda" or (device == "cpu" and cpu_has_bf16()) else "fp32"
    if precision == "fp32" or device == "mps":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, *, stage, model, tokenizer, step=0, args=None, metrics=None, **extra):
    """Write atomically: a temp file in the same folder, then os.replace, so a crash mid-save
    leaves the previous checkpoint intact. Only plain types inside (weights_only=True loads it)."""
    assert stage in STAGES
    raw = model.module if hasattr(model, "module") else model  # unwrap DDP
    raw = getattr(raw, "_orig_mod", raw)  # unwrap torch.compile
    ckpt = {"stage": stage, "config": asdict(raw.config), "model": raw.state_dict(),
            "tokenizer": tokenizer.state_dict(), "step": int(step), "args": dict(args or {}),
            "metrics": dict(metrics or {}), **extra}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, stages=None, flag="--init"):
    """Load a checkpoint of this project; `stages` lists the stages the caller accepts."""
    if not os.path.isfile(path):
        fail(f"{flag} {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or holds arbitrary objects
        fail(f"{flag} {path}: not a checkpoint of this project ({type(e).__name__})")
    if not isinstance(ckpt, dict) or ckpt.get("stage") not in STAGES or "model" not in ckpt:
        fail(f"{flag} {path}: not a checkpoint of this project (no stage/model entries)")
    if stages is not None and ckpt["stage"] not in stages:
        fail(f"{flag} {path}: is a {ckpt['stage']!r} checkpoint, expected {' or '.join(stages)}")
    return ckpt


def load_model(path, stages=None, device="cpu", flag="--init"):
    """Checkpoint -> (GPT, Tokenizer, checkpoint dict)."""
    from gpt import GPT, GPTConfig
    from tokenizer import Tokenizer
    ckpt = load_checkpoint(path, stages, flag)
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device), Tokenizer.from_state_dict(ckpt["tokenizer"]), ckpt


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_responses(model, tok, prompts, max_new_tokens, temperature=1.0, top_k=None, seed=0,
                     batch_size=64, device="cpu"):
    """Generate one response per prompt in the chat template. Returns (responses, ended): token
    lists cut at <|end|> (the end token itself removed) and whether <|end|> was produced."""
    from data import encode_prompt
    end = tok.special_tokens["<|end|>"]
    gen = torch.Generator(device=device).manual_seed(seed)
    responses, ended = [], []
    was_training = model.training
    model.eval()
    for i in range(0, len(prompts), batch_size):
        batch = [encode_prompt(tok, p) for p in prompts[i:i + batch_size]]
        tokens, _ = model.generate(batch, max_new_tokens, temperature=temperature, top_k=top_k,
                                   stop_token=end, generator=gen)
        for t in tokens:
            ended.append(end in t)
            responses.append(t[: t.index(end)] if end in t else t)
    model.train(was_training)
    return responses, ended


# ----------------------------------------------------------------------------- schedules
def cosine_lr(step, max_steps, lr, warmup, min_lr_ratio=0.1):
    """Linear warm-up, then cosine decay to min_lr_ratio * lr (GPT-3 style)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- logging
class Log:
    """Progress lines on the screen and one JSON object per line in a .jsonl file."""

    def __init__(self, path, enabled=True, append=False):
        self.path, self.enabled, self.t0 = path, enabled, time.time()
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if not append:
                open(path, "w").close()

    def __call__(self, record, line=None):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if line:
            print(line, flush=True)

    def eta(self, done, total):
        elapsed = time.time() - self.t0
        return "?" if done == 0 else f"{elapsed / done * (total - done) / 60:.1f}m"


# ----------------------------------------------------------------------------- DDP
def ddp_setup(device):
    """Under torchrun: init the process group (gloo on CPU, nccl on GPU).
    Returns (rank, world_size, device); (0, 1, device) when run as a plain script."""
    if "RANK" not in os.environ:
        return 0, 1, device
    import torch.distributed as dist
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if device == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return rank, world, device


def ddp_cleanup():
    if "RANK" in os.environ:
        import torch.distributed as dist
        dist.destroy_process_group()

