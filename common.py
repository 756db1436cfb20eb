"""What every stage shares: errors, device and precision, checkpoints, the reward model's reader,
schedules, logging, Ctrl-C, DDP.

Each training script imports these instead of writing its own, so a checkpoint written by one
stage is read the same way by every other one. The flags live in flags.py, the pictures in plot.py.
"""
import contextlib
import json
import math
import os
import pickle
import signal
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist

from gpt import GPT, GPTConfig, left_pad
from tokenizer import Tokenizer

STAGES = ("pretrain", "sft", "rm", "ppo")
POLICY_STAGES = ("pretrain", "sft", "ppo")  # checkpoints that can generate text


def fail(msg):
    """Bad input: one clear line on stderr and a non-zero exit (no traceback)."""
    raise SystemExit(f"error: {msg}")


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def last_index(mask):
    """Column of each row's last True entry: the last real token (left or right padding)."""
    cols = torch.arange(mask.shape[1], device=mask.device)
    return (mask * cols).argmax(1)


@contextlib.contextmanager
def eval_mode(model):
    """Dropout off inside the block; the model's train/eval mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def write_atomically(path, write):
    """write(tmp) fills a temp file beside path, then os.replace puts it there: a crash leaves the
    old file (or none), and no temp file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:   # Ctrl-C or an error mid-write: no half-written file stays behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
    """Written atomically (write_atomically), plain types only (weights_only=True loads it)."""
    assert stage in STAGES
    raw = model.module if hasattr(model, "module") else model  # unwrap DDP
    raw = getattr(raw, "_orig_mod", raw)  # unwrap torch.compile
    ckpt = {"stage": stage, "config": asdict(raw.config), "model": raw.state_dict(),
            "tokenizer": tokenizer.state_dict(), "step": int(step), "args": dict(args or {}),
            "metrics": dict(metrics or {}), **extra}
    write_atomically(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path, stages=None, flag="--init"):
    """Load a checkpoint of this project; `stages` lists the stages the caller accepts."""
    if os.path.isdir(path):
        fail(f"{flag} {path}: is a folder, expected a checkpoint file")
    if not os.path.isfile(path):
        fail(f"{flag} {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"   # torch.save writes a zip archive
        if zipped and isinstance(e, pickle.UnpicklingError):  # a whole file weights_only refused
            fail(f"{flag} {path}: holds objects other than tensors and plain values; not loaded "
                 f"(weights_only=True)")
        fail(f"{flag} {path}: "
             + ("truncated or corrupt (not a whole torch file; was its writing interrupted?)"
                if zipped else "not a checkpoint of this project (not a torch file)"))
    if not isinstance(ckpt, dict) or ckpt.get("stage") not in STAGES or "model" not in ckpt:
        fail(f"{flag} {path}: not a checkpoint of this project (no stage/model entries)")
    if stages is not None and ckpt["stage"] not in stages:
        fail(f"{flag} {path}: is a {ckpt['stage']!r} checkpoint, expected {' or '.join(stages)}")
    return ckpt


def load_resume(cfg, stage):
    """The checkpoint --resume continues, cfg.out with its optimizer state (None without it)."""
    if not cfg.resume:
        return None
    ckpt = load_checkpoint(cfg.out, (stage,), flag="--resume")
    if "optimizer" not in ckpt:
        fail(f"--resume {cfg.out}: holds no optimizer state (a finished run), so it cannot be "
             f"continued; train anew with another --out")
    return ckpt


def load_model(path, stages=None, device="cpu", flag="--init"):
    """Checkpoint -> (GPT, Tokenizer, checkpoint dict): the loader for a policy (or any trunk)."""
    ckpt = load_checkpoint(path, stages, flag)
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device), Tokenizer.from_state_dict(ckpt["tokenizer"]), ckpt


def check_tokenizer(tok, expected, where, whose):
    """Token ids mean nothing across tokenizers: fail() unless two checkpoints share one."""
    if tok.state_dict() != expected.state_dict():
        fail(f"{where}: its tokenizer differs from {whose}")


# ----------------------------------------------------------------------------- the reward model
def rm_score(model, idx, pad_mask):
    """Reward (B,) of each row: the scalar head at the row's last real token (the <|end|>), never
    mean-pooled (left or right padding)."""
    h = model.hidden(idx, pad_mask)
    return model.scalar(h[torch.arange(len(idx), device=idx.device), last_index(pad_mask)]).float()


def score_seqs(model, seqs, device):
    """Rewards (with grad) of token lists prompt+response; too long rows keep their end."""
    idx, mask = left_pad([s[-model.config.block_size:] for s in seqs], device=device)
    return rm_score(model, idx, mask)


@torch.no_grad()
def score_all(model, seqs, device, ctx, batch_size=64):
    """Raw rewards of many sequences as a numpy array, in eval mode, batch by batch."""
    out = []
    with eval_mode(model):
        for i in range(0, len(seqs), batch_size):
            with ctx:
                out.append(score_seqs(model, seqs[i:i + batch_size], device).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def load_reward_model(path, device="cpu", flag="--reward", precision="auto"):
    """The loader for a reward model: an "rm" checkpoint -> (reward, model, tok, ckpt).
    reward(prompts, responses) -> FloatTensor (B,) on device: gain * r + bias (fitted by train_rm:
    SFT samples score mean 0, std 1) of token lists, prompts as data.encode_prompt and responses as
    data.sample_responses make them."""
    model, tok, ckpt = load_model(path, None, device, flag)
    if ckpt["stage"] == "rm" and "rm_gain" not in ckpt:
        fail(f"{flag} {path}: an interrupted train_rm.py run (step {ckpt['step']}); finish it with "
             f"python train_rm.py --resume --out {path}")
    if ckpt["stage"] != "rm":
        fail(f"{flag} {path}: is a {ckpt['stage']!r} checkpoint, but {flag} needs a reward model "
             f"(stage 'rm', written by train_rm.py)")
    model.eval().requires_grad_(False)
    gain, bias, ctx = ckpt["rm_gain"], ckpt["rm_bias"], autocast(device.split(":")[0], precision)

    def reward(prompts, responses):
        seqs = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
        return torch.tensor(gain * score_all(model, seqs, device, ctx) + bias,
                            dtype=torch.float32, device=device)
    return reward, model, tok, ckpt


# ----------------------------------------------------------------------------- schedules
def cosine_lr(step, max_steps, lr, warmup, min_lr_ratio=0.1):
    """Linear warm-up, then cosine decay to min_lr_ratio * lr (GPT-3 style)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def warn_warmup(warmup, steps):
    if warmup > steps:
        warn(f"--warmup-iters {warmup} is longer than the run ({steps} steps): the learning rate "
             f"never reaches --lr")


# ----------------------------------------------------------------------------- logging
class Log:
    """Progress lines on the screen and one JSON object per line in a .jsonl file, also kept in
    self.records (what the stage's picture is drawn from). A resumed run passes resume_at, its
    checkpoint's step: the records up to it stay, those after it (written after that save) go,
    since the run writes them again."""

    def __init__(self, path, enabled=True, resume_at=None, key="step"):
        self.path, self.enabled, self.t0, self.records = path, enabled, time.time(), []
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if resume_at is not None and os.path.exists(path):
                with open(path) as f:
                    records = [json.loads(line) for line in f if line.strip()]
                self.records = [r for r in records if r.get(key, math.inf) <= resume_at]
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.records)

    def __call__(self, record, line=None):
        if not self.enabled:
            return
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if line:
            print(line, flush=True)


def eta(t0, done, total):
    """Time left, in minutes, when `done` of this run's `total` steps took the time since t0."""
    return "?" if done <= 0 else f"{(time.time() - t0) / done * (total - done) / 60:.1f}m"


# ----------------------------------------------------------------------------- Ctrl-C
@contextlib.contextmanager
def ctrl_c_stops():
    """Inside the block a Ctrl-C (SIGINT) only sets a flag, which stop() reads: the training loop
    checks it between steps, where weights and optimizer agree, saves there and exits (a second
    Ctrl-C quits at once). Under torchrun every process gets it, and stop() is true on all of them
    if any one was pressed."""
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)

    def stop():
        flag = torch.tensor([float(bool(pressed))])
        if dist.is_initialized():   # all processes must stop at the same step
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
    old = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, old)


def interrupted(script, out, step, unit="step"):
    """After the loop saved on Ctrl-C: the one line that says how to continue, and exit status 130
    (SIGINT's)."""
    print(f"interrupted at {unit} {step}: saved {out}; "
          f"continue with: python {script} --resume --out {out}", file=sys.stderr, flush=True)
    raise SystemExit(130)


def run_script(main, on_interrupt="interrupted; nothing saved since the last checkpoint"):
    """A script's entry point: a Ctrl-C outside its training loop (or a second one) ends in one
    line, on_interrupt."""
    try:
        main()
    except KeyboardInterrupt:
        print(on_interrupt, file=sys.stderr)
        raise SystemExit(130) from None


# ----------------------------------------------------------------------------- DDP
def ddp_setup(device):
    """Under torchrun: init the process group (gloo on CPU, nccl on GPU).
    Returns (rank, world_size, device); (0, 1, device) when run as a plain script."""
    if "RANK" not in os.environ:
        return 0, 1, device
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if device == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return rank, world, device


def single_process(script):
    """Stages without multi-process training refuse torchrun, in one line (every copy
    would write --out)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if os.environ.get("RANK", "0") != "0":
            raise SystemExit(0)   # quietly: torchrun would stop process 0 before it says why
        fail(f"{script} trains in one process: run it with python, not torchrun "
             f"(multi-process training: train_pretrain.py and train_sft.py)")


def ddp_cleanup():
    if dist.is_initialized():
        dist.barrier()   # together: a process that leaves while another uses the group can abort it
        dist.destroy_process_group()

