"""pipeline.py --quick: every stage end to end on tiny settings, then the report."""
import json
import time

from conftest import read_chart
import common
import labeler
import pipeline
from data import load_rankings


def test_quick_pipeline_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(pipeline.__file__.rsplit("/", 1)[0])   # the stages' defaults are relative to the repo
    t0 = time.time()
    times = pipeline.main(["--quick", "--out-dir", str(tmp_path), "--rounds", "2"])
    assert list(times) == ["pretrain", "sft", "rm (round 1)", "ppo (round 1)", "redteam (round 1)", "rm (round 2)",
                           "ppo (round 2)", "eval"]
    for stage in ("pretrain", "sft", "rm", "ppo", "round1/rm", "round1/ppo"):
        assert (tmp_path / f"{stage}.pt").stat().st_size > 0
    # round 2 ranks the round-1 policy's samples on top of round 1's rankings; the RM starts from SFT again,
    # PPO from the round-1 policy, and the KL reference is the SFT model in every round
    args = lambda path: common.load_checkpoint(str(tmp_path / path))["args"]
    sft, round1 = str(tmp_path / "sft.pt"), tmp_path / "round1"
    assert args("round1/rm.pt")["policy"] == "" and args("round1/rm.pt")["init"] == sft
    assert args("rm.pt")["policy"] == str(round1 / "ppo.pt") and args("rm.pt")["init"] == sft
    assert args("rm.pt")["data"] == str(round1 / "rm.rankings.jsonl")
    assert args("round1/ppo.pt")["init"] == sft and args("ppo.pt")["init"] == str(round1 / "ppo.pt")
    assert args("round1/ppo.pt")["ref"] == args("ppo.pt")["ref"] == sft
    assert len(load_rankings(str(tmp_path / "rm.rankings.jsonl"))) > len(load_rankings(str(round1 / "rm.rankings.jsonl")))
    # the red team attacked the round-1 policy; round 2 ranks and trains on what it found, with the training mix
    found = round1 / "redteam.prompts.jsonl"
    assert args("rm.pt")["prompts"] == args("ppo.pt")["prompts"] == str(found)
    assert args("round1/rm.pt")["prompts"] == args("round1/ppo.pt")["prompts"] == ""
    attacks = [json.loads(line)["prompt"] for line in open(round1 / "redteam.jsonl")]
    next_prompts = [json.loads(line)["prompt"] for line in open(found)]
    assert next_prompts[:len(labeler.training_prompts())] == labeler.training_prompts()
    assert set(attacks) == set(next_prompts[len(labeler.training_prompts()):])
    res = json.loads((tmp_path / "eval.json").read_text())
    names = [r["name"] for r in res["rows"]]
    assert {"pretrain", "zero-shot", "sft", "best-of-16", "ppo"} <= set(names)
    assert set(res["perplexity"]) == {"pretrain", "sft", "ppo (round 1)", "ppo"} and res["chart"]
    harm = res["harmlessness"]
    assert [p["name"] for p in harm["policies"]] == list(harm["red_team"]) == ["sft", "ppo (round 1)", "ppo"]
    assert [r["round"] for r in res["rounds"]] == [1, 2] and all(res["gold_kl"]["ppo_iterations"])
    out = capsys.readouterr().out
    assert "| model | gold ± se |" in out and "stage times:" in out
    # summary.md: a row per stage (each round's too) with its headline, links to every stage's picture, what next
    summary = (tmp_path / "summary.md").read_text()
    for stage in times:
        assert f"| {stage} | " in summary
    for stage, picture in (("pretrain", "pretrain"), ("sft", "sft"), ("rm (round 1)", "round1/rm"),
                           ("ppo (round 1)", "round1/ppo"), ("rm (round 2)", "rm"), ("ppo (round 2)", "ppo")):
        name = picture.split("/")[-1]
        assert f"[{name}.svg]({picture}.svg)" in summary and f"![{stage}]({picture}.svg)" in summary
        read_chart(tmp_path / f"{picture}.svg")   # each parses as XML
    assert f"python chat.py --ckpt {tmp_path / 'ppo.pt'}" in summary   # the last round's policy
    assert "validation loss" in summary and "pairwise accuracy" in summary and "python chat.py --ckpt" in summary
    print(f"quick pipeline: {time.time() - t0:.0f}s")
    # the control: from the same SFT model, the labeler ranks by helpfulness alone
    times = pipeline.main(["--quick", "--out-dir", str(tmp_path), "--helpful-only", "--sft", sft])
    assert list(times) == ["rm", "ppo", "eval"]
    control = tmp_path / "helpful-only"
    assert common.load_checkpoint(str(control / "rm.pt"))["args"]["guideline"] == "helpful"
    assert args("rm.pt")["guideline"] == "hh"
    assert common.load_checkpoint(str(control / "ppo.pt"))["args"]["init"] == sft
    assert json.loads((control / "eval.json").read_text())["settings"]["sft"] == sft
