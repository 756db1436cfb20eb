"""Talk to a checkpoint in the terminal, one streamed token at a time.

    python chat.py                          # out/ppo.pt, or out/sft.pt if there is no PPO checkpoint yet
    python chat.py --ckpt out/sft.pt --temperature 0.7 --top-p 0.9
    python chat.py --prompt "Write a cheerful sentence about the economy."   # answer once and exit

Each turn is  <|user|>{text}<|assistant|>{answer}<|end|>  (DESIGN.md). The conversation is the context;
when it and --max-new-tokens no longer fit in the model's block_size, the oldest turns are left out and
chat says so (web.fit_context, the rule serve.py follows too). What the user types is ordinary text:
typing "<|end|>" cannot inject a control token; what the model writes is shown without special tokens or
control characters (web.AnswerText).
Commands: /reset forgets the conversation, /quit (or Ctrl-D) leaves.
"""
import argparse
import os
import sys

import torch

from common import POLICY_STAGES, fail, load_model, pick_device
from data import encode_prompt
from web import AnswerText, fit_context


def answer(model, tok, context, args, generator, write):
    """Stream one answer: write() each piece of text as soon as it is complete (whole UTF-8 characters,
    no control characters; the answer is over at the first special token). Returns the answer's token
    ids, without <|end|>."""
    text, ids = AnswerText(tok), []
    for t in model.stream(context, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                          stop_token=tok.special_tokens["<|end|>"], generator=generator):
        piece = text.push(t)
        if piece is None:
            break
        ids.append(t)
        write(piece)
    write(text.close())
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="", help="policy checkpoint (default: out/ppo.pt, else out/sft.pt)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer (SFT's demonstrations take up to 64)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="fix the sampling (default: random)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if not args.ckpt:
        args.ckpt = "out/ppo.pt" if os.path.exists("out/ppo.pt") else "out/sft.pt"
    if args.temperature < 0 or (args.top_k is not None and args.top_k < 1) or \
            (args.top_p is not None and not 0 < args.top_p <= 1):
        fail("--temperature must be >= 0, --top-k >= 1 and --top-p in (0, 1]")
    device = pick_device(args.device)
    model, tok, _ = load_model(args.ckpt, POLICY_STAGES, device, flag="--ckpt")
    model.eval()
    block = model.config.block_size
    if args.max_new_tokens < 1 or block - args.max_new_tokens < 3:
        fail(f"--max-new-tokens must be 1..{block - 3} (the model's block_size is {block})")
    generator = torch.Generator(device)
    if args.seed is not None:
        generator.manual_seed(args.seed)
    else:
        generator.seed()
    write = lambda s: (sys.stdout.write(s), sys.stdout.flush())

    if args.prompt is not None:   # one answer for scripts: stdout holds the answer only
        context, _ = fit_context([encode_prompt(tok, args.prompt)], block, args.max_new_tokens)
        if context is None:
            fail(f"--prompt: too long for the model's {block}-token context")
        answer(model, tok, context, args, generator, write)
        write("\n")
        return
    print(f"chatting with {args.ckpt} ({block}-token context). /reset, /quit", file=sys.stderr)
    history, end = [], tok.special_tokens["<|end|>"]
    while True:
        try:
            text = input("you> " if sys.stdin.isatty() else "")
        except (EOFError, KeyboardInterrupt):
            break
        if text.strip() == "/quit":
            break
        if text.strip() == "/reset":
            history = []
            print("(conversation forgotten)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        context, dropped = fit_context(history + [encode_prompt(tok, text)], block, args.max_new_tokens)
        if context is None:
            print(f"(too long: the model's context is {block} tokens; say it in fewer words)", file=sys.stderr)
            continue
        if dropped:
            print(f"({dropped} earlier turn{'s' * (dropped > 1)} left out: they no longer fit the model's "
                  f"{block}-token context)", file=sys.stderr)
        write("bot> " if sys.stdin.isatty() else "")
        try:
            ids = answer(model, tok, context, args, generator, write)
        except KeyboardInterrupt:   # Ctrl-C stops this answer, not the chat
            ids = []
        write("\n")
        history.append(encode_prompt(tok, text) + ids + [end])   # the turn, closed even if cut off


if __name__ == "__main__":
    main()
