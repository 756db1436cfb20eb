"""Stage 3: RLHF with PPO against the reward model (InstructGPT step 3).

    python train_ppo.py --init out/sft.pt                 # reward model: out/rm.pt (--reward other)
    python train_ppo.py --init out/sft.pt --kl-target 0   # fixed beta (--beta 0: no KL penalty at all)
    python train_ppo.py --init out/round1/ppo.pt --ref out/sft.pt   # a later round: the reference stays SFT

The policy starts as a copy of --init and the reference is a frozen copy of --ref (default: --init). Each
iteration samples responses to a batch of training prompts, scores them with the reward model,
turns the scores into per-token rewards with a KL penalty against the reference (InstructGPT
eq. 2), estimates advantages with GAE and takes a few epochs of clipped PPO steps.

Output: the LAST policy in --out (stage "ppo", with its optimizer and beta for --resume; also
saved every --save-interval iterations, and when Ctrl-C stops it). Picking the "best" iteration by
reward-model score would select for reward over-optimization, and picking by gold score would peek
at the test, so we don't. One JSON line per iteration goes to the .log.jsonl next to --out
(out/ppo.log.jsonl):
    iter, score (the reward actually used: RM score, or --no-end-penalty when no <|end|>),
    rm (mean normalized RM score), gold (mean simulated-labeler score), kl (mean KL to the SFT
    model per response, nats), beta, entropy, approx_kl, clip_frac, pg_loss, vf_loss,
    resp_len (tokens, <|end|> included), ended (share that wrote <|end|>), lr,
    t_rollout, t_update (seconds of this iteration), time (seconds since the start).
Its picture, next to it (out/ppo.svg): RM and gold score, KL and beta per iteration.
At the end, --eval-samples responses to the held-out prompts from the PPO policy and from the SFT
model get gold and RM scores (stored in the checkpoint's metrics as heldout_*). Prompts of a
--prompts file that the labeler cannot parse (labeler.parse_prompt) have no gold score: "gold"
averages the others, and is left out when none of a batch parse.
The math is the small functions right below, each next to its equation; train() is the loop.
"""
import copy
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

import labeler
from common import (POLICY_STAGES, Log, autocast, check_tokenizer, ctrl_c_stops, eta, fail,
                    interrupted, last_index, load_checkpoint, load_model, load_reward_model,
                    pick_device, run_script, save_checkpoint, single_process, warn)
from data import (action_logprobs, encode_prompt, get_lm_batch, load_prompts, pad_episodes, read_corpus,
                  response_text)
from flags import RunConfig, flag, parse_config
from plot import svg_chart

# ----------------------------------------------------------------------------- the math
# Layout: data.py's episodes, (B, T-1) grids whose column t is the action a_t = idx[:, t+1] in state
# s_t = idx[:, :t+1], `mask` True on response tokens; data.action_logprobs gives log pi(a_t | s_t).

def entropy(logits, temperature):
    """H = -sum_a p(a) log p(a) of the sampling distribution at every position (B, T-1)."""
    logp = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x, mask, eps=1e-8):
    """(x - mean) / std over the real entries only; padding stays 0 and does not move the stats."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_rewards(logp, logp_ref, scores, mask, beta):
    """InstructGPT eq. 2, per token: R(x, y) = r(x, y) - beta log(pi(y|x) / pi_SFT(y|x)). Every
    response token gets r_t = -beta (log pi(a_t) - log pi_ref(a_t)); the reward-model score
    r(x, y) is added at the last response token. Returns (rewards, per-token KL), both (B, T-1)."""
    kl = (logp - logp_ref) * mask
    rewards = -beta * kl
    rewards[torch.arange(len(scores)), last_index(mask)] += scores
    return rewards, kl


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16):
        A_t = sum_l (gamma lam)^l delta_{t+l},   delta_t = r_t + gamma V(s_{t+1}) - V(s_t),
    computed backwards as A_t = delta_t + gamma lam A_{t+1}. The value after the last response
    token is 0 (the episode ends there): a masked column passes nothing back to the one before it.
    Returns (advantages, returns = advantages + values), before any whitening."""
    adv = torch.zeros_like(rewards)
    next_value = next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv[:, t] = (delta + gamma * lam * next_adv) * m
        next_value, next_adv = values[:, t] * m, adv[:, t]
    return adv, (adv + values) * mask


def policy_loss(logp, old_logp, adv, mask, clip=0.2):
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:
        L = -E_t[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)],   rho_t = pi(a_t) / pi_old(a_t).
    Also returns the fraction of tokens where the clip is active and the approximate KL(old || new)
    estimated as E[(rho - 1) - log rho] (>= 0, unbiased)."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clip_frac.detach(), approx_kl.detach()


def value_loss(values, old_values, returns, mask, clip=0.2):
    """Clipped value loss (as in the PPO baselines): the new value may move at most `clip` from
    the rollout's value before the loss stops rewarding the move.
        L_V = 1/2 E_t[max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)]"""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def update_beta(beta, kl, target, n, horizon):
    """Adaptive KL controller (Ziegler et al. 2019, sec. 2.2): proportional control of the KL
    towards the target: e = clip(KL / target - 1, -0.2, 0.2), beta <- beta (1 + e n / horizon),
    n = episodes in this batch. target <= 0 keeps beta fixed."""
    if target <= 0:
        return beta
    e = min(max(kl / target - 1, -0.2), 0.2)
    return beta * (1 + e * n / horizon)


# ----------------------------------------------------------------------------- config
@dataclass
class PPOConfig(RunConfig):
    init: str = flag("out/sft.pt", "the policy PPO starts from (round 1: the SFT model)", fixed=True)
    ref: str = flag("", "the frozen KL reference; empty: --init. Later rounds start from the last "
                    "round's policy and keep the SFT model here", fixed=True)
    reward: str = flag("out/rm.pt", "the reward model (stage rm, from train_rm.py)", fixed=True)
    out: str = "out/ppo.pt"   # help: flags.RunConfig
    prompts: str = flag("", "prompts JSONL, {prompt} records; empty: the simulated labeler's training "
                        "prompts", fixed=True)
    # rollout
    batch_size: int = flag(32, "episodes (prompt, response) per iteration", ge=1)
    max_new_tokens: int = flag(64, "longest response, in tokens", ge=1)
    temperature: float = flag(1.0, "pure sampling at T; every log-prob divides by the same T", gt=0)
    no_end_penalty: float = flag(-1.0, "the score of a response that never wrote <|end|>")
    # PPO update
    ppo_epochs: int = flag(4, "passes over each batch of episodes", ge=1)
    minibatch_size: int = flag(8, "episodes per gradient step", ge=1)
    lr: float = flag(6e-5, "Adam (eps 1e-5), decaying linearly to 0; on the default models the first "
                     "iteration's approx-KL is ~0.2 (clip fraction 0.4), later ones < 0.01; 3e-5 gained "
                     "less gold", gt=0)
    clip: float = flag(0.2, "policy ratio clip (PPO eq. 7)", gt=0)
    vf_clip: float = flag(0.2, "value clip, in (normalized) reward units", gt=0)
    vf_coef: float = flag(0.1, "weight of the value loss", ge=0)
    critic: str = flag("rm", "the value function: rm (a separate critic initialised from the reward "
                       "model: more gold at less KL, ~20% slower) or shared (a head on the policy's "
                       "trunk)", choices=("rm", "shared"), fixed=True)
    gamma: float = flag(1.0, "discount (GAE)", ge=0, le=1)
    lam: float = flag(0.95, "lambda (GAE)", ge=0, le=1)
    grad_clip: float = flag(1.0, "largest global norm of the gradient", gt=0)
    # KL penalty
    beta: float = flag(0.1, "initial KL coefficient (InstructGPT eq. 2); 0: no KL penalty at all",
                       ge=0)
    kl_target: float = flag(6.0, "KL per response (nats) the adaptive controller aims at; 0: fixed "
                            "beta", ge=0)
    kl_horizon: int = flag(1000, "the controller's horizon, in episodes (Ziegler et al.: 10000 for runs "
                           "of 100k+ episodes; the default run has ~2000, and beta must be able to move "
                           "within it)", ge=1)
    # PPO-ptx: + ptx_coef * LM loss on corpus batches (InstructGPT eq. 2, last term)
    ptx_coef: float = flag(0.0, "PPO-ptx: weight of the LM loss on corpus batches; 0: off", ge=0)
    ptx_data: str = flag("data/sotu.txt.gz", "PPO-ptx: the corpus (.txt/.txt.gz file or folder)")
    ptx_batch_size: int = flag(4, "PPO-ptx: corpus sequences per gradient step", ge=1)
    # budget
    max_iters: int = flag(100, "iterations (a rollout and its update) in all", ge=1)
    max_minutes: float = flag(0.0, "stop early (and save) after this many minutes; 0: no limit", ge=0)
    save_interval: int = flag(10, "iterations between checkpoints (also at the end, and on Ctrl-C)",
                              ge=1)
    eval_samples: int = flag(64, "the held-out check at the end: responses per model (PPO, SFT); "
                             "0: skip", ge=0)


# ----------------------------------------------------------------------------- rollout + loop
def forward(model, idx, pad_mask, temperature, critic=None):
    """Log-probs of the actions, the value of every state, and the logits, (B, T-1) / (B, T-1) / (B, T, V).
    Without a separate critic one pass through the policy's trunk gives both heads."""
    h = model.hidden(idx, pad_mask)
    logits = model.lm_head(h)
    values = model.scalar(h) if critic is None else critic.scalar(critic.hidden(idx, pad_mask))
    return action_logprobs(logits, idx, temperature), values[:, :-1].float(), logits


@torch.no_grad()
def rollout(policy, ref, prompts, cfg, end_id, generator, ctx, critic=None):
    """Sample one response per prompt (ending with its <|end|>, if any: data.py's rule for responses),
    and score every action under the policy (the "old" log-probs and values of the update) and the
    reference, with a full forward pass over prompt+response. Recomputing instead of keeping generate's
    log-probs makes the update start at ratio exactly 1 (same code path), which a test checks."""
    with ctx:
        responses, _ = policy.generate(prompts, cfg.max_new_tokens, temperature=cfg.temperature,
                                       stop_token=end_id, generator=generator)
    idx, pad_mask, mask = pad_episodes(prompts, responses, next(policy.parameters()).device)
    with ctx:
        logp, values, logits = forward(policy, idx, pad_mask, cfg.temperature, critic)
        logp_ref, _, _ = forward(ref, idx, pad_mask, cfg.temperature)
    return dict(idx=idx, pad_mask=pad_mask, mask=mask.float(), logp=logp, logp_ref=logp_ref,
                values=values * mask, entropy=masked_mean(entropy(logits, cfg.temperature), mask).item(),
                responses=responses, ended=[r[-1:] == [end_id] for r in responses])


def make_optimizer(models, cfg):
    params = [p for m in models for p in m.parameters()]
    return torch.optim.Adam(params, lr=cfg.lr, eps=1e-5)  # eps 1e-5: the PPO baselines'


def train(cfg, policy, ref, prompts, reward_fn, end_id, log=None, save=None, ptx_batch=None, start_iter=0,
          beta=None, optimizer=None, stop=None, critic=None):
    """The PPO loop. prompts: token-id lists (the chat template's prompt part). reward_fn(prompts,
    responses, ended) -> (scores (B,) tensor, dict of metrics to log): the reward model in main(),
    a toy reward in the tests. log(record, line); save(iteration, beta, record) every
    cfg.save_interval iterations, at the end, and when stop() (common.ctrl_c_stops: Ctrl-C was pressed)
    ends the loop between two iterations; ptx_batch(generator) -> (x, y) corpus batch for PPO-ptx; critic: a
    separate value model (None: the policy's own scalar head). Every iteration draws from its own seeded
    generator, so a resumed run (start_iter, beta, optimizer from the checkpoint) goes on exactly as the
    uninterrupted one would. Returns (beta, last record, the iteration stop() ended it at or None)."""
    device = next(policy.parameters()).device
    ctx = autocast(device.type, cfg.precision)
    trained = [policy] if critic is None else [policy, critic]
    optimizer = make_optimizer(trained, cfg) if optimizer is None else optimizer
    for model in trained:
        model.eval()  # dropout off everywhere: it would make the ratio != 1 before any update
    ref.eval().requires_grad_(False)
    beta = cfg.beta if beta is None else beta
    t_start, record, stopped_at = time.time(), {}, None
    for it in range(start_iter, cfg.max_iters):
        if stop is not None and stop():
            stopped_at = it
            break
        if cfg.max_minutes > 0 and time.time() - t_start > cfg.max_minutes * 60:
            break
        # ---- rollout: sample, score, per-token rewards, advantages (all without gradients)
        t0 = time.time()
        rng = random.Random(cfg.seed * 100003 + it)  # seeded per iteration: --resume replays the same
        batch_prompts = [prompts[rng.randrange(len(prompts))] for _ in range(cfg.batch_size)]
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 100003 + it)
        b = rollout(policy, ref, batch_prompts, cfg, end_id, generator, ctx, critic)
        scores, metrics = reward_fn(batch_prompts, b["responses"], b["ended"])
        ended = torch.tensor(b["ended"], device=device)
        penalty = torch.full((len(ended),), cfg.no_end_penalty, device=device)
        scores = torch.where(ended, scores.float().to(device), penalty)  # no <|end|>: fixed penalty
        mask = b["mask"]
        rewards, kl = kl_rewards(b["logp"], b["logp_ref"], scores, mask, beta)
        adv, returns = gae(rewards, b["values"], mask, cfg.gamma, cfg.lam)
        adv = masked_whiten(adv, mask)
        t1 = time.time()
        # ---- update: ppo_epochs passes over the batch in random minibatches
        lr = cfg.lr * (1 - it / cfg.max_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = []
        for epoch in range(cfg.ppo_epochs):
            for mb in torch.randperm(cfg.batch_size, generator=generator, device=device).split(cfg.minibatch_size):
                with ctx:
                    logp, values, _ = forward(policy, b["idx"][mb], b["pad_mask"][mb], cfg.temperature, critic)
                pg_loss, clip_frac, approx_kl = policy_loss(logp, b["logp"][mb], adv[mb], mask[mb], cfg.clip)
                vf_loss = value_loss(values, b["values"][mb], returns[mb], mask[mb], cfg.vf_clip)
                loss = pg_loss + cfg.vf_coef * vf_loss
                if ptx_batch is not None and cfg.ptx_coef > 0:
                    x, y = ptx_batch(generator)
                    with ctx:
                        loss = loss + cfg.ptx_coef * policy(x, y)[1]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for model in trained:   # each its own norm: the critic's gradients do not shrink the policy's
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                stats.append([pg_loss.item(), vf_loss.item(), clip_frac.item(), approx_kl.item()])
        t2 = time.time()
        # ---- log, then let the KL controller move beta for the next batch
        kl_per_response = kl.sum(1).mean().item()
        pg, vf, cf, akl = torch.tensor(stats).mean(0).tolist()
        record = {"iter": it + 1, "score": scores.mean().item(), **metrics, "kl": kl_per_response,
                  "beta": beta, "entropy": b["entropy"], "approx_kl": akl, "clip_frac": cf,
                  "pg_loss": pg, "vf_loss": vf, "resp_len": mask.sum(1).mean().item(),
                  "ended": ended.float().mean().item(), "lr": lr, "t_rollout": t1 - t0, "t_update": t2 - t1,
                  "time": time.time() - t_start}
        if log is not None:   # the whole record goes to the log file; the line fits 80 columns
            log(record, f"iter {it + 1}/{cfg.max_iters}  rm {record.get('rm', record['score']):+.2f}  gold "
                        f"{record.get('gold', float('nan')):.3f}  kl {kl_per_response:.2f}  beta {beta:.3g}  end "
                        f"{record['ended']:.0%}  eta {eta(t_start, it + 1 - start_iter, cfg.max_iters - start_iter)}")
        beta = update_beta(beta, kl_per_response, cfg.kl_target, cfg.batch_size, cfg.kl_horizon)
        if save is not None and ((it + 1) % cfg.save_interval == 0 or it + 1 == cfg.max_iters):
            save(it + 1, beta, record)
    if save is not None and record and record["iter"] % cfg.save_interval and record["iter"] != cfg.max_iters:
        save(record["iter"], beta, record)  # stopped by Ctrl-C or --max-minutes between saves
    return beta, record, stopped_at


# ----------------------------------------------------------------------------- the real run
def reward_model_fn(reward, tok):
    """The reward: reward(prompts, responses) from common.load_reward_model, the reward model read at the
    last real token of prompt+response (the <|end|>), normalized so that SFT samples score mean 0, std 1.
    Also logs the simulated labeler's gold score: the truth the reward model only approximates."""
    def reward_fn(prompts, responses, ended):
        scores = reward(prompts, responses)
        texts = [tok.decode(p[1:-1]) for p in prompts]  # strip <|user|> and <|assistant|>
        gold = [labeler.score(x, *response_text(tok, r))[0]
                for x, r in zip(texts, responses) if labeler.parse_prompt(x)]  # --prompts: maybe none
        return scores, {"rm": scores.mean().item(), **({"gold": sum(gold) / len(gold)} if gold else {})}
    return reward_fn


def corpus_batches(cfg, tok, block_size, device):
    """PPO-ptx: batch(generator) -> (x, y): random windows of the pretraining corpus (data.get_lm_batch)."""
    tokens = np.array(tok.to_tiktoken().encode(read_corpus(cfg.ptx_data), allowed_special={"<|endoftext|>"}))
    if len(tokens) < block_size + 2:
        fail(f"--ptx-data {cfg.ptx_data}: {len(tokens)} tokens, fewer than one block of {block_size + 1}")
    return lambda generator: get_lm_batch(tokens, cfg.ptx_batch_size, block_size, generator, device)[:2]


@torch.no_grad()
def critic_from_rm(rm, gain, bias):
    """A trainable copy of the reward model whose head gives gain * r + bias: the normalized reward scale
    of the returns it learns to predict."""
    critic = copy.deepcopy(rm).requires_grad_(True)
    critic.scalar_head.weight.mul_(gain)
    critic.scalar_head.bias.mul_(gain).add_(bias)
    return critic


@torch.no_grad()
def heldout_eval(policy, ref, prompts, reward_fn, cfg, end_id, ctx):
    """The end-of-run check: responses to held-out prompts (topic/tone pairs PPO never trained on)
    from the PPO policy and from the SFT model, sampled as in the rollouts (temperature T), with their
    mean gold and RM scores; and the policy's mean KL to SFT per response (sum over its tokens of
    log pi - log pi_ref, a Monte Carlo estimate of KL(pi || pi_SFT))."""
    device = next(policy.parameters()).device
    prompts = [prompts[i % len(prompts)] for i in range(cfg.eval_samples)]
    out = {}
    for name, model in (("sft", ref), ("ppo", policy)):
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        b = rollout(model, ref, prompts, cfg, end_id, g, ctx)
        _, metrics = reward_fn(prompts, b["responses"], b["ended"])
        suffix = "" if name == "ppo" else "_sft"
        out.update({f"heldout_{k}{suffix}": v for k, v in metrics.items()})
        out[f"heldout_kl{suffix}"] = ((b["logp"] - b["logp_ref"]) * b["mask"]).sum(1).mean().item()
        out[f"heldout_ended{suffix}"] = sum(b["ended"]) / len(b["ended"])
    return out


def ppo_chart(path, records, held=None):
    """The picture of a run, one point per iteration: the reward model's and the labeler's (gold) score of the
    rollouts, their KL to the SFT model, and beta; the held-out check's scores marked at the end."""
    held, last = held or {}, records[-1]["iter"] if records else 0
    series = lambda name, key: (name, [(r["iter"], r.get(key)) for r in records])
    marks = [(last, held[k], label) for k, label in (("heldout_rm", "held-out RM"), ("heldout_gold", "held-out gold"))
             if k in held]
    svg_chart(path, [
        {"title": "scores of the rollouts", "xlabel": "iteration", "ylabel": "score", "markers": marks,
         "series": [series("reward model (normalized)", "rm"), series("gold (simulated labeler)", "gold")]},
        {"title": "KL to the SFT model", "xlabel": "iteration", "ylabel": "nats per response",
         "series": [series("KL", "kl")]},
        {"title": "KL coefficient", "xlabel": "iteration", "ylabel": "beta", "series": [series("beta", "beta")]}])


def main(argv=None):
    single_process("train_ppo.py")
    cfg = parse_config(PPOConfig, __doc__, argv, stage="ppo")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    policy, tok, init_ckpt = load_model(cfg.init, POLICY_STAGES, device, flag="--init")
    ref, ref_tok, ref_ckpt = load_model(cfg.ref, POLICY_STAGES, device, flag="--ref") if cfg.ref else (None, tok, init_ckpt)
    if ref_ckpt["stage"] != "sft":
        warn(f"the KL reference {cfg.ref or cfg.init} is a {ref_ckpt['stage']!r} checkpoint; InstructGPT's is the "
             f"SFT model")
    check_tokenizer(ref_tok, tok, f"--ref {cfg.ref}", f"--init {cfg.init}'s")
    if ref_ckpt["config"] != init_ckpt["config"]:
        fail(f"--ref {cfg.ref}: not the same model shape as --init {cfg.init}")
    reward, rm, rm_tok, rm_ckpt = load_reward_model(cfg.reward, device, "--reward", cfg.precision)
    check_tokenizer(rm_tok, tok, f"--reward {cfg.reward}", f"--init {cfg.init}'s")
    prompts = load_prompts(cfg.prompts, "--prompts") if cfg.prompts else labeler.train_prompts()
    heldout = labeler.heldout_prompts()
    unscored = sum(labeler.parse_prompt(p) is None for p in prompts)
    if unscored:  # the gold score is only defined for the labeler's own task prompts
        print(f"note: {unscored} of {len(prompts)} prompts in {cfg.prompts} are not labeler task prompts "
              f"('Write a <tone> sentence about <topic>.'); the logged gold score "
              f"{'averages the others' if unscored < len(prompts) else 'is left out'}")
    if unscored == len(prompts):   # none is the labeler's: the check at the end holds out a tenth of yours
        random.Random(cfg.seed).shuffle(prompts)
        n_held = len(prompts) // 10 or int(len(prompts) > 1)
        heldout, prompts = prompts[:n_held] or prompts, prompts[n_held:]
    prompt_ids = [encode_prompt(tok, p) for p in prompts]
    longest = max(map(len, prompt_ids)) + cfg.max_new_tokens
    if longest > min(policy.config.block_size, rm.config.block_size):
        fail(f"--max-new-tokens {cfg.max_new_tokens}: the longest prompt + response ({longest} tokens) exceeds "
             f"the models' block size ({min(policy.config.block_size, rm.config.block_size)})")

    # The reference is the frozen SFT model (--init itself in round 1). The value function is either a
    # head on the policy's own trunk, zero-initialised (one forward pass gives both the logits and the
    # values, and V = 0 is the right prior for a reward normalized to mean 0), or a separate critic
    # initialised from the reward model (InstructGPT), its head scaled to the normalized reward: it
    # costs a second trunk in every update, but the value loss no longer pushes the policy's trunk.
    ref = (ref if ref is not None else copy.deepcopy(policy)).eval().requires_grad_(False)
    with torch.no_grad():
        policy.scalar_head.weight.zero_()
        policy.scalar_head.bias.zero_()
    critic = critic_from_rm(rm, rm_ckpt["rm_gain"], rm_ckpt["rm_bias"]) if cfg.critic == "rm" else None
    optimizer = make_optimizer([policy] if critic is None else [policy, critic], cfg)
    start_iter, beta = 0, None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.out, ("ppo",), flag="--resume")
        if ckpt["config"] != init_ckpt["config"] or "optimizer" not in ckpt or "kl_beta" not in ckpt:
            fail(f"--resume {cfg.out}: not a PPO run of --init {cfg.init} (other model config, or no optimizer state)")
        policy.load_state_dict(ckpt["model"])
        if critic is not None:   # --critic is fixed: parse_config already refused a resume that changes it
            critic.load_state_dict(ckpt["critic"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_iter, beta = ckpt["step"], ckpt["kl_beta"]
        print(f"resuming from iteration {start_iter}, beta {beta:.4g}")
        if start_iter >= cfg.max_iters:
            print(f"note: {cfg.out} already ran {start_iter} iterations (--max-iters {cfg.max_iters}): no training")
    print(f"policy {policy.num_params() / 1e6:.2f} M parameters, reward model {rm.num_params() / 1e6:.2f} M, "
          f"{len(prompts)} prompts, device {device}")

    ctx = autocast(device, cfg.precision)
    log = Log(os.path.splitext(cfg.out)[0] + ".log.jsonl", resume_at=start_iter if cfg.resume else None, key="iter")

    def save(it, beta, record):
        save_checkpoint(cfg.out, stage="ppo", model=policy, tokenizer=tok, step=it, args=asdict(cfg), metrics=record,
                        kl_beta=beta, optimizer=optimizer.state_dict(),
                        **({"critic": critic.state_dict()} if critic else {}))
        ppo_chart(os.path.splitext(cfg.out)[0] + ".svg", log.records, record)
    ptx = corpus_batches(cfg, tok, policy.config.block_size, device) if cfg.ptx_coef > 0 else None
    reward_fn = reward_model_fn(reward, tok)
    end = tok.special_tokens["<|end|>"]
    t0 = time.time()
    with ctrl_c_stops() as stop:
        beta, record, stopped_at = train(cfg, policy, ref, prompt_ids, reward_fn, end, log, save, ptx, start_iter,
                                         beta, optimizer, stop, critic)
    if stopped_at is not None:
        if not record and not cfg.resume:   # stopped before the first iteration ended: save the start
            save(stopped_at, beta, record)
        interrupted("train_ppo.py", cfg.out, stopped_at, unit="iteration")
    held = {}
    if cfg.eval_samples > 0:
        held = heldout_eval(policy, ref, [encode_prompt(tok, p) for p in heldout], reward_fn, cfg, end, ctx)
        gold = (f"gold {held['heldout_gold']:.3f} (SFT {held['heldout_gold_sft']:.3f})" if "heldout_gold" in held
                else "no gold score (not the labeler's prompts)")
        print(f"{len(heldout)} held-out prompts, {cfg.eval_samples} samples per model at T={cfg.temperature}: "
              f"{gold}, RM {held['heldout_rm']:.3f} (SFT {held['heldout_rm_sft']:.3f}), KL to SFT "
              f"{held['heldout_kl']:.2f} nats/response, ended {held['heldout_ended']:.2f} (SFT "
              f"{held['heldout_ended_sft']:.2f})")
        save(max(start_iter, record.get("iter", 0)), beta, {**record, **held})
    print(f"saved {cfg.out} after {(time.time() - t0) / 60:.1f} min; samples:")
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    for p in heldout[:3]:
        with torch.no_grad(), ctx:
            r = policy.generate([encode_prompt(tok, p)], cfg.max_new_tokens, cfg.temperature, stop_token=end,
                                generator=g)[0][0]
        print(f"  {p}\n  > {response_text(tok, r)[0]}")
    return {**record, **held}


if __name__ == "__main__":
    run_script(main)
