"""Pretraining and the shared plumbing: training, resume, DDP, atomic checkpoints, bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
import common
import train_pretrain

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--vocab-size", "300", "--eval-interval", "10", "--eval-iters", "2", "--warmup-iters", "2",
        "--lr", "3e-3", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture
def corpus(tmp_path, corpus_text):
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text[:60_000])
    return path


def run(tmp_path, corpus, *flags):
    train_pretrain.main(["--data", str(corpus), "--out", str(tmp_path / "pretrain.pt"), *TINY, *flags])
    log = [json.loads(line) for line in open(tmp_path / "pretrain.log.jsonl")]
    return {r["step"]: r["loss"] for r in log if "loss" in r}, [r["val_loss"] for r in log if "val_loss" in r]


def test_trains_and_checkpoint_is_self_contained(tmp_path, corpus):
    losses, val = run(tmp_path, corpus, "--max-iters", "30")
    assert val[-1] < val[0] - 0.5  # from ~ln(300) = 5.7 it must learn something
    ckpt = torch.load(tmp_path / "pretrain.pt", map_location="cpu", weights_only=True)
    assert ckpt["stage"] == "pretrain" and ckpt["step"] == 30 and ckpt["config"]["n_embd"] == 32
    model, tok, _ = common.load_model(str(tmp_path / "pretrain.pt"))
    assert tok.n_vocab == model.config.vocab_size == 300
    assert tok.decode(tok.encode("the Congress")) == "the Congress"


def test_resume_reproduces_the_uninterrupted_run(tmp_path, corpus, monkeypatch):
    # Run 40 steps, keeping a copy of the checkpoint written at step 20 as if the run died there.
    saved = common.save_checkpoint

    def save_and_keep(path, **kw):
        saved(path, **kw)
        if kw["step"] == 20:
            saved(str(tmp_path / "resumed.pt"), **kw)
    monkeypatch.setattr(train_pretrain, "save_checkpoint", save_and_keep)
    full, full_val = run(tmp_path, corpus, "--max-iters", "40", "--save-interval", "10")
    monkeypatch.setattr(train_pretrain, "save_checkpoint", saved)
    train_pretrain.main(["--data", str(corpus), "--out", str(tmp_path / "resumed.pt"), *TINY,
                         "--max-iters", "40", "--resume"])
    log = [json.loads(line) for line in open(tmp_path / "resumed.log.jsonl")]
    resumed = {r["step"]: r["loss"] for r in log if "loss" in r}
    assert sorted(resumed) == [30, 40]
    for step in (30, 40):
        assert resumed[step] == pytest.approx(full[step], abs=1e-5)
    assert log[-1]["val_loss"] == pytest.approx(full_val[-1], abs=1e-5)


def test_two_process_torchrun(tmp_path, corpus):
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train_pretrain.py"), "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout and result.stdout.count("val loss") == 1  # rank 0 alone prints
    assert sorted(p.name for p in tmp_path.glob("ddp*")) == ["ddp.log.jsonl", "ddp.pt", "ddp.svg"]
    assert torch.load(out, weights_only=True)["step"] == 10
    # SFT runs the same loop in two processes, from that checkpoint
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"Count to {n}.", "response": " ".join(map(str, range(n)))}) + "\n"
                             for n in range(1, 9)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train_sft.py"),
           "--init", str(out), "--data", str(demos), "--out", str(tmp_path / "sft.pt"), "--max-iters", "4",
           "--warmup-iters", "1", "--eval-interval", "4", "--eval-samples", "2", "--max-new-tokens", "4",
           "--batch-size", "4", "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("Wrote ") == 1 and torch.load(tmp_path / "sft.pt", weights_only=True)["step"] == 4


KILLER = """
import sys, torch
sys.path.insert(0, {root!r})
from common import save_checkpoint
from gpt import GPT, GPTConfig
from tokenizer import Tokenizer
tok = Tokenizer.load({tok!r})
model = GPT(GPTConfig(vocab_size=tok.n_vocab, n_layer=4, n_embd=256))
step = 0
while True:
    step += 1
    save_checkpoint({out!r}, stage="pretrain", model=model, tokenizer=tok, step=step)
    print(step, flush=True)
"""


def test_killed_during_save_leaves_previous_checkpoint_loadable(tmp_path, tiny_tok):
    tiny_tok.save(tmp_path / "tok.json")
    out = tmp_path / "ckpt.pt"
    script = KILLER.format(root=str(ROOT), tok=str(tmp_path / "tok.json"), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "1"  # one whole checkpoint exists
    proc.stdout.readline()
    proc.kill()  # SIGKILL, most likely in the middle of torch.save of the next one
    proc.wait()
    ckpt = common.load_checkpoint(str(out))
    assert ckpt["step"] >= 2 and ckpt["stage"] == "pretrain"


def test_ctrl_c_saves_and_resume_needs_only_the_new_max_iters(tmp_path, corpus, capsys):
    from conftest import interrupt, interrupted_at, read_chart
    out = tmp_path / "p.pt"
    rc, stdout, stderr = interrupt([sys.executable, str(ROOT / "train_pretrain.py"), "--data", str(corpus),
                                    "--out", str(out), *TINY, "--max-iters", "100000"], "step 20/", tmp_path)
    step = interrupted_at(rc, stderr, out)
    assert step >= 20
    capsys.readouterr()
    # a flag that would change the model is refused, naming it, before any tokenizer is trained
    with pytest.raises(SystemExit, match=rf"--vocab-size 512: {out} was trained with --vocab-size 300"):
        train_pretrain.main(["--resume", "--out", str(out), "--vocab-size", "512"])
    assert not list(tmp_path.glob("tokenizer-*-512.json")) and "training a" not in capsys.readouterr().out
    train_pretrain.main(["--resume", "--out", str(out), "--max-iters", str(step + 15)])   # the rest: the run's own
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["step"] == step + 15 and ckpt["args"]["n_embd"] == 32 and ckpt["args"]["max_iters"] == step + 15
    assert f"resuming from step {step}" in capsys.readouterr().out
    log = [json.loads(line) for line in open(tmp_path / "p.log.jsonl")]
    for key in ("loss", "val_loss"):   # each step once: nothing the resumed run wrote twice
        steps = [r["step"] for r in log if key in r]
        assert steps == sorted(set(steps)) and steps[-1] == step + 15
    series, texts = read_chart(tmp_path / "p.svg")   # the picture holds the whole run's values
    assert [y for _, y in series["training loss"]] == pytest.approx([r["loss"] for r in log if "loss" in r], rel=1e-5)
    assert [x for x, _ in series["validation loss"]] == [r["step"] for r in log if "val_loss" in r]
    assert {"step", "loss (nats per token)", "pretraining"} <= set(texts)


def test_a_run_too_short_for_its_warmup_says_so(tmp_path, corpus, capsys):
    run(tmp_path, corpus, "--max-iters", "3", "--warmup-iters", "5")
    assert "warning: --warmup-iters 5 is longer than the run (3 steps)" in capsys.readouterr().err


def test_a_run_killed_while_writing_the_tokenizer_cache_leaves_no_file(tmp_path, corpus,
                                                                       monkeypatch):
    import tokenizer

    def half_then_ctrl_c(self, path):   # the first bytes are on disk when Ctrl-C arrives
        with open(path, "w") as f:
            f.write('{"merges": [[')
        raise KeyboardInterrupt
    monkeypatch.setattr(tokenizer.Tokenizer, "save", half_then_ctrl_c)
    out_dir = tmp_path / "fresh" / "out"   # does not exist yet, as in a fresh clone
    with pytest.raises(KeyboardInterrupt):
        train_pretrain.main(["--data", str(corpus), "--out", str(out_dir / "pretrain.pt"), *TINY,
                             "--max-iters", "1"])
    assert os.listdir(out_dir) == []   # no cache (whole or half) and no temp file
    monkeypatch.undo()   # the next run trains the tokenizer again and caches it whole
    train_pretrain.main(["--data", str(corpus), "--out", str(out_dir / "pretrain.pt"), *TINY,
                         "--max-iters", "1"])
    cached = [f for f in os.listdir(out_dir) if f.startswith("tokenizer-")]
    assert len(cached) == 1
    assert tokenizer.Tokenizer.load(str(out_dir / cached[0])).n_vocab == 300
