"""Talk to a checkpoint in the terminal, one streamed token at a time.

    python chat.py                          # out/ppo.pt, or out/sft.pt if there is no PPO checkpoint yet
    python chat.py --ckpt out/sft.pt --temperature 0.7 --top-p 0.9
    python chat.py --prompt "Write a cheerful sentence about the economy."   # answer once and exit

Each turn is  <|user|>{text}<|assistant|>{answer}<|end|>  (DESIGN.md). The whole conversation is the
context; when it and --max-new-tokens no longer fit in the model's block_size, the oldest turns are left
out (trim_context). What the user types is ordinary text: typing "<|end|>" cannot inject a control token.
Commands: /reset forgets the conversation, /quit (or Ctrl-D) leaves.
"""
import argparse
import codecs
import os
import sys

import torch

from common import POLICY_STAGES, fail, load_model, pick_device
from data import encode_prompt


def trim_context(turns, budget):
    """turns: token lists, oldest first, the last one the new <|user|>..<|assistant|>. Keep the newest
    whole turns whose total fits in budget. If the new turn alone is too long, keep its first token
    (<|user|>) and its last budget-1 tokens (the end of the question and <|assistant|>)."""
    kept, n = [], 0
    for turn in reversed(turns):
        if n + len(turn) > budget:
            break
        kept.append(turn)
        n += len(turn)
    if not kept:
        return turns[-1][:1] + turns[-1][len(turns[-1]) - budget + 1:]
    return [t for turn in reversed(kept) for t in turn]


def context_for(tok, history, text, budget):
    """The token ids the model continues: past turns + the new user text (as ordinary text), trimmed."""
    return trim_context(history + [encode_prompt(tok, text)], budget)


def answer(model, tok, context, args, generator, write):
    """Stream one answer: write() each piece of text as soon as its UTF-8 bytes are complete (a token
    may end in the middle of a character). Returns the answer's token ids, without <|end|>."""
    enc, specials = tok.to_tiktoken(), set(tok.special_tokens.values())
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    ids = []
    for t in model.stream(context, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                          stop_token=tok.special_tokens["<|end|>"], generator=generator):
        if t in specials:   # <|end|>, or a token that only belongs to the template: the answer is over
            break
        ids.append(t)
        write(decoder.decode(enc.decode_single_token_bytes(t)))
    write(decoder.decode(b"", final=True))
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="", help="policy checkpoint (default: out/ppo.pt, else out/sft.pt)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--max-new-tokens", type=int, default=100)
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
    budget = model.config.block_size - args.max_new_tokens   # room left for the conversation
    if args.max_new_tokens < 1 or budget < 3:
        fail(f"--max-new-tokens must be 1..{model.config.block_size - 3} (the model's block_size is "
             f"{model.config.block_size})")
    generator = torch.Generator(device)
    if args.seed is not None:
        generator.manual_seed(args.seed)
    else:
        generator.seed()
    write = lambda s: (sys.stdout.write(s), sys.stdout.flush())

    if args.prompt is not None:   # one answer for scripts: stdout holds the answer only
        answer(model, tok, context_for(tok, [], args.prompt, budget), args, generator, write)
        write("\n")
        return
    print(f"chatting with {args.ckpt} ({model.config.block_size}-token context). /reset, /quit", file=sys.stderr)
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
        write("bot> " if sys.stdin.isatty() else "")
        try:
            ids = answer(model, tok, context_for(tok, history, text, budget), args, generator, write)
        except KeyboardInterrupt:   # Ctrl-C stops this answer, not the chat
            ids = []
        write("\n")
        history.append(encode_prompt(tok, text) + ids + [end])   # the turn, closed even if cut off


if __name__ == "__main__":
    main()
