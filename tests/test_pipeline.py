"""pipeline.py --quick: every stage end to end on tiny settings, then the report."""
import json
import time

from conftest import read_chart
import pipeline


def test_quick_pipeline_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(pipeline.__file__.rsplit("/", 1)[0])   # the stages' defaults are relative to the repo
    t0 = time.time()
    times = pipeline.main(["--quick", "--out-dir", str(tmp_path)])
    assert list(times) == ["pretrain", "sft", "rm", "ppo", "eval"]
    for stage in ("pretrain", "sft", "rm", "ppo"):
        assert (tmp_path / f"{stage}.pt").stat().st_size > 0
    res = json.loads((tmp_path / "eval.json").read_text())
    names = [r["name"] for r in res["rows"]]
    assert {"pretrain", "zero-shot", "sft", "best-of-16", "ppo"} <= set(names)
    assert set(res["perplexity"]) == {"pretrain", "sft", "ppo"} and res["ppo_curve"] and res["chart"]
    out = capsys.readouterr().out
    assert "| model | gold ± se |" in out and "stage times:" in out
    # summary.md: a row per stage with its headline, links to every stage's picture, what to run next
    summary = (tmp_path / "summary.md").read_text()
    for stage in ("pretrain", "sft", "rm", "ppo", "eval"):
        assert f"| {stage} | " in summary
    for stage in ("pretrain", "sft", "rm", "ppo"):
        assert f"[{stage}.svg]({stage}.svg)" in summary and f"![{stage}]({stage}.svg)" in summary
        read_chart(tmp_path / f"{stage}.svg")   # each parses as XML
    assert "validation loss" in summary and "pairwise accuracy" in summary and "python chat.py --ckpt" in summary
    print(f"quick pipeline: {time.time() - t0:.0f}s")
