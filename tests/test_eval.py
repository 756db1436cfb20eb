"""eval.py: the statistics it reports, and a whole run on tiny checkpoints made here."""
import json
import math
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from conftest import ROOT, interrupt, make_checkpoint
import eval as ev
import labeler

BEST = (1, 2, 4, 8, 16, 32)


def test_win_rate_counts_ties_as_half():
    assert ev.win_rate([1, 0, 0.5, 0.5], [0, 1, 0.5, 0.5]) == 0.5      # a win, a loss, two ties
    assert ev.win_rate([0.9, 0.9, 0.9], [0.1, 0.9, 0.9]) == pytest.approx(2 / 3)   # 1 + 0.5 + 0.5
    assert ev.win_rate([0.2], [0.2]) == 0.5


def test_best_of_n_picks_the_highest_rm_score():
    rewards = np.array([[0.1, 0.9, -1.0],    # candidate 0 of slots 0, 1, 2
                        [0.5, 0.2, -2.0],
                        [0.3, 1.5, -0.5],
                        [0.7, 0.0, 3.0]])
    assert ev.best_of_n(rewards, 1).tolist() == [0, 0, 0]   # best-of-1: the first sample itself
    assert ev.best_of_n(rewards, 2).tolist() == [1, 0, 0]   # best of the first two
    assert ev.best_of_n(rewards, 4).tolist() == [3, 2, 3]


def test_mean_and_standard_error():
    m, se = ev.mean_se([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


def make_reward_model(path, tok, seed, metrics):
    """A tiny RM with a random head (at zero, the make_checkpoint default, every response scores the
    same; small, so that the chart's 6 digits hold its scores to 1e-5) and the held-out metrics
    train_rm saves with it."""
    make_checkpoint(path, "rm", tok, seed=seed, block_size=256)
    ckpt = torch.load(path, weights_only=True)
    head, g = ckpt["model"]["scalar_head.weight"], torch.Generator().manual_seed(seed)
    torch.nn.init.normal_(head, std=0.1, generator=g)
    torch.save({**ckpt, "metrics": metrics}, path)


def make_two_rounds(d, tok, corpus_text):
    """The checkpoints of a two-round pipeline.py run (round 1's in d/round1/), and the PPO logs."""
    (d / "round1").mkdir()
    for i, stage in enumerate(("pretrain", "sft", "ppo", "round1/ppo")):   # 256: room for a shot
        make_checkpoint(d / f"{stage}.pt", stage.split("/")[-1], tok, seed=i, block_size=256)
    # round 1's RM was tested on SFT's samples only; the last one on round 1's policy's too
    make_reward_model(d / "round1/rm.pt", tok, 4, {"heldout_acc_gold": 0.7})
    make_reward_model(d / "rm.pt", tok, 5, {"heldout_acc_gold": 0.8, "heldout_acc_noisy": 0.75,
                                            "heldout_policy_acc_gold": 0.6, "train_loss": 0.5})
    (d / "corpus.txt").write_text(corpus_text)
    # PPO logs as train_ppo writes them: one line per iteration (and some lines without the numbers)
    for where, n in (("round1/", 4), ("", 6)):
        log = [{"iter": i + 1, "score": 0.1 * i, "rm": 0.1 * i, "gold": 0.3 + 0.01 * i,
                "kl": 0.5 * i + len(where), "beta": 0.05} for i in range(n)]
        log += [{"note": "no numbers here"}]
        lines = "\n".join(json.dumps(r) for r in log) + '\n{"iter": 7, "kl": 1.'
        (d / f"{where}ppo.log.jsonl").write_text(lines)


def check_rows_are_means_of_their_samples(saved):
    """Every row's numbers are means over its responses to the 9 held-out prompts, which the samples
    list (all 9 of them) with their gold scores: each the labeler's score of that response, ended or
    not (the score tells which)."""
    assert [ex["prompt"] for ex in saved["samples"]] == labeler.heldout_prompts()
    sft_gold = [ex["responses"]["sft"][0] for ex in saved["samples"]]
    for row in saved["rows"]:
        assert set(row) == {"name", "gold", "gold_se", "rm", "kl", "tokens", "ended", "win_vs_sft"}
        answers = [(ex["prompt"], *ex["responses"][row["name"]]) for ex in saved["samples"]]
        ended = [g == labeler.score(p, text, ended=True)[0] for p, g, text in answers]
        assert all(g == labeler.score(p, text, e)[0] for (p, g, text), e in zip(answers, ended))
        gold = [g for _, g, _ in answers]
        assert row["gold"] == pytest.approx(np.mean(gold))
        assert row["gold_se"] == pytest.approx(np.std(gold, ddof=1) / 3)
        assert row["ended"] == pytest.approx(np.mean(ended))
        wins = [(g > s) + (g == s) / 2 for g, s in zip(gold, sft_gold)]
        assert row["win_vs_sft"] == pytest.approx(np.mean(wins))


def test_eval_runs_on_tiny_checkpoints(tmp_path, tiny_tok, corpus_text, capsys):
    make_two_rounds(tmp_path, tiny_tok, corpus_text)
    res = ev.main(["--out-dir", str(tmp_path), "--corpus", str(tmp_path / "corpus.txt"),
                   "--samples-per-prompt", "1", "--max-new-tokens", "12", "--ppl-iters", "1",
                   "--shots", "1", "--show", "9", "--rm-rankings", "9", "--harm-samples", "1"])
    names = [r["name"] for r in res["rows"]]
    assert names[:3] == ["pretrain", "zero-shot", "few-shot (1)"]
    assert names[3:] == ["sft", *[f"best-of-{n}" for n in BEST], "ppo (round 1)", "ppo"]
    # harmlessness: the policies that answer in the chat template (tests/test_eval_harm.py)
    harm_rows = [p["name"] for p in res["harmlessness"]["policies"]]
    assert harm_rows == ["sft", "ppo (round 1)", "ppo"]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved) >= {"settings", "rows", "perplexity", "rm_accuracy", "samples", "rounds",
                          "gold_kl", "chart", "harmlessness"}
    check_rows_are_means_of_their_samples(saved)
    by_name = {r["name"]: r for r in saved["rows"]}
    assert by_name["sft"]["kl"] == 0 and by_name["sft"]["win_vs_sft"] == 0.5
    assert by_name["best-of-1"]["gold"] == by_name["sft"]["gold"]
    assert by_name["best-of-1"]["rm"] == by_name["sft"]["rm"]
    assert by_name["best-of-32"]["rm"] >= by_name["best-of-4"]["rm"] >= by_name["best-of-1"]["rm"]
    assert by_name["best-of-32"]["rm"] > by_name["best-of-1"]["rm"]   # the RM's scores differ
    assert set(saved["perplexity"]) == {"pretrain", "sft", "ppo (round 1)", "ppo"}
    assert {"acc_noisy", "rankings", "on_ppo"} <= set(saved["rm_accuracy"])
    assert saved["rm_accuracy"]["rankings"] == saved["rm_accuracy"]["on_ppo"]["rankings"] == 9
    at_training = {"acc_gold": 0.8, "acc_noisy": 0.75, "policy_acc_gold": 0.6}
    assert saved["rm_accuracy"]["at_training"] == at_training
    # one line per round, the final round's numbers are the "ppo" row's
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    assert saved["rounds"][1]["gold"] == by_name["ppo"]["gold"]
    assert saved["rounds"][0]["kl"] == by_name["ppo (round 1)"]["kl"]
    # each round's RM accuracies from its own RM; round 1's has none on a policy's samples (SFT's
    # stands in)
    rm_accuracies = [(r["rm_acc_sft"], r["rm_acc_policy"]) for r in saved["rounds"]]
    assert rm_accuracies == [(0.7, 0.7), (0.8, 0.6)]
    check_gold_kl_chart(tmp_path / "eval_gold_kl.svg", by_name)
    assert len(saved["gold_kl"]["best_of"]) == 6 and len(saved["gold_kl"]["ppo_iterations"][1]) == 6
    md = (tmp_path / "eval.md").read_text()
    assert "| model | gold ± se |" in md and "best-of-16" in md
    assert saved["samples"][0]["prompt"] in md
    assert "| round | RM acc." in md and "eval_gold_kl.svg" in md
    assert "train_rm measured 75.0% and 80.0% on its own held-out rankings" in md
    assert "| 1 | 70.0% | 70.0% | " in md and "| 2 | 80.0% | 60.0% | " in md
    assert "best-of-16" in capsys.readouterr().out   # the table went to the terminal


def check_gold_kl_chart(path, by_name):
    """The gold-vs-KL picture holds best-of-N at its analytic KL, every logged PPO iteration of both
    rounds, and SFT: two panels, gold then RM, the same series in each."""
    root = ET.parse(path).getroot()
    data = lambda g: [tuple(map(float, p.split(","))) for p in g.get("data-points").split()]
    groups = [(g.get("data-name"), data(g)) for g in root.iter("{http://www.w3.org/2000/svg}g")]
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    series = ["best-of-N, N = 1..32", "PPO round 1 rollouts", "PPO round 2 rollouts"]
    assert [name for name, _ in groups] == series * 2
    for (name, points), key in zip(groups[::3], ("gold", "rm")):
        analytic_kl = [math.log(n) - (n - 1) / n for n in BEST]
        assert [x for x, _ in points] == pytest.approx(analytic_kl, abs=1e-5)
        best_of = [by_name[f"best-of-{n}"][key] for n in BEST]
        assert [y for _, y in points] == pytest.approx(best_of, abs=1e-5)
    assert len(groups[1][1]) == 4 and len(groups[2][1]) == 6 and groups[2][1][-1] == (2.5, 0.35)
    labels = {"SFT", "PPO 1", "PPO 2", "KL to SFT per response (nats)", "gold (labeler) score"}
    assert labels <= set(texts)


def test_eval_with_only_some_checkpoints(tmp_path, tiny_tok):
    make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    make_checkpoint(tmp_path / "ppo.pt", "ppo", tiny_tok, seed=1)   # no pretrain, RM or PPO log
    res = ev.main(["--out-dir", str(tmp_path), "--samples-per-prompt", "1",
                   "--max-new-tokens", "8", "--harm-samples", "1"])
    assert [r["name"] for r in res["rows"]] == ["sft", "ppo"]
    assert res["rows"][1]["rm"] is None and res["rows"][1]["kl"] is not None
    assert res["chart"] is None
    assert (tmp_path / "eval.md").exists()
    assert len(res["samples"]) == 3   # --show's default
    assert res["perplexity"] == res["rm_accuracy"] == {}
    rounds = [(r["round"], r["rm_acc_sft"], r["gold"]) for r in res["rounds"]]
    assert rounds == [(1, None, res["rows"][1]["gold"])]   # one round, no RM's accuracy


def test_eval_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no pretrain.pt"):
        ev.main(["--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--ppo .*no such file"):
        ev.main(["--out-dir", str(tmp_path), "--ppo", str(tmp_path / "missing.pt")])


def test_ctrl_c_stops_it_in_one_line_and_leaves_the_earlier_report(tmp_path, tiny_tok):
    for i, stage in enumerate(("sft", "ppo", "rm")):
        make_checkpoint(tmp_path / f"{stage}.pt", stage, tiny_tok, seed=i)
    for name in ("eval.md", "eval.json"):
        (tmp_path / name).write_text(f"an earlier run's {name}")
    before = sorted(os.listdir(tmp_path))
    cmd = [sys.executable, str(ROOT / "eval.py"), "--out-dir", str(tmp_path), "--device", "cpu",
           "--samples-per-prompt", "20", "--max-new-tokens", "32"]   # seconds of sampling
    rc, _, stderr = interrupt(cmd, "sampling", tmp_path)   # Ctrl-C once it samples
    assert rc == 130 and "Traceback" not in stderr, stderr
    assert stderr.splitlines() == [
        "interrupted; no report written, the earlier one (if any) is unchanged"]
    assert sorted(os.listdir(tmp_path)) == before   # nothing new, half-written or temporary
    for name in ("eval.md", "eval.json"):
        assert (tmp_path / name).read_text() == f"an earlier run's {name}"
