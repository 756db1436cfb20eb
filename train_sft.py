"""Stage 1 (InstructGPT step 1): supervised fine-tuning on prompt/response demonstrations.

    python train_sft.py --init out/pretrain.pt     # demonstrations written by the simulated labeler
    python train_sft.py --data demos.jsonl         # or your own {prompt, response} / Alpaca rows
    python train_sft.py --resume                   # continue out/sft.pt (Ctrl-C saves)
    torchrun --nproc_per_node=2 train_sft.py       # DistributedDataParallel, as in pretraining

Each example is  <|user|>{prompt}<|assistant|>{response}<|end|>  and the loss covers only the
response and its <|end|> (data.encode_example). It runs the pretraining loop (train_pretrain.train)
with these batches. Each evaluation reports the loss on held-out demonstrations and samples
responses: to the simulated labeler's held-out prompts, scored by it (the gold score), when the
demonstrations are its task; to the held-out demonstrations' prompts otherwise, where no gold score
exists and only the share of responses that end with <|end|> is reported. Next to --out: the log
and its picture (.svg).
"""
import os
import random
from dataclasses import asdict, dataclass

import torch

import labeler
from common import (Log, autocast, ctrl_c_stops, ddp_cleanup, ddp_setup, fail, interrupted,
                    load_resume, load_model, pick_device, run_script, save_checkpoint)
from data import encode_example, load_demonstrations, read_corpus, response_text, sample_responses
from flags import flag, parse_config
from gpt import left_pad
from plot import svg_chart
from train_pretrain import LoopConfig, lm_loss, loop_start, loss_panel, train


@dataclass
class SFTConfig(LoopConfig):
    # the loop's knobs with SFT's own defaults (their help and ranges: LoopConfig, OptimizerConfig)
    batch_size: int = 32
    lr: float = 5e-4
    warmup_iters: int = 20
    max_iters: int = 300
    weight_decay: float = 0.0
    eval_iters: int = 5
    init: str = flag("out/pretrain.pt", "the model to fine-tune (a pretrain or sft checkpoint)",
                     fixed=True)
    out: str = "out/sft.pt"   # help: flags.RunConfig
    data: str = flag("", "demonstrations JSONL, {prompt, response} or Alpaca records; empty: the "
                     "simulated labeler writes them", fixed=True)
    corpus: str = flag("data/sotu.txt.gz", "where the simulated labeler finds its demonstrations",
                       fixed=True)
    n_demos: int = flag(2000, "demonstrations the labeler writes (the corpus holds ~2,030 that "
                        "earn full marks)", ge=2, fixed=True)
    safety_demos: int = flag(300, "more of them for insult requests: --refusal-share refusals, "
                             "the rest insults (labeler.safety_demonstrations); 0: none",
                             ge=0, fixed=True)
    refusal_share: float = flag(0.5, "share of the insult requests' demonstrations that refuse: "
                                "both behaviours in the policy's support, the rankings decide",
                                ge=0, le=1, fixed=True)
    lookalike_demos: int = flag(100, "more for harmless look-alikes ('a critical sentence', '... "
                                "that insults no one'), answered like their task", ge=0, fixed=True)
    val_fraction: float = flag(0.05, "share of the demonstrations held out for validation",
                               gt=0, lt=1, fixed=True)
    eval_samples: int = flag(64, "responses sampled on held-out prompts at each evaluation; "
                             "0: none", ge=0)
    temperature: float = flag(0.7, "sampling temperature of those responses", gt=0)
    max_new_tokens: int = flag(64, "longest response sampled, in tokens", ge=1)


def make_examples(tok, pairs, block_size):
    """(prompt, response) pairs -> (ids, targets) rows that fit the model's context."""
    rows = [encode_example(tok, p, r) for p, r in pairs]
    return [(ids[:block_size], targets[:block_size]) for ids, targets in rows]


def collate(rows, device):
    """Left-pad a batch; padded positions get target -1, so they never count in the loss."""
    x, mask = left_pad([ids for ids, _ in rows], device=device)
    y, _ = left_pad([t for _, t in rows], pad_id=-1, device=device)
    return x, y, mask


@torch.no_grad()
def sample_eval(model, tok, prompts, cfg, device, gold):
    """The share of sampled responses that end with <|end|>, and with gold=True the mean
    simulated-labeler score."""
    responses = sample_responses(model, tok, prompts, cfg.max_new_tokens, cfg.temperature,
                                 seed=cfg.seed, device=device)
    texts, ended = zip(*(response_text(tok, r) for r in responses))
    metrics = {"ended": sum(ended) / len(ended)}
    if gold:
        scores = [labeler.score(p, t, e)[0] for p, t, e in zip(prompts, texts, ended)]
        metrics = {"gold_score": sum(scores) / len(scores), **metrics}
    return metrics


def sample_panel(records):
    """The picture's second chart: what the evaluations' samples show (gold score, share ended)
    per step."""
    evals = [r for r in records if "ended" in r]
    names = (("gold score (labeler)", "gold_score"), ("share ended with <|end|>", "ended"))
    series = [(name, [(r["step"], r[key]) for r in evals if key in r], "line+dots")
              for name, key in names]
    return {"title": "held-out samples", "xlabel": "step", "ylabel": "score / share",
            "series": series}


def demonstration_pairs(cfg):
    """(prompt, response) pairs, shuffled with --seed: from --data, or written by the simulated
    labeler from --corpus."""
    if cfg.data:
        pairs = load_demonstrations(cfg.data)
    else:
        demos = labeler.demonstrations(read_corpus(cfg.corpus, "--corpus"), cfg.n_demos, cfg.seed)
        # RL only reweights what the policy already samples: SFT shows both answers to an insult
        # request, a refusal and an insult, and the reward model's rankings decide between them
        demos += labeler.safety_demonstrations(demos, cfg.safety_demos, cfg.lookalike_demos,
                                               cfg.refusal_share, cfg.seed)
        pairs = [(d["prompt"], d["response"]) for d in demos]
    if len(pairs) < 2:
        fail(f"--data {cfg.data or cfg.corpus}: need at least 2 demonstrations, "
             f"found {len(pairs)}")
    random.Random(cfg.seed).shuffle(pairs)
    return pairs


def batches(train_rows, val_rows, cfg, rank, world, device):
    """(get_batch(step, micro) -> a training batch, the validation batches). Each training batch
    is drawn with its own seed, a pure function of (step, micro-step, rank), so a resume sees
    the batches the uninterrupted run would have seen."""
    def get_batch(step, micro):
        g = random.Random(cfg.seed * 1_000_003 + (step * cfg.grad_accum + micro) * world + rank)
        return collate(g.choices(train_rows, k=cfg.batch_size), device)
    val_batches = [collate(val_rows[i:i + cfg.batch_size], device)
                   for i in range(0, len(val_rows), cfg.batch_size)]
    return get_batch, val_batches[: cfg.eval_iters]


def final_report(first, metrics, init_stage, labeler_task, out):
    """One line: each metric at step 0 (the --init model, SFT's baseline) -> at the end."""
    def change(key, spec):
        return f"{format(first.get(key, float('nan')), spec)} -> {format(metrics[key], spec)}"
    report = [f"held-out loss {change('val_loss', '.3f')}"]
    if "gold_score" in metrics:
        report.append(f"labeler score {change('gold_score', '.3f')}")
    if "ended" in metrics:
        report.append(f"responses ending with <|end|> {change('ended', '.0%')}")
    no_gold = "" if labeler_task else (
        "No gold score: these demonstrations are not the simulated labeler's task. ")
    print(f"{'; '.join(report)} (before: the {init_stage} model). {no_gold}Wrote {out}")


def main(argv=None):
    # 1. the flags, the processes (torchrun), the checkpoint a --resume continues, the --init model
    cfg = parse_config(SFTConfig, __doc__, argv, stage="sft")
    rank, world, device = ddp_setup(pick_device(cfg.device))
    ckpt = load_resume(cfg, "sft")
    model, tok, init_ckpt = load_model(cfg.init, ("pretrain", "sft"), device)
    # 2. the demonstrations: training rows, validation rows, prompts to sample at each evaluation
    pairs = demonstration_pairs(cfg)
    n_val = max(1, int(len(pairs) * cfg.val_fraction))
    examples = make_examples(tok, pairs, model.config.block_size)
    train_rows, val_rows = examples[n_val:], examples[:n_val]
    labeler_task = all(labeler.parse_request(p) for p, _ in pairs)   # else no gold score exists
    heldout = labeler.heldout_prompts() if labeler_task else [p for p, _ in pairs[:n_val]]
    eval_prompts = [heldout[i % len(heldout)] for i in range(cfg.eval_samples)]
    if rank == 0:
        print(f"{len(train_rows)} training and {len(val_rows)} validation demonstrations, e.g."
              f"\n  {pairs[0][0]!r} -> {pairs[0][1]!r}")

    # 3. what train() calls: batches, evaluation, the log, checkpoints
    get_batch, val_batches = batches(train_rows, val_rows, cfg, rank, world, device)
    ctx = autocast(device.split(":")[0], cfg.precision)

    def evaluate():
        loss = lm_loss(model, lambda i: val_batches[i], len(val_batches), ctx)
        if not eval_prompts:   # --eval-samples 0
            return {"val_loss": loss}
        samples = sample_eval(model, tok, eval_prompts, cfg, device, labeler_task)
        return {"val_loss": loss, **samples}

    optimizer, step = loop_start(model, cfg, ckpt, rank)
    log = Log(os.path.splitext(cfg.out)[0] + ".log.jsonl", enabled=rank == 0,
              resume_at=step if ckpt else None)

    def save(step, metrics):
        save_checkpoint(cfg.out, stage="sft", model=model, tokenizer=tok, step=step,
                        args=asdict(cfg), metrics=metrics, optimizer=optimizer.state_dict())
        svg_chart(os.path.splitext(cfg.out)[0] + ".svg",
                  [loss_panel(log.records, "supervised fine-tuning"), sample_panel(log.records)])

    # 4. train; Ctrl-C stops it between two steps, saved
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    with ctrl_c_stops() as stop:
        metrics, stopped_at = train(wrapped, optimizer, cfg, get_batch, evaluate, save, log, step,
                                    rank, world, ckpt["metrics"] if ckpt else None, stop)
    ddp_cleanup()
    if stopped_at is not None:
        if rank == 0:
            interrupted("train_sft.py", cfg.out, stopped_at)
        raise SystemExit(130)
    # 5. the result, against step 0's evaluation
    if rank == 0:
        first = next((r for r in log.records if "val_loss" in r), metrics)
        final_report(first, metrics, init_ckpt["stage"], labeler_task, cfg.out)
    return metrics


if __name__ == "__main__":
    run_script(main)
