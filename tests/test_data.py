"""data.py's readers on files as people have them: JSON Lines, or one JSON array (Alpaca's alpaca_data.json)."""
import json

import pytest
import torch

from conftest import make_checkpoint

import data
import train_sft

ALPACA = [  # the layout of alpaca_data.json: one indented array, "input" often empty
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Translate to French.", "input": "Good morning.", "output": "Bonjour."},
]


def error_of(fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    return str(e.value)


def test_every_reader_takes_a_json_array(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA, indent=4, ensure_ascii=False), encoding="utf-8")
    assert data.load_demonstrations(str(path)) == [("Give three tips for staying healthy.", "Eat well, sleep, move."),
                                                   ("Translate to French.\n\nGood morning.", "Bonjour.")]
    path.write_text('\n  [{"prompt": "p", "responses": ["a", "b"]},\n   {"prompt": "q", "chosen": "c", "rejected": "d"}]\n')
    assert data.load_rankings(str(path)) == [("p", ["a", "b"]), ("q", ["c", "d"])]
    path.write_text('[{"prompt": "Say hi."}]')
    assert data.load_prompts(str(path)) == ["Say hi."]


@pytest.mark.parametrize("content, message", [
    ('[{"instruction": "a", "output": "b"}, "oops"]', "alpaca.json[1]: expected a JSON object"),
    ('[{"instruction": "a", "output": "b"},\n {"instruction": "c"}]', "alpaca.json[1]: field 'output' must be a string"),
    ('[\n{"instruction": "a", "output": "b"},\n{"instruction": "c" "output": "d"},\n{}]', "alpaca.json:3: not valid JSON"),
    ("[]", "--data {path}: the file holds no records"),
])
def test_a_bad_array_says_so_and_names_the_item(tmp_path, content, message):
    path = tmp_path / "alpaca.json"
    path.write_text(content)
    msg = error_of(data.load_demonstrations, str(path))
    assert message.format(path=path) in msg
    if "not valid JSON" in message:
        assert "one JSON array" in msg


def test_json_lines_errors_still_name_the_line(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n\n{"prompt": "\xff"}\n')
    assert "demos.jsonl:3: not UTF-8 text" in error_of(data.load_demonstrations, str(path))
    path.write_text('{"prompt": "a", "response": "b \u2028 c"}\n[1]\n')   # U+2028 is no line break in JSON Lines
    assert "demos.jsonl:2: expected a JSON object" in error_of(data.load_demonstrations, str(path))


def test_train_sft_on_alpaca_json(tmp_path, tiny_tok):
    """The issue's command: train_sft.py --data alpaca.json, the file as Alpaca ships it."""
    init = make_checkpoint(tmp_path / "pretrain.pt", "pretrain", tiny_tok)
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA * 4, indent=4))
    train_sft.main(["--init", init, "--data", str(path), "--out", str(tmp_path / "sft.pt"), "--max-iters", "2",
                    "--warmup-iters", "1", "--eval-interval", "2", "--eval-iters", "1", "--batch-size", "2",
                    "--eval-samples", "2", "--max-new-tokens", "4", "--device", "cpu", "--precision", "fp32"])
    assert torch.load(tmp_path / "sft.pt", weights_only=True)["step"] == 2
