"""The docs that the code cites exist, point inside the project, and say what the code does."""
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, make_checkpoint

import tokenizer
from data import encode_example

SHIPPED = [p for folder in ("", "bench", "data", "docs", "tests") for p in sorted((ROOT / folder).glob("*"))
           if p.suffix in (".py", ".md", ".html")]   # the project's own folders (not out/, a venv, ...)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]   # what a reader runs commands from


def test_every_cited_markdown_file_exists():
    """Docs are named in capitals (README.md, data/README.md); lower-case .md files are what runs write."""
    pattern = r"(?:[\w.-]+/)*[A-Z][A-Z_]*\.md\b"
    cited = {(p, name) for p in SHIPPED for name in re.findall(pattern, p.read_text(encoding="utf-8"))}
    assert {name for _, name in cited} >= {"DESIGN.md", "README.md"}
    missing = [f"{p.relative_to(ROOT)} cites {name}" for p, name in cited
               if not ((ROOT / name).is_file() or (p.parent / name).is_file())]
    assert not missing


def test_nothing_points_outside_the_project():
    """A fresh clone has no ../shared/ beside it (the GPT-2 files now ship in data/gpt2/)."""
    outside = re.compile(r"\.\./shared|parent / \"shared\"")
    assert not [str(p.relative_to(ROOT)) for p in SHIPPED if p.name != "test_docs.py" and outside.search(p.read_text())]


def test_design_states_the_contracts_the_code_keeps(tmp_path, tiny_tok):
    design = (ROOT / "DESIGN.md").read_text(encoding="utf-8")
    # the special tokens, in the order tokenizer.py gives them ids
    listed = re.search(r"Special tokens: (.*?)\. ", design).group(1)
    assert re.findall(r"<\|\w+\|>", listed) == tokenizer.SPECIAL_TOKENS
    # the chat template, as data.encode_example writes it
    template = re.search(r"A conversation turn is `([^`]+)`", design).group(1)
    ids, _ = encode_example(tiny_tok, "PROMPT", "RESPONSE")
    assert tiny_tok.decode(ids) == template.format(prompt="PROMPT", response="RESPONSE")
    # the checkpoint's keys, as common.save_checkpoint writes them
    keys = re.findall(r'"(\w+)": ', re.search(r"`(\{\"stage\".*?)`", design).group(1))
    ckpt = torch.load(make_checkpoint(tmp_path / "c.pt", "sft", tiny_tok), weights_only=True)
    assert keys == list(ckpt)


def shown_commands(text):
    """Every `python <script>.py ...` a doc shows, as (script, its --flags): from ``` blocks (a line ending in a
    backslash goes on) and `inline code` (which may wrap), up to a comment, `&&`, `;` or a pipe."""
    code = [block.replace("\\\n", " ") for block in re.findall(r"^ *```\w*\n(.*?)^ *```", text, re.S | re.M)]
    prose = re.sub(r"^ *```\w*\n.*?^ *```", "", text, flags=re.S | re.M)
    code += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    commands = []
    for snippet in code:
        for line in snippet.splitlines():
            for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                m = re.search(r"\bpython3? +((?:[\w.-]+/)*[\w.-]+\.py)\b(.*)", part)
                if m:
                    commands.append((m.group(1), re.findall(r"(?<!\S)(--[a-z][\w-]*)", m.group(2))))
    return commands


@pytest.fixture(scope="module")
def doc_commands():
    return {p.relative_to(ROOT).as_posix(): shown_commands(p.read_text(encoding="utf-8")) for p in DOCS}


def test_the_readme_is_a_front_door():
    """About 150 lines (the measurements live in docs/), the test command CI runs, and a link to every doc."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 170
    assert "python -m pytest -q" in readme
    assert [p.name for p in DOCS[1:] if f"docs/{p.name}" not in readme] == []


def test_each_doc_opens_by_saying_what_it_is():
    for p in DOCS[1:]:
        title, blank, first = p.read_text(encoding="utf-8").splitlines()[:3]
        assert title.startswith("# ") and not blank and first[:1].isupper(), p.name


def test_the_default_context_the_docs_state_is_the_code_default():
    """The context is the pretraining block_size; a doc (or eval.py's docstring) that gives its default gives
    PretrainConfig's, not an old one."""
    from train_pretrain import PretrainConfig
    stated = {p.relative_to(ROOT).as_posix(): re.findall(r"block_size\W[^.]{0,40}?\b(\d+)(?: tokens)? by default",
                                                          p.read_text(encoding="utf-8"))
              for p in [*DOCS, ROOT / "eval.py"]}
    assert stated["docs/DEPLOY.md"]
    assert {doc: n for doc, ns in stated.items() for n in ns if int(n) != PretrainConfig().block_size} == {}


def test_shown_commands_name_scripts_that_exist(doc_commands):
    scripts = {script for commands in doc_commands.values() for script, _ in commands}
    assert {"pipeline.py", "train_ppo.py", "bench/context.py"} <= scripts   # the parser finds blocks and inline code
    missing = [f"{doc}: python {script}" for doc, commands in doc_commands.items() for script, _ in commands
               if not (ROOT / script).is_file()]
    assert not missing


def test_shown_flags_are_flags_the_scripts_take(doc_commands):
    """Each flag a doc passes to a top-level script is in that script's --help (its usage lines), so a renamed or
    removed flag fails here, not in a reader's terminal. The scripts' --help runs once each, all at once."""
    used = {}
    for doc, commands in doc_commands.items():
        for script, flags in commands:
            if "/" not in script and (ROOT / script).is_file():
                used.setdefault(script, set()).update((doc, flag) for flag in flags)
    assert {"train_ppo.py", "train_pretrain.py", "serve.py"} <= set(used)
    helps = {script: subprocess.Popen([sys.executable, script, "--help"], cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for script in used}
    wrong = []
    for script, proc in helps.items():
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, f"python {script} --help: {out[-500:]}"
        usage = out[out.index("usage:"):].split("\n\n")[0]   # argparse's usage block names every option
        known = set(re.findall(r"(?<![\w-])--[\w-]+", usage))
        wrong += [f"{doc}: python {script} {flag}" for doc, flag in sorted(used[script]) if flag not in known]
    assert not wrong
