"""Tests for gpt.py: every pos x mlp combination, on tiny models (the whole file runs in seconds)."""
import gzip
import io
import math
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from gpt import GPT, GPTConfig, Row, rows_for  # noqa: E402
from collections import deque  # noqa: E402

torch.set_num_threads(2)
COMBOS = [(pos, mlp) for pos in ("learned", "rope") for mlp in ("gelu", "swiglu")]
V = 64


def tiny(pos, mlp, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32, pos=pos, mlp=mlp)
    model = GPT(GPTConfig(**{**cfg, **kw}))
    # a larger init than GPT-2's 0.02, so that logits and greedy choices differ clearly between tokens
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def left_pad(seqs):
    T = max(len(s) for s in seqs)
    idx = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, T - len(s):] = torch.tensor(s)
        mask[i, T - len(s):] = True
    return idx, mask


def prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def greedy_reference(model, prompt, n):
    """Greedy decoding the plainest way: rerun the unpadded sequence, take the argmax."""
    seq = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_causality(pos, mlp):
    model = tiny(pos, mlp)
    idx = torch.randint(0, V, (2, 16))
    pad_mask = torch.ones(2, 16, dtype=torch.bool)
    pad_mask[1, :5] = False
    for mask in (None, pad_mask):
        with torch.no_grad():
            a, _ = model(idx, pad_mask=mask)
            idx2 = idx.clone()
            idx2[:, 10] = (idx2[:, 10] + 1) % V
            b, _ = model(idx2, pad_mask=mask)
        assert torch.equal(a[:, :10], b[:, :10])            # nothing before t sees token t
        assert not torch.allclose(a[:, 10:], b[:, 10:])     # and t itself does


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_padded_batch_matches_rows_alone(pos, mlp):
    model = tiny(pos, mlp)
    rows = prompts([5, 12, 1, 9])
    idx, mask = left_pad(rows)
    with torch.no_grad():
        logits, _ = model(idx, pad_mask=mask)
        h = model.hidden(idx, mask)
        assert torch.isfinite(logits).all() and torch.isfinite(h).all()   # padding rows are not NaN
        for i, r in enumerate(rows):
            alone, _ = model(torch.tensor([r]))
            torch.testing.assert_close(logits[i, -len(r):], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_kv_cache_greedy_equals_no_cache_greedy(pos, mlp):
    model = tiny(pos, mlp)
    rows = prompts([3, 11, 6, 1])
    cached, lp = model.generate(rows, 12, temperature=0)
    uncached, _ = model.generate(rows, 12, temperature=0, use_cache=False)
    assert cached == uncached
    for r, out in zip(rows, cached):     # and batched == each row alone, recomputed from scratch
        assert out == greedy_reference(model, r, 12)
        assert model.generate([r], 12, temperature=0)[0][0] == out
    assert all(x == 0.0 for row in lp for x in row)    # greedy: a point mass


def decode_rows(model, rows, max_batch, stop_token=None):
    """Run GPT._decode on rows; return each row's tokens, keyed by its tag, and the widest step."""
    out, widest = {row.tag: [] for row in rows}, 0
    for step_rows, token, _, _ in model._decode(deque(rows), max_batch, stop_token=stop_token):
        widest = max(widest, len(step_rows))
        for row, t in zip(step_rows, token.tolist()):
            out[row.tag].append(t)
    return out, widest


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_a_row_decodes_the_same_among_strangers_that_come_and_go(pos, mlp):
    """Continuous batching: 24 prompts of 1 to 40 tokens through 5 slots, rows ending at a stop token, at their
    max_new_tokens or at the full context, others taking their slots. Greedy, each row's tokens are its tokens
    alone; sampled from its own draws, its tokens are the same alone, among others, in any slot."""
    model = tiny(pos, mlp)
    rows = prompts([1 + (7 * i) % 40 for i in range(24)], seed=3)
    greedy = [Row(p, 4 + i % 9, 0.0, tag=i) for i, p in enumerate(rows)]
    free, _ = decode_rows(model, greedy, 24)
    stop = max(range(V), key=[t for out in free.values() for t in out[1:]].count)   # a token the rows write
    together, widest = decode_rows(model, greedy, 5, stop)
    assert widest == 5 and len({len(t) for t in together.values()}) > 3            # the slots filled, rows differed
    assert any(t[-1] == stop for t in together.values())
    for row in greedy:
        alone, _ = decode_rows(model, [Row(row.prompt, row.max_new_tokens, 0.0, tag=0)], 1, stop)
        assert together[row.tag] == alone[0], row.tag
    sampled = rows_for(rows, 12, 1.0, 0.9, torch.Generator().manual_seed(5))
    together, _ = decode_rows(model, sampled, 5, stop)
    shuffled, _ = decode_rows(model, sampled[::-1], 3, stop)                        # other neighbours, other slots
    assert together == shuffled
    for row in sampled[:6]:
        alone, _ = decode_rows(model, [row], 1, stop)
        assert alone[row.tag] == together[row.tag]
    assert len({tuple(t) for t in together.values()}) > 12                         # they are samples, not one path


def test_inverse_cdf_sampling_follows_the_distribution():
    """_sample draws token k when the row's uniform falls in [cdf(k-1), cdf(k)): with evenly spaced uniforms the
    counts are the probabilities times n, to within one."""
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0]]).repeat(1000, 1)
    u = (torch.arange(1000) + 0.5) / 1000
    token, logprob = GPT._sample(logits, torch.ones(1000), None, torch.ones(1000), u)
    probs = logits[0].softmax(-1)
    counts = torch.bincount(token, minlength=4)
    assert ((counts - 1000 * probs).abs() <= 1).all(), counts
    torch.testing.assert_close(logprob, probs.log()[token])
    greedy, lp = GPT._sample(logits[:2], torch.zeros(2), None, torch.ones(2), u[:2])
    assert greedy.tolist() == [3, 3] and lp.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_loss_at_init_is_ln_vocab(pos, mlp):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=64, pos=pos, mlp=mlp))
    idx, targets = torch.randint(0, 512, (2, 4, 32))   # targets != inputs: tied weights favour the input token
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(512)) < 0.05


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_overfits_one_batch(pos, mlp):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32, pos=pos, mlp=mlp))
    idx = torch.randint(0, V, (4, 17))
    x, y = idx[:, :-1], idx[:, 1:].clone()
    y[:, :3] = -1                      # ignored targets do not count
    opt = model.configure_optimizer(weight_decay=0.0, lr=1e-2)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_state_dict_round_trip(pos, mlp):
    model = tiny(pos, mlp)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = tiny(pos, mlp, seed=123)
    other.load_state_dict(torch.load(buf, weights_only=True))
    idx = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], other(idx)[0])
        assert torch.equal(model.scalar(model.hidden(idx)), other.scalar(other.hidden(idx)))
    # the tie survives loading, and every model (any mlp) carries the scalar head
    assert other.lm_head.weight is other.wte.weight
    assert {"scalar_head.weight", "scalar_head.bias"} <= set(model.state_dict())


def test_same_keys_for_every_mlp_and_a_zero_scalar_head():
    for pos in ("learned", "rope"):
        a = GPT(GPTConfig(pos=pos, mlp="gelu", n_layer=1, n_embd=64, n_head=2, vocab_size=V))
        b = GPT(GPTConfig(pos=pos, mlp="swiglu", n_layer=1, n_embd=64, n_head=2, vocab_size=V))
        assert a.state_dict().keys() == b.state_dict().keys()
        assert not a.scalar_head.weight.any() and not a.scalar_head.bias.any()


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_scalar_head_reads_the_right_position(pos, mlp):
    model = tiny(pos, mlp)
    rows = prompts([4, 9, 2])
    idx, mask = left_pad(rows)
    with torch.no_grad():
        values = model.scalar(model.hidden(idx, mask))
        assert values.shape == idx.shape
        for i, r in enumerate(rows):    # the last real token of a left-padded row is at -1
            alone = model.scalar(model.hidden(torch.tensor([r])))
            torch.testing.assert_close(values[i, -1], alone[0, -1], atol=1e-5, rtol=0)
            torch.testing.assert_close(values[i, -len(r):], alone[0], atol=1e-5, rtol=0)
        # position t reads only tokens <= t
        idx2 = idx.clone()
        idx2[:, -1] = (idx2[:, -1] + 1) % V
        v2 = model.scalar(model.hidden(idx2, mask))
        assert torch.equal(values[:, :-1], v2[:, :-1]) and not torch.allclose(values[:, -1], v2[:, -1])


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_generation_stops_at_stop_token_per_row(pos, mlp):
    model = tiny(pos, mlp)
    rows = prompts([3, 8, 5, 2, 6], seed=5)
    full, _ = model.generate(rows, 10, temperature=0)
    stop = full[0][2]    # a token row 0 draws at step 2 (maybe earlier too); other rows may or may not
    out, lp = model.generate(rows, 10, temperature=0, stop_token=stop)
    for f, o, l in zip(full, out, lp):
        expect = f[:f.index(stop) + 1] if stop in f else f
        assert o == expect and len(l) == len(o)
    assert out[0][-1] == stop and len(out[0]) <= 3


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_sampling_logprobs_and_reproducibility(pos, mlp):
    model = tiny(pos, mlp)
    rows = prompts([4, 7])
    a = model.generate(rows, 8, temperature=0.7, generator=torch.Generator().manual_seed(3))
    b = model.generate(rows, 8, temperature=0.7, generator=torch.Generator().manual_seed(3))
    assert a == b
    # each log-prob is that of the token under softmax(logits / T) of a plain forward pass (what PPO needs)
    for r, toks, lps in zip(rows, *a):
        with torch.no_grad():
            logits, _ = model(torch.tensor([r + toks]))
        ref = torch.log_softmax(logits[0, len(r) - 1:-1] / 0.7, -1).gather(-1, torch.tensor(toks)[:, None])
        torch.testing.assert_close(torch.tensor(lps), ref[:, 0], atol=1e-5, rtol=0)
    # top_k=1 is greedy, with probability 1
    toks, lps = model.generate(rows, 8, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert toks == model.generate(rows, 8, temperature=0)[0] and all(x == 0.0 for r in lps for x in r)
    # top_k / top_p: sampled tokens lie in the kept set, and log-probs are renormalised over it
    g = torch.Generator().manual_seed(1)
    toks, lps = model.generate(rows, 8, temperature=1.0, top_k=3, top_p=0.5, generator=g)
    for r, t, l in zip(rows, toks, lps):
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([r + t]))[0][0, len(r) - 1:-1], -1)
        ranks = (probs > probs.gather(-1, torch.tensor(t)[:, None])).sum(-1)
        assert (ranks < 3).all()
        assert all(math.log(p) <= x + 1e-6 <= 1e-6 for p, x in zip(probs.max(-1).values.tolist(), l))


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_stream_matches_generate(pos, mlp):
    model = tiny(pos, mlp)
    p = prompts([5])[0]
    toks, _ = model.generate([p], 10, temperature=0.9, generator=torch.Generator().manual_seed(7))
    streamed = list(model.stream(p, 10, temperature=0.9, generator=torch.Generator().manual_seed(7)))
    assert streamed == toks[0]
    greedy = model.generate([p], 10, temperature=0)[0][0]
    stop = greedy[3]
    assert list(model.stream(p, 10, temperature=0, stop_token=stop)) == greedy[:greedy.index(stop) + 1]


@pytest.mark.parametrize("pos,mlp", COMBOS)
def test_generation_respects_block_size(pos, mlp):
    model = tiny(pos, mlp)                                   # block_size 32
    rows = prompts([30, 5, 40])
    toks, lps = model.generate(rows, 50, temperature=0)
    assert [len(t) for t in toks] == [3, 28, 1]              # each row fills its context, then stops
    assert toks[0] == greedy_reference(model, rows[0], 3)
    assert toks[2] == greedy_reference(model, rows[2][-32:], 1)    # a too-long prompt keeps its end
    uncached, _ = model.generate(rows, 50, temperature=0, use_cache=False)
    assert uncached == toks
    assert model.generate([], 5) == ([], [])
    assert model.generate(rows, 0) == ([[]] * 3, [[]] * 3)


def test_flops_and_params():
    model = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32, pos="learned", mlp="gelu"))
    n = sum(p.numel() for p in model.parameters())
    assert model.num_params() == n
    assert model.flops_per_token() == 6 * (n - 16 * 32) + 12 * 2 * 32 * 16
    opt = model.configure_optimizer(weight_decay=0.1, lr=1e-3)
    decay, no_decay = opt.param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_bf16_autocast_loss_close_to_fp32():
    """50 steps on real text (bytes of the shipped corpus): bf16 autocast ends within 2% of fp32."""
    path = os.path.join(os.path.dirname(__file__), "..", "data", "sotu.txt.gz")
    with gzip.open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read(200_000)), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(data) - 65, (50, 8), generator=g)
    batches = [torch.stack([data[s:s + 65] for s in row]) for row in starts]
    held_out = torch.stack([data[s:s + 65] for s in range(100_000, 100_000 + 16 * 65, 65)])
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64))
        opt = model.configure_optimizer(weight_decay=0.1, lr=3e-3)
        for b in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                _, loss = model(b[:, :-1], b[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            losses[dtype] = model(held_out[:, :-1], held_out[:, 1:])[1].item()
    assert losses[torch.float32] < 3.5      # it learned something
    assert abs(losses[torch.bfloat16] - losses[torch.float32]) / losses[torch.float32] < 0.02


def test_bench_script_runs():
    """bench/model.py runs end to end at a tiny size (timings are the bench's business, not a test's)."""
    bench = os.path.join(os.path.dirname(__file__), "..", "bench", "model.py")
    flags = "--layers 1 --heads 2 --embd 32 --block 16 --batch 2 --vocab 64 --steps 3 --warmup 1 --threads 1 " \
            "--prompt-len 4 --new-tokens 5 --gen-batch 1 3"
    out = subprocess.run([sys.executable, bench, *flags.split()], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "bf16 autocast / fp32 throughput" in out.stdout and "learned+gelu" in out.stdout
    gen = out.stdout.split("(b) generation")[1].splitlines()[2:]
    assert len(gen) == 4 and all(line.split()[-1] in ("True", "False") for line in gen)   # 2 batches x 2 dtypes
