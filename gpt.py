"""
The GPT language model, in one file, in the style of nanoGPT's model.py.

A decoder-only transformer (Radford et al. 2018/2019) with what the RLHF stages need:
- rows may be LEFT-padded: `pad_mask` (B,T) is True on real tokens; padding is kept out of
  attention and positions restart at 0 on each row's first real token, so a padded row gives the
  same logits as alone;
- generation with a KV cache and continuous batching (a finished row leaves, a waiting prompt
  takes its slot), per-row stop tokens, temperature / top-k / top-p, each row drawing from its own
  random numbers, and the log-prob of every sampled token under the distribution it was drawn
  from (PPO's "old log-probs");
- a scalar head (reward model, value function) that every model carries, zero-initialised, so that
  the checkpoints of all stages have the same state_dict keys.
Options beyond GPT-2: rotary position embeddings (RoFormer, Su et al. 2021) and a SwiGLU MLP
(Shazeer 2020). Precision (bf16 autocast) is the caller's business: wrap calls in
common.autocast(device, precision).
"""
import math
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    block_size: int = 256     # longest sequence the model sees; learned positions end here
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = False        # Linear and LayerNorm biases (GPT-2); without: a bit faster, as good
    pos: str = "rope"         # "learned": GPT-2's position table | "rope": rotary (RoFormer)
    mlp: str = "swiglu"       # "gelu": GPT-2's MLP | "swiglu": SiLU-gated MLP (Shazeer 2020)


def rotary_tables(head_dim, n_pos, base=10000.0):
    """cos and sin of the angles pos * theta_i, theta_i = base^(-2i/d), i < d/2 (RoFormer eq. 15).
    Each (n_pos, d/2)."""
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float32), theta)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate each pair of features of q or k by its position's angle (RoFormer eq. 34).
    x (B,nh,T,hd). The pairs are (i, i + hd/2) rather than (2i, 2i+1), as in GPT-NeoX and LLaMA:
    the same map, permuted. Then q.k depends on the positions only through their difference."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def left_pad(seqs, pad_id=0, device="cpu"):
    """Rows of different lengths -> (idx (B,T), pad_mask (B,T), True = real token), padded on the
    left so that every row's last real token sits at T-1 (where generation continues)."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            idx[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = True
    return idx.to(device), mask.to(device)


class KVCache:
    """Keys and values of every layer for the rows being decoded, one slot per row. A slot holds
    its row from position 0 up to its own length (lens), so rows of different lengths come and go
    (continuous batching: Yu et al. 2022, "Orca"). Buffers are preallocated to max_len tokens, so
    each step runs the model on the new tokens only (Pope et al. 2022, sec. 2)."""

    def __init__(self, n_layer, n_slots, max_len, device):
        self.k, self.v = [None] * n_layer, [None] * n_layer
        self.max_len = max_len
        self.lens = torch.zeros(n_slots, dtype=torch.long, device=device)  # tokens per slot
        self.joining = None   # slots whose prompts the next forward pass stores, else None
        self.width = 0        # the keys a new token attends to: the longest slot's, set per step

    def update(self, layer, k, v):
        """Store k, v (B,nh,T,hd); return the keys and values to attend to. Joining prompts
        (right-padded, B = len(joining)) go to positions 0..T-1 of their slots and attend to
        themselves only; otherwise k, v is one new token per slot, stored after the slot's
        tokens, which attends to its slot up to the longest one (the mask hides the rest)."""
        if self.k[layer] is None:   # fp32 on a CPU: its bf16 kernels for one query are slow
            dtype = torch.float32 if k.device.type == "cpu" else k.dtype
            shape = (len(self.lens), k.size(1), self.max_len, k.size(3))
            self.k[layer] = torch.zeros(shape, dtype=dtype, device=k.device)
            self.v[layer] = torch.zeros(shape, dtype=dtype, device=v.device)
        k, v = k.to(self.k[layer].dtype), v.to(self.v[layer].dtype)
        if self.joining is not None:
            self.k[layer][self.joining, :, :k.size(2)] = k
            self.v[layer][self.joining, :, :v.size(2)] = v
            return k, v
        slot = torch.arange(len(self.lens), device=self.lens.device)
        self.k[layer][slot, :, self.lens] = k[:, :, 0]
        self.v[layer][slot, :, self.lens] = v[:, :, 0]
        return self.k[layer][:, :, :self.width], self.v[layer][:, :, :self.width]

    def resize(self, keep, n_slots, max_len):
        """Slots `keep` (a list) move to the front of n_slots slots of max_len tokens: the batch
        grows while rows wait, and shrinks to its live rows."""
        self.max_len = max_len
        for buffers in (self.k, self.v):
            for i, old in enumerate(buffers):
                if old is not None:
                    buffers[i] = old.new_zeros(n_slots, old.size(1), max_len, old.size(3))
                    width = min(old.size(2), max_len)
                    buffers[i][:len(keep), :, :width] = old[keep, :, :width]
        lens = self.lens.new_zeros(n_slots)
        lens[:len(keep)] = self.lens[keep]
        self.lens = lens


@dataclass
class Row:
    """A sequence for GPT._decode to continue, with its own settings: up to max_new_tokens (fewer
    where the context ends), temperature (0 = greedy), top_p, and uniforms, its own random draws
    in [0, 1), one per new token (see GPT._sample). tag: the caller's, to recognise the row.
    cancelled: set by the caller (a client left) to free the row's slot at the next step."""
    prompt: list
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    uniforms: torch.Tensor = None
    tag: object = None
    cancelled: bool = False


def rows_for(prompts, max_new_tokens, temperature=1.0, top_p=None, generator=None):
    """Rows with the same settings, row i drawing from row i of torch.rand(len(prompts),
    max_new_tokens, generator): its draws depend on its place in the list, not on its batch."""
    if temperature == 0:   # greedy draws nothing
        uniforms = torch.zeros(len(prompts), max_new_tokens)
    else:
        device = generator.device if generator is not None else "cpu"
        uniforms = torch.rand(len(prompts), max_new_tokens, generator=generator, device=device)
    top_p = 1.0 if top_p is None else top_p
    return [Row(p, max_new_tokens, temperature, top_p, u, tag=i)
            for i, (p, u) in enumerate(zip(prompts, uniforms))]


class Slots:
    """What GPT._decode knows about each slot of its batch: the Row in it (None: free), the new
    tokens it drew (count) and may draw (budget), its settings and random draws, its sequence
    (for the no-cache reference), and h, the hidden state at its last token."""
    TENSORS = ("count", "budget", "temperature", "top_p", "uniforms", "h")

    def __init__(self, device):
        self.rows, self.seqs, self.h = [], [], None
        self.count = torch.zeros(0, dtype=torch.long, device=device)
        self.budget = torch.zeros(0, dtype=torch.long, device=device)
        self.temperature = torch.zeros(0, device=device)
        self.top_p = torch.zeros(0, device=device)
        self.uniforms = torch.zeros(0, 0, device=device)

    def live(self):
        """The slots that hold a row."""
        return [s for s, row in enumerate(self.rows) if row is not None]

    def free(self):
        return [s for s, row in enumerate(self.rows) if row is None]

    def resize(self, keep, n):
        """Slots `keep` (a list) move to the front of n slots."""
        for name in self.TENSORS:
            old = getattr(self, name)
            if old is not None:
                new = old.new_zeros(n, *old.shape[1:])
                new[:len(keep)] = old[keep]
                setattr(self, name, new)
        self.rows = [self.rows[s] for s in keep] + [None] * (n - len(keep))
        self.seqs = [self.seqs[s] for s in keep] + [[0]] * (n - len(keep))

    def fill(self, at, rows, prompts, budget):
        """Rows with their (cropped) prompts and budgets take the slots `at` (B,)."""
        width = int(budget.max())   # the draws a row may use: no more than its budget
        if width > self.uniforms.size(1):
            self.uniforms = F.pad(self.uniforms, (0, width - self.uniforms.size(1)))
        self.count[at], self.budget[at] = 0, budget
        device = self.count.device
        self.temperature[at] = torch.tensor([float(row.temperature) for row in rows], device=device)
        self.top_p[at] = torch.tensor([float(row.top_p) for row in rows], device=device)
        for s, row, prompt, n in zip(at.tolist(), rows, prompts, budget.tolist()):
            self.rows[s], self.seqs[s] = row, list(prompt)
            assert row.uniforms is not None or row.temperature == 0, "a sampled row needs draws"
            if row.uniforms is not None:   # None: a greedy row, which draws nothing
                draws = row.uniforms[:n]
                self.uniforms[s, :len(draws)] = draws.to(device)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head, self.dropout = config.n_head, config.dropout
        # q, k, v in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, mask=None, cache=None, layer=0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B,T,C) -> (B,nh,T,hd)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)
            q = q.to(k.dtype)   # the cache's precision: fp32 on a CPU, see KVCache
        # softmax(q k^T / sqrt(hd)) v (Vaswani et al. 2017, eq. 1). mask (B,1,T,S): True or 0 =
        # may attend, False or -inf = may not; None = plain causal attention, or, for a single
        # new query against the cache, attend to every key. A CPU's autocast would cast an fp32
        # cache back to bf16, whose attention kernels for one query are slow.
        with torch.autocast("cpu", enabled=False) if q.dtype == torch.float32 else nullcontext():
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               is_causal=mask is None and T > 1,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            # Shazeer 2020, "GLU Variants Improve Transformer": FFN(x) = (SiLU(x W) * x V) W2,
            # hidden 2/3 of 4d (rounded up to a multiple of 64) so that the three matrices hold
            # as many weights as GELU's two.
            hidden = 64 * math.ceil(8 * config.n_embd / 3 / 64)
            # W and V in one matmul
            self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)
        else:
            hidden = 4 * config.n_embd
            self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.c_fc(x)
        if self.swiglu:
            gate, x = x.chunk(2, dim=-1)
            x = F.silu(gate) * x
        else:
            x = F.gelu(x)                  # GPT-2 (Hendrycks & Gimpel 2016)
        return self.dropout(self.c_proj(x))


class Block(nn.Module):
    """Pre-LayerNorm residual block (GPT-2): x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rope, mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.pos in ("learned", "rope") and config.mlp in ("gelu", "swiglu"), config
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:   # tables, not weights: kept out of the state_dict
            cos, sin = rotary_tables(config.n_embd // config.n_head, config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight    # weight tying (Press & Wolf 2017)
        # reward / value; zero at init (so values start at 0)
        self.scalar_head = nn.Linear(config.n_embd, 1)
        # GPT-2 init: N(0, 0.02), and the projections into the residual stream scaled by
        # 1/sqrt(2 n_layer) so the residual's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                residual = name.endswith("c_proj.weight")
                std = 0.02 / math.sqrt(2 * config.n_layer) if residual else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
        nn.init.zeros_(self.scalar_head.weight)

    # ---- the network ------------------------------------------------------------------------

    def _hidden(self, idx, pos=None, mask=None, cache=None):
        """Final hidden states (B,T,C). pos: (B,T) position of each token, or None for 0..T-1 in
        every row (then the rope/wpe tables are sliced, not gathered). mask: see
        CausalSelfAttention."""
        T = idx.size(1)
        x = self.wte(idx)
        if self.config.pos == "learned":
            x = x + (self.wpe.weight[:T] if pos is None else self.wpe(pos))
            rope = None
        elif pos is None:
            rope = self.rope_cos[:T], self.rope_sin[:T]
        else:   # gather each token's angles, (B,1,T,hd/2) to broadcast over heads
            rope = self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache, i)
        return self.ln_f(x)

    @staticmethod
    def _pos_and_mask(pad_mask):
        """Positions and attention mask for rows padded where pad_mask is False (left padding,
        usually). Positions count the real tokens before each token: cumsum(pad_mask) - 1 (0 on
        leading padding). Attention: causal AND the key is real; every query also sees itself, so
        that a padding row is never all -inf (a NaN softmax). Returns (None, None) without
        padding: the fast is_causal path."""
        if pad_mask is None or bool(pad_mask.all()):
            return None, None
        T = pad_mask.size(1)
        pos = (pad_mask.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(T, T, dtype=torch.bool, device=pad_mask.device).tril()
        itself = torch.eye(T, dtype=torch.bool, device=pad_mask.device)
        mask = (causal & pad_mask[:, None, None, :]) | itself
        return pos, mask

    def hidden(self, idx, pad_mask=None):
        """Hidden states after ln_f, (B,T,C), for idx (B,T) with pad_mask (B,T) True on real
        tokens."""
        assert idx.size(1) <= self.config.block_size, f"sequence of {idx.size(1)} > block_size"
        return self._hidden(idx, *self._pos_and_mask(pad_mask))

    def forward(self, idx, targets=None, pad_mask=None):
        """Logits (B,T,V) and, given targets (B,T) (-1 = no loss there), the mean cross-entropy."""
        logits = self.lm_head(self.hidden(idx, pad_mask))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def scalar(self, h):
        """The scalar head on hidden states h (B,T,C) -> (B,T). Reward model / value function:
        read it at the last real token of a row (with left padding, position -1)."""
        return self.scalar_head(h).squeeze(-1)

    # ---- generation -------------------------------------------------------------------------

    @staticmethod
    def _sample(logits, temperature, top_k, top_p, uniform):
        """Draw one token per row from logits (B,V); return it and its log-prob under the
        distribution it was drawn from: softmax(logits / temperature) restricted to the top_k
        tokens and/or the smallest set holding top_p of the mass (nucleus sampling, Holtzman et
        al. 2019), renormalised. temperature and top_p are per row (B,); temperature 0 means
        greedy: argmax, log-prob 0 (a point mass). uniform (B,) in [0, 1) is each row's own draw:
        the token is the first whose cumulative probability exceeds it (inverse-CDF sampling),
        so a row's tokens depend on its own draws only, never on the rows beside it."""
        logits = logits.float()
        greedy = temperature == 0
        logits = logits / torch.where(greedy, 1.0, temperature)[:, None]
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if bool((top_p < 1.0).any()):
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # the mass before this token already reaches top_p (so the top token always stays)
            drop = (probs.cumsum(-1) - probs > top_p[:, None]) & (top_p < 1.0)[:, None]
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        logprobs = F.log_softmax(logits, dim=-1)
        cdf = logprobs.exp().cumsum(-1)
        drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)[:, 0]
        token = torch.where(greedy, logits.argmax(-1), drawn.clamp(max=logits.size(-1) - 1))
        logprob = logprobs.gather(-1, token[:, None])[:, 0].masked_fill(greedy, 0.0)
        return token, logprob.cpu()

    @torch.no_grad()
    def _decode(self, queue, max_batch=None, top_k=None, stop_token=None, use_cache=True):
        """The one decoding loop behind generate(), stream() and the server. queue: a deque of
        Rows; a row leaves it when a slot is free, so a server may append rows while we decode
        (max_batch slots at most; None: as many as the queue holds at the start). Yields, each
        step, (rows, token (B,), logprob (B,), ended (B,)): the rows that drew a token and
        whether it was their last: the stop token, max_new_tokens, or a full context (the model
        has no position past block_size; a prompt longer than that keeps its last block_size
        tokens, as nanoGPT crops its context). use_cache=False reruns each row's whole sequence
        each step (the slow reference the cache is tested and benchmarked against).

        The slots, one step after row 2 ended and row 4 took its slot (p prompt, a.. drawn):
            slot 0   p p p a b c            row 0: 3 drawn, its position 6 = its slot's length
            slot 1   p p p p p p p d e      row 1
            slot 2   p p p p                row 4: its prompt ran through the cache this step
        A slot holds its row from position 0, so rows of any length come and go; a finished row
        leaves at once and a waiting row takes its slot at the next step (continuous batching,
        Yu et al. 2022). While rows wait the batch grows to max_batch; once none wait and half
        its slots are free, it shrinks to the live rows."""
        device = self.wte.weight.device
        max_batch = max_batch or max(len(queue), 1)
        slots = Slots(device)
        cache = KVCache(self.config.n_layer, 0, 1, device) if use_cache else None
        while True:
            # 1. rows whose caller left free their slots; waiting rows take the free slots
            slots.rows = [None if row is None or row.cancelled else row for row in slots.rows]
            self._fit(slots, cache, queue, max_batch)
            self._admit(slots, cache, queue)
            live = slots.live()
            if not live:
                return
            live = torch.tensor(live, device=device)
            # 2. each live row draws a token from the logits at its last token
            uniform = slots.uniforms[live, slots.count[live]]
            token, logprob = self._sample(self.lm_head(slots.h[live]), slots.temperature[live],
                                          top_k, slots.top_p[live], uniform)
            slots.count[live] += 1
            # 3. a row ends with its stop token or its last allowed token, and frees its slot
            ended = slots.count[live] >= slots.budget[live]
            if stop_token is not None:
                ended |= token == stop_token
            yield [slots.rows[s] for s in live.tolist()], token, logprob, ended
            for s in live[ended].tolist():
                slots.rows[s] = None
            # 4. the others append their token: one step of the model
            if not bool(ended.all()):
                self._step(slots, cache, live[~ended], token[~ended])

    def _fit(self, slots, cache, queue, max_batch):
        """Resize the batch: grow it (to max_batch at most) while rows wait for a slot, shrink it
        to its live rows once none wait and half its slots are free (a copy of the cache, so
        rarely: at most log2(max_batch) times as a batch drains)."""
        live, n = slots.live(), len(slots.rows)
        max_len = cache.max_len if cache else 0
        if len(live) + len(queue) > n:   # at least double, so that rows coming one by one
            grow = min(max_batch, max(2 * n, len(live) + len(queue)))   # copy the cache rarely
            self._resize(slots, cache, live, grow, max_len)
        elif not queue and len(live) <= n // 2:
            self._resize(slots, cache, live, len(live), max_len)

    @staticmethod
    def _resize(slots, cache, keep, n_slots, max_len):
        slots.resize(keep, n_slots)
        if cache is not None:
            cache.resize(keep, n_slots, max_len)

    def _admit(self, slots, cache, queue):
        """Waiting rows take the free slots, once an eighth of the batch is free (or the batch
        grew for them): their prompts run through the model together, right-padded so that each
        starts at position 0 of its slot (causal attention keeps the padding after them out),
        and give each row its first hidden state."""
        block_size, device = self.config.block_size, self.wte.weight.device
        free = slots.free()
        if len(free) < len(slots.rows) / 8:   # wait for a few to run their prompts together
            return
        joining = [queue.popleft() for _ in range(min(len(free), len(queue)))]
        if not joining:
            return
        prompts = [list(row.prompt)[-block_size:] for row in joining]
        assert all(prompts), "every prompt needs at least one token"
        assert all(row.max_new_tokens >= 1 for row in joining), "a row draws at least one token"
        lens = torch.tensor([len(p) for p in prompts], device=device)
        budget = (block_size + 1 - lens).clamp(max=torch.tensor(
            [row.max_new_tokens for row in joining], device=device))
        at = torch.tensor(free[:len(joining)], device=device)
        if cache is not None and int((lens + budget - 1).max()) > cache.max_len:   # longer rows
            n = len(slots.rows)
            self._resize(slots, cache, list(range(n)), n, int((lens + budget - 1).max()))
        slots.fill(at, joining, prompts, budget)
        if cache is None:
            h = self.hidden(*left_pad(prompts, device=device))[:, -1]
        else:
            idx = torch.tensor([p + [0] * (int(lens.max()) - len(p)) for p in prompts],
                               device=device)
            cache.joining = at
            h = self._hidden(idx, cache=cache)[torch.arange(len(prompts)), lens - 1]
            cache.joining = None
            cache.lens[at] = lens
        slots.h = h.new_zeros(len(slots.rows), h.size(-1)) if slots.h is None else slots.h
        slots.h[at] = h.to(slots.h.dtype)

    def _step(self, slots, cache, going, token):
        """Run the model on the new token of each row going on (going: their slots): with the
        cache, one token per slot (free slots compute a token no one reads, cheaper than moving
        the cache), at each slot's position = its length; without, every whole sequence again."""
        if cache is None:
            for s, t in zip(going.tolist(), token.tolist()):
                slots.seqs[s].append(t)
            h = self.hidden(*left_pad([slots.seqs[s] for s in going.tolist()],
                                      device=token.device))[:, -1]
            slots.h[going] = h.to(slots.h.dtype)
            return
        tokens = torch.zeros(len(slots.rows), dtype=torch.long, device=token.device)
        tokens[going] = token
        idle = torch.ones(len(slots.rows), dtype=torch.bool, device=token.device)
        idle[going] = False
        cache.lens[idle] = 0   # a free slot's token goes to its position 0, read by no one
        pos = cache.lens[:, None]
        cache.width = int(cache.lens.max()) + 1
        # a slot's own tokens: 0, the others: -inf (added to the scores, faster than a bool mask)
        hidden = torch.arange(cache.width, device=token.device) > pos
        mask = torch.zeros(hidden.shape, dtype=cache.k[0].dtype, device=token.device)
        mask = mask.masked_fill(hidden, float("-inf"))
        h = self._hidden(tokens[:, None], pos, mask[:, None, None, :], cache)[:, -1]
        cache.lens[going] += 1
        slots.h[going] = h[going].to(slots.h.dtype)

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 stop_token=None, generator=None, use_cache=True, max_batch=None):
        """Sample continuations of a batch of prompts (lists of token ids, any lengths). Returns
        (tokens, logprobs): per row the new tokens (ending with stop_token if it was drawn) and
        the log-prob of each under the sampling distribution (see _sample; temperature 0 =
        greedy). Row i draws from row i of torch.rand(len(prompts), max_new_tokens, generator),
        so a torch.Generator makes samples reproducible, whatever max_batch (rows decoded at
        once; None: all). Call model.eval() first, or dropout is on."""
        tokens, logprobs = [[] for _ in prompts], [[] for _ in prompts]
        if max_new_tokens < 1:
            return tokens, logprobs
        rows = rows_for(prompts, max_new_tokens, temperature, top_p, generator)
        for step_rows, token, logprob, _ in self._decode(deque(rows), max_batch, top_k,
                                                         stop_token, use_cache):
            for row, t, lp in zip(step_rows, token.tolist(), logprob.tolist()):
                tokens[row.tag].append(t)
                logprobs[row.tag].append(lp)
        return tokens, logprobs

    def stream(self, prompt, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
               stop_token=None, generator=None):
        """generate() for one prompt, yielding each new token id as soon as it is drawn (the stop
        token, if drawn, comes last)."""
        rows = rows_for([prompt], max_new_tokens, temperature, top_p, generator)
        for _, token, _, _ in self._decode(deque(rows), 1, top_k, stop_token):
            yield int(token[0])

    # ---- bookkeeping ------------------------------------------------------------------------

    def num_params(self):
        """Number of parameters (the tied embedding / output matrix counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, T=None):
        """Training FLOPs per token (forward + backward) at sequence length T (default
        block_size): 6 per weight that multiplies a token (Kaplan et al. 2020, sec. 2.1; the tied
        wte counts as the output layer, a position table does not) plus the attention scores and
        sums, 12 * n_layer * C * T (PaLM, Chowdhery et al. 2022, app. B), counting full T x T
        scores as the kernels compute them."""
        cfg, T = self.config, T or self.config.block_size
        n = self.num_params() - (self.wpe.weight.numel() if cfg.pos == "learned" else 0)
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * T

    def configure_optimizer(self, weight_decay, lr, betas=(0.9, 0.95), eps=1e-8):
        """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices (Linear weights,
        embeddings) only, not on biases and LayerNorm gains. Frozen parameters are left out."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
