"""Evaluation: the report card that shows what each stage bought.

    python eval.py                          # every checkpoint found in out/ (pretrain, sft, ppo; rm.pt scores)
    python eval.py --ppo other/ppo.pt       # any checkpoint can be named; --out-dir says where to write

On the simulated labeler's held-out prompts (topic/tone pairs no stage trained on), each prompt
--samples-per-prompt times, with fixed seeds and the same prompts in every row, one row per policy:
  gold    the labeler's score (the truth the RM only approximates), mean ± standard error
  rm      the reward model's score (normalized: SFT samples have mean 0, std 1)
  kl      KL to SFT per response: sum over the response's tokens of log pi(y_t) - log pi_sft(y_t) on the
          policy's own samples, a Monte Carlo estimate of KL(pi || pi_sft), the quantity PPO's penalty holds down
  tokens  mean response length; ended: share that wrote <|end|>
  win     win rate against SFT by the labeler: sample i of a row against sample i of SFT (same prompt), ties half
The "pretrain" row prompts the base model in the chat template like the others; it has never seen the chat
tokens, so it rambles and never ends. Extra rows:
  zero-shot / few-shot: the pretrained model prompted the way GPT-2/3 prompt a base model, in plain text,
          since it has never seen the chat tokens: "{prompt} " (zero-shot), or a few labeler demonstrations
          "{prompt} {response} " in front of it (few-shot: the shortest ones, as many as --shots and the 128-token
          context allow). Its answer is the first sentence of 40 new tokens, and it counts as ended if it
          finished that sentence (GPT-3's evaluations stop generation at a stop sequence the same way).
  best-of-N: N SFT samples per prompt, the RM picks one (N = 1 is the SFT row itself). KL is the analytic
          log N - (N-1)/N of best-of-N sampling (Stiennon et al. 2020; an upper bound). The baseline PPO must beat.
Also: validation perplexity on the corpus's held-out tail (the split train_pretrain.py trained without),
the RM's pairwise accuracy on fresh held-out rankings (train_rm.evaluate), sample responses side by side,
and the over-optimization chart: RM and gold score against KL over the PPO run, from its .log.jsonl.
Writes <out-dir>/eval.md, eval.json and the chart (PNG with matplotlib, else a hand-written SVG).
main() runs the phases at the end of this file: load, samples, KL, RM scores, gold scores, extras.
"""
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

import labeler
from common import (autocast, check_tokenizer, fail, flag, load_model, load_reward_model, parse_config,
                    pick_device)
from data import (action_logprobs, cached_tokens, encode_prompt, get_lm_batch, pad_episodes, read_corpus,
                  response_text, sample_responses)
from train_pretrain import lm_loss
from train_rm import RMConfig, evaluate as rm_evaluate, sample_rankings

BEST_OF = (1, 4, 16)


@dataclass
class EvalConfig:
    out_dir: str = "out"               # where the checkpoints are looked for and the report is written
    pretrain: str = ""                 # empty: <out-dir>/pretrain.pt if it exists (same for the next three)
    sft: str = ""
    ppo: str = ""
    rm: str = ""
    corpus: str = ""                   # perplexity and few-shot demos; empty: the pretrain checkpoint's --data
    samples_per_prompt: int = flag(10, "x 9 held-out prompts = samples per row (best-of-16 draws 16 times that)",
                                   "[1, inf)")
    temperature: float = 1.0           # the distribution PPO optimized (and its KL was measured at)
    max_new_tokens: int = flag(64, "longest response, in tokens", "[1, inf)")
    shots: int = 3                     # few-shot: at most this many demonstrations (fewer if the context is full)
    ppl_iters: int = 4                 # validation batches per model for the perplexity
    rm_rankings: int = 16              # fresh held-out rankings of SFT samples for the RM's accuracy (one batch)
    show: int = 3                      # prompts with samples side by side in the report
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"


# ----------------------------------------------------------------------------- the statistics
def mean_se(x):
    """Mean and its standard error, std / sqrt(n)."""
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def win_rate(scores, baseline):
    """Share of paired samples where scores[i] beats baseline[i]; a tie counts half (InstructGPT)."""
    s, b = np.asarray(scores), np.asarray(baseline)
    return float(((s > b) + 0.5 * (s == b)).mean())


def best_of_n(rewards, n):
    """rewards (N_max, S): RM score of candidate j for sample slot i. Picks, per slot, the candidate with
    the highest RM score among the first n (so best-of-4 sees a subset of best-of-16's candidates)."""
    return np.asarray(rewards)[:n].argmax(0)


# ----------------------------------------------------------------------------- the base model, prompted
def plain_text_contexts(tok, prompts, demos, shots, room):
    """GPT-2/3-style prompts for a base model: "{demo prompt} {demo response} ... {prompt}", with up to
    `shots` of the shortest demonstrations, as many as fit in `room` tokens. Returns (contexts, shots used)."""
    enc = tok.to_tiktoken().encode_ordinary
    room -= max(len(enc(p)) for p in prompts)
    used = sorted(demos, key=lambda d: len(enc(d["prompt"] + " " + d["response"])))[:shots]
    while used and len(enc("".join(f"{d['prompt']} {d['response']} " for d in used))) > room:
        used.pop()
    prefix = "".join(f"{d['prompt']} {d['response']} " for d in used)
    return [enc(prefix + p) for p in prompts], len(used)


def first_sentence(tok, ids):
    """A base model does not stop: its answer is its first sentence, as a response (data.py's rule) that
    ended with <|end|> if it finished that sentence."""
    parts = labeler.sentences(tok.decode(ids))
    text, ended = (parts[0], len(parts) > 1) if parts else ("", False)
    return tok.to_tiktoken().encode_ordinary(text) + [tok.special_tokens["<|end|>"]] * ended


def validation_tokens(tok, pretrain_path, args, corpus=""):
    """The corpus's held-out tail, split as train_pretrain.main splits it (its last --val-fraction), from
    the token file pretraining cached next to its checkpoint (data.cached_tokens; or written there now)."""
    text = read_corpus(corpus or args.get("data", "data/sotu.txt.gz"))
    tokens = cached_tokens(text, tok, os.path.dirname(os.path.abspath(pretrain_path)))
    return tokens[-int(len(tokens) * args.get("val_fraction", 0.05)):]


# ----------------------------------------------------------------------------- the chart
def read_ppo_curve(path):
    """(KL, RM score, gold score) per PPO iteration from train_ppo's log, read defensively: lines that do
    not parse (a run still writing) or lack a number are skipped; an older log's "score" stands in for "rm"."""
    curve = []
    for line in open(path, encoding="utf-8"):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        rec = {**rec, "rm": rec.get("rm", rec.get("score"))} if isinstance(rec, dict) else {}
        if all(isinstance(rec.get(k), (int, float)) for k in ("kl", "rm", "gold")):
            curve.append({k: rec[k] for k in ("iter", "kl", "rm", "gold", "beta") if k in rec})
    return curve


def overopt_chart(records, path_stem):
    """RM score and gold score against KL, one dot per PPO iteration (darker = later). matplotlib if it is
    installed, else a small SVG written by hand (no new dependency). Returns the file written."""
    kl = [r["kl"] for r in records]
    panels = [("reward model score", [r["rm"] for r in records]), ("gold (labeler) score", [r["gold"] for r in records])]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, (title, ys) in zip(axes, panels):
            ax.scatter(kl, ys, c=range(len(ys)), cmap="viridis", s=14)
            ax.set(title=title, xlabel="KL to SFT per response (nats)")
        fig.tight_layout()
        fig.savefig(path_stem + ".png", dpi=120)
        return path_stem + ".png"
    W, H, L, B = 360, 260, 50, 40   # one panel's size, left and bottom margins
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>']
    for k, (title, ys) in enumerate(panels):
        x0 = k * W + L
        pw, ph = W - L - 15, H - B - 30            # plot area, below a 30 px title
        lo_x, hi_x, lo_y, hi_y = min(kl), max(kl), min(ys), max(ys)
        sx = lambda v: x0 + 5 + (pw - 10) * (v - lo_x) / ((hi_x - lo_x) or 1)       # 5 px inside the axes
        sy = lambda v: 35 + (ph - 10) * (1 - (v - lo_y) / ((hi_y - lo_y) or 1))
        svg.append(f'<text x="{x0 + pw / 2}" y="18" text-anchor="middle" font-size="13">{title}</text>')
        svg.append(f'<path d="M{x0},30 V{30 + ph} H{x0 + pw}" stroke="black" fill="none"/>')
        for v in (lo_x, hi_x):
            svg.append(f'<text x="{sx(v):.1f}" y="{30 + ph + 15}" text-anchor="middle">{v:.3g}</text>')
        for v in (lo_y, hi_y):
            svg.append(f'<text x="{x0 - 5}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
        svg.append(f'<text x="{x0 + pw / 2}" y="{H - 8}" text-anchor="middle">KL to SFT per response (nats)</text>')
        for i, (x, y) in enumerate(zip(kl, ys)):
            svg.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#1f5fa8" '
                       f'fill-opacity="{0.2 + 0.8 * i / max(1, len(ys) - 1):.2f}"/>')
    with open(path_stem + ".svg", "w") as f:
        f.write("\n".join(svg + ["</svg>"]) + "\n")
    return path_stem + ".svg"


# ----------------------------------------------------------------------------- the report
def fmt(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def markdown(res):
    rows = ["| model | gold ± se | RM | KL to SFT | tokens | ended | win vs SFT |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        rows.append(f"| {r['name']} | {r['gold']:.3f} ± {r['gold_se']:.3f} | {fmt(r['rm'], '+.2f')} | "
                    f"{fmt(r['kl'], '.2f')} | {r['tokens']:.1f} | {r['ended']:.0%} | {fmt(r['win_vs_sft'], '.0%')} |")
    s = res["settings"]
    out = [f"# Report card\n\n{s['samples']} samples per row on {len(labeler.heldout_prompts())} held-out prompts, "
           f"temperature {s['temperature']}, seed {s['seed']}; {res['seconds']:.0f} s.\n", *rows, ""]
    if res["perplexity"]:
        out += ["Validation perplexity on the corpus (held-out tail): " +
                ", ".join(f"{k} {v:.1f}" for k, v in res["perplexity"].items()) + "\n"]
    if res["rm_accuracy"]:
        a = res["rm_accuracy"]
        out += [f"Reward model on {a['rankings']} fresh held-out rankings of SFT samples: pairwise accuracy "
                f"{a.get('acc_noisy', float('nan')):.1%} vs the noisy labels, {a.get('acc_gold', float('nan')):.1%} "
                f"vs the noise-free labeler; Spearman {a.get('spearman', float('nan')):.2f}" +
                (f" (train_rm measured {t['acc_noisy']:.1%} and {t['acc_gold']:.1%} on its own held-out rankings)"
                 if {"acc_noisy", "acc_gold"} <= set(t := a["at_training"]) else "") + ".\n"]
    if res["chart"]:
        out += [f"Over-optimization: RM and gold score against KL over the PPO run, one dot per iteration, darker "
                f"= later ({os.path.basename(res['chart'])}):\n\n![over-optimization]({os.path.basename(res['chart'])})\n"]
    for ex in res["samples"]:
        out += [f"**{ex['prompt']}**\n", "| model | gold | response |", "|---|---|---|"]
        out += [f"| {name} | {g:.2f} | {text.replace('|', '/')} |" for name, (g, text) in ex["responses"].items()]
        out += [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- the phases of main
def load_checkpoints(cfg, device):
    """Returns (paths, policies: stage -> (model, ckpt), tok, common.load_reward_model's tuple or None)."""
    paths = {}
    for stage in ("pretrain", "sft", "ppo", "rm"):   # named with a flag: must exist; else: if it is in out-dir
        path = getattr(cfg, stage) or os.path.join(cfg.out_dir, f"{stage}.pt")
        if getattr(cfg, stage) or os.path.isfile(path):
            paths[stage] = path
    policies, tok = {}, None
    for stage in ("pretrain", "sft", "ppo"):
        if stage in paths:
            model, t, ckpt = load_model(paths[stage], (stage,), device, flag=f"--{stage}")
            if tok is not None:
                check_tokenizer(t, tok, f"--{stage} {paths[stage]}", "the other checkpoints'")
            policies[stage], tok = (model.eval(), ckpt), t
    if not policies:
        fail(f"--out-dir {cfg.out_dir}: no pretrain.pt, sft.pt or ppo.pt there (or name them with --pretrain/--sft/--ppo)")
    rm = None
    if "rm" in paths:
        rm = load_reward_model(paths["rm"], device, "--rm", cfg.precision)
        check_tokenizer(rm[2], tok, f"--rm {paths['rm']}", "the policies'")
    return paths, policies, tok, rm


def base_model_rows(cfg, model, tok, prompts, val_tokens, device, ctx):
    """The zero- and few-shot rows in one batched call, the demonstrations from the corpus's tail. The answer
    is one sentence: 40 new tokens hold one of about 27 words (the guideline allows 8 to 30)."""
    demos = labeler.demonstrations(tok.decode(val_tokens.tolist()), 50, cfg.seed)
    new_tokens = min(cfg.max_new_tokens, 40)
    room = model.config.block_size - new_tokens
    zero, _ = plain_text_contexts(tok, prompts, demos, 0, room)
    few, shots = plain_text_contexts(tok, prompts, demos, cfg.shots, room)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    with ctx:
        out, _ = model.generate(zero + (few if shots else []), new_tokens, cfg.temperature, generator=g)
    answers = [first_sentence(tok, o) for o in out]
    rows = {"zero-shot": {"ids": answers[:len(prompts)]}}
    if shots:   # else no demonstration fits next to the prompt and the answer
        rows[f"few-shot ({shots})"] = {"ids": answers[len(prompts):]}
    return rows


def sample_rows(cfg, policies, tok, prompts, val_tokens, pool_size, device, ctx):
    """Phase 1, the samples: every policy in the chat template (and the base model in plain text). SFT draws
    pool_size samples per prompt for best-of-N, its row is the first. Returns (rows, pool): rows[name] =
    {"ids": responses (data.py's rule)}, to which the later phases add; pool[j][i] is SFT's candidate j for
    prompt i."""
    def sample(model, k=1):   # k samples per prompt in one batched call, cut into k lists of one per prompt
        with ctx:
            flat = sample_responses(model, tok, prompts * k, cfg.max_new_tokens, cfg.temperature, seed=cfg.seed,
                                    batch_size=512, device=device)
        return [flat[j * len(prompts):(j + 1) * len(prompts)] for j in range(k)]
    rows, pool = {}, None
    if "pretrain" in policies:
        rows["pretrain"] = {"ids": sample(policies["pretrain"][0])[0]}
        rows.update(base_model_rows(cfg, policies["pretrain"][0], tok, prompts, val_tokens, device, ctx))
    if "sft" in policies:
        pool = sample(policies["sft"][0], pool_size)
        rows["sft"] = {"ids": pool[0]}
    if "ppo" in policies:
        rows["ppo"] = {"ids": sample(policies["ppo"][0])[0]}
    return rows, pool


@torch.no_grad()
def add_kl(rows, policies, prompt_ids, temperature, ctx):
    """Phase 2: each policy's KL to SFT on its own samples, sum_t log pi(y_t) - log pi_sft(y_t) over the
    response's tokens (<|end|> included), both models' logits divided by the sampling temperature (as in
    train_ppo, or the KL is wrong). SFT's own is 0 by definition."""
    ref = policies["sft"][0]
    rows["sft"]["kl"] = [0.0] * len(prompt_ids)
    for stage in ("pretrain", "ppo"):
        if stage in policies:
            idx, pad_mask, mask = pad_episodes(prompt_ids, rows[stage]["ids"], ref.lm_head.weight.device)
            with ctx:
                logp = action_logprobs(policies[stage][0](idx, pad_mask=pad_mask)[0], idx, temperature)
                logp_ref = action_logprobs(ref(idx, pad_mask=pad_mask)[0], idx, temperature)
            rows[stage]["kl"] = ((logp - logp_ref) * mask).sum(1).tolist()


def add_rm_scores(rows, pool, reward, prompt_ids):
    """Phase 3: the RM scores every row; best-of-N keeps SFT's candidate with the best RM score (best_of_n)."""
    for name, r in rows.items():
        if name != "sft":
            r["rm"] = reward(prompt_ids, r["ids"]).tolist()
    if pool is None:
        return
    n = len(prompt_ids)
    pool_rm = reward(prompt_ids * len(pool), [r for candidates in pool for r in candidates])
    pool_rm = pool_rm.cpu().numpy().reshape(len(pool), n)   # pool_rm[j, i]: candidate j for prompt i
    rows["sft"]["rm"] = pool_rm[0].tolist()
    for N in BEST_OF:
        pick = best_of_n(pool_rm, N)
        rows[f"best-of-{N}"] = {"ids": [pool[j][i] for i, j in enumerate(pick)],
                                "kl": [math.log(N) - (N - 1) / N] * n, "rm": pool_rm[pick, np.arange(n)].tolist()}


def summarize(rows, tok, prompts):
    """Phase 4: the labeler scores every response; one summary per row, in the report's order."""
    for r in rows.values():
        r["texts"], r["ended"] = zip(*(response_text(tok, i) for i in r["ids"]))
        r["gold"] = [labeler.score(p, t, e)[0] for p, t, e in zip(prompts, r["texts"], r["ended"])]
    order = ["pretrain", "zero-shot", *[k for k in rows if k.startswith("few-shot")], "sft",
             *[f"best-of-{N}" for N in BEST_OF], "ppo"]
    summary = []
    for name in (k for k in order if k in rows):
        r = rows[name]
        gold, se = mean_se(r["gold"])
        summary.append({"name": name, "gold": gold, "gold_se": se,
                        "rm": float(np.mean(r["rm"])) if "rm" in r else None,
                        "kl": float(np.mean(r["kl"])) if "kl" in r else None,
                        "tokens": float(np.mean([len(i) - e for i, e in zip(r["ids"], r["ended"])])),
                        "ended": float(np.mean(r["ended"])),
                        "win_vs_sft": win_rate(r["gold"], rows["sft"]["gold"]) if "sft" in rows else None})
    return summary


def extras(cfg, paths, policies, tok, rm, val_tokens, device, ctx):
    """Phase 5: validation perplexities, the RM's pairwise accuracy on fresh held-out rankings of SFT samples
    (ranked as train_rm ranked: its K, temperature and label noise, RMConfig's where the checkpoint does not
    say), and the PPO run's over-optimization chart. Returns (perplexity, rm_accuracy, chart, curve)."""
    perplexity, rm_acc = {}, {}
    if val_tokens is not None:   # in batches of pretraining's size
        batch_size = policies["pretrain"][1]["args"].get("batch_size", 32)
        for stage, (model, _) in policies.items():
            batch = lambda i: get_lm_batch(val_tokens, batch_size, model.config.block_size,
                                           torch.Generator().manual_seed(i), device)
            perplexity[stage] = math.exp(lm_loss(model, batch, cfg.ppl_iters, ctx))
    if rm is not None and "sft" in policies:
        _, rm_model, _, rm_ckpt = rm
        a, held = {**asdict(RMConfig()), **rm_ckpt["args"]}, labeler.heldout_prompts()
        rankings = sample_rankings(policies["sft"][0], tok, [held[i % len(held)] for i in range(cfg.rm_rankings)],
                                   k=a["k"], temperature=a["temperature"], max_new_tokens=cfg.max_new_tokens,
                                   label_noise=a["label_noise"], seed=cfg.seed + 1, device=device, ctx=ctx)[0]
        rm_acc = {"rankings": len(rankings), **rm_evaluate(rm_model, rankings, device, ctx),
                  "at_training": {k[8:]: v for k, v in rm_ckpt["metrics"].items() if k.startswith("heldout_")}}
    log_path = os.path.splitext(paths["ppo"])[0] + ".log.jsonl" if "ppo" in paths else ""
    curve = read_ppo_curve(log_path) if os.path.isfile(log_path) else []
    chart = overopt_chart(curve, os.path.join(cfg.out_dir, "eval_overopt")) if curve else None
    return perplexity, rm_acc, chart, curve


# ----------------------------------------------------------------------------- main
def main(argv=None):
    cfg = parse_config(EvalConfig, __doc__.split("\n")[0], argv)
    t_start = time.time()
    os.makedirs(cfg.out_dir, exist_ok=True)
    device = pick_device(cfg.device)
    ctx = autocast(device, cfg.precision)
    paths, policies, tok, rm = load_checkpoints(cfg, device)
    prompts = labeler.heldout_prompts() * cfg.samples_per_prompt   # the same in every row
    prompt_ids = [encode_prompt(tok, p) for p in prompts]
    val_tokens = None
    if "pretrain" in policies:
        val_tokens = validation_tokens(tok, paths["pretrain"], policies["pretrain"][1]["args"], cfg.corpus)
    rows, pool = sample_rows(cfg, policies, tok, prompts, val_tokens, max(BEST_OF) if rm else 1, device, ctx)
    if "sft" in policies:
        add_kl(rows, policies, prompt_ids, cfg.temperature, ctx)
    if rm is not None:
        add_rm_scores(rows, pool, rm[0], prompt_ids)
    summary = summarize(rows, tok, prompts)
    perplexity, rm_acc, chart, curve = extras(cfg, paths, policies, tok, rm, val_tokens, device, ctx)

    samples = [{"prompt": prompts[i], "responses": {s["name"]: (rows[s["name"]]["gold"][i], rows[s["name"]]["texts"][i])
                                                    for s in summary}} for i in range(min(cfg.show, len(prompts)))]
    res = {"settings": {**asdict(cfg), "samples": len(prompts), "checkpoints": paths}, "rows": summary,
           "perplexity": perplexity, "rm_accuracy": rm_acc, "samples": samples, "ppo_curve": curve,
           "chart": chart, "seconds": time.time() - t_start}
    report = markdown(res)
    with open(os.path.join(cfg.out_dir, "eval.md"), "w", encoding="utf-8") as f:
        f.write(report)
    with open(os.path.join(cfg.out_dir, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1, ensure_ascii=False)
    print(report)
    print(f"wrote {os.path.join(cfg.out_dir, 'eval.md')}, eval.json{' and ' + os.path.basename(chart) if chart else ''}")
    return res


if __name__ == "__main__":
    main()
