"""The shared plumbing in common.py: the SVG charts every stage draws, the flags of every stage."""
import math
import xml.etree.ElementTree as ET

import pytest

import common
from conftest import SVG, read_chart


def test_svg_chart_holds_the_values_legend_ticks_and_markers(tmp_path):
    train = [(10 * i, 5.0 / (i + 1)) for i in range(20)]
    kl = [(0.5 * i, 0.6 + 0.01 * i) for i in range(8)]
    common.svg_chart(str(tmp_path / "c.svg"), [
        {"title": "loss", "xlabel": "step", "ylabel": "loss (nats)",
         "series": [("train <loss>", train), ("val", [(0, 5.0), (100, float("nan")), (190, 0.4)], "line+dots")]},
        {"title": "gold vs KL", "xlabel": "KL", "ylabel": "gold", "series": [("ppo", kl, "dots"), ("none", [(1, None)])],
         "markers": [(0.0, 0.55, "SFT")]}])
    series, texts = read_chart(tmp_path / "c.svg")
    flat = lambda points: [v for point in points for v in point]
    assert flat(series["train <loss>"]) == pytest.approx(flat(train), rel=1e-5)   # 6 significant digits
    assert flat(series["ppo"]) == pytest.approx(flat(kl), rel=1e-5)
    assert series["val"] == [(0, 5.0), (190, 0.4)] and series["none"] == []   # nan and None are left out
    for text in ("loss", "step", "loss (nats)", "train <loss>", "val", "gold vs KL", "KL", "gold", "ppo", "SFT"):
        assert text in texts, text
    assert {"0", "50", "200", "4", "0.55", "0.70"} <= set(texts)   # round ticks that cover the data
    dots = [len(g.findall(SVG + "circle")) for g in ET.parse(tmp_path / "c.svg").getroot().iter(SVG + "g")]
    assert dots == [0, 2, 8, 0]   # a dot per point of the "dots" series, none for plain lines


@pytest.mark.parametrize("lo, hi", [(0, 1), (0.013, 0.057), (-3.2, 41), (5, 5), (0, 0), (550, 550.0001)])
def test_nice_ticks_are_round_and_cover_the_range(lo, hi):
    ticks, step = common.nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 3 <= len(ticks) <= 12
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-9


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
]
IN_A_SUBPROCESS = {0, 2, 11, 23}   # these also as `python script.py ...`: the exit status and stderr themselves


@pytest.mark.parametrize("case", range(len(BAD)), ids=[f"{s} {f.split(' --init')[0]}" for s, f, _ in BAD])
def test_bad_input_is_one_line_a_nonzero_exit_and_no_traceback(bad_inputs, case, capsys):
    import importlib
    import subprocess
    import sys
    from conftest import ROOT
    script, flags, expected = BAD[case]
    argv = [a.format(d=bad_inputs) for a in flags.split()] + ["--device", "cpu"] * ("--device" not in flags)
    expected = expected.format(d=bad_inputs)
    with pytest.raises(SystemExit) as e:
        importlib.import_module(script).main(argv + ["--out", str(bad_inputs / "out.pt")] * ("--out" not in flags))
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ") and "\n" not in e.value.code
    assert expected in e.value.code, e.value.code
    assert not list(bad_inputs.glob("out*")), "nothing may be written before the check"
    if case in IN_A_SUBPROCESS:
        result = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), *argv], capture_output=True, text=True,
                                cwd=bad_inputs, timeout=120)
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr + result.stdout


# ----------------------------------------------------------------------------- --help, --resume, torchrun
STAGES = {"train_pretrain": "PretrainConfig", "train_sft": "SFTConfig", "train_rm": "RMConfig", "train_ppo": "PPOConfig"}


@pytest.mark.parametrize("script", STAGES)
def test_help_explains_every_flag_with_its_default_range_and_choices(script, capsys):
    import dataclasses
    import importlib
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())   # argparse wraps the lines
    assert module.__doc__.split("\n")[0] in text
    cls = getattr(module, STAGES[script])
    for f in dataclasses.fields(cls):
        meta, name = common.field_meta(cls, f.name), "--" + f.name.replace("_", "-")
        assert meta.get("help"), f"{script} {name} has no help"
        assert name in text
        if meta.get("within"):
            assert common.within_text(meta["within"]) in text, name
        if meta.get("choices"):
            assert "{" + ",".join(meta["choices"]) + "}" in text, name
    names = {f.name for f in dataclasses.fields(cls)}
    assert {"out", "resume", "seed", "device", "precision", "lr", "batch_size", "grad_clip"} <= names   # one spelling
    if script != "train_rm":
        assert {"max_iters", "max_minutes", "save_interval"} <= names


def test_sft_keeps_the_help_and_range_of_the_loop_flags_it_redefaults():
    import train_sft
    meta = common.field_meta(train_sft.SFTConfig, "lr")
    assert meta["within"] == "(0, inf)" and meta["help"].startswith("peak learning rate")
    assert train_sft.SFTConfig().lr == 5e-4


def test_resume_reads_the_runs_flags_and_refuses_a_fixed_one_that_differs(tmp_path, tiny_tok):
    import dataclasses
    from gpt import GPT, GPTConfig

    @dataclasses.dataclass
    class Toy(common.RunConfig):
        width: int = common.flag(4, "the model's width", "[1, inf)", fixed=True)
        lr: float = common.flag(0.1, "a learning rate", "(0, inf)")
        steps: int = common.flag(10, "steps", "[1, inf)")
    out = str(tmp_path / "toy.pt")
    saved = Toy(out=out, width=8, lr=0.5, steps=20, seed=7)
    model = GPT(GPTConfig(vocab_size=tiny_tok.n_vocab, block_size=8, n_layer=1, n_head=1, n_embd=8))
    common.save_checkpoint(out, stage="pretrain", model=model, tokenizer=tiny_tok, args=dataclasses.asdict(saved))
    cfg = common.parse_config(Toy, "toy", ["--resume", "--out", out, "--steps", "30"], stage="pretrain")
    assert cfg == dataclasses.replace(saved, steps=30, resume=True)   # only --steps changed
    assert common.parse_config(Toy, "toy", ["--resume", "--out", out, "--width", "8"], stage="pretrain").width == 8
    with pytest.raises(SystemExit, match=rf"^error: --width 9: {out} was trained with --width 8, and a resumed run"):
        common.parse_config(Toy, "toy", ["--resume", "--out", out, "--width", "9"], stage="pretrain")
    with pytest.raises(SystemExit, match=r"--steps 0: must be >= 1"):   # checked whatever the values come from
        common.parse_config(Toy, "toy", ["--resume", "--out", out, "--steps", "0"], stage="pretrain")
    assert common.parse_config(Toy, "toy", []) == Toy()   # without --resume: the defaults


REFUSAL = ("error: {}.py trains in one process: run it with python, not torchrun (multi-process training: "
           "train_pretrain.py and train_sft.py)")


def test_torchrun_of_ppo_is_refused_in_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from conftest import ROOT
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train_ppo.py"), "--out", str(tmp_path / "x.pt")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0 and not list(tmp_path.glob("x*"))
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [REFUSAL.format("train_ppo")]


@pytest.mark.parametrize("rank, said", [("0", REFUSAL.format("train_rm")), ("1", 0)])   # process 1 leaves quietly
def test_rm_under_torchrun_is_refused_once(monkeypatch, tmp_path, rank, said):
    import train_rm
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as e:
        train_rm.main(["--out", str(tmp_path / "x.pt")])
    assert e.value.code == said
