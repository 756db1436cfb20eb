"""
The GPT language model, in one file, in the style of nanoGPT's model.py.

A decoder-only transformer (Radford et al. 2018/2019) with what the RLHF stages need:
- rows may be LEFT-padded: `pad_mask` (B,T) is True on real tokens; padding is kept out of
  attention and positions restart at 0 on each row's first real token, so a padded row gives the
  same logits as alone;
- batched generation with a KV cache, per-row stop tokens, temperature / top-k / top-p, and the
  log-prob of every sampled token under the distribution it was drawn from (PPO's "old log-probs");
- a scalar head (reward model, value function) that every model carries, zero-initialised, so that
  the checkpoints of all stages have the same state_dict keys.
Options beyond GPT-2: rotary position embeddings (RoFormer, Su et al. 2021) and a SwiGLU MLP
(Shazeer 2020). Precision (bf16 autocast) is the caller's business: wrap calls in
common.autocast(device, precision).
"""
import math
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
    """Keys and values of every layer for the tokens seen so far, in buffers preallocated to
    max_len, so that each generation step runs the model on the new token only (Pope et al. 2022,
    sec. 2)."""

    def __init__(self, n_layer, max_len):
        self.k, self.v = [None] * n_layer, [None] * n_layer
        self.max_len, self.len = max_len, 0  # len: tokens stored (padding too), same in all rows

    def update(self, layer, k, v):
        """Store k, v (B,nh,T,hd) after the tokens already there; return all keys, values so far."""
        if self.k[layer] is None:
            B, nh, _, hd = k.shape
            self.k[layer] = k.new_zeros(B, nh, self.max_len, hd)
            self.v[layer] = v.new_zeros(B, nh, self.max_len, hd)
        end = self.len + k.size(2)
        self.k[layer][:, :, self.len:end] = k
        self.v[layer][:, :, self.len:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


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
        # softmax(q k^T / sqrt(hd)) v (Vaswani et al. 2017, eq. 1). mask (B,1,T,S) True = may
        # attend; None = plain causal attention, or, for a single new query against the cache,
        # attend to every key.
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
        if cache is not None:
            cache.len += T
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
    def _sample(logits, temperature, top_k, top_p, generator):
        """Draw one token per row from logits (B,V); return it and its log-prob under the
        distribution it was drawn from: softmax(logits / temperature) restricted to the top_k
        tokens and/or the smallest set holding top_p of the mass (nucleus sampling, Holtzman et
        al. 2019), renormalised. temperature 0 means greedy: argmax, log-prob 0 (the distribution
        is a point mass)."""
        logits = logits.float()
        if temperature == 0:
            return logits.argmax(-1), torch.zeros(logits.size(0))
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # the mass before this token already reaches top_p (so the top token always stays)
            drop = probs.cumsum(-1) - probs > top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        logprobs = F.log_softmax(logits, dim=-1)
        token = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
        return token, logprobs.gather(-1, token[:, None]).squeeze(-1).cpu()

    @torch.no_grad()
    def _decode(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                stop_token=None, generator=None, use_cache=True, sample=None):
        """The one decoding loop behind generate() and stream(). Yields, each step, (token (B,),
        logprob (B,), live (B,)): live says which rows were still going, i.e. whose token counts.
        Rows are left-padded. A row stops after its stop_token, after max_new_tokens, or when its
        sequence fills block_size (the model has no position past that); a prompt longer than
        block_size is cut to its last block_size tokens, as nanoGPT crops its context.
        use_cache=False reruns the whole sequence each step (the slow reference the cache is
        tested and benchmarked against).

        The rows: prompts left-padded to T0 (the longest), then a column per step (. pad,
        p prompt, E stop token, x drawn after the row stopped, yielded as not live); real says
        which tokens a row attends to:
            row 0   . . p p p | a b E x x      real[0] = 0 0 1 1 1 | 1 1 0 0 0
            row 1   p p p p p | c d e f g      real[1] = 1 1 1 1 1 | 1 1 1 1 1
        The KV cache holds every column, so cache.len is shared; a token's position is its own
        row's count of real tokens before it (row 0's `a` is at 3 = lens[0] + t). budget: new
        tokens each row may have. sample(logits (B,V)) -> (token, logprob) replaces _sample and
        its settings, for a server whose rows each have their own."""
        sample = sample or (lambda logits: self._sample(logits, temperature, top_k, top_p,
                                                        generator))
        if not prompts:
            return
        device, block_size = self.wte.weight.device, self.config.block_size
        assert all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
        prompts = [list(p)[-block_size:] for p in prompts]
        lens = torch.tensor([len(p) for p in prompts], device=device)
        budget = (block_size + 1 - lens).clamp(max=max_new_tokens)
        steps, T0 = int(budget.max()), int(lens.max())
        idx, real = left_pad(prompts, device=device)
        idx, real = F.pad(idx, (0, steps)), F.pad(real, (0, steps))   # room for what is generated
        cache = KVCache(self.config.n_layer, T0 + steps) if use_cache else None
        h = self._hidden(idx[:, :T0], *self._pos_and_mask(real[:, :T0]), cache=cache)  # the prompts
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        for t in range(steps):
            # draw a token per row from the logits at the last position
            token, logprob = sample(self.lm_head(h[:, -1]))
            yield token, logprob, ~done
            # a row is done once it used its budget or drew its stop token
            done |= budget <= t + 1
            if stop_token is not None:
                done |= token == stop_token
            if bool(done.all()):
                return
            # append the token; a finished row's tokens are padding from now on
            T = T0 + t + 1   # sequence length once this token is in
            idx[:, T - 1], real[:, T - 1] = token, ~done
            # its position = the real tokens before it (finished rows: anything valid)
            pos = (lens + t).clamp(max=block_size - 1)[:, None]
            h = self._next_hidden(token, pos, idx[:, :T], real[:, :T], cache)

    def _next_hidden(self, token, pos, idx, real, cache):
        """Hidden states for the next step of _decode, once the new token (B,) is the last column
        of idx and real (B,T): with the cache, the model runs on the new token only, at positions
        pos (B,1); without (cache None), on the whole sequence again."""
        if cache is None:
            return self._hidden(idx, *self._pos_and_mask(real))
        mask = None if bool(real.all()) else real[:, None, None, :]
        return self._hidden(token[:, None], pos, mask, cache)

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 stop_token=None, generator=None, use_cache=True):
        """Sample continuations of a batch of prompts (lists of token ids, any lengths). Returns
        (tokens, logprobs): per row the new tokens (ending with stop_token if it was drawn) and
        the log-prob of each under the sampling distribution (see _sample; temperature 0 =
        greedy). Pass a torch.Generator for reproducible samples. Call model.eval() first, or
        dropout is on."""
        steps = list(self._decode(prompts, max_new_tokens, temperature, top_k, top_p, stop_token,
                                  generator, use_cache))
        if not steps:
            return [[] for _ in prompts], [[] for _ in prompts]
        tokens, logprobs, live = (torch.stack(s, dim=1).tolist() for s in zip(*steps))
        # a row's tokens are those drawn while it was live: a prefix
        n = [sum(row) for row in live]
        return [r[:k] for r, k in zip(tokens, n)], [r[:k] for r, k in zip(logprobs, n)]

    def stream(self, prompt, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
               stop_token=None, generator=None):
        """generate() for one prompt, yielding each new token id as soon as it is drawn (the stop
        token, if drawn, comes last)."""
        for token, _, _ in self._decode([prompt], max_new_tokens, temperature, top_k, top_p,
                                        stop_token, generator):
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
