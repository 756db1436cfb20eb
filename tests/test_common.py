"""The shared plumbing in common.py: torchrun refused by the one-process stages."""
import pytest


REFUSAL = ("error: {}.py trains in one process: run it with python, not torchrun (multi-process training: "
           "train_pretrain.py and train_sft.py)")


def test_torchrun_of_ppo_is_refused_in_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from conftest import ROOT
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train_ppo.py"), "--out", str(tmp_path / "x.pt")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0 and not list(tmp_path.glob("x*"))
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [REFUSAL.format("train_ppo")]


@pytest.mark.parametrize("rank, said", [("0", REFUSAL.format("train_rm")), ("1", 0)])   # process 1 leaves quietly
def test_rm_under_torchrun_is_refused_once(monkeypatch, tmp_path, rank, said):
    import train_rm
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as e:
        train_rm.main(["--out", str(tmp_path / "x.pt")])
    assert e.value.code == said
