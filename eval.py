"""Evaluation: the report card that shows what each stage bought.

    python eval.py                          # every checkpoint found in out/ (pretrain, sft, ppo, the rounds in
                                            # out/round*/; rm.pt scores)
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
          "{prompt} {response} " in front of it (few-shot: the shortest ones, as many as --shots and the model's
          context, block_size (256 by default), allow). Its answer is the first sentence of 40 new tokens, and it
          counts as ended if it finished that sentence (GPT-3's evaluations stop generation at a stop sequence
          the same way).
  best-of-N: N SFT samples per prompt, the RM picks one (N = 1 is the SFT row itself). KL is the analytic
          log N - (N-1)/N of best-of-N sampling (Stiennon et al. 2020; an upper bound). The baseline PPO must beat.
  ppo (round r): the policy of each earlier RLHF round (pipeline.py --rounds), found in <out-dir>/round<r>/.
Also: validation perplexity on the corpus's held-out tail (the split train_pretrain.py trained without),
the RM's pairwise accuracy on fresh held-out rankings of SFT samples and of the final policy's samples
(train_rm.evaluate), the per-round table, sample responses side by side, and the gold-vs-KL picture of Gao
et al. 2022 ("Scaling laws for reward model overoptimization"): best-of-N for every N in BEST_OF, every PPO
iteration of every round (from its .log.jsonl: rollouts on training prompts, scored by that round's RM) and
each round's policy on the held-out prompts, against KL to SFT, for the gold score and for the RM score.
Writes <out-dir>/eval.md, eval.json (with the numbers behind the picture) and eval_gold_kl.svg.
main() runs the phases at the end of this file: load, samples, KL, RM scores, gold scores, extras.
"""
import json
import math
import os
import pathlib
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

import labeler
from common import (autocast, check_tokenizer, fail, load_checkpoint, load_model,
                    load_reward_model, pick_device, write_atomically)
from data import (action_logprobs, cached_tokens, encode_prompt, get_lm_batch, pad_episodes, read_corpus,
                  response_text, sample_responses)
from flags import flag, parse_config
from plot import svg_chart
from train_pretrain import lm_loss
from train_rm import RMConfig, evaluate as rm_evaluate, sample_rankings

BEST_OF = (1, 2, 4, 8, 16, 32)


@dataclass
class EvalConfig:
    out_dir: str = flag("out", "where the checkpoints are looked for and the report is written")
    pretrain: str = flag("", "the pretrained model; empty: <out-dir>/pretrain.pt if it is there")
    sft: str = flag("", "the SFT model (the reference of KL and win rate); empty: <out-dir>/sft.pt "
                    "if it is there")
    ppo: str = flag("", "the final PPO policy; empty: <out-dir>/ppo.pt and the earlier rounds' "
                    "<out-dir>/round<r>/ppo.pt if they are there")
    rm: str = flag("", "the reward model (RM column, best-of-N, RM accuracy); empty: <out-dir>/rm.pt "
                   "if it is there")
    corpus: str = flag("", "the corpus for perplexity and the few-shot demonstrations; empty: the "
                       "pretrain checkpoint's --data")
    samples_per_prompt: int = flag(20, "x 9 held-out prompts = samples per row (best-of-32 draws 32 "
                                   "times that)", ge=1)
    temperature: float = flag(1.0, "sampling temperature: the distribution PPO optimized (and its KL "
                              "was measured at)", gt=0)
    max_new_tokens: int = flag(64, "longest response, in tokens", ge=1)
    shots: int = flag(3, "few-shot: at most this many demonstrations (fewer if the context is full)",
                      ge=0)
    ppl_iters: int = flag(4, "validation batches per model for the perplexity", ge=1)
    rm_rankings: int = flag(64, "fresh held-out rankings, of SFT's and of the final policy's samples, "
                            "for the RM's accuracy", ge=1)
    show: int = flag(3, "prompts whose samples the report shows side by side", ge=0)
    seed: int = flag(1337, "the seed of the samples")
    device: str = flag("auto", "auto: cuda, else mps, else cpu", choices=("auto", "cpu", "cuda", "mps"))
    precision: str = flag("auto", "auto: bf16 autocast on GPUs and on CPUs with bf16, else fp32",
                          choices=("auto", "bf16", "fp32"))


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


def gold_kl_chart(summary, rounds, path):
    """Gao et al. 2022's picture, gold and RM score against KL to SFT: the best-of-N curve, the held-out point of
    each round's policy, SFT at KL 0, and one dot per PPO iteration of every round (training rollouts). Returns
    (path, the numbers behind it)."""
    row = {r["name"]: r for r in summary}
    best_of = [{"n": N, "kl": row[f"best-of-{N}"]["kl"], "gold": row[f"best-of-{N}"]["gold"],
                "rm": row[f"best-of-{N}"]["rm"]} for N in BEST_OF]
    policies = [{"round": r, "kl": row[name]["kl"], "gold": row[name]["gold"], "rm": row[name]["rm"]}
                for r, name in enumerate(rounds, 1)]
    panels = []
    for key, what in (("gold", "gold (labeler) score"), ("rm", "reward model score")):
        series = [(f"best-of-N, N = {BEST_OF[0]}..{BEST_OF[-1]}", [(b["kl"], b[key]) for b in best_of], "line+dots")]
        series += [(f"PPO round {r} rollouts", [(c["kl"], c[key]) for c in curve], "dots")
                   for r, curve in enumerate(rounds.values(), 1)]
        markers = [(0.0, row["sft"][key], "SFT")] + [(p["kl"], p[key], f"PPO {p['round']}") for p in policies]
        panels.append({"title": f"{what} vs KL", "xlabel": "KL to SFT per response (nats)", "ylabel": what,
                       "series": series, "markers": markers})
    svg_chart(path, panels)
    return path, {"best_of": best_of, "ppo_heldout": policies, "ppo_iterations": list(rounds.values())}


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
    if res["rm_accuracy"].get("on_ppo"):
        a = res["rm_accuracy"]["on_ppo"]
        out += [f"The same reward model on {a['rankings']} fresh held-out rankings of the final policy's samples: "
                f"{a.get('acc_gold', float('nan')):.1%} vs the noise-free labeler.\n"]
    if res["rounds"]:
        out += ["| round | RM acc. on SFT samples | RM acc. on its policy's samples | PPO gold | KL | win vs SFT |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['round']} | {fmt(r['rm_acc_sft'], '.1%')} | {fmt(r['rm_acc_policy'], '.1%')} | {r['gold']:.3f} | "
                f"{r['kl']:.2f} | {r['win_vs_sft']:.0%} |" for r in res["rounds"]]
        out += ["", "RM accuracies are train_rm's, on its held-out rankings: of SFT samples, and of samples of the policy "
                "that round's PPO starts from (round 1: SFT itself). PPO's numbers are this report's.\n"]
    if res["chart"]:
        out += [f"Gold and RM score against KL to SFT: best-of-N, each round's policy, every PPO iteration "
                f"({os.path.basename(res['chart'])}):\n\n![gold vs KL]({os.path.basename(res['chart'])})\n"]
    for ex in res["samples"]:
        out += [f"**{ex['prompt']}**\n", "| model | gold | response |", "|---|---|---|"]
        out += [f"| {name} | {g:.2f} | {text.replace('|', '/')} |" for name, (g, text) in ex["responses"].items()]
        out += [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- the phases of main
def earlier_rounds(out_dir):
    """{"ppo (round r)": (policy path, RM path)} of the rounds before the last, as pipeline.py lays them out."""
    found = {}
    for name in os.listdir(out_dir):
        where = os.path.join(out_dir, name)
        if name.startswith("round") and name[5:].isdigit() and os.path.isfile(os.path.join(where, "ppo.pt")):
            found[int(name[5:])] = (os.path.join(where, "ppo.pt"), os.path.join(where, "rm.pt"))
    return {f"ppo (round {r})": found[r] for r in sorted(found)}


def load_checkpoints(cfg, device):
    """Returns (paths, policies: row name -> (model, ckpt), tok, common.load_reward_model's tuple or None).
    The policies are pretrain, sft, ppo (the last round's) and the earlier rounds' ("ppo (round 1)", ...)."""
    paths = {}
    for stage in ("pretrain", "sft", "ppo", "rm"):   # named with a flag: must exist; else: if it is in out-dir
        path = getattr(cfg, stage) or os.path.join(cfg.out_dir, f"{stage}.pt")
        if getattr(cfg, stage) or os.path.isfile(path):
            paths[stage] = path
    rounds = earlier_rounds(cfg.out_dir) if "ppo" in paths and not cfg.ppo else {}
    paths.update({name: ppo for name, (ppo, _) in rounds.items()})
    policies, tok = {}, None
    for name in ("pretrain", "sft", *rounds, "ppo"):
        if name in paths:
            stage = name.split()[0]
            model, t, ckpt = load_model(paths[name], (stage,), device, flag=f"--{stage}")
            if tok is not None:
                check_tokenizer(t, tok, f"--{stage} {paths[name]}", "the other checkpoints'")
            policies[name], tok = (model.eval(), ckpt), t
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
    for name in (name for name in policies if name.startswith("ppo")):
        rows[name] = {"ids": sample(policies[name][0])[0]}
    return rows, pool


@torch.no_grad()
def add_kl(rows, policies, prompt_ids, temperature, ctx):
    """Phase 2: each policy's KL to SFT on its own samples, sum_t log pi(y_t) - log pi_sft(y_t) over the
    response's tokens (<|end|> included), both models' logits divided by the sampling temperature (as in
    train_ppo, or the KL is wrong). SFT's own is 0 by definition."""
    ref = policies["sft"][0]
    rows["sft"]["kl"] = [0.0] * len(prompt_ids)
    for name in (name for name in policies if name != "sft"):
        idx, pad_mask, mask = pad_episodes(prompt_ids, rows[name]["ids"], ref.lm_head.weight.device)
        with ctx:
            logp = action_logprobs(policies[name][0](idx, pad_mask=pad_mask)[0], idx, temperature)
            logp_ref = action_logprobs(ref(idx, pad_mask=pad_mask)[0], idx, temperature)
        rows[name]["kl"] = ((logp - logp_ref) * mask).sum(1).tolist()


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
             *[f"best-of-{N}" for N in BEST_OF], *[k for k in rows if k.startswith("ppo (")], "ppo"]
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
    """Phase 5: validation perplexities, and the RM's pairwise accuracy on fresh held-out rankings of SFT's
    samples and of the final policy's (ranked as train_rm ranked: its K, temperature and label noise,
    RMConfig's where the checkpoint does not say). Returns (perplexity, rm_accuracy)."""
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
        accuracy = lambda model: rm_evaluate(rm_model, sample_rankings(
            model, tok, [held[i % len(held)] for i in range(cfg.rm_rankings)], k=a["k"], temperature=a["temperature"],
            max_new_tokens=cfg.max_new_tokens, label_noise=a["label_noise"], seed=cfg.seed + 1, device=device,
            ctx=ctx)[0], device, ctx)
        rm_acc = {"rankings": cfg.rm_rankings, **accuracy(policies["sft"][0]),
                  "at_training": {k[8:]: v for k, v in rm_ckpt["metrics"].items() if k.startswith("heldout_")}}
        if "ppo" in policies:
            rm_acc["on_ppo"] = {"rankings": cfg.rm_rankings, **accuracy(policies["ppo"][0])}
    return perplexity, rm_acc


def round_table(paths, summary):
    """One line per RLHF round: its RM's held-out accuracy as train_rm measured it (on SFT's samples, and on
    those of the policy its PPO starts from), its policy's gold, KL and win rate here; and every PPO iteration
    of the round from its log. Returns (table, {row name: curve})."""
    row = {r["name"]: r for r in summary}
    names = [name for name in paths if name.startswith("ppo (")] + (["ppo"] if "ppo" in paths else [])
    table, curves = [], {}
    for r, name in enumerate(names, 1):
        rm_path = os.path.join(os.path.dirname(paths[name]), "rm.pt") if name != "ppo" else paths.get("rm", "")
        metrics = load_checkpoint(rm_path, ("rm",), flag="--rm")["metrics"] if os.path.isfile(rm_path) else {}
        table.append({"round": r, "rm_acc_sft": metrics.get("heldout_acc_gold"),
                      "rm_acc_policy": metrics.get("heldout_policy_acc_gold", metrics.get("heldout_acc_gold")),
                      **{k: row[name][k] for k in ("gold", "kl", "rm", "win_vs_sft")}})
        log_path = os.path.splitext(paths[name])[0] + ".log.jsonl"
        curves[name] = read_ppo_curve(log_path) if os.path.isfile(log_path) else []
    return table, curves


# ----------------------------------------------------------------------------- main
def write_text(path, text):
    write_atomically(path, lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))


def main(argv=None):
    cfg = parse_config(EvalConfig, __doc__.split("\n")[0], argv)
    t_start = time.time()
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
    perplexity, rm_acc = extras(cfg, paths, policies, tok, rm, val_tokens, device, ctx)
    rounds, curves = round_table(paths, summary) if "sft" in rows and "ppo" in rows else ([], {})
    chart, gold_kl = None, {}
    if rounds and rm is not None:
        chart, gold_kl = gold_kl_chart(summary, curves, os.path.join(cfg.out_dir, "eval_gold_kl.svg"))

    samples = [{"prompt": prompts[i], "responses": {s["name"]: (rows[s["name"]]["gold"][i], rows[s["name"]]["texts"][i])
                                                    for s in summary}} for i in range(min(cfg.show, len(prompts)))]
    res = {"settings": {**asdict(cfg), "samples": len(prompts), "checkpoints": paths}, "rows": summary,
           "perplexity": perplexity, "rm_accuracy": rm_acc, "rounds": rounds, "gold_kl": gold_kl,
           "samples": samples, "chart": chart, "seconds": time.time() - t_start}
    report = markdown(res)
    write_text(os.path.join(cfg.out_dir, "eval.md"), report)
    write_text(os.path.join(cfg.out_dir, "eval.json"), json.dumps(res, indent=1, ensure_ascii=False))
    print(report)
    print(f"wrote {os.path.join(cfg.out_dir, 'eval.md')}, eval.json{' and ' + os.path.basename(chart) if chart else ''}")
    return res


if __name__ == "__main__":
    main()
