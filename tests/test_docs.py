"""The docs that the code cites exist, point inside the project, and say what the code does."""
import re

import torch

from conftest import ROOT, make_checkpoint

import tokenizer
from data import encode_example

SHIPPED = [p for folder in ("", "bench", "data", "tests") for p in sorted((ROOT / folder).glob("*"))
           if p.suffix in (".py", ".md", ".html")]   # the project's own folders (not out/, a venv, ...)


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
