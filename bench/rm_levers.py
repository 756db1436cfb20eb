"""The reward-model levers of docs/RESULTS.md, on pools of rankings sampled once and kept on disk,
so that each variant trains on exactly the same rankings (train_rm.py samples afresh every run):

    python bench/rm_levers.py pool out/sft.pt 3000 1 out/levers/pool_sft.pkl          # 3,000 K=8 rankings of SFT
    python bench/rm_levers.py pool out/sft.pt 180 2 out/levers/held_sft.pkl --heldout # held-out prompts
    python bench/rm_levers.py train out/sft.pt out/levers/rm.pt out/levers/pool_sft.pkl:1500 \\
        --eval out/levers/held_sft.pkl --norm out/levers/pool_sft.pkl                   # RM on the first 1,500
    python bench/rm_levers.py eval out/levers/rm.pt out/levers/held_ppo.pkl             # accuracy on other samples

Accuracy is pairwise, against the noise-free labeler order (train_rm.evaluate's acc_gold). The pools are pickles
of train_rm.sample_rankings' output, for this script only.
"""
import argparse
import os
import pickle
import random
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import labeler  # noqa: E402
import train_rm  # noqa: E402
from common import autocast, load_model, save_checkpoint  # noqa: E402

DEVICE, CTX = "cpu", autocast("cpu", "auto")


def pool(a):
    model, tok, _ = load_model(a.policy, None, DEVICE)
    prompts = labeler.heldout_prompts() if a.heldout else labeler.train_prompts()
    random.Random(a.seed).shuffle(prompts)
    t0 = time.time()
    rankings, samples = train_rm.sample_rankings(model.eval(), tok, [prompts[i % len(prompts)] for i in range(a.n)],
                                                 k=8, temperature=1.0, max_new_tokens=64, label_noise=0.05,
                                                 seed=a.seed, device=DEVICE, ctx=CTX)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "wb") as f:
        pickle.dump({"rankings": rankings, "samples": samples}, f)
    print(f"{a.out}: {len(rankings)} rankings of {a.policy} in {time.time() - t0:.0f}s")


def load_pool(spec):
    """path[:n]: the first n rankings of a pool (all without :n), and its samples."""
    path, _, n = spec.partition(":")
    with open(path, "rb") as f:
        d = pickle.load(f)
    return d["rankings"][:int(n)] if n else d["rankings"], d["samples"]


def accuracies(model, specs):
    return {spec: round(train_rm.evaluate(model, load_pool(spec)[0], DEVICE, CTX)["acc_gold"], 4) for spec in specs}


def train(a):
    model, tok, _ = load_model(a.init, None, DEVICE)
    rankings = [rk for spec in a.pools for rk in load_pool(spec)[0]]
    cfg = SimpleNamespace(epochs=1, batch_size=a.batch_size, lr=a.lr, warmup_iters=10, weight_decay=0.0,
                          grad_clip=1.0, seed=1337, precision="auto")
    t0 = time.time()
    train_rm.train(model, rankings, cfg, DEVICE)
    seconds = time.time() - t0
    gain, bias = train_rm.fit_normalization(model, load_pool(a.norm)[1][:800], DEVICE, CTX)
    print(f"{a.out}: {len(rankings)} rankings from {a.init} in {seconds:.0f}s; pairwise accuracy {accuracies(model, a.eval)}")
    save_checkpoint(a.out, stage="rm", model=model, tokenizer=tok, args={"k": 8}, rm_gain=gain, rm_bias=bias)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("pool")
    s.add_argument("policy"), s.add_argument("n", type=int), s.add_argument("seed", type=int), s.add_argument("out")
    s.add_argument("--heldout", action="store_true")
    s = sub.add_parser("train")
    s.add_argument("init"), s.add_argument("out"), s.add_argument("pools", nargs="+")
    s.add_argument("--eval", nargs="+", default=[]), s.add_argument("--norm", required=True)
    s.add_argument("--lr", type=float, default=3e-4), s.add_argument("--batch-size", type=int, default=2)
    s = sub.add_parser("eval")
    s.add_argument("rm"), s.add_argument("pools", nargs="+")
    a = p.parse_args()
    if a.cmd == "eval":
        print(accuracies(load_model(a.rm, ("rm",), DEVICE)[0], a.pools))
    else:
        {"pool": pool, "train": train}[a.cmd](a)
