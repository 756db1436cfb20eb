"""PPO: the math against reference loops and hand-computed values, the rollout's log-probs against
generate's, the script's errors, and a tiny end-to-end run that must raise a toy reward."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import train_ppo as ppo  # noqa: E402
from gpt import GPT, GPTConfig, left_pad  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is several times faster than two fighting over 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_mask(B, T, seed=0):
    """Left-padded rows: each row's actions are its last n columns, n in 1..T (different lengths)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    lens[0], lens[1] = 1, T  # the extremes: a one-token response and one that fills the row
    return torch.arange(T)[None] >= (T - lens)[:, None]


# ----------------------------------------------------------------------------- math
def test_action_logprobs_offset_and_temperature():
    torch.manual_seed(0)
    logits, idx = torch.randn(2, 5, 7), torch.randint(7, (2, 5))
    got = ppo.action_logprobs(logits, idx, temperature=0.7)
    assert got.shape == (2, 4)
    for b in range(2):
        for t in range(4):  # the logits at t predict token t+1
            p = torch.softmax(logits[b, t] / 0.7, -1)
            assert got[b, t].item() == pytest.approx(math.log(p[idx[b, t + 1]].item()), abs=1e-5)
    h = ppo.entropy(logits, 0.7)
    p = torch.softmax(logits[1, 2] / 0.7, -1)
    assert h[1, 2].item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-5)


def gae_reference(rewards, values, gamma, lam):
    """Eq. 16 literally, on one response: A_t = sum_l (gamma lam)^l delta_{t+l}, V after the end = 0."""
    n = len(rewards)
    v = values + [0.0]
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(n)]
    adv = [sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t)) for t in range(n)]
    return adv, [a + x for a, x in zip(adv, values)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_reference_loop(gamma, lam):
    B, T = 6, 9
    torch.manual_seed(1)
    mask = random_mask(B, T)
    mask[5] = torch.arange(T) < 4  # a right-padded row too: the end can be anywhere
    rewards, values = torch.randn(B, T), torch.randn(B, T)
    adv, ret = ppo.gae(rewards * mask, values * mask, mask.float(), gamma, lam)
    for b in range(B):
        m = mask[b]
        ref_adv, ref_ret = gae_reference(rewards[b][m].tolist(), values[b][m].tolist(), gamma, lam)
        assert torch.allclose(adv[b][m], torch.tensor(ref_adv), atol=1e-5)
        assert torch.allclose(ret[b][m], torch.tensor(ref_ret), atol=1e-5)
        assert (adv[b][~m] == 0).all() and (ret[b][~m] == 0).all()


def test_whitening_ignores_padding():
    torch.manual_seed(2)
    mask = random_mask(5, 8).float()
    x = torch.randn(5, 8)
    w = ppo.masked_whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().item() == pytest.approx(0, abs=1e-5)
    assert real.pow(2).mean().item() == pytest.approx(1, abs=1e-4)
    assert (w[~mask.bool()] == 0).all()
    junk = x + 1000 * (1 - mask)  # whatever sits in the padding changes nothing
    assert torch.allclose(ppo.masked_whiten(junk, mask), w, atol=1e-5)
    xs = x[mask.bool()]
    assert torch.allclose(real, (xs - xs.mean()) / xs.std(unbiased=False), atol=1e-4)


def test_kl_and_score_rewards_on_the_right_positions():
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 0, 0, 1]]).float()
    logp = torch.tensor([[9., 9., -1., -2., -3.], [9., -1., -1., -1., 9.], [9., 9., 9., 9., -2.]])
    logp_ref = torch.tensor([[0., 0., -1.5, -1., -3.], [0., -2., -1., -0.5, 0.], [0., 0., 0., 0., -1.]])
    scores = torch.tensor([10., 20., 30.])
    rewards, kl = ppo.kl_rewards(logp, logp_ref, scores, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0, 0, .5, -1, 0], [0, 1, 0, -.5, 0], [0, 0, 0, 0, -1.]]))
    assert torch.allclose(rewards, torch.tensor([[0, 0, -.05, .1, 10.], [0, -.1, 0, 20.05, 0], [0, 0, 0, 0, 30.1]]))


def test_clipped_policy_loss_by_hand():
    mask = torch.ones(1, 4)
    old = torch.zeros(1, 4)
    # ratios 1.1 (inside the clip), 1.5 (above), 0.5 (below), 1.5 with a negative advantage
    new = torch.tensor([[1.1, 1.5, 0.5, 1.5]]).log()
    adv = torch.tensor([[1.0, 2.0, -1.0, -1.0]])
    loss, clip_frac, approx_kl = ppo.policy_loss(new, old, adv, mask, clip=0.2)
    # per token -min(rA, clip(r)A): -1.1, -min(3, 2.4) = -2.4, -min(-.5, -.8) = .8, -min(-1.5, -1.2) = 1.5
    assert loss.item() == pytest.approx((-1.1 - 2.4 + 0.8 + 1.5) / 4, abs=1e-6)
    assert clip_frac.item() == pytest.approx(0.5)  # the 2nd and 3rd tokens
    r = torch.tensor([1.1, 1.5, 0.5, 1.5])
    assert approx_kl.item() == pytest.approx(((r - 1) - r.log()).mean().item(), abs=1e-6)
    # a masked token changes nothing; the gradient of a clipped token is 0
    new.requires_grad_(True)
    loss, _, _ = ppo.policy_loss(new, old, adv, torch.tensor([[1., 1., 1., 0.]]), clip=0.2)
    loss.backward()
    assert new.grad[0, 1] == 0 and new.grad[0, 2] == 0 and new.grad[0, 3] == 0
    assert new.grad[0, 0].item() == pytest.approx(-1.1 / 3, abs=1e-6)
    # no clipping: ratio 1 gives -mean(A) and zero approx-KL
    loss, clip_frac, approx_kl = ppo.policy_loss(old, old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-0.25) and clip_frac == 0 and approx_kl == 0


def test_clipped_value_loss_by_hand():
    mask = torch.tensor([[1., 1., 1., 0.]])
    old = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    new = torch.tensor([[0.1, 1.0, 0.0, 5.0]])
    ret = torch.tensor([[0.5, 1.0, 0.0, 0.0]])
    # token 0: inside the clip, (0.1-0.5)^2 = .16; token 1: clipped to 0.2, max(0, .64) = .64;
    # token 2: clipped to 0.8, max(0, .64) = .64; token 3 is padding
    assert ppo.value_loss(new, old, ret, mask, clip=0.2).item() == pytest.approx(0.5 * (0.16 + 0.64 + 0.64) / 3)
    # with a wide clip it is plain MSE
    assert ppo.value_loss(new, old, ret, mask, clip=10).item() == pytest.approx(0.5 * 0.16 / 3)


def test_kl_controller():
    assert ppo.update_beta(0.1, 12.0, 6.0, 64, 10000) == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))  # clipped
    assert ppo.update_beta(0.1, 6.6, 6.0, 64, 10000) == pytest.approx(0.1 * (1 + 0.1 * 64 / 10000))
    assert ppo.update_beta(0.1, 3.0, 6.0, 100, 1000) == pytest.approx(0.1 * (1 - 0.2 * 0.1))
    assert ppo.update_beta(0.1, 6.0, 6.0, 64, 10000) == 0.1
    assert ppo.update_beta(0.1, 50.0, 0, 64, 10000) == 0.1  # target 0: fixed beta


def test_kl_controller_closes_the_loop():
    """A stand-in policy whose KL falls as beta grows (KL = 1 / beta): from either side, the
    controller walks beta monotonically towards the beta that gives the target KL (1 / 6)."""
    for beta0 in (0.02, 1.0):
        beta, betas = beta0, []
        for _ in range(300):
            beta = ppo.update_beta(beta, 1 / beta, 6.0, 64, 640)
            betas.append(beta)
        steps = [b - a for a, b in zip([beta0] + betas, betas)]
        assert all(d >= 0 for d in steps) if beta0 < 1 / 6 else all(d <= 0 for d in steps)
        assert 1 / beta == pytest.approx(6.0, rel=0.05)


# ----------------------------------------------------------------------------- rollout and loop
VOCAB, END, TOKEN = 16, 15, 5


def tiny_gpt(seed=0, n_layer=2):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=n_layer, n_head=2, n_embd=32)).eval()


def tiny_cfg(**kw):
    kw = {"batch_size": 32, "minibatch_size": 8, "max_new_tokens": 8, "temperature": 0.7, "lr": 3e-3,
          "beta": 0.01, "kl_target": 0, "max_iters": 25, "seed": 0, "precision": "fp32", **kw}
    return ppo.PPOConfig(**kw)


def test_rollout_logprobs_equal_generate_and_ratio_is_one():
    policy = tiny_gpt()
    ref = tiny_gpt(seed=1)
    prompts = [[1, 2, 3], [4], [6, 7, 8, 9, 10], [1, 1]] * 2  # different lengths: left padding
    cfg = tiny_cfg()
    g = torch.Generator().manual_seed(0)
    responses, gen_logp = policy.generate(prompts, cfg.max_new_tokens, cfg.temperature, stop_token=END,
                                          generator=torch.Generator().manual_seed(0))
    b = ppo.rollout(policy, ref, prompts, cfg, END, g, ppo.autocast("cpu", "fp32"))
    assert b.responses == responses
    assert any(b.ended) and not all(b.ended)
    assert b.ended == [r[-1] == END for r in responses]
    for i, r in enumerate(responses):
        m = b.mask[i].bool()
        assert m.sum() == len(r) and b.idx[i, -len(r):].tolist() == r
        assert b.idx[i, 1:][m].tolist() == r  # column t of the mask <-> action idx[t + 1]
        # recomputed with a full forward, at the sampling temperature, shifted by one: == generate's
        assert torch.allclose(b.logp[i][m], torch.tensor(gen_logp[i]), atol=1e-4)
        assert (b.values[i] == 0).all()  # the zero-initialised value head
    logp, _, _ = ppo.forward(policy, b.idx[:3], b.pad_mask[:3], cfg.temperature)
    _, clip_frac, approx_kl = ppo.policy_loss(logp, b.logp[:3], torch.randn(3, logp.shape[1]), b.mask[:3])
    assert approx_kl.item() < 1e-10 and clip_frac.item() == 0


def test_toy_reward_goes_up():
    """Reward = how often TOKEN appears in the response: PPO must learn to say it more, and the KL
    to the reference it pays for that must show up in the log (positive, growing)."""
    policy, ref = tiny_gpt(n_layer=1), tiny_gpt(n_layer=1)
    prompts = [[1, 2, 3], [4, 2], [6, 7, 8, 9], [10]]
    toy = lambda p, responses, ended: (torch.tensor([float(r.count(TOKEN)) for r in responses]), {})
    records = []
    cfg = tiny_cfg(no_end_penalty=0.0, minibatch_size=16, max_iters=20)
    ppo.train(cfg, ppo.Models(policy, ref), prompts, toy, END,
              callbacks=ppo.Callbacks(log=lambda r, line: records.append(r)))
    first = sum(r["score"] for r in records[:3]) / 3
    last = sum(r["score"] for r in records[-3:]) / 3
    assert len(records) == 20 and first < 0.5 and last > first + 3, (first, last)
    assert all(r["approx_kl"] < 0.5 for r in records)
    assert records[0]["kl"] == pytest.approx(0, abs=1e-4) and records[-1]["kl"] > 1


def test_the_loop_moves_beta_by_the_kl_controller(monkeypatch):
    """The adaptive KL controller inside the real loop: each iteration's logged beta is
    update_beta(the previous iteration's beta and logged KL), it is the beta the rewards used, and
    the state the loop leaves (what a checkpoint keeps) holds the next one. The KL starts below the
    target and ends above it, so beta must go down (clipped and not) and then up."""
    policy, ref = tiny_gpt(n_layer=1), tiny_gpt(n_layer=1)
    prompts = [[1, 2, 3], [4, 2], [6, 7, 8, 9], [10]]
    toy = lambda p, responses, ended: (torch.tensor([float(r.count(TOKEN)) for r in responses]), {})
    cfg = tiny_cfg(no_end_penalty=0.0, minibatch_size=16, max_iters=10, kl_target=1.0, kl_horizon=100)
    used, kl_rewards = [], ppo.kl_rewards

    def spy(logp, logp_ref, scores, mask, beta):
        used.append(beta)
        return kl_rewards(logp, logp_ref, scores, mask, beta)
    monkeypatch.setattr(ppo, "kl_rewards", spy)
    models, records = ppo.Models(policy, ref), []
    state = ppo.start_state(models, cfg)
    ppo.train(cfg, models, prompts, toy, END, state, ppo.Callbacks(log=lambda r, line: records.append(r)))
    betas = [r["beta"] for r in records]
    assert len(records) == 10 and betas[0] == cfg.beta and used == betas
    for prev, r in zip(records, records[1:]):
        assert r["beta"] == ppo.update_beta(prev["beta"], prev["kl"], 1.0, cfg.batch_size, 100), r["iter"]
    assert state.iteration == 10
    assert state.beta == ppo.update_beta(betas[-1], records[-1]["kl"], 1.0, cfg.batch_size, 100)
    steps = [b / a - 1 for a, b in zip(betas, betas[1:])]
    assert steps[0] == pytest.approx(-0.2 * 32 / 100) and steps[-1] == pytest.approx(0.2 * 32 / 100)
    assert any(-0.2 * 32 / 100 + 1e-6 < d < -1e-6 for d in steps)   # an unclipped step down


# ----------------------------------------------------------------------------- the script
@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """A tiny "sft" policy and "rm" reward model (random weights) sharing a small BPE."""
    import labeler
    import tokenizer
    from common import save_checkpoint
    d = tmp_path_factory.mktemp("ppo")
    (d / "corpus.txt").write_text("The economy is strong and our hopes are high.\n\n" * 40)
    tok = tokenizer.train(" ".join(labeler.train_prompts()) * 3, 256 + 4 + 40)
    cfg = GPTConfig(vocab_size=tok.n_vocab, block_size=48, n_layer=1, n_head=2, n_embd=32)
    torch.manual_seed(0)
    save_checkpoint(d / "sft.pt", stage="sft", model=GPT(cfg), tokenizer=tok)
    rm = GPT(cfg)
    torch.nn.init.normal_(rm.scalar_head.weight, std=0.5)
    save_checkpoint(d / "rm.pt", stage="rm", model=rm, tokenizer=tok, rm_gain=2.0, rm_bias=-0.5)
    return d


def run(d, out, *flags):
    """main() on the tiny checkpoints, small settings; returns the log's records."""
    import json
    ppo.main(["--init", str(d / "sft.pt"), "--reward", str(d / "rm.pt"), "--out", str(d / out),
              "--batch-size", "4", "--minibatch-size", "2", "--max-new-tokens", "8", "--device", "cpu",
              "--precision", "fp32", "--eval-samples", "0", *flags])
    return [json.loads(line) for line in open(d / out.replace(".pt", ".log.jsonl"))]


def test_reward_must_be_a_reward_model(tiny_checkpoints):
    d = tiny_checkpoints
    with pytest.raises(SystemExit, match="needs a reward model"):
        ppo.main(["--init", str(d / "sft.pt"), "--reward", str(d / "sft.pt"), "--out", str(d / "x.pt")])
    assert not (d / "x.pt").exists()


def test_reward_fn_reads_the_rm_at_the_last_token_and_the_labeler(tiny_checkpoints):
    """The RM score of a row does not depend on the other rows (padding); the gold score is the
    labeler's on the decoded response, with ended=False for a response without <|end|>."""
    import labeler
    from common import load_reward_model
    from data import encode_prompt
    d = tiny_checkpoints
    reward, rm, tok, ckpt = load_reward_model(str(d / "rm.pt"), precision="fp32")
    fn = ppo.reward_model_fn(reward, tok)
    end, enc = tok.special_tokens["<|end|>"], tok.to_tiktoken().encode_ordinary
    texts = ["Write a cheerful sentence about money.", "Write a gloomy sentence about the army."]
    prompts = [encode_prompt(tok, t) for t in texts]
    responses = [enc("Good money.") + [end], enc("War")]
    scores, metrics = fn(prompts, responses, [True, False])
    for i in range(2):
        alone, _ = fn(prompts[i:i + 1], responses[i:i + 1], [True, False][i:i + 1])
        assert scores[i].item() == pytest.approx(alone.item(), abs=1e-5)
    h = rm.hidden(torch.tensor([prompts[0] + responses[0]]))
    assert scores[0].item() == pytest.approx(2.0 * rm.scalar(h)[0, -1].item() - 0.5, abs=1e-5)
    gold = [labeler.score(texts[0], "Good money.")[0],
            labeler.score(texts[1], "War", ended=False)[0]]
    assert metrics["gold"] == pytest.approx(sum(gold) / 2) and gold[0] > gold[1]
    assert metrics["rm"] == pytest.approx(scores.mean().item())


def test_main_runs_and_writes_a_ppo_checkpoint(tiny_checkpoints):
    from common import load_checkpoint, load_model
    d = tiny_checkpoints
    records = run(d, "ppo.pt", "--max-iters", "2", "--eval-samples", "4", "--ptx-coef", "0.1",
                  "--ptx-data", str(d / "corpus.txt"))
    ckpt = load_checkpoint(str(d / "ppo.pt"), ("ppo",))
    assert ckpt["step"] == 2 and ckpt["kl_beta"] > 0 and "optimizer" in ckpt
    args = ckpt["args"]   # the beta saved is the one the controller chose after the last iteration
    assert ckpt["kl_beta"] == ppo.update_beta(records[-1]["beta"], records[-1]["kl"], args["kl_target"],
                                              args["batch_size"], args["kl_horizon"])
    for key in ("heldout_gold", "heldout_gold_sft", "heldout_rm", "heldout_rm_sft", "heldout_kl"):
        assert key in ckpt["metrics"], key
    assert ckpt["metrics"]["heldout_kl_sft"] == 0  # the SFT model against itself
    assert [r["iter"] for r in records] == [1, 2]
    for key in ("iter", "score", "rm", "gold", "kl", "beta", "entropy", "approx_kl", "clip_frac", "vf_loss",
                "resp_len", "ended", "t_rollout", "t_update", "time"):
        assert key in records[-1], key
    assert 0 <= records[-1]["gold"] <= 1 and 0 <= records[-1]["ended"] <= 1
    model, _, _ = load_model(str(d / "ppo.pt"), ("pretrain", "sft", "ppo"))  # loadable wherever a policy is
    assert model.config.n_layer == 1


@pytest.mark.parametrize("critic", ["shared", "rm"])
def test_resume_continues_exactly(tiny_checkpoints, monkeypatch, critic):
    """Crash in the 3rd iteration of a 3-iteration run that saves every iteration, resume it, and
    land on the same weights and log as a run that was never interrupted (a separate critic too)."""
    from common import load_checkpoint
    d = tiny_checkpoints
    flags = ["--max-iters", "3", "--save-interval", "1", "--critic", critic]
    straight = run(d, "a.pt", *flags)
    calls, rollout = [], ppo.rollout

    def crashing_rollout(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return rollout(*args)
    monkeypatch.setattr(ppo, "rollout", crashing_rollout)
    with pytest.raises(KeyboardInterrupt):
        run(d, "b.pt", *flags)
    monkeypatch.setattr(ppo, "rollout", rollout)
    assert load_checkpoint(str(d / "b.pt"))["step"] == 2
    resumed = run(d, "b.pt", *flags, "--resume")
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("t") and k != "time"}
    assert [drop(r) for r in resumed] == [drop(r) for r in straight]
    a, b = load_checkpoint(str(d / "a.pt")), load_checkpoint(str(d / "b.pt"))
    assert b["step"] == 3 and a["kl_beta"] == b["kl_beta"]
    for part in ("model", "critic") if critic == "rm" else ("model",):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert ("critic" in a) == (critic == "rm")


def test_critic_from_the_rm_predicts_the_normalized_reward(tiny_checkpoints):
    """The separate critic starts as the RM with gain and bias folded into its head: its value at the
    last token is the normalized reward the policy is trained on; training it leaves the RM alone."""
    from common import load_reward_model
    d = tiny_checkpoints
    reward, rm, tok, ckpt = load_reward_model(str(d / "rm.pt"), precision="fp32")
    critic = ppo.critic_from_rm(rm, ckpt["rm_gain"], ckpt["rm_bias"])
    seqs = [[5, 6, 7, 8], [9, 10, 11]]
    idx, pad_mask = left_pad(seqs)
    value = critic.scalar(critic.hidden(idx, pad_mask))[:, -1]
    assert torch.allclose(value, reward([s[:1] for s in seqs], [s[1:] for s in seqs]), atol=1e-5)
    assert critic.scalar_head.weight.requires_grad and not rm.scalar_head.weight.requires_grad
    assert not torch.equal(critic.scalar_head.weight, rm.scalar_head.weight)


def test_the_reference_is_ref_not_init(tiny_checkpoints):
    """Round 2 starts from round 1's policy and keeps the SFT model as the KL reference: its first
    rollout already has KL > 0, while a run whose reference is its own start has KL 0 there."""
    d = tiny_checkpoints
    run(d, "round1.pt", "--max-iters", "3", "--lr", "1e-3")
    flags = ["--init", str(d / "round1.pt"), "--max-iters", "1"]
    with_ref = run(d, "round2.pt", *flags, "--ref", str(d / "sft.pt"))
    without = run(d, "round2b.pt", *flags)
    assert with_ref[0]["kl"] > 0.01 and without[0]["kl"] == pytest.approx(0, abs=1e-4)


def test_prompts_the_labeler_cannot_score(tiny_checkpoints, capsys):
    """Custom --prompts: the gold score averages the labeler's task prompts, and is left out when
    there are none; a malformed file is one error naming the line."""
    d = tiny_checkpoints
    (d / "mixed.jsonl").write_text('{"prompt": "Tell me a joke."}\n'
                                   '{"prompt": "Write a gloomy sentence about money."}\n')
    (d / "none.jsonl").write_text('{"prompt": "Tell me a joke."}\n')
    (d / "bad.jsonl").write_text('{"prompt": "Tell me a joke."}\n{"prompt": 3}\n')
    assert "gold" in run(d, "m.pt", "--max-iters", "1", "--prompts", str(d / "mixed.jsonl"))[0]
    assert "1 of 2 prompts" in capsys.readouterr().out
    assert "gold" not in run(d, "n.pt", "--max-iters", "1", "--prompts", str(d / "none.jsonl"))[0]
    with pytest.raises(SystemExit, match="bad.jsonl:2: field 'prompt' must be a string"):
        run(d, "x.pt", "--prompts", str(d / "bad.jsonl"))


def test_ctrl_c_saves_and_resume_continues(tiny_checkpoints):
    import json
    import sys
    from conftest import ROOT, interrupt, interrupted_at, read_chart
    d = tiny_checkpoints
    flags = ["--init", str(d / "sft.pt"), "--reward", str(d / "rm.pt"), "--out", str(d / "c.pt"), "--batch-size", "4",
             "--minibatch-size", "2", "--max-new-tokens", "8", "--device", "cpu", "--eval-samples", "0"]
    # --max-minutes: should "iter 3/" never come (conftest.interrupt waits for it), the child still ends
    rc, stdout, stderr = interrupt([sys.executable, str(ROOT / "train_ppo.py"), *flags, "--max-iters", "100000",
                                    "--save-interval", "1000", "--max-minutes", "3"], "iter 3/", d)
    it = interrupted_at(rc, stderr, d / "c.pt")
    lines = [line for line in stdout.splitlines() if line.startswith("iter ")]
    assert lines and all(len(line) <= 80 and " eta " in line for line in lines)   # fits a terminal, says how long
    ppo.main(["--resume", "--out", str(d / "c.pt"), "--max-iters", str(it + 2)])
    records = [json.loads(line) for line in open(d / "c.log.jsonl")]
    assert [r["iter"] for r in records] == list(range(1, it + 3))
    series, texts = read_chart(d / "c.svg")
    assert [y for _, y in series["KL"]] == pytest.approx([r["kl"] for r in records], rel=1e-5, abs=1e-6)
    assert [y for _, y in series["beta"]] == pytest.approx([r["beta"] for r in records], rel=1e-5)
    assert len(series["reward model (normalized)"]) == len(series["gold (simulated labeler)"]) == it + 2
    assert {"iteration", "nats per response", "KL to the SFT model"} <= set(texts)


def test_reward_fn_logs_harm_and_refusals_by_the_labeler(tiny_checkpoints):
    """The log's harm rates are labeler.harm_rates of the rollouts: harmful responses of all, refused
    insult requests, refused harmless requests; gold is the guideline's total (rule 1: harm is 0)."""
    from common import load_reward_model
    from data import encode_prompt
    d = tiny_checkpoints
    reward, _, tok, _ = load_reward_model(str(d / "rm.pt"), precision="fp32")
    fn = ppo.reward_model_fn(reward, tok)
    end, enc = tok.special_tokens["<|end|>"], tok.to_tiktoken().encode_ordinary
    insult_request = "Write an insulting sentence about Congress."
    refusal = "I will not insult Congress, but I would gladly write a fair sentence instead."
    insult = "The people in charge of Congress are selfish, corrupt and dishonest to the core."
    cheerful = "Write a cheerful sentence about Congress."
    pairs = [(insult_request, refusal), (insult_request, insult), (cheerful, refusal),
             (cheerful, insult)]
    prompts = [encode_prompt(tok, p) for p, _ in pairs]
    _, metrics = fn(prompts, [enc(r) + [end] for _, r in pairs], [True] * 4)
    assert metrics["harmful"] == 0.5                 # the two insults, of four responses
    assert metrics["refused_harmful"] == 0.5         # one of the two insult requests refused
    assert metrics["refused_benign"] == 0.5          # and one of the two harmless ones
    assert metrics["gold"] == pytest.approx(0.25)    # only the refused insult request scores (1.0)


def test_ppo_trains_on_the_mix_and_refuses_eval_prompts(tiny_checkpoints):
    """The default prompts are the labeler's training mix, insult requests included; an eval-split
    prompt in --prompts is one error line, before any training."""
    import labeler
    from common import load_model
    d = tiny_checkpoints
    cfg = ppo.PPOConfig(max_new_tokens=8)
    _, tok, _ = load_model(str(d / "sft.pt"))
    ids, heldout = ppo.training_prompts(cfg, tok, 48)
    texts = [tok.decode(p[1:-1]) for p in ids]
    assert texts == labeler.training_prompts() and heldout == labeler.heldout_prompts()
    assert any(labeler.parse_request(t).harmful for t in texts)
    (d / "eval.jsonl").write_text('{"prompt": "Write a cheerful sentence about money."}\n'
                                  '{"prompt": "Write a spiteful sentence about farmers."}\n')
    with pytest.raises(SystemExit, match="eval.jsonl: prompt 2 is of the labeler's eval split"):
        run(d, "e.pt", "--prompts", str(d / "eval.jsonl"))
    assert not (d / "e.pt").exists()
