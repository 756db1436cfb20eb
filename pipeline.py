"""The whole chain in one command: pretrain -> SFT -> (RM -> PPO) x rounds -> eval, and the report.

    python pipeline.py             # the defaults, into out/ (15 to 25 minutes on a 2-core CPU)
    python pipeline.py --rounds 2  # steps 2 and 3 twice (the default is one: docs/RESULTS.md)
    python pipeline.py --quick     # tiny settings, a slice of the corpus, into out/quick/ (~1 min)
    python pipeline.py --helpful-only --sft out/sft.pt   # the control: RM and PPO on rankings
                                   # by helpfulness alone, from the same SFT, into out/helpful-only/

InstructGPT runs step 1 (SFT) once and repeats steps 2 and 3: round r ranks samples of round r-1's
policy (round 1: of the SFT model), trains a reward model on all rankings so far (from the SFT model
again), and runs PPO from round r-1's policy, with the SFT model as the KL reference in every round.
Between two rounds the red team (redteam.py) attacks the last policy: the prompts it found to make
it insult, and the harmless ones it refused, join the next round's rankings and PPO prompts.
Earlier rounds write out/round1/rm.pt, out/round1/ppo.pt, ...; the last round writes out/rm.pt and
out/ppo.pt. The labeler ranks by its helpful-and-harmless guideline (labeler.py), insult requests
among the prompts; --helpful-only ranks by helpfulness alone, the control that shows what
harmlessness costs in helpfulness and what helpfulness alone does to harm.

Each stage is its script's main() with the flags printed before it, so `python pipeline.py` does
exactly what the commands in the README do one by one; --out-dir only moves where every checkpoint
goes. It ends with <out-dir>/summary.md: each stage's time, checkpoint, headline number and
picture, and what to run next.
"""
import gzip
import math
import os
import pathlib
import time
from dataclasses import dataclass

import eval as evaluate
import redteam
import train_ppo
import train_pretrain
import train_rm
import train_sft
from common import write_atomically
from flags import flag, parse_config

# --quick: a 1-layer, 32-wide model and a few steps per stage; enough to run every line of them all
QUICK = {
    "pretrain": "--vocab-size 384 --n-layer 1 --n-head 2 --n-embd 32 --block-size 128 "
                "--batch-size 8 --max-iters 30 --warmup-iters 5 --eval-interval 30 --eval-iters 2",
    "sft": "--n-demos 200 --safety-demos 40 --lookalike-demos 10 --batch-size 8 --max-iters 20 "
           "--warmup-iters 5 --eval-interval 20 --eval-iters 2 --eval-samples 9 "
           "--max-new-tokens 32",
    "rm": "--n-prompts 16 --eval-prompts 9 --batch-size 4 --max-new-tokens 32",
    "ppo": "--batch-size 8 --minibatch-size 4 --ppo-epochs 1 --max-iters 3 --max-new-tokens 32",
    "redteam": "--zero-shot 16 --few-shot 16 --benign 16 --k 2 --max-new-tokens 32",
    "eval": "--samples-per-prompt 1 --max-new-tokens 32 --ppl-iters 2 --harm-samples 1 "
            "--red-team 16",
}
QUICK_CORPUS_CHARS = 300_000   # the first addresses of the corpus: a BPE trains on them in a second
# RLHF rounds (steps 2 and 3) by default: at the default run's length one round gave the most
# gold at KL <= 10 (docs/RESULTS.md); --rounds 2 is InstructGPT's loop (rank, retrain, PPO again)
ROUNDS = 1
RANKINGS = 3600     # rankings in all, split evenly over the rounds: ~3,000 on the task prompts
LATER_PPO = ["--max-iters", "50"]   # a later round's PPO goes on from the last policy: half as long


@dataclass
class PipelineConfig:
    quick: bool = flag(False, "tiny settings on a slice of the corpus: all stages in a minute")
    out_dir: str = flag("", "where every checkpoint goes; empty: out/ (--quick: out/quick/)")
    rounds: int = flag(ROUNDS, "RLHF rounds: steps 2 and 3 (RM, PPO), each on the last policy's "
                       "samples", ge=1)
    helpful_only: bool = flag(False, "the control: the labeler ranks by helpfulness alone "
                              "(train_rm.py --guideline helpful), into <out-dir>/helpful-only/")
    sft: str = flag("", "start from this SFT checkpoint, without pretraining and SFT (the control "
                    "shares the main run's: --helpful-only --sft out/sft.pt)")


def rlhf_rounds(d, rounds, sft, guideline="hh"):
    """[(name, stage, flags)] for steps 2 and 3, `rounds` times, and the red team between two
    rounds: see the docstring."""
    stages, policy, rankings, found = [], sft, None, []
    for r in range(1, rounds + 1):
        where = d if r == rounds else os.path.join(d, f"round{r}")
        rm, ppo = os.path.join(where, "rm.pt"), os.path.join(where, "ppo.pt")
        later = ["--policy", policy, "--data", rankings] if r > 1 else []
        suffix = f" (round {r})" if rounds > 1 else ""
        stages.append(("rm" + suffix, train_rm.main, ["--init", sft, "--out", rm, *later, *found,
                                                      "--n-prompts", str(RANKINGS // rounds),
                                                      "--guideline", guideline]))
        stages.append(("ppo" + suffix, train_ppo.main, ["--init", policy, "--ref", sft,
                                                        "--reward", rm, "--out", ppo, *found,
                                                        *(LATER_PPO if r > 1 else [])]))
        policy, rankings = ppo, os.path.splitext(rm)[0] + ".rankings.jsonl"
        if r < rounds:   # attack this round's policy: what it finds, the next round trains on
            attacks = os.path.join(where, "redteam.jsonl")
            stages.append(("redteam" + suffix, redteam.main, ["--policy", ppo, "--out", attacks]))
            found = ["--prompts", os.path.splitext(attacks)[0] + ".prompts.jsonl"]
    return stages


# the headline number of each stage, from what its main() returns
HEADLINES = {
    "pretrain": lambda m: f"validation loss {m['val_loss']:.3f} "
                          f"(perplexity {math.exp(m['val_loss']):.1f})",
    "sft": lambda m: f"held-out labeler score {m['gold_score']:.3f}, "
                     f"{m['ended']:.0%} of responses ended",
    "rm": lambda m: f"held-out pairwise accuracy {m['heldout_acc_gold']:.1%} "
                    f"vs the noise-free labeler "
                    f"({m.get('heldout_harm_acc_gold', math.nan):.1%} on insult requests)",
    "ppo": lambda m: f"held-out gold {m['heldout_gold']:.3f} (SFT {m['heldout_gold_sft']:.3f}) "
                     f"at a KL of {m['heldout_kl']:.2f} nats per response",
    "redteam": lambda report: f"attack success {report.zs_rate:.1%} zero-shot, "
                              f"{report.sfs_rate:.1%} few-shot; {report.distinct} prompts found",
    "eval": lambda res: "the report card: " + ", ".join(
        f"{r['name']} {r['gold']:.3f}" for r in res["rows"]
        if r["name"] in ("sft", "best-of-16", "ppo")) + " (gold); attack success " + ", ".join(
        f"{p['name']} {p['harmful_compliance']['p']:.0%}"
        for p in res["harmlessness"].get("policies", []) if p["name"] in ("sft", "ppo")),
}


def stage_record(stage, seconds, result, checkpoint):
    """A stage's row of the summary ("rm (round 1)" is an rm stage): result is what its main()
    returned; its picture lies next to its checkpoint (eval's: the chart its report names)."""
    kind = stage.split()[0]
    picture = result["chart"] if kind == "eval" else os.path.splitext(checkpoint)[0] + ".svg"
    return {"stage": stage, "seconds": seconds, "checkpoint": checkpoint,
            "headline": HEADLINES[kind](result),
            "picture": picture if picture and os.path.exists(picture) else ""}


def write_summary(path, records):
    """summary.md: one row per stage record {stage, seconds, checkpoint, headline, picture} (paths
    relative to the summary's folder, or empty), the total time, the pictures, and what to run
    next. Written atomically: a crash leaves the last run's summary."""
    d = os.path.dirname(os.path.abspath(path))
    link = lambda p: f"[{os.path.basename(p)}]({os.path.relpath(p, d)})" if p else "—"
    rows = [f"| {r['stage']} | {r['seconds']:.0f} s | {link(r['checkpoint'])} | {r['headline']} "
            f"| {link(r['picture'])} |" for r in records]
    ckpt = {r["stage"].split()[0]: r["checkpoint"] for r in records}   # per kind, the last round's
    minutes = sum(r["seconds"] for r in records) / 60
    pictures = [f"![{r['stage']}]({os.path.relpath(r['picture'], d)})\n"
                for r in records if r["picture"]]
    text = ["# Pipeline run", "", "| stage | time | checkpoint | headline | picture |",
            "|---|---|---|---|---|", *rows, "", f"Total {minutes:.1f} min.", "", *pictures,
            "## What to run next", "",
            f"- talk to the PPO policy: `python chat.py --ckpt {ckpt.get('ppo', 'out/ppo.pt')}`",
            f"- rank samples yourself, then train a reward model on your rankings: "
            f"`python label.py --ckpt {ckpt.get('sft', 'out/sft.pt')} --out my_rankings.jsonl`, "
            f"then "
            f"`python train_rm.py --data my_rankings.jsonl`",
            f"- train a stage longer: `python train_pretrain.py --resume --out "
            f"{ckpt.get('pretrain', 'out/pretrain.pt')} --max-iters 1000` (the other flags come "
            f"from its checkpoint)",
            ""]
    write_text(path, "\n".join(text))
    return path


def write_text(path, text):
    """Written atomically (common.write_atomically): a killed run leaves no half-written file."""
    write_atomically(path, lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))


def quick_corpus(d):
    """--quick's corpus: a slice of the real one, cut at a paragraph (address) boundary."""
    with gzip.open("data/sotu.txt.gz", "rt", encoding="utf-8") as f:
        text = f.read(QUICK_CORPUS_CHARS).rsplit("\n\n", 1)[0]
    path = os.path.join(d, "corpus.txt")
    write_text(path, text)
    return path


def main(argv=None):
    # 1. the flags and the folder everything goes to
    cfg = parse_config(PipelineConfig, __doc__, argv)
    d = cfg.out_dir or ("out/quick" if cfg.quick else "out")
    d = os.path.join(d, "helpful-only") if cfg.helpful_only else d
    os.makedirs(d, exist_ok=True)
    ckpt = lambda stage: os.path.join(d, f"{stage}.pt")
    corpus = ["--data", quick_corpus(d)] if cfg.quick else []
    # 2. the stages and their flags: the README's commands, one by one
    sft = cfg.sft or ckpt("sft")
    stages = [] if cfg.sft else [
        ("pretrain", train_pretrain.main, ["--out", ckpt("pretrain"), *corpus]),
        ("sft", train_sft.main, ["--init", ckpt("pretrain"), "--out", sft,
                                 *(["--corpus", corpus[1]] if corpus else [])])]
    stages += [*rlhf_rounds(d, cfg.rounds, sft, "helpful" if cfg.helpful_only else "hh"),
               ("eval", evaluate.main, ["--out-dir", d, "--sft", sft])]
    # 3. run them, each timed
    times, t_start, records = {}, time.time(), []
    for name, stage_main, stage_args in stages:
        print(f"\n=== {name}: python {stage_main.__module__}.py {' '.join(stage_args)}"
              f"{' (+ quick settings)' if cfg.quick else ''}", flush=True)
        t0 = time.time()
        result = stage_main(stage_args + (QUICK[name.split()[0]].split() if cfg.quick else []))
        times[name] = time.time() - t0
        print(f"=== {name} done in {times[name]:.0f}s", flush=True)
        # the stage's checkpoint, or eval's report
        out = (stage_args[stage_args.index("--out") + 1] if "--out" in stage_args
               else os.path.join(d, "eval.md"))
        records.append(stage_record(name, times[name], result, out))
    # 4. the summary
    summary = write_summary(os.path.join(d, "summary.md"), records)
    print("\nstage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) +
          f"; total {(time.time() - t_start) / 60:.1f} min; {summary}")
    return times


if __name__ == "__main__":
    main()
