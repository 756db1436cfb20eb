"""eval.py: the statistics it reports, and a whole run on tiny checkpoints made here."""
import json

import numpy as np
import pytest

from conftest import make_checkpoint
import eval as ev


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
    for i, stage in enumerate(("pretrain", "sft", "ppo", "rm")):
        make_checkpoint(tmp_path / f"{stage}.pt", stage, tiny_tok, seed=i, block_size=256)   # room for a shot (tiny BPE: ~130 tokens)
    (tmp_path / "corpus.txt").write_text(corpus_text)
    # a PPO log as train_ppo writes it: one line per iteration (and some lines without the numbers)
    log = [{"iter": i + 1, "score": 0.1 * i, "rm": 0.1 * i, "gold": 0.3 + 0.01 * i, "kl": 0.5 * i, "beta": 0.05}
           for i in range(6)] + [{"note": "no numbers here"}]
    (tmp_path / "ppo.log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + '\n{"iter": 7, "kl": 1.')  # mid-write
    res = ev.main(["--out-dir", str(tmp_path), "--corpus", str(tmp_path / "corpus.txt"), "--samples-per-prompt", "1",
                   "--max-new-tokens", "12", "--ppl-iters", "1", "--shots", "1", "--show", "2"])
    names = [r["name"] for r in res["rows"]]
    assert names[:3] == ["pretrain", "zero-shot", "few-shot (1)"] and names[-5:] == ["sft", "best-of-1", "best-of-4", "best-of-16", "ppo"]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved) >= {"settings", "rows", "perplexity", "rm_accuracy", "samples", "ppo_curve", "chart"}
    for row in saved["rows"]:
        assert set(row) == {"name", "gold", "gold_se", "rm", "kl", "tokens", "ended", "win_vs_sft"}
        assert 0 <= row["gold"] <= 1 and 0 <= row["ended"] <= 1
    by_name = {r["name"]: r for r in saved["rows"]}
    assert by_name["sft"]["kl"] == 0 and by_name["sft"]["win_vs_sft"] == 0.5
    assert by_name["best-of-1"]["gold"] == by_name["sft"]["gold"] and by_name["best-of-1"]["rm"] == by_name["sft"]["rm"]
    assert by_name["best-of-16"]["rm"] >= by_name["best-of-4"]["rm"] >= by_name["best-of-1"]["rm"]
    assert set(saved["perplexity"]) == {"pretrain", "sft", "ppo"}
    assert {"acc_noisy", "rankings"} <= set(saved["rm_accuracy"])
    assert len(saved["ppo_curve"]) == 6 and saved["chart"].endswith((".svg", ".png"))
    assert (tmp_path / saved["chart"].split("/")[-1]).stat().st_size > 0
    md = (tmp_path / "eval.md").read_text()
    assert "| model | gold ± se |" in md and "best-of-16" in md and saved["samples"][0]["prompt"] in md
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
