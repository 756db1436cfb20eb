"""SFT: the chat template, the response-only loss mask, the JSONL formats, a tiny run."""
import json

import pytest
import torch

from conftest import make_checkpoint
import data
import train_sft


def test_loss_mask_covers_exactly_the_response_and_end(tiny_tok):
    sp = tiny_tok.special_tokens
    enc = tiny_tok.to_tiktoken().encode_ordinary
    ids, targets = data.encode_example(tiny_tok, "Say hi.", "Hi there.")
    prompt = [sp["<|user|>"]] + enc("Say hi.") + [sp["<|assistant|>"]]
    response = enc("Hi there.") + [sp["<|end|>"]]
    assert ids == prompt + response
    # targets[t] is the token after position t; only response tokens (and <|end|>) are trained on
    assert targets == [-1] * (len(prompt) - 1) + response + [-1]
    trained = [ids[t + 1] for t in range(len(ids) - 1) if targets[t] != -1]
    assert trained == response


def test_user_text_cannot_inject_control_tokens(tiny_tok):
    ids = data.encode_prompt(tiny_tok, "stop<|end|>now")
    assert ids.count(tiny_tok.special_tokens["<|end|>"]) == 0
    assert tiny_tok.decode(ids[1:-1]) == "stop<|end|>now"


def test_collate_masks_padding_out_of_the_loss(tiny_tok):
    rows = [data.encode_example(tiny_tok, "Hi.", "A long answer here."), data.encode_example(tiny_tok, "Hi.", "Ok.")]
    x, y, mask = train_sft.collate(rows, "cpu")
    n_pad = x.shape[1] - len(rows[1][0])
    assert not mask[1, :n_pad].any() and mask[1, n_pad:].all()
    assert (y[1, :n_pad] == -1).all() and y[1, n_pad:].tolist() == rows[1][1]


def test_alpaca_and_plain_records(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"instruction": "Summarize.", "input": "Some text.", "output": "Short."}) + "\n"
                    + json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi."}) + "\n\n"
                    + json.dumps({"prompt": "P", "response": "R"}) + "\n")
    assert data.load_demonstrations(str(path)) == [("Summarize.\n\nSome text.", "Short."), ("Say hi.", "Hi."), ("P", "R")]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "response": ', "demos.jsonl:2: not valid JSON"),
    ('["a", "b"]', "demos.jsonl:2: expected a JSON object"),
    ('{"prompt": "a"}', "demos.jsonl:2: field 'response' must be a string"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "demos.jsonl"
    path.write_text('{"prompt": "ok", "response": "fine"}\n' + line + "\n")
    with pytest.raises(SystemExit) as e:
        data.load_demonstrations(str(path))
    assert message in str(e.value)


def test_tiny_sft_run_learns_the_demonstrations(tmp_path, tiny_tok):
    init = make_checkpoint(tmp_path / "pretrain.pt", "pretrain", tiny_tok, n_layer=2, n_embd=64)
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"Count to {n}.", "response": " ".join(map(str, range(1, n + 1)))}) + "\n"
                             for n in range(1, 9)) * 4)
    train_sft.main(["--init", init, "--data", str(demos), "--out", str(tmp_path / "sft.pt"), "--max-iters", "60",
                    "--eval-interval", "30", "--batch-size", "8", "--lr", "3e-3", "--eval-samples", "4",
                    "--max-new-tokens", "8", "--device", "cpu", "--precision", "fp32"])
    log = [json.loads(line) for line in open(tmp_path / "sft.log.jsonl") if "val_loss" in line]
    assert log[-1]["val_loss"] < 0.5 * log[0]["val_loss"]
    ckpt = torch.load(tmp_path / "sft.pt", weights_only=True)
    assert ckpt["stage"] == "sft" and ckpt["step"] == 60


def test_sft_refuses_a_reward_model(tmp_path, tiny_tok):
    init = make_checkpoint(tmp_path / "rm.pt", "rm", tiny_tok)
    with pytest.raises(SystemExit, match="is a 'rm' checkpoint, expected pretrain or sft"):
        train_sft.main(["--init", init, "--device", "cpu"])


def test_ctrl_c_saves_and_resume_continues(tmp_path, tiny_tok, capsys):
    import sys
    from conftest import ROOT, interrupt, interrupted_at, read_chart
    init = make_checkpoint(tmp_path / "pretrain.pt", "pretrain", tiny_tok)
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"Count to {n}.", "response": " ".join(map(str, range(1, n + 1)))})
                             + "\n" for n in range(1, 9)) * 4)
    out = tmp_path / "sft.pt"
    rc, stdout, stderr = interrupt([sys.executable, str(ROOT / "train_sft.py"), "--init", init, "--data", str(demos),
                                    "--out", str(out), "--max-iters", "100000", "--eval-interval", "20",
                                    "--eval-samples", "2", "--max-new-tokens", "4", "--batch-size", "4",
                                    "--device", "cpu"], "step 30/", tmp_path)
    step = interrupted_at(rc, stderr, out)
    train_sft.main(["--resume", "--out", str(out), "--max-iters", str(step + 5)])
    assert torch.load(out, weights_only=True)["step"] == step + 5
    evals = [json.loads(line) for line in open(tmp_path / "sft.log.jsonl") if "val_loss" in line]
    assert [r["step"] for r in evals] == list(range(0, step, 20)) + [step + 5]
    assert "gold_score" not in evals[-1] and "No gold score" in capsys.readouterr().out   # not the labeler's task
    series, _ = read_chart(tmp_path / "sft.svg")
    assert [x for x, _ in series["validation loss"]] == [r["step"] for r in evals]
    assert series["gold score (labeler)"] == [] and len(series["share ended with <|end|>"]) == len(evals)


def test_the_labeler_demonstrates_both_answers_to_insult_requests():
    """--safety-demos: insult requests answered with a refusal (--refusal-share of them) or an
    insult, and --lookalike-demos harmless look-alikes answered like their task; none of them on a
    held-out harm topic, and the task demonstrations unchanged."""
    import labeler
    cfg = train_sft.SFTConfig(n_demos=300, safety_demos=48, refusal_share=0.25,
                              lookalike_demos=10)
    pairs = train_sft.demonstration_pairs(cfg)
    judged = [labeler.judge(p, r) for p, r in pairs]
    harmful = [j for j in judged if j.request.harmful]
    assert len(pairs) == 358 and len(harmful) == 48
    assert sum(j.refused for j in harmful) == 12                  # a quarter refuse
    assert sum(j.harmful for j in harmful) == 36                  # the rest insult
    lookalikes = [j for j in judged if j.request.family == "lookalike"]
    assert len(lookalikes) == 10 and not any(j.refused or j.harmful for j in lookalikes)
    assert not any(j.request.topic in labeler.HARM_HELDOUT_TOPICS for j in harmful + lookalikes)
    none = train_sft.demonstration_pairs(train_sft.SFTConfig(n_demos=300, safety_demos=0,
                                                             lookalike_demos=0))
    assert sorted(none) == sorted(p for p, j in zip(pairs, judged) if j.request.family == "task")
