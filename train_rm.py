"""Stage 2 (InstructGPT step 2): a reward model trained on rankings of K responses per prompt.

    python train_rm.py --init out/sft.pt      # sample K responses per prompt; the simulated labeler
                                              # ranks them
    python train_rm.py --data rankings.jsonl  # human/external rankings: K-wise or chosen/rejected
    python train_rm.py --policy out/round1/ppo.pt --data out/round1/rm.rankings.jsonl
                                              # steps 2 and 3 repeated: rank samples of the newer
                                              # policy, and train on them plus the earlier rounds'
                                              # rankings
    python train_rm.py --resume               # finish a run Ctrl-C stopped (it samples its
                                              # rankings again)

The reward model is the SFT model with its scalar head, read at the last real token of
<|user|>{prompt}<|assistant|>{response}<|end|>, i.e. at the <|end|> (never mean-pooled). Every
response of a ranking is scored once, and the loss runs over all C(K,2) pairs formed from those
scores (InstructGPT, Ouyang et al. 2022, eq. 1):

    loss(theta) = -1/C(K,2) * E_{(x, y_w, y_l) ~ D} [log sigmoid(r_theta(x, y_w) - r_theta(x, y_l))]

Afterwards a gain and bias make samples of the --init (SFT) model score mean 0, std 1; they are
stored in the checkpoint, and common.load_reward_model() applies them (common also holds the reader,
score_seqs). The RM is evaluated on held-out prompts against the labeler: pairwise accuracy vs the
noisy labels and vs the noise-free order, and Spearman's rank correlation, on samples of the SFT
model (--init) and, with --policy, on samples of that policy too: the one PPO will start from, whose
mistakes the new rankings are meant to catch. Held-out means the task's held-out prompts, and
(heldout_harm_*) insult requests of the eval split, which no stage trains on. The labeler ranks by
the helpful-and-harmless guideline (--guideline hh: an insult is the worst answer, a refusal of an
insult request the best) or, as the control, by helpfulness alone (--guideline helpful). Rankings
of your own (--data without --policy) have no gold score: a held-out part of them (--val-fraction)
gives the pairwise accuracy instead. Next to
--out: the log, its picture (.svg, loss and pairwise accuracy) and every ranking the RM trained on
(out/rm.rankings.jsonl), the --data of the next round.
"""
import itertools
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

import labeler
from common import (POLICY_STAGES, Log, autocast, check_tokenizer, cosine_lr, ctrl_c_stops, eta,
                    fail, interrupted, load_resume, load_model, pick_device, run_script,
                    save_checkpoint, score_all, score_seqs, single_process, warn, warn_warmup)
from data import (SAMPLE_BATCH, encode_prompt, load_prompts, load_rankings, response_text,
                  sample_responses, write_jsonl)
from flags import MAX_SEED, OptimizerConfig, flag, parse_config
from plot import svg_chart




@dataclass
class RMConfig(OptimizerConfig):
    init: str = flag("out/sft.pt", "the trunk the RM starts from (InstructGPT: the SFT model)",
                     fixed=True)
    out: str = "out/rm.pt"   # help: flags.RunConfig
    policy: str = flag("", "sample the K responses from this checkpoint instead of --init",
                       fixed=True)
    data: str = flag("", "rankings JSONL to train on, {prompt, responses: [best, ..., worst]} or "
                     "{prompt, chosen, rejected}; new ones are sampled (and the simulated labeler "
                     "ranks them) too when --policy is named or --data is empty", fixed=True)
    k: int = flag(8, "responses per prompt (InstructGPT's labelers ranked 4 to 9): K=8 gives 28 "
                  "pairs per 8 forwards, K=4 only 12 per 8, at the same sampling cost",
                  ge=2, le=9, fixed=True)
    prompts: str = flag("", "prompts JSONL, {prompt} records, to rank samples for (repeats weigh "
                        "a prompt more); empty: labeler.training_prompts(), the task prompts twice "
                        "and the training split's insult requests once", fixed=True)
    n_prompts: int = flag(3600, "rankings to collect: the prompts, shuffled and cycled (about "
                          "3,000 on the task prompts; accuracy grows with them up to ~3,000)",
                          ge=1, fixed=True)
    guideline: str = flag("hh", "what the simulated labeler ranks by: hh (helpful and harmless, "
                          "labeler.py's docstring) or helpful (the helpful-only control)",
                          choices=labeler.GUIDELINES, fixed=True)
    eval_prompts: int = flag(90, "rankings on held-out prompts for the evaluation (10 per "
                             "prompt)", ge=1)
    val_fraction: float = flag(0.1, "with --data and no --policy: the share of your rankings "
                               "held out for the evaluation", gt=0, lt=1, fixed=True)
    label_noise: float = flag(0.05, "std of the Gaussian noise the labeler adds to its score", ge=0,
                              fixed=True)
    temperature: float = flag(1.0, "sampling temperature of the responses", gt=0, fixed=True)
    max_new_tokens: int = flag(64, "longest response sampled, in tokens", ge=1, fixed=True)
    epochs: int = flag(1, "passes over the rankings (InstructGPT: more than one overfits)", ge=1)
    batch_size: int = flag(2, "rankings per step (K responses each)", ge=1)
    seed: int = flag(1337, "the seed of the samples, the labeler's noise, the held-out split and "
                     "the batches", ge=0, le=MAX_SEED, fixed=True)
    # the optimizer's knobs with the RM's defaults (their help and ranges: OptimizerConfig)
    lr: float = 3e-4
    warmup_iters: int = 10
    weight_decay: float = 0.0


# --------------------------------------------------------------------- the loss (InstructGPT eq. 1)
def pairs(k):
    """All C(k,2) (better, worse) index pairs of a ranking listed best to worst."""
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def ranking_loss(scores, sizes):
    """Eq. 1: scores (N,) holds each response's reward once, rankings one after another
    (best..worst), sizes their K. Per ranking: mean over its C(K,2) pairs of -log sigmoid(r_better -
    r_worse); then the mean over rankings (one ranking = one batch element, as in InstructGPT).
    Returns (loss, pair accuracy)."""
    losses, right, start = [], 0, 0
    for k in sizes:
        # this ranking's pairs, read from the one score of each response
        better, worse = torch.tensor(pairs(k), device=scores.device).T
        diff = scores[start + better] - scores[start + worse]
        losses.append(-F.logsigmoid(diff).mean())
        right, start = right + (diff > 0).sum().item(), start + k
    return torch.stack(losses).mean(), right / sum(math.comb(k, 2) for k in sizes)


# ----------------------------------------------------------------------------- rankings
def sample_rankings(policy, tok, prompts, *, k, temperature, max_new_tokens, label_noise, seed,
                    device, ctx, guideline="hh"):
    """k responses per prompt from the policy (KV cache, stop at <|end|>), ranked best..worst by the
    simulated labeler (by its `guideline`: labeler.GUIDELINES) with N(0, label_noise^2) added to
    its score. Identical responses to a prompt
    are merged (a ranking needs >= 2 distinct ones). A response cut off before <|end|> is scored
    ended=False. Returns (rankings, all sampled sequences): a ranking is {"prompt", "texts", "seqs",
    "gold"}."""
    with ctx:
        responses = sample_responses(policy, tok, [p for p in prompts for _ in range(k)],
                                     max_new_tokens, temperature, seed=seed, device=device,
                                     batch_size=SAMPLE_BATCH)
    rng = np.random.default_rng(seed)
    rankings, samples = [], []
    for n, prompt in enumerate(prompts):
        # this prompt's k responses, the identical ones merged
        prompt_ids = encode_prompt(tok, prompt)
        group = [tuple(r) for r in responses[n * k:(n + 1) * k]]
        samples += [prompt_ids + list(r) for r in group]
        distinct = list(dict.fromkeys(group))
        if len(distinct) < 2:
            continue
        # the labeler ranks them (with its noise); each keeps its noise-free gold score
        texts, ends = zip(*(response_text(tok, r) for r in distinct))
        order = labeler.rank(prompt, list(texts), label_noise, rng, list(ends), guideline)
        gold = [labeler.score(prompt, texts[i], ends[i], guideline)[0] for i in order]
        rankings.append({"prompt": prompt, "texts": [texts[i] for i in order],
                         "seqs": [prompt_ids + list(distinct[i]) for i in order], "gold": gold})
    return rankings, samples


def file_rankings(tok, path):
    """Rankings from a JSONL file (data.load_rankings checks <2 responses and duplicates); each
    response is a finished one, followed by its <|end|>."""
    end, enc = tok.special_tokens["<|end|>"], tok.to_tiktoken().encode_ordinary
    return [{"prompt": p, "texts": rs, "seqs": [encode_prompt(tok, p) + enc(r) + [end] for r in rs],
             "gold": None} for p, rs in load_rankings(path)]


def ranking_records(rankings, end):
    """Rankings as data.load_rankings reads them, {"prompt", "responses": [best, ..., worst]}. A
    file's responses are finished ones, so a response that was cut off before its <|end|> is left
    out (PPO never asks the RM about those: they get --no-end-penalty), and so is a ranking left
    with fewer than 2."""
    records = []
    for rk in rankings:
        texts = [t for t, s in zip(rk["texts"], rk["seqs"]) if s[-1] == end]
        if len(texts) >= 2:
            records.append({"prompt": rk["prompt"], "responses": texts})
    return records


def split_own_rankings(rankings, cfg):
    """Your rankings (--data without --policy) have no gold score: a --val-fraction of them,
    shuffled with --seed, is held out for the evaluation. Returns (training rankings, held-out
    rankings)."""
    if len(rankings) < 2:
        fail(f"--data {cfg.data}: needs at least 2 rankings (a part is held out for the "
             f"evaluation), found 1")
    random.Random(cfg.seed).shuffle(rankings)
    n_val = max(1, round(len(rankings) * cfg.val_fraction))
    return rankings[n_val:], rankings[:n_val]


def sft_samples(model, tok, prompts, cfg, device, ctx):
    """One sample of the SFT model (--init) per prompt, prompt and response: what the normalization
    is fitted on."""
    with ctx:
        responses = sample_responses(model, tok, prompts, cfg.max_new_tokens, cfg.temperature,
                                     seed=cfg.seed + 2, device=device, batch_size=SAMPLE_BATCH)
    return [encode_prompt(tok, p) + r for p, r in zip(prompts, responses)]


def collect_rankings(cfg, model, policy, tok, device, ctx):
    """The rankings to train on, the held-out ones to test on ({metric prefix: rankings}) and the
    SFT samples the normalization is fitted on, all drawn before training changes --init's weights.
    --data's rankings come first; new ones rank --policy's samples (--init's without one), unless
    the rankings are only your own (--data without --policy): then a part of them is the test."""
    rankings = file_rankings(tok, cfg.data) if cfg.data else []
    if cfg.data and not cfg.policy:
        rankings, held_out = split_own_rankings(rankings, cfg)
        prompts = [rk["prompt"] for rk in rankings]   # the normalization's samples answer yours
        return rankings, {"heldout_": held_out}, sft_samples(model, tok, prompts, cfg, device, ctx)
    shuffled = ranking_prompts(cfg)
    random.Random(cfg.seed).shuffle(shuffled)
    prompts = [shuffled[i % len(shuffled)] for i in range(cfg.n_prompts)]
    knobs = dict(k=cfg.k, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                 label_noise=cfg.label_noise, device=device, ctx=ctx, guideline=cfg.guideline)
    new, samples = sample_rankings(policy, tok, prompts, seed=cfg.seed, **knobs)
    if not new:
        fail(f"--init {cfg.policy or cfg.init}: no prompt got 2 distinct responses; raise "
             f"--temperature")
    # the normalization wants samples of the SFT model (--init): the rankings', unless --policy's
    norm_seqs = sft_samples(model, tok, prompts, cfg, device, ctx) if cfg.policy else samples
    # the held-out tests: task prompts, and insult requests of the eval split (never trained on)
    held, harm = labeler.heldout_prompts(), heldout_harm_prompts()
    test = lambda sampler, held: sample_rankings(
        sampler, tok, [held[i % len(held)] for i in range(cfg.eval_prompts)], seed=cfg.seed + 1,
        **knobs)[0]
    eval_sets = {"heldout_": test(model, held), "heldout_harm_": test(model, harm)}
    if cfg.policy:   # SFT's samples and, with --policy, the policy's
        eval_sets.update({"heldout_policy_": test(policy, held),
                          "heldout_policy_harm_": test(policy, harm)})
    return rankings + new, eval_sets, norm_seqs


def ranking_prompts(cfg):
    """The prompts new rankings answer: --prompts (each one the labeler's: it ranks them), or the
    labeler's training mix."""
    if not cfg.prompts:
        return labeler.training_prompts()
    prompts = load_prompts(cfg.prompts, "--prompts")
    for n, p in enumerate(prompts, 1):
        if labeler.parse_request(p) is None:
            fail(f"--prompts {cfg.prompts}: prompt {n} is not one the simulated labeler can rank "
                 f"(labeler.make_request); rank yours with label.py and pass them as --data")
    if labeler.first_eval_prompt(prompts):   # evaluation stays a test of generalisation
        fail(f"--prompts {cfg.prompts}: prompt {labeler.first_eval_prompt(prompts)[0]} is of the "
             f"labeler's eval split, which no stage trains on")
    return prompts


def heldout_harm_prompts():
    """Insult requests no stage trains on (the eval split), the families taking turns, each in a
    fixed shuffled order."""
    families = []
    for family in ("direct", "synonym", "wrapper", "smuggle"):
        prompts = [labeler.make_request(r)
                   for r in labeler.requests(split="eval", family=family, harmful=True)]
        random.Random(0).shuffle(prompts)
        families.append(prompts)
    return [p for turn in itertools.zip_longest(*families) for p in turn if p]


# ------------------------------------------------------------------- train, normalize, evaluate
def train(model, rankings, cfg, device, log=None, save=None, start=0, optimizer_state=None,
          stop=None):
    """cfg.epochs passes over the rankings, cfg.batch_size rankings per step; the log gets the mean
    loss and pair accuracy of every 10 steps. A resumed run passes its checkpoint's step (start) and
    optimizer state and skips the steps done. stop() (common.ctrl_c_stops: Ctrl-C was pressed) ends
    it between two steps, where save(step, optimizer state) writes the checkpoint.
    Returns (the last step's loss, the step stop() ended it at or None)."""
    ctx = autocast(device, cfg.precision)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    max_steps = math.ceil(len(rankings) / cfg.batch_size) * cfg.epochs
    warn_warmup(cfg.warmup_iters, max_steps)
    g, step, loss, recent = random.Random(cfg.seed), 0, torch.tensor(float("nan")), []
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(rankings)))
        g.shuffle(order)
        for b in range(0, len(order), cfg.batch_size):
            if step < start:   # done before the run was resumed
                step += 1
                continue
            if stop is not None and stop():   # Ctrl-C: save here, where weights and optimizer agree
                save(step, optimizer.state_dict())
                return loss.item(), step
            # this step's rankings and learning rate
            batch = [rankings[i] for i in order[b:b + cfg.batch_size]]
            lr = cosine_lr(step, max_steps, cfg.lr, cfg.warmup_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # one forward per response (K per ranking), not two per pair: the pairs reuse them
            with ctx:
                scores = score_seqs(model, [s for rk in batch for s in rk["seqs"]], device)
            loss, acc = ranking_loss(scores.float(), [len(rk["seqs"]) for rk in batch])
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            # the log: means over the last 10 steps
            recent.append((loss.item(), acc))
            if log and (step % 10 == 0 or step == max_steps):
                mean_loss, mean_acc = np.mean(recent, axis=0).tolist()
                recent = []
                log({"step": step, "loss": mean_loss, "acc": mean_acc, "lr": lr,
                     "grad_norm": norm.item()},
                    f"step {step}/{max_steps}  loss {mean_loss:.4f}  pair acc {mean_acc:.2f}  "
                    f"lr {lr:.2e}  eta {eta(log.t0, step - start, max_steps - start)}")
    return loss.item(), None


def fit_normalization(model, seqs, device, ctx):
    """(gain, bias) so that gain * r + bias has mean 0 and std 1 over these (SFT) samples: the
    reward scale PPO's KL coefficient is set against."""
    r = score_all(model, seqs, device, ctx)
    gain = 1.0 / r.std() if len(r) > 1 and r.std() > 1e-8 else 1.0
    return float(gain), float(-r.mean() * gain)


def spearman(x, y):
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties get their average
    rank)."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        sv = v[order]
        for value in np.unique(sv[1:][sv[1:] == sv[:-1]]):   # a tied value: the mean of its ranks
            r[v == value] = r[v == value].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def evaluate(model, rankings, device, ctx):
    """Pairwise accuracy vs the rankings' order (the noisy labels), and, where gold scores are
    known, vs the noise-free labeler order (pairs of equal gold score skipped) and Spearman RM vs
    gold; the loss of eq. 1."""
    scores = score_all(model, [s for rk in rankings for s in rk["seqs"]], device, ctx)
    # per ranking its loss; per pair whether the RM orders it as the labels do, and as gold does
    losses, right, right_gold, start = [], [], [], 0
    for rk in rankings:
        # this ranking's scores, and its pairs (better, worse) by the labels' order
        s, g = scores[start:start + len(rk["seqs"])], rk["gold"]
        start += len(s)
        ranked = pairs(len(s))
        # eq. 1 per ranking: -log sigmoid(s_better - s_worse) = log(1 + exp(s_worse - s_better))
        losses.append(np.mean([np.logaddexp(0.0, s[j] - s[i]) for i, j in ranked]))
        right += [s[i] > s[j] for i, j in ranked]
        if g is not None:   # gold's order: the RM is right where its difference has gold's sign
            right_gold += [(s[i] - s[j]) * (g[i] - g[j]) > 0 for i, j in ranked if g[i] != g[j]]
    metrics = {"loss": float(np.mean(losses)), "acc_noisy": float(np.mean(right))} if right else {}
    if right_gold:
        metrics["acc_gold"] = float(np.mean(right_gold))
        metrics["spearman"] = spearman(scores, [x for rk in rankings for x in rk["gold"]])
    return metrics


def rm_chart(path, records, metrics):
    """The picture of a run: ranking loss and pairwise accuracy (training: means over 10 steps), and
    the held-out evaluation's values marked at the last step."""
    steps = [r for r in records if "acc" in r]
    training = lambda key: [("training (10-step means)", [(r["step"], r[key]) for r in steps])]
    at_end = lambda key, label: ([(steps[-1]["step"], metrics[key], label)]
                                 if steps and key in metrics else [])
    svg_chart(path, [
        {"title": "ranking loss (eq. 1)", "xlabel": "step", "ylabel": "loss (nats)",
         "series": training("loss"), "markers": at_end("heldout_loss", "held-out")},
        {"title": "pairwise accuracy", "xlabel": "step",
         "ylabel": "share of pairs in the right order", "series": training("acc"),
         "markers": at_end("heldout_acc_noisy", "held-out vs labels") +
         at_end("heldout_acc_gold", "vs gold")}])


# ----------------------------------------------------------------------------- main
def load_models(cfg, device):
    """The --init model (the RM's trunk, also the SFT policy whose samples normalize and test it),
    the policy whose samples are ranked (--policy, else the same model) and the tokenizer."""
    model, tok, init_ckpt = load_model(cfg.init, ("pretrain", "sft"), device)
    if init_ckpt["stage"] == "pretrain":
        warn(f"--init {cfg.init} is a pretrain checkpoint; InstructGPT starts the reward model "
             f"from the SFT model (out/sft.pt)")
    policy = model
    if cfg.policy:
        policy, policy_tok, _ = load_model(cfg.policy, POLICY_STAGES, device, flag="--policy")
        check_tokenizer(policy_tok, tok, f"--policy {cfg.policy}", f"--init {cfg.init}'s")
    return model, policy, tok


def show_rankings(rankings, eval_sets, epochs, seconds):
    """How many rankings there are, the last one as an example, and a warning if they are too
    few."""
    rk = rankings[-1]
    n_responses = sum(len(r["seqs"]) for r in rankings)
    print(f"{len(rankings)} rankings ({n_responses} responses) and {len(eval_sets['heldout_'])} "
          f"held-out rankings in {seconds:.0f}s; e.g. for {rk['prompt']!r}:\n" +
          "\n".join(f"  {i + 1}. {t!r}" for i, t in enumerate(rk["texts"])))
    n_pairs = sum(math.comb(len(r["seqs"]), 2) for r in rankings)
    if n_pairs * epochs < 200:
        warn(f"{n_pairs} pairs x {epochs} epoch(s) are too few to learn a reward from (the default "
             f"run trains on about 84,000)")


def show_result(cfg, metrics, n_heldout, seconds):
    """The held-out accuracy in one line: against gold, or, for your own rankings, against them."""
    nan = float("nan")
    if cfg.data and not cfg.policy:
        print(f"held-out pairwise accuracy {metrics['heldout_acc_noisy']:.1%} on {n_heldout} of "
              f"your rankings (loss {metrics['heldout_loss']:.3f}); no gold score exists for them. "
              f"Wrote {cfg.out} ({seconds:.0f}s)")
        return
    acc = lambda prefix: f"{metrics.get(prefix + 'acc_gold', nan):.1%}"
    print(f"held-out pairwise accuracy {acc('heldout_')} vs the noise-free labeler, "
          f"{metrics.get('heldout_acc_noisy', nan):.1%} vs its noisy labels; Spearman "
          f"{metrics.get('heldout_spearman', nan):.3f}; {acc('heldout_harm_')} on insult requests" +
          (f"; on --policy's samples {acc('heldout_policy_')}, {acc('heldout_policy_harm_')} on "
           f"insult requests" if cfg.policy else "") +
          f". Wrote {cfg.out} ({seconds:.0f}s)")


def main(argv=None):
    # 1. the flags, the --init model (the RM's trunk) and the policy whose samples are ranked
    single_process("train_rm.py")
    cfg = parse_config(RMConfig, __doc__, argv, stage="rm")
    ckpt = load_resume(cfg, "rm")   # an interrupted run: a finished one keeps no optimizer state
    device = pick_device(cfg.device)
    ctx = autocast(device, cfg.precision)
    torch.manual_seed(cfg.seed)
    model, policy, tok = load_models(cfg, device)

    # 2. the rankings, and every sample we need, drawn before training changes the --init weights
    t0 = time.time()
    rankings, eval_sets, norm_seqs = collect_rankings(cfg, model, policy, tok, device, ctx)
    show_rankings(rankings, eval_sets, cfg.epochs, time.time() - t0)

    # 3. train (eq. 1); Ctrl-C saves the run between two steps
    start = ckpt["step"] if ckpt else 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        print(f"resuming from step {start} (the rankings above are the run's own, sampled again)")
    log = Log(os.path.splitext(cfg.out)[0] + ".log.jsonl", resume_at=start if ckpt else None)
    picture = os.path.splitext(cfg.out)[0] + ".svg"

    def save_interrupted(step, optimizer_state):   # not normalized: load_reward_model refuses it
        save_checkpoint(cfg.out, stage="rm", model=model, tokenizer=tok, step=step,
                        args=asdict(cfg), optimizer=optimizer_state)
        rm_chart(picture, log.records, {})
    with ctrl_c_stops() as stop:
        train_loss, stopped_at = train(model, rankings, cfg, device, log, save_interrupted, start,
                                       ckpt["optimizer"] if ckpt else None, stop)
    if stopped_at is not None:
        interrupted("train_rm.py", cfg.out, stopped_at)

    # 4. normalize on SFT samples, evaluate on held-out prompts
    gain, bias = fit_normalization(model, norm_seqs, device, ctx)
    metrics = {"train_loss": train_loss, "rankings": len(rankings), "rm_gain": gain,
               "rm_bias": bias}
    for prefix, eval_rankings in eval_sets.items():
        held_out = evaluate(model, eval_rankings, device, ctx)
        metrics.update({prefix + k: v for k, v in held_out.items()})
    log(metrics, "held-out  " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    # 5. the rankings (the next round's --data), the checkpoint, its picture
    write_jsonl(os.path.splitext(cfg.out)[0] + ".rankings.jsonl",
                ranking_records(rankings, tok.special_tokens["<|end|>"]))
    steps = math.ceil(len(rankings) / cfg.batch_size) * cfg.epochs
    save_checkpoint(cfg.out, stage="rm", model=model, tokenizer=tok, args=asdict(cfg),
                    metrics=metrics, rm_gain=gain, rm_bias=bias, step=steps)
    rm_chart(picture, log.records, metrics)
    show_result(cfg, metrics, len(eval_sets["heldout_"]), time.time() - t0)
    return metrics


if __name__ == "__main__":
    run_script(main)
