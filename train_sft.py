"""Stage 1 (InstructGPT step 1): supervised fine-tuning on prompt/response demonstrations.

    python train_sft.py --init out/pretrain.pt     # demonstrations written by the simulated labeler
    python train_sft.py --data demos.jsonl         # or your own {"prompt","response"} / Alpaca records

Each example is  <|user|>{prompt}<|assistant|>{response}<|end|>  and the loss covers only the
response and its <|end|> (data.encode_example). It runs the pretraining loop (train_pretrain.train)
with these batches, and evaluates on held-out prompts with the simulated labeler.
"""
import os
import random
from dataclasses import asdict, dataclass

import torch

import labeler
from common import Log, autocast, fail, load_model, parse_config, pick_device, save_checkpoint
from data import encode_example, load_demonstrations, read_corpus, response_text, sample_responses
from gpt import left_pad
from train_pretrain import LoopConfig, lm_loss, train


@dataclass
class SFTConfig(LoopConfig):         # the loop's knobs, with SFT's own defaults where they differ
    lr: float = 5e-4
    warmup_iters: int = 20
    max_iters: int = 300
    weight_decay: float = 0.0
    eval_iters: int = 5
    init: str = "out/pretrain.pt"
    out: str = "out/sft.pt"
    data: str = ""                   # demonstrations JSONL; empty: the simulated labeler writes them
    corpus: str = "data/sotu.txt.gz" # where the simulated labeler finds its demonstrations
    n_demos: int = 2000              # the corpus holds about 2,030 sentences that earn full marks
    val_fraction: float = 0.05
    eval_samples: int = 64           # responses sampled on held-out prompts at each evaluation
    temperature: float = 0.7         # sampling for the labeler evaluation
    max_new_tokens: int = 64


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
def labeler_eval(model, tok, prompts, cfg, device):
    """Mean simulated-labeler score and the share of responses that end with <|end|>."""
    responses = sample_responses(model, tok, prompts, cfg.max_new_tokens, cfg.temperature, seed=cfg.seed,
                                 device=device)
    texts, ended = zip(*(response_text(tok, r) for r in responses))
    scores = [labeler.score(p, t, e)[0] for p, t, e in zip(prompts, texts, ended)]
    return {"gold_score": sum(scores) / len(scores), "ended": sum(ended) / len(ended)}


def main(argv=None):
    cfg = parse_config(SFTConfig, __doc__.split("\n")[0], argv)
    device = pick_device(cfg.device)
    model, tok, ckpt = load_model(cfg.init, ("pretrain", "sft"), device)
    if cfg.data:
        pairs = load_demonstrations(cfg.data)
    else:
        pairs = [(d["prompt"], d["response"]) for d in labeler.demonstrations(read_corpus(cfg.corpus), cfg.n_demos, cfg.seed)]
    random.Random(cfg.seed).shuffle(pairs)
    n_val = max(1, int(len(pairs) * cfg.val_fraction))
    if len(pairs) < 2:
        fail(f"--data {cfg.data or cfg.corpus}: need at least 2 demonstrations, found {len(pairs)}")
    examples = make_examples(tok, pairs, model.config.block_size)
    train_rows, val_rows = examples[n_val:], examples[:n_val]
    print(f"{len(train_rows)} training and {len(val_rows)} validation demonstrations, e.g.\n"
          f"  {pairs[0][0]!r} -> {pairs[0][1]!r}")

    def get_batch(step, micro):
        g = random.Random(cfg.seed * 1_000_003 + step * cfg.grad_accum + micro)
        return collate(g.choices(train_rows, k=cfg.batch_size), device)

    val_batches = [collate(val_rows[i:i + cfg.batch_size], device) for i in range(0, len(val_rows), cfg.batch_size)]
    val_batches = val_batches[: cfg.eval_iters]
    heldout = labeler.heldout_prompts()
    eval_prompts = [heldout[i % len(heldout)] for i in range(cfg.eval_samples)]
    ctx = autocast(device, cfg.precision)

    history = []  # the first entry (step 0) is the initial model: the baseline SFT must beat

    def evaluate():
        history.append({"val_loss": lm_loss(model, lambda i: val_batches[i], len(val_batches), ctx),
                        **labeler_eval(model, tok, eval_prompts, cfg, device)})
        return history[-1]

    model.scalar_head.requires_grad_(False)   # the LM loss does not use it
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr, eps=1e-8)
    save = lambda step, metrics: save_checkpoint(cfg.out, stage="sft", model=model, tokenizer=tok,
                                                 step=step, args=asdict(cfg), metrics=metrics)
    log = Log(os.path.splitext(cfg.out)[0] + ".log.jsonl")
    metrics = train(model, optimizer, cfg, get_batch, evaluate, save, log)
    print(f"held-out labeler score: {history[0]['gold_score']:.3f} before SFT ({ckpt['stage']} model), "
          f"{metrics['gold_score']:.3f} after; {history[0]['ended']:.0%} -> {metrics['ended']:.0%} of "
          f"responses end with <|end|>. Wrote {cfg.out}")


if __name__ == "__main__":
    main()
