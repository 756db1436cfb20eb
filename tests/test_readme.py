"""Every command the README shows runs, in the order the README gives them, in a fresh copy of the
project (its git-tracked files: no out/, no caches), the way a newcomer types them. Where a command would
take minutes, tiny settings are added after the README's own flags (pipeline.py's --quick ones); the
servers are started, asked for their page, and stopped; chat gets one message and /quit."""
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

from conftest import ROOT

import pipeline

# Flags added to a README command so that it takes seconds (the README's own flags come first, and a
# flag given twice keeps its last value). A command whose script is not here fails the test: add it.
TINY = {
    "pipeline.py": "--quick",
    "train_pretrain.py": pipeline.QUICK["pretrain"],
    "train_sft.py": pipeline.QUICK["sft"],
    "train_rm.py": pipeline.QUICK["rm"],
    "train_ppo.py": pipeline.QUICK["ppo"] + " --eval-samples 4",
    "redteam.py": pipeline.QUICK["redteam"],
    "eval.py": pipeline.QUICK["eval"] + " --rm-rankings 2",
    "chat.py": "--max-new-tokens 16",
    "label.py": "--port 0 --max-new-tokens 16",
    "serve.py": "--port 0",
}
SERVERS = {"label.py", "serve.py"}
SKIPPED = ("pip ", "python -m pytest")   # the installation, and this very suite


def readme_commands():
    """[(command, the comment after it)] of the README's ```bash blocks, in order; a line of `a && b`
    gives its parts. Installation and the test command itself are left out."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            command, _, comment = line.partition("  #")
            for part in command.split("&&"):
                part = part.strip()
                if part and not part.startswith(SKIPPED):
                    commands.append((part, comment.strip()))
    return commands


def fresh_copy(dest):
    """The project as a fresh clone has it: only the files git tracks (as they are in the work tree)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                           timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    assert not (dest / "out").exists()


def run_server(argv, cwd, env):
    """Start a server, fetch the page at the URL it prints, stop it with Ctrl-C; returns its output."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        seen = []
        for line in proc.stdout:   # the first line with a URL says it is listening
            seen.append(line)
            url = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if url:
                break
        assert url, "".join(seen)
        with urllib.request.urlopen(url.group(0), timeout=60) as reply:
            assert reply.status == 200 and b"<html" in reply.read().lower()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        return "".join(seen) + out
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_every_readme_command_runs_in_a_fresh_clone(tmp_path):
    commands = readme_commands()
    scripts = [shlex.split(c)[1] for c, _ in commands if c.startswith("python ")]
    assert {"pipeline.py", "train_pretrain.py", "eval.py", "serve.py"} <= set(scripts), scripts
    assert [s for s in scripts if s not in TINY] == [], "add tiny flags for these README commands"
    fresh_copy(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    for command, comment in commands:
        argv = shlex.split(command)
        assert argv[0] == "python", f"README command {command!r}: only python commands are expected"
        argv = [sys.executable, *argv[1:], *shlex.split(TINY[argv[1]])]
        if argv[1] in SERVERS:
            out = run_server(argv, tmp_path, env)
        else:
            chat = "Write a cheerful sentence about the economy.\n/quit\n" if argv[1] == "chat.py" else ""
            result = subprocess.run(argv, cwd=tmp_path, env=env, input=chat, capture_output=True,
                                    text=True, timeout=600)
            out = result.stdout + result.stderr
            assert result.returncode == 0, f"README command {command!r} failed:\n{out[-3000:]}"
        assert "Traceback" not in out, f"README command {command!r}:\n{out[-3000:]}"
        for path in re.findall(r"\bout/[\w./]+\.(?:pt|md|json)\b", comment):   # what it says it writes
            assert (tmp_path / path).is_file(), f"README command {command!r} did not write {path}"
