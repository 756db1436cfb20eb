"""Flags from a stage's config dataclass: each field carries its help, range and choices, and
parse_config turns the fields into an argparse parser and checks every value before any work starts.

A worked example. The field

    lr: float = flag(3e-4, "peak learning rate", gt=0)

becomes the flag `--lr FLOAT`, shown by --help as

    --lr FLOAT   peak learning rate (default 0.0003; > 0)

and `--lr -1` stops the script before any work with the one line

    error: --lr -1.0: must be > 0

A subclass that only changes a default (`lr: float = 5e-4`) keeps its parent's help and range
(field_meta), so the help lives once, where the field is first declared.
"""
import argparse
import dataclasses
import operator
import os
import tempfile

from common import fail, load_checkpoint

BOUNDS = {"gt": (">", operator.gt), "ge": (">=", operator.ge), "lt": ("<", operator.lt),
          "le": ("<=", operator.le)}


def flag(default, help, *, gt=None, ge=None, lt=None, le=None, choices=None, fixed=False,
         output=False):
    """A field of a stage's config that parse_config makes a flag. help: its --help text;
    gt/ge/lt/le: the bounds its value must keep (greater than, greater or equal, ...); choices: the
    values it may take;
    fixed: a run continued with --resume keeps the checkpoint's value (the model's shape, the data);
    output: a file the stage writes, checked for being writable before any work starts."""
    bounds = {k: v for k, v in dict(gt=gt, ge=ge, lt=lt, le=le).items() if v is not None}
    meta = dict(help=help, bounds=bounds, choices=choices, fixed=fixed, output=output)
    return dataclasses.field(default=default, metadata=meta)


def bounds_text(bounds):
    """{"ge": 1} -> ">= 1"; {"gt": 0} -> "> 0"; {"ge": 0, "lt": 1} -> "in [0, 1)"."""
    if len(bounds) == 1:
        (kind, value), = bounds.items()
        return f"{BOUNDS[kind][0]} {value}"
    lo = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds['gt']}"
    hi = f"{bounds['le']}]" if "le" in bounds else f"{bounds['lt']})"
    return f"in {lo}, {hi}"


def in_bounds(value, bounds):
    return all(BOUNDS[kind][1](value, limit) for kind, limit in bounds.items())


# Seeds are combined by arithmetic (pretraining's batch seed adds step * 7919) and torch takes at
# most 64 bits: 32 leave room.
MAX_SEED = 2**32 - 1


@dataclasses.dataclass
class RunConfig:
    """The flags every training stage has; a stage's config subclasses it and names its --out."""
    out: str = flag("out/model.pt", "the checkpoint to write; its log (.log.jsonl) and picture "
                    "(.svg) go next to it", output=True)
    resume: bool = flag(False, "continue --out with the flags it was run with; flags given now "
                        "override them")
    seed: int = flag(1337, "the seed of everything random (weights, batches, samples)", ge=0,
                     le=MAX_SEED)
    device: str = flag("auto", "auto: cuda, else mps, else cpu",
                       choices=("auto", "cpu", "cuda", "mps"))
    precision: str = flag("auto", "auto: bf16 autocast on GPUs and on CPUs with bf16, else fp32",
                          choices=("auto", "bf16", "fp32"))


@dataclasses.dataclass
class OptimizerConfig(RunConfig):
    """AdamW with a linear warm-up and a cosine decay: the optimizer of pretraining, SFT and the RM
    (each stage sets its own defaults; PPO's Adam has its own flags)."""
    lr: float = flag(2e-3, "peak learning rate (AdamW): linear warm-up, then cosine decay to a "
                     "tenth", gt=0)
    warmup_iters: int = flag(50, "steps of learning-rate warm-up", ge=0)
    weight_decay: float = flag(0.1, "AdamW weight decay, on matrices only", ge=0)
    grad_clip: float = flag(1.0, "largest global norm of the gradient", gt=0)


def check_writable(path, flag):
    """fail() unless a file can be written at path (missing folders are made later), before any
    slow work."""
    if os.path.isdir(path):
        fail(f"{flag} {path}: is a folder, expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):   # the nearest folder that exists: the rest are made in it
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        fail(f"{flag} {path}: {folder} is a file, not a folder")
    try:   # a real test (permissions, read-only disks): a file that is gone again at once
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        fail(f"{flag} {path}: cannot write in {folder} ({e.strerror.lower()})")


class FlagParser(argparse.ArgumentParser):
    def error(self, message):   # argparse's errors (a wrong type, an unknown flag): one line too
        fail(f"{message} (see --help)")


def field_meta(cls, name):
    """A field's flag() metadata; a subclass that only changes a default keeps its parent's."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata:
            return f.metadata
    return {}


def flag_name(field_name):
    return "--" + field_name.replace("_", "-")


def make_parser(cls, doc):
    """The argparse parser of a config: --field-name per field (bools --x/--no-x; a tuple of
    strings, default (), takes the flag once per value), the stage's own fields first; doc's first
    two paragraphs (title and examples) head --help."""
    parser = FlagParser(description="\n\n".join(doc.split("\n\n")[:2]),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    own_first = sorted(dataclasses.fields(cls), key=lambda f: f.name not in cls.__annotations__)
    for f in own_first:
        meta = field_meta(cls, f.name)
        notes = [f"default {f.default!r}" if f.default == "" else f"default {f.default}"]
        notes += [bounds_text(meta["bounds"])] if meta.get("bounds") else []
        text = f"{meta.get('help', '')} ({'; '.join(notes)})".replace("%", "%%")
        if f.type in (bool, "bool"):
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
            continue
        if f.type in (tuple, "tuple"):   # strings, one per use of the flag: --ckpt a --ckpt b
            parser.add_argument(flag_name(f.name), action="append", default=argparse.SUPPRESS,
                                help=text, metavar="STR")
            continue
        kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
        metavar = None if meta.get("choices") else kind.__name__.upper()
        parser.add_argument(flag_name(f.name), type=kind, default=argparse.SUPPRESS, help=text,
                            choices=meta.get("choices"), metavar=metavar)
    return parser


def resumed_values(cls, given, values, stage):
    """--resume: the run's own flags, read from its checkpoint --out; a `fixed` flag given now must
    not differ from the checkpoint's."""
    path = given.get("out", values["out"])
    saved = load_checkpoint(path, (stage,), flag="--resume")["args"]
    for key, value in given.items():
        if field_meta(cls, key).get("fixed") and key in saved and value != saved[key]:
            name = flag_name(key)
            fail(f"{name} {value}: {path} was trained with {name} {saved[key]}, and a resumed run "
                 f"keeps it (leave the flag out, or start a new run with another --out)")
    return {k: v for k, v in saved.items() if k in values}


def parse_config(cls, doc, argv=None, stage=None):
    """The config of a stage from its command line. Every value is checked here, before any slow
    work: the first bad one is one error line. --resume (a config with `resume` and `out` fields;
    `stage` is the checkpoint's) starts from the run's own flags: flags given now override only what
    they name."""
    given = vars(make_parser(cls, doc).parse_args(argv))
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}   # tuple fields
    values = {f.name: f.default for f in dataclasses.fields(cls)}
    if given.get("resume"):
        values.update(resumed_values(cls, given, values, stage))
    values.update(given)
    for key, value in values.items():
        bounds = field_meta(cls, key).get("bounds")
        if bounds and not in_bounds(value, bounds):
            fail(f"{flag_name(key)} {value}: must be {bounds_text(bounds)}")
    for key, value in values.items():
        if field_meta(cls, key).get("output"):
            check_writable(value, flag_name(key))
    return cls(**values)
