"""eval.py: the statistics it reports, and a whole run on tiny checkpoints made here."""
import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import make_checkpoint
import eval as ev

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


def test_eval_runs_on_tiny_checkpoints(tmp_path, tiny_tok, corpus_text, capsys):
    (tmp_path / "round1").mkdir()
    for i, stage in enumerate(("pretrain", "sft", "ppo", "rm", "round1/ppo", "round1/rm")):
        make_checkpoint(tmp_path / f"{stage}.pt", stage.split("/")[-1], tiny_tok, seed=i, block_size=256)  # room for a shot
    (tmp_path / "corpus.txt").write_text(corpus_text)
    # PPO logs as train_ppo writes them: one line per iteration (and some lines without the numbers)
    for where, n in (("round1/", 4), ("", 6)):
        log = [{"iter": i + 1, "score": 0.1 * i, "rm": 0.1 * i, "gold": 0.3 + 0.01 * i, "kl": 0.5 * i + len(where),
                "beta": 0.05} for i in range(n)] + [{"note": "no numbers here"}]
        (tmp_path / f"{where}ppo.log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + '\n{"iter": 7, "kl": 1.')
    res = ev.main(["--out-dir", str(tmp_path), "--corpus", str(tmp_path / "corpus.txt"), "--samples-per-prompt", "1",
                   "--max-new-tokens", "12", "--ppl-iters", "1", "--shots", "1", "--show", "2", "--rm-rankings", "9"])
    names = [r["name"] for r in res["rows"]]
    assert names[:3] == ["pretrain", "zero-shot", "few-shot (1)"]
    assert names[3:] == ["sft", *[f"best-of-{n}" for n in (1, 2, 4, 8, 16, 32)], "ppo (round 1)", "ppo"]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved) >= {"settings", "rows", "perplexity", "rm_accuracy", "samples", "rounds", "gold_kl", "chart"}
    for row in saved["rows"]:
        assert set(row) == {"name", "gold", "gold_se", "rm", "kl", "tokens", "ended", "win_vs_sft"}
        assert 0 <= row["gold"] <= 1 and 0 <= row["ended"] <= 1
    by_name = {r["name"]: r for r in saved["rows"]}
    assert by_name["sft"]["kl"] == 0 and by_name["sft"]["win_vs_sft"] == 0.5
    assert by_name["best-of-1"]["gold"] == by_name["sft"]["gold"] and by_name["best-of-1"]["rm"] == by_name["sft"]["rm"]
    assert by_name["best-of-32"]["rm"] >= by_name["best-of-4"]["rm"] >= by_name["best-of-1"]["rm"]
    assert set(saved["perplexity"]) == {"pretrain", "sft", "ppo (round 1)", "ppo"}
    assert {"acc_noisy", "rankings", "on_ppo"} <= set(saved["rm_accuracy"])
    # one line per round, the final round's numbers are the "ppo" row's
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    assert saved["rounds"][1]["gold"] == by_name["ppo"]["gold"] and saved["rounds"][0]["kl"] == by_name["ppo (round 1)"]["kl"]
    # the gold-vs-KL picture holds best-of-N at its analytic KL, every logged PPO iteration of both rounds, and SFT
    root = ET.parse(tmp_path / "eval_gold_kl.svg").getroot()   # two panels, gold then RM, the same series in each
    groups = [(g.get("data-name"), [tuple(map(float, p.split(","))) for p in g.get("data-points").split()])
              for g in root.iter("{http://www.w3.org/2000/svg}g")]
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert [name for name, _ in groups] == ["best-of-N, N = 1..32", "PPO round 1 rollouts", "PPO round 2 rollouts"] * 2
    for (name, points), key in zip(groups[::3], ("gold", "rm")):
        assert [x for x, _ in points] == pytest.approx([math.log(n) - (n - 1) / n for n in BEST], abs=1e-5)
        assert [y for _, y in points] == pytest.approx([by_name[f"best-of-{n}"][key] for n in BEST], abs=1e-5)
    assert len(groups[1][1]) == 4 and len(groups[2][1]) == 6 and groups[2][1][-1] == (2.5, 0.35)
    assert {"SFT", "PPO 1", "PPO 2", "KL to SFT per response (nats)", "gold (labeler) score"} <= set(texts)
    assert len(saved["gold_kl"]["best_of"]) == 6 and len(saved["gold_kl"]["ppo_iterations"][1]) == 6
    md = (tmp_path / "eval.md").read_text()
    assert "| model | gold ± se |" in md and "best-of-16" in md and saved["samples"][0]["prompt"] in md
    assert "| round | RM acc." in md and "eval_gold_kl.svg" in md
    assert "best-of-16" in capsys.readouterr().out                                # the table went to the terminal


def test_eval_with_only_some_checkpoints(tmp_path, tiny_tok):
    make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    make_checkpoint(tmp_path / "ppo.pt", "ppo", tiny_tok, seed=1)     # no pretrain, no reward model, no PPO log
    res = ev.main(["--out-dir", str(tmp_path), "--samples-per-prompt", "1", "--max-new-tokens", "8"])
    assert [r["name"] for r in res["rows"]] == ["sft", "ppo"]
    assert res["rows"][1]["rm"] is None and res["rows"][1]["kl"] is not None and res["chart"] is None
    assert (tmp_path / "eval.md").exists()


def test_eval_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no pretrain.pt"):
        ev.main(["--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--ppo .*no such file"):
        ev.main(["--out-dir", str(tmp_path), "--ppo", str(tmp_path / "missing.pt")])
