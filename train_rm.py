"""Stage 2 (InstructGPT step 2): a reward model trained on rankings of K responses per prompt.

    python train_rm.py --init out/sft.pt          # sample K responses per prompt; the simulated labeler ranks them
    python train_rm.py --data rankings.jsonl      # human/external rankings: K-wise or chosen/rejected pairs
    python train_rm.py --policy out/round1/ppo.pt --data out/round1/rm.rankings.jsonl
                                                  # steps 2 and 3 repeated: rank samples of the newer policy,
                                                  # and train on them plus the earlier rounds' rankings

The reward model is the SFT model with its scalar head, read at the last real token of
<|user|>{prompt}<|assistant|>{response}<|end|>, i.e. at the <|end|> (never mean-pooled). Every response of
a ranking is scored once, and the loss runs over all C(K,2) pairs formed from those scores
(InstructGPT, Ouyang et al. 2022, eq. 1):

    loss(theta) = -1/C(K,2) * E_{(x, y_w, y_l) ~ D} [ log sigmoid( r_theta(x, y_w) - r_theta(x, y_l) ) ]

Afterwards a gain and bias make samples of the --init (SFT) model score mean 0, std 1; they are stored in
the checkpoint, and common.load_reward_model() applies them (common also holds the reader, score_seqs). The
RM is evaluated on held-out prompts against the labeler: pairwise accuracy vs the noisy labels and vs the
noise-free order, and Spearman's rank correlation, on samples of the SFT model (--init) and, with --policy,
on samples of that policy too: the one PPO will start from, whose mistakes the new rankings are meant to catch.
Every ranking the RM trained on is written next to it (out/rm.rankings.jsonl), the --data of the next round.
"""
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

import labeler
from common import (POLICY_STAGES, Log, autocast, check_flags, check_tokenizer, cosine_lr, fail, load_model,
                    parse_config, pick_device, save_checkpoint, score_all, score_seqs)
from data import encode_prompt, load_rankings, response_text, sample_responses, write_jsonl


SAMPLE_BATCH = 256   # rows generated at once: per-step overhead dominates a small model, so wide batches
                     # sample ~1.6x faster on a CPU than 64 (the KV cache for 256 rows is a few MB)


@dataclass
class RMConfig:
    init: str = "out/sft.pt"         # the trunk the RM starts from (InstructGPT: the SFT model)
    out: str = "out/rm.pt"
    policy: str = ""                 # sample the K responses from this checkpoint instead of --init
    data: str = ""                   # rankings JSONL to train on; new ones are sampled (and the simulated
                                     # labeler ranks them) too when --policy is named or --data is empty
    k: int = 8                       # responses per prompt (InstructGPT's labelers ranked 4 to 9): K=8 gives
                                     # 28 pairs per 8 forwards, K=4 only 12 per 8, at the same sampling cost
    n_prompts: int = 500             # rankings to collect: the training prompts, cycled
    eval_prompts: int = 90           # rankings on held-out prompts for the evaluation (10 per prompt)
    label_noise: float = 0.05        # std of the Gaussian noise the labeler adds to its score
    temperature: float = 1.0
    max_new_tokens: int = 64
    epochs: int = 1                  # InstructGPT: more than one epoch over the rankings overfits
    batch_size: int = 2              # rankings per step (K responses each)
    lr: float = 3e-4
    warmup_iters: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"


# ----------------------------------------------------------------------------- the loss (InstructGPT eq. 1)
def pairs(k):
    """All C(k,2) (better, worse) index pairs of a ranking listed best to worst."""
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def ranking_loss(scores, sizes):
    """Eq. 1: scores (N,) holds each response's reward once, rankings one after another (best..worst),
    sizes their K. Per ranking: mean over its C(K,2) pairs of -log sigmoid(r_better - r_worse); then the
    mean over rankings (one ranking = one batch element, as in InstructGPT). Returns (loss, pair accuracy)."""
    losses, right, start = [], 0, 0
    for k in sizes:
        better, worse = torch.tensor(pairs(k), device=scores.device).T
        diff = scores[start + better] - scores[start + worse]
        losses.append(-F.logsigmoid(diff).mean())
        right, start = right + (diff > 0).sum().item(), start + k
    return torch.stack(losses).mean(), right / sum(math.comb(k, 2) for k in sizes)


# ----------------------------------------------------------------------------- rankings
def sample_rankings(policy, tok, prompts, *, k, temperature, max_new_tokens, label_noise, seed, device, ctx):
    """k responses per prompt from the policy (KV cache, stop at <|end|>), ranked best..worst by the
    simulated labeler with N(0, label_noise^2) added to its score. Identical responses to a prompt are
    merged (a ranking needs >= 2 distinct ones). A response cut off before <|end|> is scored ended=False.
    Returns (rankings, all sampled sequences): a ranking is {"prompt", "texts", "seqs", "gold"}."""
    with ctx:
        responses = sample_responses(policy, tok, [p for p in prompts for _ in range(k)], max_new_tokens,
                                     temperature, seed=seed, device=device, batch_size=SAMPLE_BATCH)
    rng = np.random.default_rng(seed)
    rankings, samples = [], []
    for n, prompt in enumerate(prompts):
        prompt_ids = encode_prompt(tok, prompt)
        group = [tuple(r) for r in responses[n * k:(n + 1) * k]]
        samples += [prompt_ids + list(r) for r in group]
        distinct = list(dict.fromkeys(group))
        if len(distinct) < 2:
            continue
        texts, ends = zip(*(response_text(tok, r) for r in distinct))
        order = labeler.rank(prompt, list(texts), label_noise, rng, list(ends))
        rankings.append({"prompt": prompt, "texts": [texts[i] for i in order],
                         "seqs": [prompt_ids + list(distinct[i]) for i in order],
                         "gold": [labeler.score(prompt, texts[i], ends[i])[0] for i in order]})
    return rankings, samples


def file_rankings(tok, path):
    """Rankings from a JSONL file (data.load_rankings checks <2 responses and duplicates); each response
    is a finished one, followed by its <|end|>."""
    end, enc = tok.special_tokens["<|end|>"], tok.to_tiktoken().encode_ordinary
    return [{"prompt": p, "texts": rs, "seqs": [encode_prompt(tok, p) + enc(r) + [end] for r in rs], "gold": None}
            for p, rs in load_rankings(path)]


def ranking_records(rankings, end):
    """Rankings as data.load_rankings reads them, {"prompt", "responses": [best, ..., worst]}. A file's
    responses are finished ones, so a response that was cut off before its <|end|> is left out (PPO never
    asks the RM about those: they get --no-end-penalty), and so is a ranking left with fewer than 2."""
    records = []
    for rk in rankings:
        texts = [t for t, s in zip(rk["texts"], rk["seqs"]) if s[-1] == end]
        if len(texts) >= 2:
            records.append({"prompt": rk["prompt"], "responses": texts})
    return records


# ----------------------------------------------------------------------------- train, normalize, evaluate
def train(model, rankings, cfg, device, log=None):
    """cfg.epochs passes over the rankings, cfg.batch_size rankings per step. Returns the last loss."""
    ctx = autocast(device, cfg.precision)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr)
    max_steps = math.ceil(len(rankings) / cfg.batch_size) * cfg.epochs
    g, step, loss = random.Random(cfg.seed), 0, torch.tensor(float("nan"))
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(rankings)))
        g.shuffle(order)
        for b in range(0, len(order), cfg.batch_size):
            batch = [rankings[i] for i in order[b:b + cfg.batch_size]]
            lr = cosine_lr(step, max_steps, cfg.lr, cfg.warmup_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # one forward per response (K per ranking), not two per pair: the C(K,2) pairs reuse the scores
            with ctx:
                scores = score_seqs(model, [s for rk in batch for s in rk["seqs"]], device)
            loss, acc = ranking_loss(scores.float(), [len(rk["seqs"]) for rk in batch])
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if log and (step % 10 == 0 or step == max_steps):
                log({"step": step, "loss": loss.item(), "acc": acc, "lr": lr, "grad_norm": norm.item()},
                    f"step {step}/{max_steps}  loss {loss.item():.4f}  pair acc {acc:.2f}  lr {lr:.2e}  "
                    f"eta {log.eta(step, max_steps)}")
    return loss.item()


def fit_normalization(model, seqs, device, ctx):
    """(gain, bias) so that gain * r + bias has mean 0 and std 1 over these (SFT) samples: the reward
    scale PPO's KL coefficient is set against."""
    r = score_all(model, seqs, device, ctx)
    gain = 1.0 / r.std() if len(r) > 1 and r.std() > 1e-8 else 1.0
    return float(gain), float(-r.mean() * gain)


def spearman(x, y):
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties get their average rank)."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        sv = v[order]
        for value in np.unique(sv[1:][sv[1:] == sv[:-1]]):   # each tied value gets the mean of its ranks
            r[v == value] = r[v == value].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def evaluate(model, rankings, device, ctx):
    """Pairwise accuracy vs the rankings' order (the noisy labels), and, where gold scores are known,
    vs the noise-free labeler order (pairs of equal gold score skipped) and Spearman RM vs gold."""
    r = score_all(model, [s for rk in rankings for s in rk["seqs"]], device, ctx)
    right = total = right_gold = total_gold = 0
    loss, start = [], 0
    for rk in rankings:
        s, g = r[start:start + len(rk["seqs"])], rk["gold"]
        start += len(s)
        loss.append(np.mean([np.logaddexp(0.0, s[j] - s[i]) for i, j in pairs(len(s))]))  # -log sigmoid
        for i, j in pairs(len(s)):
            right, total = right + (s[i] > s[j]), total + 1
            if g is not None and g[i] != g[j]:
                right_gold, total_gold = right_gold + ((s[i] - s[j]) * (g[i] - g[j]) > 0), total_gold + 1
    metrics = {"loss": float(np.mean(loss)), "acc_noisy": float(right / total)} if total else {}
    if total_gold:
        metrics["acc_gold"] = float(right_gold / total_gold)
        metrics["spearman"] = spearman(r, [x for rk in rankings for x in rk["gold"]])
    return metrics


def main(argv=None):
    cfg = parse_config(RMConfig, __doc__.split("\n")[0], argv)
    if not 2 <= cfg.k <= 9:
        fail(f"--k {cfg.k}: rank between 2 and 9 responses per prompt (InstructGPT's labelers ranked 4 to 9)")
    check_flags(positive=(("--n-prompts", cfg.n_prompts), ("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size),
                          ("--max-new-tokens", cfg.max_new_tokens), ("--eval-prompts", cfg.eval_prompts)),
                nonnegative=(("--label-noise", cfg.label_noise),))
    device = pick_device(cfg.device)
    ctx = autocast(device, cfg.precision)
    torch.manual_seed(cfg.seed)
    model, tok, ckpt = load_model(cfg.init, ("pretrain", "sft"), device)
    if ckpt["stage"] == "pretrain":
        print(f"warning: --init {cfg.init} is a pretrain checkpoint; InstructGPT starts the reward model "
              f"from the SFT model (out/sft.pt)", file=sys.stderr)
    policy = model
    if cfg.policy:
        policy, policy_tok, _ = load_model(cfg.policy, POLICY_STAGES, device, flag="--policy")
        check_tokenizer(policy_tok, tok, f"--policy {cfg.policy}", f"--init {cfg.init}'s")

    # 1. the rankings, and every sample we need, drawn before training changes the --init weights
    t0 = time.time()
    train_p, held = labeler.train_prompts(), labeler.heldout_prompts()
    random.Random(cfg.seed).shuffle(train_p)
    prompts = [train_p[i % len(train_p)] for i in range(cfg.n_prompts)]
    knobs = dict(k=cfg.k, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                 label_noise=cfg.label_noise, device=device, ctx=ctx)
    rankings, norm_seqs = file_rankings(tok, cfg.data) if cfg.data else [], None
    if cfg.policy or not cfg.data:
        new, norm_seqs = sample_rankings(policy, tok, prompts, seed=cfg.seed, **knobs)
        if not new:
            fail(f"--init {cfg.policy or cfg.init}: no prompt got 2 distinct responses; raise --temperature")
        rankings += new
    if cfg.data or cfg.policy:  # the normalization wants samples of the SFT model (--init) itself
        with ctx:
            responses = sample_responses(model, tok, prompts, cfg.max_new_tokens, cfg.temperature,
                                         seed=cfg.seed + 2, device=device, batch_size=SAMPLE_BATCH)
        norm_seqs = [encode_prompt(tok, p) + r for p, r in zip(prompts, responses)]
    held_prompts = [held[i % len(held)] for i in range(cfg.eval_prompts)]
    eval_sets = {"heldout_": sample_rankings(model, tok, held_prompts, seed=cfg.seed + 1, **knobs)[0]}
    if cfg.policy:
        eval_sets["heldout_policy_"] = sample_rankings(policy, tok, held_prompts, seed=cfg.seed + 1, **knobs)[0]
    rk = rankings[-1]
    print(f"{len(rankings)} rankings ({sum(map(len, (r['seqs'] for r in rankings)))} responses) and "
          f"{len(eval_sets['heldout_'])} held-out rankings in {time.time() - t0:.0f}s; e.g. for {rk['prompt']!r}:\n" +
          "\n".join(f"  {i + 1}. {t!r}" for i, t in enumerate(rk["texts"])))

    # 2. train (eq. 1), 3. normalize on SFT samples, 4. evaluate on held-out prompts
    log = Log(os.path.splitext(cfg.out)[0] + ".log.jsonl")
    train_loss = train(model, rankings, cfg, device, log)
    gain, bias = fit_normalization(model, norm_seqs, device, ctx)
    metrics = {"train_loss": train_loss, "rankings": len(rankings), "rm_gain": gain, "rm_bias": bias}
    for prefix, eval_rankings in eval_sets.items():
        metrics.update({prefix + k: v for k, v in evaluate(model, eval_rankings, device, ctx).items()})
    log(metrics, "held-out  " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    write_jsonl(os.path.splitext(cfg.out)[0] + ".rankings.jsonl", ranking_records(rankings, tok.special_tokens["<|end|>"]))
    save_checkpoint(cfg.out, stage="rm", model=model, tokenizer=tok, step=math.ceil(len(rankings) / cfg.batch_size) * cfg.epochs,
                    args=asdict(cfg), metrics=metrics, rm_gain=gain, rm_bias=bias)
    print(f"held-out pairwise accuracy {metrics.get('heldout_acc_gold', float('nan')):.1%} vs the noise-free "
          f"labeler, {metrics.get('heldout_acc_noisy', float('nan')):.1%} vs its noisy labels; Spearman "
          f"{metrics.get('heldout_spearman', float('nan')):.3f}" +
          (f"; {metrics.get('heldout_policy_acc_gold', float('nan')):.1%} on --policy's samples" if cfg.policy else "") +
          f". Wrote {cfg.out} ({time.time() - t0:.0f}s)")
    return metrics


if __name__ == "__main__":
    main()
