"""Talk to a checkpoint in the terminal, one streamed token at a time.

    python chat.py                    # out/ppo.pt, or out/sft.pt if there is no PPO checkpoint yet
    python chat.py --ckpt out/sft.pt --temperature 0.7 --top-p 0.9
    python chat.py --prompt "Write a cheerful sentence about the economy."   # answer once, exit

Each turn is  <|user|>{text}<|assistant|>{answer}<|end|>  (DESIGN.md). The conversation is the
context; when it and --max-new-tokens no longer fit in the model's block_size, the oldest turns are
left out and chat says so (web.fit_context, the rule serve.py follows too). What the user types is
ordinary text: typing "<|end|>" cannot inject a control token; what the model writes is shown
without special tokens or control characters (web.AnswerText).
Commands: /reset forgets the conversation, /quit (or Ctrl-D) leaves.
"""
import os
import sys
from dataclasses import dataclass

import torch

from common import POLICY_STAGES, fail, load_model, pick_device
from data import encode_prompt
from flags import MAX_SEED, flag, parse_config
from web import AnswerText, fit_context


@dataclass
class ChatConfig:
    ckpt: str = flag("", "the policy checkpoint; empty: out/ppo.pt, else out/sft.pt")
    prompt: str = flag(None, "answer this one message and exit; None: a conversation")
    max_new_tokens: int = flag(64, "longest answer, in tokens (SFT's demonstrations take up to "
                               "64); at most the model's block_size - 3", ge=1)
    temperature: float = flag(0.8, "sampling temperature; 0: greedy", ge=0)
    top_k: int = flag(0, "sample among the k likeliest tokens only; 0: all of them", ge=0)
    top_p: float = flag(1.0, "sample among the likeliest tokens holding this much of the "
                        "probability (nucleus); 1: all of them", gt=0, le=1)
    seed: int = flag(-1, "fix the sampling with this seed; -1: a random one", ge=-1, le=MAX_SEED)
    device: str = flag("auto", "auto: cuda, else mps, else cpu",
                       choices=("auto", "cpu", "cuda", "mps"))


def answer(model, tok, context, cfg, generator, write):
    """Stream one answer: write() each piece of text as soon as it is complete (whole UTF-8
    characters, no control characters; the answer is over at the first special token). Returns the
    answer's token ids, without <|end|>."""
    text, ids = AnswerText(tok), []
    top_k = cfg.top_k or None   # 0: no top-k cut
    for t in model.stream(context, cfg.max_new_tokens, cfg.temperature, top_k, cfg.top_p,
                          stop_token=tok.special_tokens["<|end|>"], generator=generator):
        piece = text.push(t)
        if piece is None:
            break
        ids.append(t)
        write(piece)
    write(text.close())
    return ids


def converse(model, tok, cfg, generator, write):
    """The conversation: read a line, answer it in the context of the turns before, until /quit or
    Ctrl-D. The terminal shows prompts (you>, bot>); a pipe gets the answers only."""
    block, end = model.config.block_size, tok.special_tokens["<|end|>"]
    say = lambda text: print(text, file=sys.stderr)
    history = []   # one token list per finished turn
    while True:
        try:
            text = input("you> " if sys.stdin.isatty() else "")
        except (EOFError, KeyboardInterrupt):
            break
        if text.strip() == "/quit":
            break
        if text.strip() == "/reset":
            history = []
            say("(conversation forgotten)")
            continue
        if not text.strip():
            continue
        # the newest turns that fit, with room for the answer (web.fit_context)
        turns = history + [encode_prompt(tok, text)]
        context, dropped = fit_context(turns, block, cfg.max_new_tokens)
        if context is None:
            say(f"(too long: the model's context is {block} tokens; say it in fewer words)")
            continue
        if dropped:
            say(f"({dropped} earlier turn{'s' * (dropped > 1)} left out: they no longer fit the "
                f"model's {block}-token context)")
        write("bot> " if sys.stdin.isatty() else "")
        try:
            ids = answer(model, tok, context, cfg, generator, write)
        except KeyboardInterrupt:   # Ctrl-C stops this answer, not the chat
            ids = []
        write("\n")
        history.append(turns[-1] + ids + [end])   # the turn, closed even if the answer was cut off


def main(argv=None):
    # 1. the flags, then the model (a checkpoint that can generate)
    cfg = parse_config(ChatConfig, __doc__, argv)
    ckpt = cfg.ckpt or ("out/ppo.pt" if os.path.exists("out/ppo.pt") else "out/sft.pt")
    device = pick_device(cfg.device)
    model, tok, _ = load_model(ckpt, POLICY_STAGES, device, flag="--ckpt")
    model.eval()
    block = model.config.block_size
    if block - cfg.max_new_tokens < 3:   # room for the template's two tokens and one of the user's
        fail(f"--max-new-tokens must be 1..{block - 3} (the model's block_size is {block})")
    # 2. the sampling's random numbers: seeded, or new ones each run
    generator = torch.Generator(device)
    if cfg.seed == -1:
        generator.seed()
    else:
        generator.manual_seed(cfg.seed)
    write = lambda s: (sys.stdout.write(s), sys.stdout.flush())
    # 3. one answer for scripts (stdout holds the answer only), or a conversation
    if cfg.prompt is not None:
        context, _ = fit_context([encode_prompt(tok, cfg.prompt)], block, cfg.max_new_tokens)
        if context is None:
            fail(f"--prompt: too long for the model's {block}-token context")
        answer(model, tok, context, cfg, generator, write)
        write("\n")
        return
    print(f"chatting with {ckpt} ({block}-token context). /reset, /quit", file=sys.stderr)
    converse(model, tok, cfg, generator, write)


if __name__ == "__main__":
    main()
