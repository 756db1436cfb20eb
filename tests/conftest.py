"""Shared fixtures: a small slice of the shipped corpus, a tiny tokenizer, tiny checkpoints."""
import gzip
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def corpus_text():
    """The first ~300 KB of the SOTU corpus (the same paragraph layout as the real file)."""
    with gzip.open(ROOT / "data" / "sotu.txt.gz", "rt", encoding="utf-8") as f:
        return f.read(300_000).rsplit("\n\n", 1)[0]


@pytest.fixture(scope="session")
def tiny_tok(corpus_text):
    import tokenizer
    return tokenizer.train(corpus_text[:100_000], 320)


def make_checkpoint(path, stage, tok, seed=0, scale=1.0, **config):
    """A tiny random GPT saved as a checkpoint of `stage` (what the stage scripts read). scale multiplies the
    blocks' matrices: at 10 the greedy answer depends on the prompt (at the usual init a 1-layer model mostly
    repeats its last input token, after <|assistant|> a special token: an empty answer)."""
    import torch
    from common import save_checkpoint
    from gpt import GPT, GPTConfig
    torch.manual_seed(seed)
    cfg = dict(vocab_size=tok.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=32)
    model = GPT(GPTConfig(**{**cfg, **config}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks") and p.dim() == 2:
                p.mul_(scale)
    extra = {"rm_gain": 1.0, "rm_bias": 0.0} if stage == "rm" else {}
    save_checkpoint(str(path), stage=stage, model=model, tokenizer=tok, **extra)
    return str(path)


def interrupt(cmd, after, cwd, deadline=240):
    """Run cmd, press Ctrl-C (SIGINT) once a line of its output holds `after`: (exit status,
    stdout, stderr). A run that never prints `after`, or does not end, is killed at `deadline`
    seconds and the test fails there instead of hanging."""
    import signal
    import subprocess
    import tempfile
    import threading
    with tempfile.TemporaryFile("w+") as err_file:   # a file: stderr can never fill a pipe
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=cwd,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        killer = threading.Timer(deadline, proc.kill)
        killer.start()
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if after in line:
                proc.send_signal(signal.SIGINT)
                break
        out = proc.stdout.read()
        proc.wait()
        killer.cancel()
        err_file.seek(0)
        err = err_file.read()
    assert proc.returncode != -signal.SIGKILL, f"{cmd} ran past {deadline} s: {''.join(seen)}"
    return proc.returncode, "".join(seen) + out, err


def interrupted_at(returncode, stderr, out):
    """The step of a run Ctrl-C stopped, after checking that it said so in one line and saved it."""
    import re
    import torch
    lines = stderr.strip().splitlines()
    assert returncode == 130 and len(lines) == 1 and "Traceback" not in stderr, stderr
    match = re.fullmatch(rf"interrupted at \w+ (\d+): saved {re.escape(str(out))}; continue with: "
                         rf"python \w+\.py --resume --out {re.escape(str(out))}", lines[0])
    assert match, lines[0]
    assert torch.load(out, weights_only=True)["step"] == int(match.group(1))
    return int(match.group(1))


SVG = "{http://www.w3.org/2000/svg}"


def read_chart(path):
    """{series name: [(x, y)]} from a picture's data-points (common.svg_chart), and every text in it."""
    import xml.etree.ElementTree as ET
    root = ET.parse(path).getroot()
    series = {g.get("data-name"): [tuple(map(float, p.split(","))) for p in g.get("data-points").split()]
              for g in root.iter(SVG + "g")}
    return series, [t.text for t in root.iter(SVG + "text")]
def reset_connection(sock):
    """Close a client socket with a TCP reset, as a browser tab that is closed mid-request can."""
    import socket
    import struct
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ----------------------------------------------------------------------------- the browser tests
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def need_browser():
    """For a module that drives headless Chromium with Selenium (Debian's chromium and chromium-driver, which
    .ci/run installs, and `selenium` from requirements-test.txt). A laptop without them skips the module; CI
    (.ci/run sets CI=1) must run it, so there it fails."""
    try:
        from selenium import webdriver   # noqa: F401
        missing = None
    except ImportError:
        missing = "selenium is not installed (pip install -r requirements-test.txt)"
    if not missing and not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        missing = f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI is set but {missing}", pytrace=False)
    if missing:
        pytest.skip(missing, allow_module_level=True)


@pytest.fixture
def browser(tmp_path):
    import shutil
    from selenium import webdriver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--window-size=1000,900",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
