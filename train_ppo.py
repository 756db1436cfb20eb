"""Stage 3: RLHF with PPO against the reward model (InstructGPT step 3).

    python train_ppo.py --init out/sft.pt                # reward model: out/rm.pt (--reward other)
    python train_ppo.py --init out/sft.pt --kl-target 0  # fixed beta (--beta 0: no KL penalty)
    python train_ppo.py --init out/round1/ppo.pt --ref out/sft.pt  # a later round: reference = SFT

The policy starts as a copy of --init and the reference is a frozen copy of --ref (default:
--init). Each iteration samples responses to a batch of training prompts, scores them with the
reward model, turns the scores into per-token rewards with a KL penalty against the reference
(InstructGPT eq. 2), estimates advantages with GAE and takes a few epochs of clipped PPO steps.

Output: the LAST policy in --out (stage "ppo", with its optimizer and beta for --resume; also
saved every --save-interval iterations, and when Ctrl-C stops it). Picking the "best" iteration by
reward-model score would select for reward over-optimization, and picking by gold score would peek
at the test, so we don't. One JSON line per iteration goes to the .log.jsonl next to --out
(out/ppo.log.jsonl):
    iter, score (the reward actually used: RM score, or --no-end-penalty when no <|end|>),
    rm (mean normalized RM score), gold (mean simulated-labeler score), harmful, refused_harmful,
    refused_benign, helpful (labeler.harm_rates of the rollouts), kl (mean KL to the SFT
    model per response, nats), beta, entropy, approx_kl, clip_frac, pg_loss, vf_loss,
    resp_len (tokens, <|end|> included), ended (share that wrote <|end|>), lr,
    t_rollout, t_update (seconds of this iteration), time (seconds since the start).
Its picture, next to it (out/ppo.svg): RM and gold score, KL, beta, harm and refusals per iteration.
At the end, --eval-samples responses to the held-out prompts from the PPO policy and from the SFT
model get gold and RM scores (stored in the checkpoint's metrics as heldout_*). Prompts of a
--prompts file that the labeler cannot parse (labeler.parse_request) have no gold score: "gold"
averages the others, and is left out when none of a batch parse.
The math is the small functions right below, each next to its equation; train() is the loop, and
experience() and ppo_update() are its two halves.
"""
import copy
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

import labeler
from common import (POLICY_STAGES, Log, autocast, check_tokenizer, ctrl_c_stops, eta, fail,
                    interrupted, last_index, load_checkpoint, load_model, load_reward_model,
                    pick_device, run_script, save_checkpoint, single_process, warn)
from data import (action_logprobs, encode_prompt, get_lm_batch, load_prompts, pad_episodes,
                  read_corpus, response_text)
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
        L = -E_t[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)],  rho_t = pi(a_t) / pi_old(a_t).
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
    init: str = flag("out/sft.pt", "the policy PPO starts from (round 1: the SFT model)",
                     fixed=True)
    ref: str = flag("", "the frozen KL reference; empty: --init. Later rounds start from the last "
                    "round's policy and keep the SFT model here", fixed=True)
    reward: str = flag("out/rm.pt", "the reward model (stage rm, from train_rm.py)", fixed=True)
    out: str = "out/ppo.pt"   # help: flags.RunConfig
    prompts: str = flag("", "prompts JSONL, {prompt} records; empty: the simulated labeler's "
                        "training mix (labeler.training_prompts)", fixed=True)
    # rollout
    batch_size: int = flag(32, "episodes (prompt, response) per iteration", ge=1)
    max_new_tokens: int = flag(64, "longest response, in tokens", ge=1)
    temperature: float = flag(1.0, "pure sampling at T; every log-prob divides by the same T", gt=0)
    no_end_penalty: float = flag(-1.0, "the score of a response that never wrote <|end|>")
    # PPO update
    ppo_epochs: int = flag(4, "passes over each batch of episodes", ge=1)
    minibatch_size: int = flag(8, "episodes per gradient step", ge=1)
    lr: float = flag(6e-5, "Adam (eps 1e-5), decaying linearly to 0; on the default models the "
                     "first iteration's approx-KL is ~0.2 (clip fraction 0.4), later ones < 0.01; "
                     "3e-5 gained less gold", gt=0)
    clip: float = flag(0.2, "policy ratio clip (PPO eq. 7)", gt=0)
    vf_clip: float = flag(0.2, "value clip, in (normalized) reward units", gt=0)
    vf_coef: float = flag(0.1, "weight of the value loss", ge=0)
    critic: str = flag("rm", "the value function: rm (a separate critic initialised from the "
                       "reward model: more gold at less KL, ~20% slower) or shared (a head on the "
                       "policy's trunk)", choices=("rm", "shared"), fixed=True)
    gamma: float = flag(1.0, "discount (GAE)", ge=0, le=1)
    lam: float = flag(0.95, "lambda (GAE)", ge=0, le=1)
    grad_clip: float = flag(1.0, "largest global norm of the gradient", gt=0)
    # KL penalty
    beta: float = flag(0.1, "initial KL coefficient (InstructGPT eq. 2); 0: no KL penalty at all",
                       ge=0)
    kl_target: float = flag(6.0, "KL per response (nats) the adaptive controller aims at; 0: fixed "
                            "beta", ge=0)
    kl_horizon: int = flag(1000, "the controller's horizon, in episodes (Ziegler et al.: 10000 "
                           "for runs of 100k+ episodes; the default run has ~2000, and beta must "
                           "be able to move within it)", ge=1)
    # PPO-ptx: + ptx_coef * LM loss on corpus batches (InstructGPT eq. 2, last term)
    ptx_coef: float = flag(0.0, "PPO-ptx: weight of the LM loss on corpus batches; 0: off", ge=0)
    ptx_data: str = flag("data/sotu.txt.gz", "PPO-ptx: the corpus (.txt/.txt.gz file or folder)")
    ptx_batch_size: int = flag(4, "PPO-ptx: corpus sequences per gradient step", ge=1)
    # how long it runs
    max_iters: int = flag(100, "iterations (a rollout and its update) in all", ge=1)
    max_minutes: float = flag(0.0, "stop early (and save) after this many minutes; 0: no limit",
                              ge=0)
    save_interval: int = flag(10, "iterations between checkpoints (also at the end, and on Ctrl-C)",
                              ge=1)
    eval_samples: int = flag(64, "the held-out check at the end: responses per model (PPO, SFT); "
                             "0: skip", ge=0)


# ----------------------------------------------------------------------------- records
@dataclass
class Models:
    """The models of a run."""
    policy: torch.nn.Module                 # pi, the model PPO trains
    ref: torch.nn.Module                    # pi_ref, frozen: the KL penalty is measured against it
    critic: torch.nn.Module | None = None   # V, trained too; None: a head on the policy's trunk

    def trained(self):
        """The models the optimizer steps."""
        return [self.policy] if self.critic is None else [self.policy, self.critic]


@dataclass
class Rollout:
    """A batch of B episodes (prompt, sampled response), every action scored. The grids are the
    layout above: (B, T-1), column t the action a_t = idx[:, t+1]."""
    idx: torch.Tensor        # (B, T) prompt + response token ids, left-padded
    pad_mask: torch.Tensor   # (B, T) True on real tokens, False on the padding
    mask: torch.Tensor       # (B, T-1) 1.0 on the response's actions, else 0.0 (float, to multiply)
    logp: torch.Tensor       # (B, T-1) log pi_old(a_t | s_t), at the sampling temperature
    logp_ref: torch.Tensor   # (B, T-1) log pi_ref(a_t | s_t), the same
    values: torch.Tensor     # (B, T-1) V_old(s_t) on the response, 0 elsewhere
    entropy: float           # the policy's mean entropy per response token, nats
    responses: list          # B lists of token ids, each ending with its <|end|> if it wrote one
    ended: list              # B bools: the response wrote <|end|>


@dataclass
class Experience:
    """A rollout made into what the update learns from: rewards (eq. 2) and advantages (GAE)."""
    rollout: Rollout
    scores: torch.Tensor       # (B,) the reward used: reward_fn's; --no-end-penalty without <|end|>
    metrics: dict              # reward_fn's numbers for the log (rm, gold)
    kl: torch.Tensor           # (B, T-1) log pi_old - log pi_ref on the response, 0 elsewhere
    advantages: torch.Tensor   # (B, T-1) GAE, whitened over the response's actions
    returns: torch.Tensor      # (B, T-1) the value targets: advantages (before whitening) + values


@dataclass
class TrainState:
    """Where a run stands between two iterations: what --resume needs besides the weights. main()
    builds it (new, or from the checkpoint), train() moves it along, save() writes it."""
    iteration: int                     # iterations done
    beta: float                        # the KL coefficient of the next iteration (eq. 2)
    optimizer: torch.optim.Optimizer   # Adam over Models.trained(), with its moment estimates


@dataclass(frozen=True)
class Callbacks:
    """How train() talks to its caller; the defaults do nothing."""
    log: Callable = lambda record, line: None     # every iteration's record and its screen line
    save: Callable = lambda state, record: None   # a checkpoint, when save_due and on an early stop
    stop: Callable = lambda: False                # True: stop between two iterations (Ctrl-C)
    ptx_batch: Callable | None = None             # ptx_batch(generator) -> (x, y): PPO-ptx's data


def start_state(models, cfg):
    """A new run: no iterations done, beta from --beta, a fresh Adam over the trained models."""
    params = [p for m in models.trained() for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=1e-5)  # eps 1e-5: the PPO baselines'
    return TrainState(iteration=0, beta=cfg.beta, optimizer=optimizer)


# ----------------------------------------------------------------------------- rollout + loop
def forward(model, idx, pad_mask, temperature, critic=None):
    """Log-probs of the actions, the value of every state, and the logits, (B, T-1) / (B, T-1) /
    (B, T, V). Without a separate critic one pass through the policy's trunk gives both heads."""
    h = model.hidden(idx, pad_mask)
    logits = model.lm_head(h)
    values = model.scalar(h) if critic is None else critic.scalar(critic.hidden(idx, pad_mask))
    return action_logprobs(logits, idx, temperature), values[:, :-1].float(), logits


@torch.no_grad()
def rollout(policy, ref, prompts, cfg, end_id, generator, ctx, critic=None):
    """Sample one response per prompt (ending with its <|end|>, if any: data.py's rule for
    responses), and score every action under the policy (the "old" log-probs and values of the
    update) and the reference, with a full forward pass over prompt+response. Recomputing instead
    of keeping generate's log-probs makes the update start at ratio exactly 1 (same code path),
    which a test checks."""
    with ctx:
        responses, _ = policy.generate(prompts, cfg.max_new_tokens, temperature=cfg.temperature,
                                       stop_token=end_id, generator=generator)
    idx, pad_mask, mask = pad_episodes(prompts, responses, next(policy.parameters()).device)
    with ctx:
        logp, values, logits = forward(policy, idx, pad_mask, cfg.temperature, critic)
        logp_ref, _, _ = forward(ref, idx, pad_mask, cfg.temperature)
    return Rollout(idx=idx, pad_mask=pad_mask, mask=mask.float(), logp=logp, logp_ref=logp_ref,
                   values=values * mask,
                   entropy=masked_mean(entropy(logits, cfg.temperature), mask).item(),
                   responses=responses, ended=[r[-1:] == [end_id] for r in responses])


@torch.no_grad()
def experience(models, prompts, reward_fn, beta, cfg, end_id, generator, ctx):
    """Sample a response to each prompt and make the episodes into what the update learns from:
    the score (reward_fn's; --no-end-penalty for a response without <|end|>), per-token rewards
    with the KL penalty (eq. 2), advantages (GAE, whitened) and returns."""
    ro = rollout(models.policy, models.ref, prompts, cfg, end_id, generator, ctx, models.critic)
    scores, metrics = reward_fn(prompts, ro.responses, ro.ended)
    ended = torch.tensor(ro.ended, device=ro.idx.device)
    penalty = torch.full((len(ended),), cfg.no_end_penalty, device=ended.device)
    scores = torch.where(ended, scores.float().to(ended.device), penalty)  # no <|end|>: penalty
    rewards, kl = kl_rewards(ro.logp, ro.logp_ref, scores, ro.mask, beta)
    advantages, returns = gae(rewards, ro.values, ro.mask, cfg.gamma, cfg.lam)
    return Experience(ro, scores, metrics, kl, masked_whiten(advantages, ro.mask), returns)


def ppo_update(models, exp, optimizer, lr, cfg, generator, ctx, ptx_batch=None):
    """cfg.ppo_epochs passes over the batch in random minibatches, each a step (learning rate lr) on
    the clipped policy loss (PPO eq. 7) + vf_coef * the value loss, + ptx_coef * the LM loss on a
    corpus batch (PPO-ptx, InstructGPT eq. 2). Returns the mean approx_kl, clip_frac, pg_loss and
    vf_loss of the steps."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    ro = exp.rollout
    stats = []
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(cfg.batch_size, generator=generator, device=ro.idx.device)
        for mb in order.split(cfg.minibatch_size):
            # ---- the losses of this minibatch under the current weights
            with ctx:
                logp, values, _ = forward(models.policy, ro.idx[mb], ro.pad_mask[mb],
                                          cfg.temperature, models.critic)
            pg_loss, clip_frac, approx_kl = policy_loss(logp, ro.logp[mb], exp.advantages[mb],
                                                        ro.mask[mb], cfg.clip)
            vf_loss = value_loss(values, ro.values[mb], exp.returns[mb], ro.mask[mb], cfg.vf_clip)
            loss = pg_loss + cfg.vf_coef * vf_loss
            if ptx_batch is not None and cfg.ptx_coef > 0:   # PPO-ptx: keep the corpus' LM loss low
                x, y = ptx_batch(generator)
                with ctx:
                    loss = loss + cfg.ptx_coef * models.policy(x, y)[1]
            # ---- the step; each model clips its own norm: the critic's do not shrink the policy's
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for model in models.trained():
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            stats.append([pg_loss.item(), vf_loss.item(), clip_frac.item(), approx_kl.item()])
    pg_loss, vf_loss, clip_frac, approx_kl = torch.tensor(stats).mean(0).tolist()
    return {"approx_kl": approx_kl, "clip_frac": clip_frac, "pg_loss": pg_loss, "vf_loss": vf_loss}


def save_due(iteration, cfg):
    """Checkpoints every --save-interval iterations and after the last one."""
    return iteration % cfg.save_interval == 0 or iteration == cfg.max_iters


def progress_line(record, cfg, time_left):
    """An iteration's record in a line that fits 80 columns."""
    return (f"iter {record['iter']}/{cfg.max_iters}  rm {record.get('rm', record['score']):+.2f}  "
            f"gold {record.get('gold', float('nan')):.3f}  kl {record['kl']:.2f}  "
            f"beta {record['beta']:.3g}  end {record['ended']:.0%}  eta {time_left}")


def train(cfg, models, prompts, reward_fn, end_id, state=None, callbacks=Callbacks()):
    """The PPO loop: every iteration collects experience, takes PPO steps on it, logs, lets the KL
    controller move beta and saves. prompts: token-id lists (the chat template's prompt part);
    reward_fn(prompts, responses, ended) -> (scores (B,), metrics to log): the reward model in
    main(), a toy reward in the tests; state: where to start (None: a new run), moved along in
    place. Every iteration draws from its own seeded generators, so a resumed run goes on exactly
    as the uninterrupted one would. Returns (the last record or {}, whether stop() ended it)."""
    device = next(models.policy.parameters()).device
    ctx = autocast(device.type, cfg.precision)
    state = start_state(models, cfg) if state is None else state
    for model in models.trained():
        model.eval()  # dropout off everywhere: it would make the ratio != 1 before any update
    models.ref.eval().requires_grad_(False)
    start, t_start, record, stopped = state.iteration, time.time(), {}, False
    for it in range(start, cfg.max_iters):
        # ---- stop between two iterations: Ctrl-C, or --max-minutes are up
        if callbacks.stop():
            stopped = True
            break
        if cfg.max_minutes > 0 and time.time() - t_start > cfg.max_minutes * 60:
            break
        # ---- experience, from this iteration's own seeded draws (--resume replays the same ones)
        t0 = time.time()
        rng = random.Random(cfg.seed * 100003 + it)
        batch_prompts = [prompts[rng.randrange(len(prompts))] for _ in range(cfg.batch_size)]
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 100003 + it)
        exp = experience(models, batch_prompts, reward_fn, state.beta, cfg, end_id, generator, ctx)
        t1 = time.time()
        # ---- the PPO update, its learning rate decaying linearly to 0
        lr = cfg.lr * (1 - it / cfg.max_iters)
        stats = ppo_update(models, exp, state.optimizer, lr, cfg, generator, ctx,
                           callbacks.ptx_batch)
        t2 = time.time()
        # ---- log: the whole record to the log file, a line of it to the screen
        ro = exp.rollout
        record = {"iter": it + 1, "score": exp.scores.mean().item(), **exp.metrics,
                  "kl": exp.kl.sum(1).mean().item(), "beta": state.beta, "entropy": ro.entropy,
                  **stats, "resp_len": ro.mask.sum(1).mean().item(),
                  "ended": torch.tensor(ro.ended).float().mean().item(), "lr": lr,
                  "t_rollout": t1 - t0, "t_update": t2 - t1, "time": time.time() - t_start}
        time_left = eta(t_start, it + 1 - start, cfg.max_iters - start)
        callbacks.log(record, progress_line(record, cfg, time_left))
        # ---- the KL controller moves beta for the next iteration; save
        state.beta = update_beta(state.beta, record["kl"], cfg.kl_target, cfg.batch_size,
                                 cfg.kl_horizon)
        state.iteration = it + 1
        if save_due(state.iteration, cfg):
            callbacks.save(state, record)
    if record and not save_due(state.iteration, cfg):
        callbacks.save(state, record)  # stopped by Ctrl-C or --max-minutes between two saves
    return record, stopped


# ----------------------------------------------------------------------------- the real run
def reward_model_fn(reward, tok):
    """The reward: reward(prompts, responses) from common.load_reward_model, the reward model read
    at the last real token of prompt+response (the <|end|>), normalized so that SFT samples score
    mean 0, std 1. Also logs what the simulated labeler sees, the truth the reward model only
    approximates: its gold score, and the shares of harmful responses, of refused insult requests
    and of refused harmless ones (labeler.harm_rates)."""
    def reward_fn(prompts, responses, ended):
        scores = reward(prompts, responses)
        texts = [tok.decode(p[1:-1]) for p in prompts]  # strip <|user|> and <|assistant|>
        judged = [labeler.judge(x, *response_text(tok, r))   # --prompts: maybe none
                  for x, r in zip(texts, responses) if labeler.parse_request(x)]
        rates = {k: v for k, v in labeler.harm_rates(judged).items() if v is not None}
        gold = {"gold": sum(j.total for j in judged) / len(judged)} if judged else {}
        return scores, {"rm": scores.mean().item(), **gold, **rates}
    return reward_fn


def corpus_batches(cfg, tok, block_size, device):
    """PPO-ptx: batch(generator) -> (x, y): random windows of the pretraining corpus
    (data.get_lm_batch)."""
    text = read_corpus(cfg.ptx_data, "--ptx-data")
    tokens = np.array(tok.to_tiktoken().encode(text, allowed_special={"<|endoftext|>"}))
    if len(tokens) < block_size + 2:
        fail(f"--ptx-data {cfg.ptx_data}: {len(tokens)} tokens, fewer than one block of "
             f"{block_size + 1}")
    return lambda generator: get_lm_batch(tokens, cfg.ptx_batch_size, block_size, generator,
                                          device)[:2]


@torch.no_grad()
def critic_from_rm(rm, gain, bias):
    """A trainable copy of the reward model whose head gives gain * r + bias: the normalized reward
    scale of the returns it learns to predict."""
    critic = copy.deepcopy(rm).requires_grad_(True)
    critic.scalar_head.weight.mul_(gain)
    critic.scalar_head.bias.mul_(gain).add_(bias)
    return critic


@torch.no_grad()
def heldout_eval(policy, ref, prompts, reward_fn, cfg, end_id, ctx):
    """The end-of-run check: responses to held-out prompts (topic/tone pairs PPO never trained on)
    from the PPO policy and from the SFT model, sampled as in the rollouts (temperature T), with
    their mean gold and RM scores; and the policy's mean KL to SFT per response (sum over its
    tokens of log pi - log pi_ref, a Monte Carlo estimate of KL(pi || pi_SFT))."""
    device = next(policy.parameters()).device
    prompts = [prompts[i % len(prompts)] for i in range(cfg.eval_samples)]
    out = {}
    for name, model in (("sft", ref), ("ppo", policy)):
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        ro = rollout(model, ref, prompts, cfg, end_id, g, ctx)
        _, metrics = reward_fn(prompts, ro.responses, ro.ended)
        suffix = "" if name == "ppo" else "_sft"
        out.update({f"heldout_{k}{suffix}": v for k, v in metrics.items()})
        out[f"heldout_kl{suffix}"] = ((ro.logp - ro.logp_ref) * ro.mask).sum(1).mean().item()
        out[f"heldout_ended{suffix}"] = sum(ro.ended) / len(ro.ended)
    return out


def ppo_chart(path, records, held=None):
    """The picture of a run, one point per iteration: the reward model's and the labeler's (gold)
    score of the rollouts, their KL to the SFT model, beta, and the shares of harmful responses
    and of refusals; the held-out check's scores marked at the end."""
    held, last = held or {}, records[-1]["iter"] if records else 0
    series = lambda name, key: (name, [(r["iter"], r.get(key)) for r in records])
    labels = (("heldout_rm", "held-out RM"), ("heldout_gold", "held-out gold"))
    marks = [(last, held[k], label) for k, label in labels if k in held]
    svg_chart(path, [
        {"title": "scores of the rollouts", "xlabel": "iteration", "ylabel": "score",
         "markers": marks, "series": [series("reward model (normalized)", "rm"),
                                      series("gold (simulated labeler)", "gold")]},
        {"title": "KL to the SFT model", "xlabel": "iteration", "ylabel": "nats per response",
         "series": [series("KL", "kl")]},
        {"title": "KL coefficient", "xlabel": "iteration", "ylabel": "beta",
         "series": [series("beta", "beta")]},
        {"title": "harm and refusals (labeler)", "xlabel": "iteration", "ylabel": "share",
         "series": [series("harmful responses", "harmful"),
                    series("refused insult requests", "refused_harmful"),
                    series("refused harmless requests", "refused_benign")]}])


# ----------------------------------------------------------------------------- main's steps
def load_models(cfg, device):
    """--init (the policy), --ref (the KL reference; default: --init) and --reward, checked to
    fit together. Returns (Models, the tokenizer, the reward model, its reward_fn, --init's
    checkpoint)."""
    policy, tok, init_ckpt = load_model(cfg.init, POLICY_STAGES, device, flag="--init")
    ref, ref_tok, ref_ckpt = (load_model(cfg.ref, POLICY_STAGES, device, flag="--ref") if cfg.ref
                              else (None, tok, init_ckpt))
    if ref_ckpt["stage"] != "sft":
        warn(f"the KL reference {cfg.ref or cfg.init} is a {ref_ckpt['stage']!r} checkpoint; "
             f"InstructGPT's is the SFT model")
    check_tokenizer(ref_tok, tok, f"--ref {cfg.ref}", f"--init {cfg.init}'s")
    if ref_ckpt["config"] != init_ckpt["config"]:
        fail(f"--ref {cfg.ref}: not the same model shape as --init {cfg.init}")
    reward, rm, rm_tok, rm_ckpt = load_reward_model(cfg.reward, device, "--reward", cfg.precision)
    check_tokenizer(rm_tok, tok, f"--reward {cfg.reward}", f"--init {cfg.init}'s")
    # The reference is the frozen SFT model (--init itself in round 1). The value function is
    # either a head on the policy's own trunk, zero-initialised (one forward pass gives both the
    # logits and the values, and V = 0 is the right prior for a reward normalized to mean 0), or a
    # separate critic initialised from the reward model (InstructGPT), its head scaled to the
    # normalized reward: it costs a second trunk in every update, but the value loss no longer
    # pushes the policy's trunk.
    ref = (ref if ref is not None else copy.deepcopy(policy)).eval().requires_grad_(False)
    with torch.no_grad():
        policy.scalar_head.weight.zero_()
        policy.scalar_head.bias.zero_()
    critic = (critic_from_rm(rm, rm_ckpt["rm_gain"], rm_ckpt["rm_bias"]) if cfg.critic == "rm"
              else None)
    return Models(policy, ref, critic), tok, rm, reward_model_fn(reward, tok), init_ckpt


def training_prompts(cfg, tok, block_size):
    """The prompts PPO trains on (token ids) and the held-out ones of the check at the end (text):
    --prompts or the labeler's training mix (the task prompts twice, the training split's insult
    requests once). When none of --prompts is the labeler's, a tenth of them is held out instead
    of the labeler's held-out prompts."""
    prompts = (load_prompts(cfg.prompts, "--prompts") if cfg.prompts
               else labeler.training_prompts())
    if labeler.first_eval_prompt(prompts):   # evaluation stays a test of generalisation
        fail(f"--prompts {cfg.prompts}: prompt {labeler.first_eval_prompt(prompts)[0]} is of the "
             f"labeler's eval split, which no stage trains on")
    heldout = labeler.heldout_prompts()
    unscored = sum(labeler.parse_request(p) is None for p in prompts)
    if unscored:  # the gold score is only defined for the labeler's own prompts
        print(f"note: {unscored} of {len(prompts)} prompts in {cfg.prompts} are not the "
              f"labeler's (labeler.make_request); the logged gold score "
              f"{'averages the others' if unscored < len(prompts) else 'is left out'}")
    if unscored == len(prompts):   # none is the labeler's: the check at the end holds out a tenth
        random.Random(cfg.seed).shuffle(prompts)
        n_held = len(prompts) // 10 or int(len(prompts) > 1)
        heldout, prompts = prompts[:n_held] or prompts, prompts[n_held:]
    prompt_ids = [encode_prompt(tok, p) for p in prompts]
    longest = max(map(len, prompt_ids)) + cfg.max_new_tokens
    if longest > block_size:
        fail(f"--max-new-tokens {cfg.max_new_tokens}: the longest prompt + response ({longest} "
             f"tokens) exceeds the models' block size ({block_size})")
    return prompt_ids, heldout


def resume(cfg, models, init_ckpt):
    """--resume: --out's weights into the models; its iteration, beta and optimizer as the state."""
    ckpt = load_checkpoint(cfg.out, ("ppo",), flag="--resume")
    if ckpt["config"] != init_ckpt["config"] or "optimizer" not in ckpt or "kl_beta" not in ckpt:
        fail(f"--resume {cfg.out}: not a PPO run of --init {cfg.init} (other model config, or no "
             f"optimizer state)")
    models.policy.load_state_dict(ckpt["model"])
    if models.critic is not None:   # --critic is fixed: parse_config refuses to change it
        models.critic.load_state_dict(ckpt["critic"])
    optimizer = start_state(models, cfg).optimizer
    optimizer.load_state_dict(ckpt["optimizer"])
    state = TrainState(iteration=ckpt["step"], beta=ckpt["kl_beta"], optimizer=optimizer)
    print(f"resuming from iteration {state.iteration}, beta {state.beta:.4g}")
    if state.iteration >= cfg.max_iters:
        print(f"note: {cfg.out} already ran {state.iteration} iterations (--max-iters "
              f"{cfg.max_iters}): no training")
    return state


def checkpoint_saver(cfg, models, tok, log):
    """save(state, record): the policy in --out, with what --resume needs (the critic, the
    optimizer, beta); and the run's picture from the log."""
    def save(state, record):
        critic = {"critic": models.critic.state_dict()} if models.critic is not None else {}
        save_checkpoint(cfg.out, stage="ppo", model=models.policy, tokenizer=tok,
                        step=state.iteration, args=asdict(cfg), metrics=record, kl_beta=state.beta,
                        optimizer=state.optimizer.state_dict(), **critic)
        ppo_chart(os.path.splitext(cfg.out)[0] + ".svg", log.records, record)
    return save


def heldout_summary(held, n_prompts, cfg):
    """The held-out check in one line."""
    gold = (f"gold {held['heldout_gold']:.3f} (SFT {held['heldout_gold_sft']:.3f})"
            if "heldout_gold" in held else "no gold score (not the labeler's prompts)")
    return (f"{n_prompts} held-out prompts, {cfg.eval_samples} samples per model at "
            f"T={cfg.temperature}: {gold}, RM {held['heldout_rm']:.3f} (SFT "
            f"{held['heldout_rm_sft']:.3f}), KL to SFT {held['heldout_kl']:.2f} nats/response, "
            f"ended {held['heldout_ended']:.2f} (SFT {held['heldout_ended_sft']:.2f})")


@torch.no_grad()
def print_samples(policy, tok, prompts, cfg, end_id, ctx):
    """The policy's response to each prompt, sampled as in the rollouts from the seed."""
    g = torch.Generator(device=next(policy.parameters()).device).manual_seed(cfg.seed)
    for p in prompts:
        with ctx:
            r = policy.generate([encode_prompt(tok, p)], cfg.max_new_tokens, cfg.temperature,
                                stop_token=end_id, generator=g)[0][0]
        print(f"  {p}\n  > {response_text(tok, r)[0]}")


def main(argv=None):
    single_process("train_ppo.py")
    cfg = parse_config(PPOConfig, __doc__, argv, stage="ppo")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    # 1. the models: policy, frozen reference, reward model (and the critic made from it)
    models, tok, rm, reward_fn, init_ckpt = load_models(cfg, device)
    # 2. the prompts (the training ones, those held out for the check at the end); PPO-ptx's corpus
    block_size = min(models.policy.config.block_size, rm.config.block_size)
    prompt_ids, heldout = training_prompts(cfg, tok, block_size)
    ptx = (corpus_batches(cfg, tok, models.policy.config.block_size, device) if cfg.ptx_coef > 0
           else None)
    # 3. where the run starts: new, or where --resume's checkpoint left it
    state = resume(cfg, models, init_ckpt) if cfg.resume else start_state(models, cfg)
    print(f"policy {models.policy.num_params() / 1e6:.2f} M parameters, reward model "
          f"{rm.num_params() / 1e6:.2f} M, {len(prompt_ids)} prompts, device {device}")
    # 4. train: the log and the checkpoints (also on Ctrl-C, which ends the script after that)
    log = Log(os.path.splitext(cfg.out)[0] + ".log.jsonl", key="iter",
              resume_at=state.iteration if cfg.resume else None)
    save = checkpoint_saver(cfg, models, tok, log)
    end = tok.special_tokens["<|end|>"]
    t0 = time.time()
    with ctrl_c_stops() as stop:
        record, stopped = train(cfg, models, prompt_ids, reward_fn, end, state,
                                Callbacks(log=log, save=save, stop=stop, ptx_batch=ptx))
    if stopped:
        if not record and not cfg.resume:   # stopped before the first iteration: save the start
            save(state, record)
        interrupted("train_ppo.py", cfg.out, state.iteration, unit="iteration")
    # 5. the held-out check: PPO and SFT on prompts PPO never trained on, kept in the checkpoint
    ctx = autocast(device, cfg.precision)
    held = {}
    if cfg.eval_samples > 0:
        heldout_ids = [encode_prompt(tok, p) for p in heldout]
        held = heldout_eval(models.policy, models.ref, heldout_ids, reward_fn, cfg, end, ctx)
        print(heldout_summary(held, len(heldout), cfg))
        save(state, {**record, **held})
    # 6. a few samples to read
    print(f"saved {cfg.out} after {(time.time() - t0) / 60:.1f} min; samples:")
    print_samples(models.policy, tok, heldout[:3], cfg, end, ctx)
    return {**record, **held}


if __name__ == "__main__":
    run_script(main)
