"""The flags of every stage (flags.py): help with defaults and ranges, checks before any work,
--resume reading the run's own flags, and one error line for every bad input."""
import pytest

import common
import flags


STAGES = {"train_pretrain": "PretrainConfig", "train_sft": "SFTConfig", "train_rm": "RMConfig", "train_ppo": "PPOConfig"}


def test_the_stages_spell_their_shared_flags_one_way():
    import dataclasses
    import importlib
    for script, config in STAGES.items():
        cls = getattr(importlib.import_module(script), config)
        names = {f.name for f in dataclasses.fields(cls)}
        assert {"out", "resume", "seed", "device", "precision", "lr", "batch_size",
                "grad_clip"} <= names, script
        if script != "train_rm":
            assert {"max_iters", "max_minutes", "save_interval"} <= names, script


def test_the_docstrings_worked_example_holds(capsys):
    """flags.py's docstring shows a field, its --help line and its error: they are what the code does."""
    import dataclasses
    import re
    doc = flags.__doc__
    field = re.search(r"^ +(lr: float = flag\(.*\))$", doc, re.M).group(1)
    help_line = re.search(r"^ +(--lr FLOAT .*)$", doc, re.M).group(1)
    error = re.search(r"^ +(error: --lr .*)$", doc, re.M).group(1)
    Example = dataclasses.make_dataclass("Example", [("lr", float, eval(field.split(" = ")[1], vars(flags)))])
    with pytest.raises(SystemExit):
        flags.parse_config(Example, "example", ["--help"])
    assert " ".join(help_line.split()) in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit, match=f"^{re.escape(error)}$"):
        flags.parse_config(Example, "example", ["--lr", "-1"])
    assert flags.parse_config(Example, "example", []).lr == 3e-4


@pytest.mark.parametrize("bounds, inside, outside, text", [
    ({"gt": 0}, [1e-9, 5], [0, -1], "> 0"),
    ({"ge": 1}, [1, 2], [0, 0.5], ">= 1"),
    ({"ge": 0, "lt": 1}, [0, 0.99], [1, -0.01], "in [0, 1)"),
    ({"gt": 0, "le": 1}, [1, 0.5], [0, 1.01], "in (0, 1]"),
    ({"ge": 2, "le": 9}, [2, 9], [1, 10], "in [2, 9]"),
])
def test_bounds_keep_their_edges(bounds, inside, outside, text):
    assert all(flags.in_bounds(v, bounds) for v in inside)
    assert not any(flags.in_bounds(v, bounds) for v in outside)
    assert flags.bounds_text(bounds) == text


def test_sft_keeps_the_help_and_range_of_the_loop_flags_it_redefaults():
    import train_sft
    meta = flags.field_meta(train_sft.SFTConfig, "lr")
    assert meta["bounds"] == {"gt": 0} and meta["help"].startswith("peak learning rate")
    assert train_sft.SFTConfig().lr == 5e-4


def test_resume_reads_the_runs_flags_and_refuses_a_fixed_one_that_differs(tmp_path, tiny_tok):
    import dataclasses
    from gpt import GPT, GPTConfig

    @dataclasses.dataclass
    class Toy(flags.RunConfig):
        width: int = flags.flag(4, "the model's width", ge=1, fixed=True)
        lr: float = flags.flag(0.1, "a learning rate", gt=0)
        steps: int = flags.flag(10, "steps", ge=1)
    out = str(tmp_path / "toy.pt")
    saved = Toy(out=out, width=8, lr=0.5, steps=20, seed=7)
    model = GPT(GPTConfig(vocab_size=tiny_tok.n_vocab, block_size=8, n_layer=1, n_head=1, n_embd=8))
    common.save_checkpoint(out, stage="pretrain", model=model, tokenizer=tiny_tok, args=dataclasses.asdict(saved))
    cfg = flags.parse_config(Toy, "toy", ["--resume", "--out", out, "--steps", "30"], stage="pretrain")
    assert cfg == dataclasses.replace(saved, steps=30, resume=True)   # only --steps changed
    assert flags.parse_config(Toy, "toy", ["--resume", "--out", out, "--width", "8"], stage="pretrain").width == 8
    with pytest.raises(SystemExit, match=rf"^error: --width 9: {out} was trained with --width 8, and a resumed run"):
        flags.parse_config(Toy, "toy", ["--resume", "--out", out, "--width", "9"], stage="pretrain")
    with pytest.raises(SystemExit, match=r"--steps 0: must be >= 1"):   # checked whatever the values come from
        flags.parse_config(Toy, "toy", ["--resume", "--out", out, "--steps", "0"], stage="pretrain")
    assert flags.parse_config(Toy, "toy", []) == Toy()   # without --resume: the defaults


# ----------------------------------------------------------------------------- bad input: one line, before any work
@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, tiny_tok):
    """A folder with good tiny checkpoints (sft.pt, rm.pt, a corpus) and bad files for the cases below."""
    from conftest import make_checkpoint
    d = tmp_path_factory.mktemp("bad")
    make_checkpoint(d / "sft.pt", "sft", tiny_tok)
    make_checkpoint(d / "rm.pt", "rm", tiny_tok)
    common.save_checkpoint(str(d / "rm_interrupted.pt"), stage="rm", model=__import__("gpt").GPT(
        __import__("gpt").GPTConfig(vocab_size=tiny_tok.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=32)),
        tokenizer=tiny_tok, step=7, optimizer={})   # what Ctrl-C leaves: no normalization yet
    (d / "truncated.pt").write_bytes((d / "sft.pt").read_bytes()[:5000])
    (d / "text.txt").write_text("hello\n")
    (d / "empty.jsonl").write_text("\n")
    (d / "folder").mkdir()
    (d / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": \n')
    return d


BAD = [  # (script, flags ({d}: the folder above), what the one line must say); missing files prove the order
    ("train_pretrain", "--lr -1 --data {d}/missing.txt", "--lr -1.0: must be > 0"),
    ("train_sft", "--lr -0.1 --init {d}/missing.pt", "--lr -0.1: must be > 0"),
    ("train_rm", "--lr -1 --init {d}/missing.pt", "--lr -1.0: must be > 0"),
    ("train_pretrain", "--batch-size 0", "--batch-size 0: must be >= 1"),
    ("train_ppo", "--batch-size 0 --init {d}/missing.pt", "--batch-size 0: must be >= 1"),
    ("train_pretrain", "--n-embd 33 --n-head 2 --data {d}/missing.txt", "--n-embd 33: must be a multiple of --n-head 2"),
    ("train_pretrain", "--n-embd 36 --n-head 4", "rotary positions (--pos rope) need an even head size"),
    ("train_pretrain", "--pos foo", "argument --pos: invalid choice: 'foo'"),
    ("train_pretrain", "--dropout 2", "--dropout 2.0: must be in [0, 1)"),
    ("train_pretrain", "--max-iters ten", "argument --max-iters: invalid int value: 'ten'"),
    ("train_sft", "--bogus 1", "unrecognized arguments: --bogus 1"),
    ("train_pretrain", "--out {d}/text.txt/pretrain.pt", "is a file, not a folder"),
    ("train_sft", "--out {d}/folder", "--out {d}/folder: is a folder, expected a file name"),
    ("train_rm", "--k 10 --init {d}/missing.pt", "--k 10: must be in [2, 9]"),
    ("train_ppo", "--beta -1 --init {d}/missing.pt", "--beta -1.0: must be >= 0"),
    ("train_ppo", "--gamma 1.5 --init {d}/missing.pt", "--gamma 1.5: must be in [0, 1]"),
    ("train_ppo", "--device tpu", "argument --device: invalid choice: 'tpu'"),
    ("train_sft", "--init {d}/folder", "--init {d}/folder: is a folder, expected a checkpoint file"),
    ("train_sft", "--init {d}/truncated.pt", "--init {d}/truncated.pt: truncated or corrupt"),
    ("train_sft", "--init {d}/text.txt", "--init {d}/text.txt: not a checkpoint of this project"),
    ("train_rm", "--init {d}/sft.pt --data {d}/missing.jsonl", "--data {d}/missing.jsonl: no such file"),
    ("train_pretrain", "--resume --out {d}/missing.pt", "--resume {d}/missing.pt: no such file"),
    ("train_pretrain", "--resume --out {d}/sft.pt", "--resume {d}/sft.pt: is a 'sft' checkpoint, expected pretrain"),
    ("train_ppo", "--init {d}/sft.pt --reward {d}/rm.pt --prompts {d}/empty.jsonl",
     "--prompts {d}/empty.jsonl: the file holds no records"),
    ("train_ppo", "--init {d}/sft.pt --reward {d}/sft.pt", "--reward {d}/sft.pt: is a 'sft' checkpoint, but --reward needs"),
    ("train_ppo", "--init {d}/sft.pt --reward {d}/rm_interrupted.pt", "an interrupted train_rm.py run (step 7); finish"),
    ("train_ppo", "--init {d}/sft.pt --reward {d}/rm.pt --max-new-tokens 60", "--max-new-tokens 60: the longest prompt"),
    ("train_pretrain", "--out /sys/x/pretrain.pt", "--out /sys/x/pretrain.pt: cannot write in /sys"),
    ("train_pretrain", "--data {d}/missing.txt", "--data {d}/missing.txt: no such file or folder"),
    ("train_pretrain", "--data {d}/folder", "--data {d}/folder: folder holds no .txt or .txt.gz files"),
    ("train_pretrain", "--tokenizer {d}/text.txt", "--tokenizer {d}/text.txt: "),
    ("train_sft", "--init {d}/sft.pt --data {d}/bad.jsonl", "{d}/bad.jsonl:2: not valid JSON"),
    ("train_rm", "--init {d}/sft.pt --data {d}/empty.jsonl", "--data {d}/empty.jsonl: the file holds no records"),
    ("eval", "--samples-per-prompt 0", "--samples-per-prompt 0: must be >= 1"),
    ("eval", "--out-dir {d}/folder", "--out-dir {d}/folder: no pretrain.pt, sft.pt or ppo.pt there"),
    ("eval", "--sft {d}/text.txt", "--sft {d}/text.txt: not a checkpoint of this project"),
    ("train_pretrain", "--seed 99999999999999999999 --data {d}/missing.txt",
     "--seed 99999999999999999999: must be in [0, 4294967295]"),
    ("train_sft", "--init {d}/sft.pt --corpus {d}/missing.txt",
     "--corpus {d}/missing.txt: no such file or folder"),
    ("train_ppo", "--init {d}/sft.pt --reward {d}/rm.pt --max-new-tokens 16 --ptx-coef 1 "
     "--ptx-data {d}/folder",
     "--ptx-data {d}/folder: folder holds no .txt or .txt.gz files"),
]
IN_A_SUBPROCESS = {0, 2, 11, 23, 27, 35}   # these also as `python script.py ...`: the exit status and stderr themselves


@pytest.mark.parametrize("case", range(len(BAD)), ids=[f"{s} {f.split(' --init')[0]}" for s, f, _ in BAD])
def test_bad_input_is_one_line_a_nonzero_exit_and_no_traceback(bad_inputs, case, capsys):
    import importlib
    import subprocess
    import sys
    from conftest import ROOT
    script, given, expected = BAD[case]
    argv = [a.format(d=bad_inputs) for a in given.split()] + ["--device", "cpu"] * ("--device" not in given)
    expected = expected.format(d=bad_inputs)
    if script == "eval":   # eval writes eval.md into --out-dir
        argv += ["--out-dir", str(bad_inputs / "out")] * ("--out-dir" not in given)
    else:
        argv += ["--out", str(bad_inputs / "out.pt")] * ("--out" not in given)
    with pytest.raises(SystemExit) as e:
        importlib.import_module(script).main(argv)
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ") and "\n" not in e.value.code
    assert expected in e.value.code, e.value.code
    assert not list(bad_inputs.glob("out*")), "nothing may be written before the check"
    assert not list(bad_inputs.glob("*.md")) and not list(bad_inputs.glob("folder/*"))
    if case in IN_A_SUBPROCESS:
        result = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), *argv], capture_output=True, text=True,
                                cwd=bad_inputs, timeout=120)
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr + result.stdout


# ----------------------------------------------------------------------------- the front ends
def test_a_tuple_field_is_a_flag_given_once_per_value(capsys):
    """serve.py's --ckpt a.pt --ckpt b.pt: a field typed tuple, default (), collects each use of its
    flag, in order."""
    import dataclasses
    import serve

    @dataclasses.dataclass
    class Toy:
        ckpt: tuple = flags.flag((), "a checkpoint; repeat the flag for several")
        port: int = flags.flag(8000, "a port", ge=0)
    assert flags.parse_config(Toy, "toy", []) == Toy(ckpt=(), port=8000)
    argv = ["--ckpt", "a.pt", "--port", "1", "--ckpt", "b.pt"]
    assert flags.parse_config(Toy, "toy", argv) == Toy(ckpt=("a.pt", "b.pt"), port=1)
    with pytest.raises(SystemExit, match="^error: argument --ckpt: expected one argument"):
        flags.parse_config(Toy, "toy", ["--ckpt"])
    with pytest.raises(SystemExit):
        flags.parse_config(Toy, "toy", ["--help"])
    assert "--ckpt STR" in capsys.readouterr().out
    cfg = flags.parse_config(serve.ServeConfig, serve.__doc__, argv[:2] + argv[4:])
    assert cfg.ckpt == ("a.pt", "b.pt")


FRONT_ENDS = {"chat": "ChatConfig", "label": "LabelConfig", "serve": "ServeConfig",
              "pipeline": "PipelineConfig"}


@pytest.mark.parametrize("script", [*STAGES, "redteam", "eval", *FRONT_ENDS])
def test_help_explains_every_flag_with_its_default_range_and_choices(script, capsys):
    """Every script takes its flags from a config (flags.py): each one is in --help with its
    help, its default and its range or choices, under the script's first docstring line."""
    import dataclasses
    import importlib
    import re
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())   # argparse wraps the lines
    assert module.__doc__.split("\n")[0] in text
    cls = getattr(module, {**STAGES, "redteam": "RedTeamConfig", "eval": "EvalConfig",
                           **FRONT_ENDS}[script])
    for f in dataclasses.fields(cls):
        meta, name = flags.field_meta(cls, f.name), flags.flag_name(f.name)
        assert meta.get("help"), f"{script} {name} has no help"
        assert re.search(rf"(?<![\w-]){name}(?![\w-])", text), name
        assert " ".join(meta["help"].split()[:4]) in text, name
        default = f"default {f.default!r}" if f.default == "" else f"default {f.default}"
        assert default in text, name
        if meta.get("bounds"):
            assert flags.bounds_text(meta["bounds"]) in text, name
        if meta.get("choices"):
            assert "{" + ",".join(meta["choices"]) + "}" in text, name


FRONT_BAD = [  # (script, flags ({d}: bad_inputs' folder), what the one line must say)
    ("chat", "--temperature -1 --ckpt {d}/missing.pt", "--temperature -1.0: must be >= 0"),
    ("chat", "--top-p 0 --ckpt {d}/missing.pt", "--top-p 0.0: must be in (0, 1]"),
    ("chat", "--seed -2 --ckpt {d}/missing.pt", "--seed -2: must be in [-1, 4294967295]"),
    ("chat", "--ckpt {d}/missing.pt --prompt hi", "--ckpt {d}/missing.pt: no such file"),
    ("label", "--k 10 --ckpt {d}/missing.pt", "--k 10: must be in [2, 9]"),
    ("label", "--port 70000", "--port 70000: must be in [0, 65535]"),
    ("label", "--ckpt {d}/rm.pt", "--ckpt {d}/rm.pt: is a 'rm' checkpoint"),
    ("serve", "--max-batch 0 --ckpt {d}/missing.pt", "--max-batch 0: must be >= 1"),
    ("serve", "--ckpt {d}/sft.pt --ckpt {d}/missing.pt", "--ckpt {d}/missing.pt: no such file"),
    ("pipeline", "--rounds 0", "--rounds 0: must be >= 1"),
    ("pipeline", "--rounds two", "argument --rounds: invalid int value: 'two'"),
]


@pytest.mark.parametrize("case", range(len(FRONT_BAD)), ids=[f"{s} {f}" for s, f, _ in FRONT_BAD])
def test_bad_input_to_a_front_end_is_one_line(bad_inputs, case):
    """In-process and as `python script.py ...`: one error line, exit status 1, no traceback, and
    nothing written (label's --out and pipeline's --out-dir point into the folder)."""
    import importlib
    import subprocess
    import sys
    from conftest import ROOT
    script, given, expected = FRONT_BAD[case]
    argv = [a.format(d=bad_inputs) for a in given.split()]
    argv += {"chat": ["--device", "cpu"], "serve": ["--device", "cpu"],
             "label": ["--device", "cpu", "--out", str(bad_inputs / "out.jsonl")],
             "pipeline": ["--out-dir", str(bad_inputs / "out")]}[script]
    expected = expected.format(d=bad_inputs)
    with pytest.raises(SystemExit) as e:
        importlib.import_module(script).main(argv)
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ")
    assert "\n" not in e.value.code and expected in e.value.code, e.value.code
    result = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), *argv], capture_output=True,
                            text=True, cwd=bad_inputs, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not list(bad_inputs.glob("out*")), "nothing may be written"
