"""What every stage shares: errors, flags, device and precision, checkpoints, the reward model's reader,
logging, Ctrl-C, pictures (SVG charts), DDP.

Each training script imports these instead of writing its own, so a checkpoint written by one stage is read
the same way by every other one, and every stage's flags are explained and checked the same way (parse_config).
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import pickle
import signal
import sys
import time
from dataclasses import asdict
from xml.sax.saxutils import escape, quoteattr

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
    """write(tmp) fills a temp file beside path, then os.replace puts it there: a crash leaves the old file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- flags
def flag(default, help, within=None, choices=None, fixed=False, output=False):
    """A field of a stage's config that parse_config makes a flag. help: its --help text; within: an interval,
    written as in mathematics ("(0, inf)", "[0, 1)"), the value must lie in; choices: the values it may take;
    fixed: a run continued with --resume keeps the checkpoint's value (the model's shape, the data);
    output: a file the stage writes, checked for being writable before any work starts."""
    return dataclasses.field(default=default, metadata=dict(help=help, within=within, choices=choices,
                                                            fixed=fixed, output=output))


@dataclasses.dataclass
class RunConfig:
    """The flags every training stage has; a stage's config subclasses it and names its own --out default."""
    out: str = flag("out/model.pt", "the checkpoint to write; its log (.log.jsonl) and picture (.svg) go next to it",
                    output=True)
    resume: bool = flag(False, "continue --out with the flags it was run with; flags given now override them")
    seed: int = flag(1337, "the seed of everything random (weights, batches, samples)")
    device: str = flag("auto", "auto: cuda, else mps, else cpu", choices=("auto", "cpu", "cuda", "mps"))
    precision: str = flag("auto", "auto: bf16 autocast on GPUs and on CPUs with bf16, else fp32",
                          choices=("auto", "bf16", "fp32"))


def within_text(interval):
    """"[1, inf)" -> ">= 1", "(0, inf)" -> "> 0", "[0, 1)" -> "in [0, 1)"."""
    lo, hi = (v.strip() for v in interval[1:-1].split(","))
    return ((">= " if interval[0] == "[" else "> ") + lo) if hi == "inf" else f"in {interval}"


def is_within(value, interval):
    lo, hi = (float(v) for v in interval[1:-1].split(","))
    return (lo <= value if interval[0] == "[" else lo < value) and (value <= hi if interval[-1] == "]" else value < hi)


def check_writable(path, flag):
    """fail() unless a file can be written at path (missing folders are made later), before any slow work."""
    if os.path.isdir(path):
        fail(f"{flag} {path}: is a folder, expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):   # the nearest folder that exists: the others will be made in it
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        fail(f"{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK):
        fail(f"{flag} {path}: cannot write in {folder} (permission denied)")


class FlagParser(argparse.ArgumentParser):
    def error(self, message):   # argparse's own errors (a value of the wrong type, an unknown flag): one line too
        fail(f"{message} (see --help)")


def field_meta(cls, name):
    """A field's flag() metadata. A subclass that only changes a default (lr: float = 5e-4) keeps its parent's."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata:
            return f.metadata
    return {}


def parse_config(cls, doc, argv=None, stage=None):
    """The flags of a stage, from its config dataclass: every field becomes --field-name (bools --x/--no-x) with
    the help, range and choices of its flag() metadata; the script's title and examples (doc's first two
    paragraphs) head --help. Every value is checked here, before any slow work: the first bad one is one error
    line. --resume (a config with `resume` and `out` fields; `stage` is the checkpoint's) reads the run's own
    flags from the checkpoint --out: flags given now override only what they name, and a `fixed` one must not
    differ from the checkpoint's."""
    parser = FlagParser(description="\n\n".join(doc.split("\n\n")[:2]),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name not in cls.__annotations__)  # the stage's own first
    for f in fields:
        meta, name = field_meta(cls, f.name), "--" + f.name.replace("_", "-")
        notes = [f"default {f.default!r}" if f.default == "" else f"default {f.default}"]
        notes += [within_text(meta["within"])] if meta.get("within") else []
        text = f"{meta.get('help', '')} ({'; '.join(notes)})".replace("%", "%%")
        if f.type in (bool, "bool"):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(name, type=kind, default=argparse.SUPPRESS, help=text, choices=meta.get("choices"),
                                metavar=None if meta.get("choices") else kind.__name__.upper())
    given = vars(parser.parse_args(argv))
    values = {f.name: f.default for f in fields}
    if given.get("resume"):
        path = given.get("out", values["out"])
        saved = load_checkpoint(path, (stage,), flag="--resume")["args"]
        for key, value in given.items():
            if field_meta(cls, key).get("fixed") and key in saved and value != saved[key]:
                name = "--" + key.replace("_", "-")
                fail(f"{name} {value}: {path} was trained with {name} {saved[key]}, and a resumed run keeps it "
                     f"(leave the flag out, or start a new run with another --out)")
        values.update({k: v for k, v in saved.items() if k in values})
    values.update(given)
    for key, value in values.items():
        meta = field_meta(cls, key)
        if meta.get("within") and not is_within(value, meta["within"]):
            fail(f"--{key.replace('_', '-')} {value}: must be {within_text(meta['within'])}")
    for key, value in values.items():
        if field_meta(cls, key).get("output"):
            check_writable(value, "--" + key.replace("_", "-"))
    return cls(**values)


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
    """Written atomically (write_atomically). Only plain types inside (weights_only=True loads it)."""
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
        if zipped and isinstance(e, pickle.UnpicklingError):   # a whole file, refused by weights_only=True
            fail(f"{flag} {path}: holds objects other than tensors and plain values; not loaded (weights_only=True)")
        fail(f"{flag} {path}: " + ("truncated or corrupt (not a whole torch file; was its writing interrupted?)"
                                   if zipped else "not a checkpoint of this project (not a torch file)"))
    if not isinstance(ckpt, dict) or ckpt.get("stage") not in STAGES or "model" not in ckpt:
        fail(f"{flag} {path}: not a checkpoint of this project (no stage/model entries)")
    if stages is not None and ckpt["stage"] not in stages:
        fail(f"{flag} {path}: is a {ckpt['stage']!r} checkpoint, expected {' or '.join(stages)}")
    return ckpt


def load_resume(cfg, stage):
    """The checkpoint --resume continues (None without --resume): cfg.out, holding its optimizer's state."""
    if not cfg.resume:
        return None
    ckpt = load_checkpoint(cfg.out, (stage,), flag="--resume")
    if "optimizer" not in ckpt:
        fail(f"--resume {cfg.out}: holds no optimizer state (a finished run), so it cannot be continued; "
             f"train anew with another --out")
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
    """The loader for a reward model: an "rm" checkpoint -> (reward, model, tok, ckpt). reward(prompts,
    responses) -> FloatTensor (B,) on device: gain * r + bias (fitted by train_rm: SFT samples score mean 0,
    std 1) of token lists, prompts as data.encode_prompt and responses as data.sample_responses make them."""
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
        return torch.tensor(gain * score_all(model, seqs, device, ctx) + bias, dtype=torch.float32, device=device)
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
        warn(f"--warmup-iters {warmup} is longer than the run ({steps} steps): the learning rate never reaches --lr")


# ----------------------------------------------------------------------------- logging
class Log:
    """Progress lines on the screen and one JSON object per line in a .jsonl file, also kept in self.records
    (what the stage's picture is drawn from). A resumed run passes resume_at, its checkpoint's step: the
    records up to it stay, those after it (written after that save) go, since the run writes them again."""

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
    """Inside the block a Ctrl-C (SIGINT) only sets a flag, which stop() reads: the training loop checks it
    between steps, where weights and optimizer agree, saves there and exits (a second Ctrl-C quits at once).
    Under torchrun every process gets it, and stop() is true on all of them if any one was pressed."""
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
    """After the loop saved on Ctrl-C: the one line that says how to continue, and exit status 130 (SIGINT's)."""
    print(f"interrupted at {unit} {step}: saved {out}; continue with: python {script} --resume --out {out}",
          file=sys.stderr, flush=True)
    raise SystemExit(130)


def run_script(main):
    """A script's entry point: Ctrl-C before or after its training loop (or a second one) ends with one line."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; nothing saved since the last checkpoint", file=sys.stderr)
        raise SystemExit(130) from None


# ----------------------------------------------------------------------------- pictures
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")


def nice_ticks(lo, hi, n=5, integer=False):
    """About n round values (1, 2 or 5 times a power of ten apart; integer: at least 1) from at or below lo to
    at or above hi."""
    if hi - lo < 1e-12:   # a flat line: give it some room
        lo, hi = lo - (abs(lo) * 0.1 or 0.5), hi + (abs(hi) * 0.1 or 0.5)
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    step = max(step, 1) if integer else step
    first = math.floor(lo / step + 1e-9) * step
    return [first + i * step for i in range(math.ceil((hi - first) / step - 1e-9) + 1)], step


def svg_chart(path, panels, width=440, height=300):
    """Write one or more charts (two per row) into one SVG file; returns path. A panel is a dict:
        title, xlabel, ylabel
        series:  [(name, [(x, y), ...], style)], style "line" (if left out), "dots" or "line+dots";
                 points whose y is None or not finite are skipped
        markers: [(x, y, label)] (optional), single points drawn as black diamonds with their label.
    Every series' values are kept in its group's data-points attribute, so the picture can be read back."""
    cols = min(2, len(panels))
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * width}" '
           f'height="{math.ceil(len(panels) / cols) * height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']
    for n, panel in enumerate(panels):
        svg += chart_panel(panel, (n % cols) * width, (n // cols) * height, width, height)
    text = "\n".join(svg + ["</svg>"]) + "\n"
    write_atomically(path, lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))
    return path


def chart_panel(panel, x0, y0, w, h):
    """The SVG elements of one chart whose top-left corner is (x0, y0): title, legend, axes, ticks, data."""
    ok = lambda v: v is not None and math.isfinite(v)
    series = [(s[0], [(x, y) for x, y in s[1] if ok(x) and ok(y)], (*s[2:], "line")[0]) for s in panel["series"]]
    markers = list(panel.get("markers", ()))
    xs = [x for _, pts, _ in series for x, _ in pts] + [m[0] for m in markers]
    ys = [y for _, pts, _ in series for _, y in pts] + [m[1] for m in markers]
    xt, xstep = nice_ticks(min(xs, default=0), max(xs, default=1), integer=all(float(x).is_integer() for x in xs))
    yt, ystep = nice_ticks(min(ys, default=0), max(ys, default=1))
    label = lambda v, step: f"{v:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"   # as many decimals as the step
    left = x0 + 24 + 6.5 * max(len(label(v, ystep)) for v in yt)   # room for the y tick labels and the y label
    out = [f'<text x="{x0 + w / 2}" y="{y0 + 18}" text-anchor="middle" font-size="13">{escape(panel["title"])}</text>']
    # the legend: one entry per series, left to right under the title, a new row when one is full
    lx, ly = left, y0 + 36
    for i, (name, _, style) in enumerate(series):
        entry_w = 30 + 6.5 * len(name)
        if lx + entry_w > x0 + w - 10 and lx > left:
            lx, ly = left, ly + 15
        c = COLORS[i % len(COLORS)]
        if "line" in style:
            out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{c}" stroke-width="2"/>')
        if "dots" in style:
            out.append(f'<circle cx="{lx + 9}" cy="{ly - 4}" r="3" fill="{c}"/>')
        out.append(f'<text x="{lx + 23}" y="{ly}">{escape(name)}</text>')
        lx += entry_w
    # the plot area and the maps from values to pixels
    right, top, bottom = x0 + w - 15, ly + 12, y0 + h - 42
    sx = lambda x: left + (right - left) * (x - xt[0]) / (xt[-1] - xt[0])
    sy = lambda y: bottom - (bottom - top) * (y - yt[0]) / (yt[-1] - yt[0])
    for v in xt:
        out.append(f'<line x1="{sx(v):.1f}" y1="{top}" x2="{sx(v):.1f}" y2="{bottom + 4}" stroke="#ddd"/>')
        out.append(f'<text x="{sx(v):.1f}" y="{bottom + 16}" text-anchor="middle">{label(v, xstep)}</text>')
    for v in yt:
        out.append(f'<line x1="{left - 4}" y1="{sy(v):.1f}" x2="{right}" y2="{sy(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 7}" y="{sy(v) + 4:.1f}" text-anchor="end">{label(v, ystep)}</text>')
    out.append(f'<path d="M{left},{top} V{bottom} H{right}" stroke="#333" fill="none"/>')
    out.append(f'<text x="{(left + right) / 2}" y="{y0 + h - 8}" text-anchor="middle">{escape(panel["xlabel"])}</text>')
    out.append(f'<text transform="translate({x0 + 14},{(top + bottom) / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(panel["ylabel"])}</text>')
    for i, (name, pts, style) in enumerate(series):
        c = COLORS[i % len(COLORS)]
        out.append(f'<g data-name={quoteattr(name)} data-points="{" ".join(f"{x:.6g},{y:.6g}" for x, y in pts)}">')
        if "line" in style and len(pts) > 1:
            xy = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{xy}" fill="none" stroke="{c}" stroke-width="1.5"/>')
        if "dots" in style or len(pts) == 1:   # a line of one point is a dot
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{c}"/>' for x, y in pts]
        out.append("</g>")
    for x, y, text in markers:
        px, py = sx(x), sy(y)
        out.append(f'<path d="M{px:.1f},{py - 5:.1f} l5,5 l-5,5 l-5,-5 z" fill="black"/>')
        side = (px + 8, "start") if px < (left + right) / 2 else (px - 8, "end")   # the label stays inside
        out.append(f'<text x="{side[0]:.1f}" y="{py - 5:.1f}" text-anchor="{side[1]}">{escape(text)}</text>')
    return out


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
    """Stages without multi-process training refuse torchrun with one line (each copy would write --out)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if os.environ.get("RANK", "0") != "0":
            raise SystemExit(0)   # quietly: torchrun would stop process 0 before it says why
        fail(f"{script} trains in one process: run it with python, not torchrun "
             f"(multi-process training: train_pretrain.py and train_sft.py)")


def ddp_cleanup():
    if dist.is_initialized():
        dist.barrier()   # together: a process that leaves while another still uses the group can abort it
        dist.destroy_process_group()

