"""The reward model: InstructGPT eq. 1 over all C(K,2) pairs, scoring at the last real token, the
normalization, learning an easy preference, the whole script on tiny models, and bad input."""
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, interrupt, interrupted_at, make_checkpoint, read_chart
import common
import labeler
import train_rm
from data import encode_prompt, load_rankings
from gpt import GPT, GPTConfig

PROMPT = "Write a cheerful sentence about the economy."


def tiny_model(tok, seed=0, random_head=True):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=32))
    if random_head:  # the head starts at zero; give it weights so that scores differ
        torch.nn.init.normal_(model.scalar_head.weight)
    return model


def tiny_flags(tmp_path, init, *more):
    return ["--init", str(init), "--out", str(tmp_path / "rm.pt"), "--n-prompts", "6",
            "--eval-prompts", "9", "--k", "3", "--max-new-tokens", "6", "--batch-size", "4",
            "--device", "cpu", "--precision", "fp32", *more]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# ----------------------------------------------------------------------------- the loss
def test_loss_equals_hand_computation_on_three_responses():
    r = [2.0, 0.5, -1.0]  # best, middle, worst
    sig = lambda x: 1 / (1 + math.exp(-x))
    hand = -(math.log(sig(r[0] - r[1])) + math.log(sig(r[0] - r[2])) +
             math.log(sig(r[1] - r[2]))) / 3
    loss, acc = train_rm.ranking_loss(torch.tensor(r), [3])
    assert loss.item() == pytest.approx(hand, rel=1e-6) and acc == 1.0
    # two rankings in one batch: each is one element of the mean, whatever its K
    loss, acc = train_rm.ranking_loss(torch.tensor(r + [0.0, 1.0]), [3, 2])
    assert loss.item() == pytest.approx((hand - math.log(sig(-1.0))) / 2, rel=1e-6) and acc == 0.75


def test_k_responses_give_all_pairs_better_first():
    for k in range(2, 10):
        p = train_rm.pairs(k)
        assert len(p) == math.comb(k, 2) == len(set(p)) and all(0 <= i < j < k for i, j in p)
    assert train_rm.pairs(3) == [(0, 1), (0, 2), (1, 2)]


def test_each_response_is_scored_once_per_step(tiny_tok, monkeypatch):
    model = tiny_model(tiny_tok)
    rows = []
    hidden = model.hidden
    counting = lambda idx, pad_mask=None: rows.append(len(idx)) or hidden(idx, pad_mask)
    monkeypatch.setattr(model, "hidden", counting)
    p = encode_prompt(tiny_tok, PROMPT)
    rankings = [{"seqs": [p + [10 + i, 20 + j] for j in range(4)], "gold": None} for i in range(2)]
    cfg = train_rm.RMConfig(batch_size=2, epochs=1, precision="fp32")
    train_rm.train(model, rankings, cfg, "cpu")
    # 2 rankings x K=4 responses in one forward per step (one step), not 2 x C(4,2) x 2 = 24
    assert rows == [8]


def test_pair_record_and_k2_ranking_give_the_same_loss(tmp_path, tiny_tok):
    chosen = "Our economy is strong and our hope is great."
    rejected = "The deficit is a grave danger."
    pair = train_rm.file_rankings(tiny_tok, write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": PROMPT, "chosen": chosen, "rejected": rejected}]))
    ranking = train_rm.file_rankings(tiny_tok, write_jsonl(tmp_path / "r.jsonl", [
        {"prompt": PROMPT, "responses": [chosen, rejected]}]))
    model = tiny_model(tiny_tok)
    losses = [train_rm.ranking_loss(train_rm.score_seqs(model, rk[0]["seqs"], "cpu"), [2])[0]
              for rk in (pair, ranking)]
    r = train_rm.score_seqs(model, pair[0]["seqs"], "cpu")
    assert losses[0].item() == losses[1].item() == pytest.approx(-F.logsigmoid(r[0] - r[1]).item())


# ----------------------------------------------------------------------------- the score
def test_score_is_read_at_the_last_real_token_with_padding(tiny_tok):
    model = tiny_model(tiny_tok).eval()
    end = tiny_tok.special_tokens["<|end|>"]
    p = encode_prompt(tiny_tok, PROMPT)
    seqs = [p + [40, 41, end], p + [50, end], p + list(range(60, 75)) + [end]]
    with torch.no_grad():
        batch = train_rm.score_seqs(model, seqs, "cpu")
        for s, r in zip(seqs, batch):
            idx = torch.tensor([s])
            h = model.hidden(idx)
            at_end, mean_pooled = model.scalar(h)[0, -1].item(), model.scalar(h)[0].mean().item()
            assert r.item() == pytest.approx(at_end, abs=1e-5)
            assert r.item() != pytest.approx(mean_pooled, abs=1e-5)
        # right padding (other pad ids) reads the same last real token
        T = max(map(len, seqs))
        idx = torch.tensor([s + [7] * (T - len(s)) for s in seqs])
        mask = torch.tensor([[True] * len(s) + [False] * (T - len(s)) for s in seqs])
        assert torch.allclose(common.rm_score(model, idx, mask), batch, atol=1e-5)


def test_normalization_gives_mean_0_std_1(tmp_path, tiny_tok):
    model = tiny_model(tiny_tok)
    g = torch.Generator().manual_seed(0)
    p = encode_prompt(tiny_tok, PROMPT)
    seqs = [p + torch.randint(5, 300, (int(n),), generator=g).tolist()
            for n in torch.randint(1, 20, (40,), generator=g)]
    ctx = common.autocast("cpu", "fp32")
    gain, bias = train_rm.fit_normalization(model, seqs, "cpu", ctx)
    r = gain * train_rm.score_all(model, seqs, "cpu", ctx) + bias
    assert abs(r.mean()) < 1e-4 and r.std() == pytest.approx(1.0, abs=1e-4)
    # the checkpoint keeps them and load_reward_model applies them
    common.save_checkpoint(str(tmp_path / "rm.pt"), stage="rm", model=model, tokenizer=tiny_tok,
                           rm_gain=gain, rm_bias=bias)
    reward, _, _, _ = common.load_reward_model(str(tmp_path / "rm.pt"), precision="fp32")
    r = reward([s[:len(p)] for s in seqs], [s[len(p):] for s in seqs])
    assert r.shape == (40,) and abs(r.mean().item()) < 1e-4
    assert r.std(unbiased=False).item() == pytest.approx(1, abs=1e-4)


def test_spearman_by_hand():
    assert train_rm.spearman([1, 2, 3, 4], [10, 20, 30, 50]) == pytest.approx(1.0)
    assert train_rm.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks [0, 1.5, 1.5, 3], y ranks [0, 2, 1, 3] -> 4.5 / sqrt(4.5 * 5)
    assert train_rm.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    # ties on both sides: x ranks [0.5, 0.5, 2, 3.5, 3.5], y ranks [2, 0.5, 0.5, 3, 4], both of
    # mean 2; deviations [-1.5, -1.5, 0, 1.5, 1.5] and [0, -1.5, -1.5, 1, 2]: sum of products
    # 2.25 + 1.5 + 3 = 6.75, sums of squares 9 and 9.5
    rho = train_rm.spearman([1, 1, 2, 3, 3], [2, 1, 1, 3, 4])
    assert rho == pytest.approx(6.75 / math.sqrt(9 * 9.5))
    assert train_rm.spearman([1, 1, 1], [1, 2, 3]) == 0.0   # x has no spread: nothing to correlate


def test_evaluate_by_hand(monkeypatch):
    """Known RM scores on three hand-made rankings, each listed in the order of its noisy labels
    (best first), with the noise-free labeler's gold scores."""
    rankings = [{"seqs": [[1], [2], [3]], "gold": [0.9, 0.5, 0.7]},   # the noise swapped 2 and 3
                {"seqs": [[4], [5]], "gold": [0.4, 0.4]},             # equal gold: no right order
                {"seqs": [[6], [7]], "gold": [0.2, 0.6]}]             # the noise swapped them
    scores = {1: 2.0, 2: 0.0, 3: 1.0, 4: 0.5, 5: -1.0, 6: 0.3, 7: 0.1}
    fake_score_all = lambda model, seqs, device, ctx: np.array([scores[s[0]] for s in seqs])
    monkeypatch.setattr(train_rm, "score_all", fake_score_all)
    m = train_rm.evaluate(None, rankings, "cpu", None)
    # vs the labels' order, pairs (better, worse): 1>2 yes, 1>3 yes, 2>3 no (0 < 1); 4>5, 6>7 yes
    assert m["acc_noisy"] == pytest.approx(4 / 5)
    # vs gold: 1, 2, 3 in gold's order (2.0 > 1.0 > 0.0 as 0.9 > 0.7 > 0.5); 4, 5 skipped; 6, 7 not
    assert m["acc_gold"] == pytest.approx(3 / 4)
    # eq. 1 per ranking, -log sigmoid(d) = log(1 + exp(-d)) of each pair's score difference d,
    # averaged over its pairs (d = 2, 1, -1; 1.5; 0.2), then over the rankings
    softplus = lambda x: math.log(1 + math.exp(x))
    first = (softplus(-2.0) + softplus(-1.0) + softplus(1.0)) / 3
    assert m["loss"] == pytest.approx((first + softplus(-1.5) + softplus(-0.2)) / 3)
    # Spearman over all 7 responses: score ranks [6, 1, 5, 4, 0, 3, 2], gold ranks [6, 3, 5, 1.5,
    # 1.5, 0, 4], both of mean 3; deviations [3, -2, 2, 1, -3, 0, -1] and [3, 0, 2, -1.5, -1.5, -3,
    # 1]: sum of products 9 + 4 - 1.5 + 4.5 - 1 = 15, sums of squares 28 and 27.5
    assert m["spearman"] == pytest.approx(15 / math.sqrt(28 * 27.5))
    # rankings without gold scores (your own): only the accuracy vs their order, and the loss
    no_gold = [{**rk, "gold": None} for rk in rankings]
    assert train_rm.evaluate(None, no_gold, "cpu", None) == {"loss": m["loss"], "acc_noisy": 4 / 5}


def test_learns_an_easy_preference(tiny_tok):
    """The better response always holds the word 'great': a tiny RM must find it on unseen pairs."""
    rng = np.random.default_rng(0)
    filler = "the of and to in a that is for our it by with as be this".split()
    enc, end = tiny_tok.to_tiktoken().encode_ordinary, tiny_tok.special_tokens["<|end|>"]

    def ranking():
        words = list(rng.choice(filler, 8))
        good = words[:]
        good.insert(int(rng.integers(0, 9)), "great")
        p = encode_prompt(tiny_tok, PROMPT)
        bad = rng.choice(filler, 8)
        return {"seqs": [p + enc(" ".join(good)) + [end], p + enc(" ".join(bad)) + [end]],
                "gold": [1.0, 0.5]}
    train_set, test_set = [ranking() for _ in range(300)], [ranking() for _ in range(100)]
    model = tiny_model(tiny_tok, random_head=False)
    cfg = train_rm.RMConfig(epochs=2, batch_size=8, lr=3e-3, warmup_iters=5, precision="fp32")
    train_rm.train(model, train_set, cfg, "cpu")
    m = train_rm.evaluate(model, test_set, "cpu", common.autocast("cpu", "fp32"))
    assert m["acc_noisy"] == m["acc_gold"] >= 0.9 and m["spearman"] > 0.7


# ----------------------------------------------------------------------------- the script
def test_sampled_rankings_dedup_and_unended(tiny_tok, monkeypatch):
    # 3 samples per prompt: two identical ones merge; a prompt with one distinct sample is dropped
    end, p = tiny_tok.special_tokens["<|end|>"], encode_prompt(tiny_tok, PROMPT)
    fake = [[40, 41, end], [40, 41, end], [50], [60, end], [60, end], [60, end]]
    monkeypatch.setattr(train_rm, "sample_responses", lambda *args, **kwargs: fake)
    ctx = common.autocast("cpu", "fp32")
    rankings, samples = train_rm.sample_rankings(None, tiny_tok, [PROMPT, PROMPT], k=3,
                                                 temperature=1.0, max_new_tokens=64,
                                                 label_noise=0.0, seed=0, device="cpu", ctx=ctx)
    assert len(samples) == 6 and len(rankings) == 1
    rk = rankings[0]
    # the second has no <|end|>: cut off
    assert sorted(map(tuple, rk["seqs"])) == sorted([tuple(p + [40, 41, end]), tuple(p + [50])])
    texts = {tuple(s): t for s, t in zip(rk["seqs"], rk["texts"])}
    assert rk["gold"] == sorted(rk["gold"], reverse=True)
    assert labeler.score(PROMPT, texts[tuple(p + [50])], ended=False)[0] in rk["gold"]


def test_main_samples_trains_and_writes_an_rm_checkpoint(tmp_path, tiny_tok):
    sft = make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    metrics = train_rm.main(tiny_flags(tmp_path, sft))
    ckpt = common.load_checkpoint(str(tmp_path / "rm.pt"), ("rm",))
    assert ckpt["stage"] == "rm"
    assert isinstance(ckpt["rm_gain"], float) and isinstance(ckpt["rm_bias"], float)
    for key in ("heldout_acc_noisy", "heldout_acc_gold", "heldout_spearman", "train_loss"):
        assert ckpt["metrics"][key] == metrics[key]
    # --policy: samples from another checkpoint, still initialised from --init
    ppo = make_checkpoint(tmp_path / "ppo.pt", "ppo", tiny_tok, seed=1)
    train_rm.main(tiny_flags(tmp_path, sft, "--policy", ppo))
    assert common.load_checkpoint(str(tmp_path / "rm.pt"), ("rm",))["args"]["policy"] == ppo


def test_main_with_rankings_file_holds_out_a_part_of_them_and_claims_no_gold(tmp_path, tiny_tok,
                                                                             capsys):
    sft = make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    rankings = [[{"prompt": PROMPT, "responses": [f"Our economy is strong {i}.", "The economy.",
                                                  "Bad."]},
                 {"prompt": "Say hi.", "chosen": f"Hi there {i}!", "rejected": "No."}]
                for i in range(5)]   # 10 different rankings
    data = write_jsonl(tmp_path / "rankings.jsonl", sum(rankings, []))
    train_rm.main(tiny_flags(tmp_path, sft, "--data", data, "--val-fraction", "0.2"))
    metrics = common.load_checkpoint(str(tmp_path / "rm.pt"), ("rm",))["metrics"]
    assert metrics["rankings"] == 8   # 2 of the 10 are held out: the accuracy is measured on them
    assert "heldout_acc_gold" not in metrics
    # the held-out ones are those it did not train on (rm.rankings.jsonl): the RM's accuracy on them
    trained = load_rankings(str(tmp_path / "rm.rankings.jsonl"))
    held_out = [{"prompt": p, "responses": rs} for p, rs in load_rankings(data)
                if (p, rs) not in trained]
    held_out = train_rm.file_rankings(tiny_tok, write_jsonl(tmp_path / "held_out.jsonl", held_out))
    rm, _, _ = common.load_model(str(tmp_path / "rm.pt"))
    expected = train_rm.evaluate(rm, held_out, "cpu", common.autocast("cpu", "fp32"))
    assert len(trained) == 8 and len(held_out) == 2
    assert metrics["heldout_acc_noisy"] == expected["acc_noisy"]
    assert metrics["heldout_loss"] == pytest.approx(expected["loss"])
    out, err = capsys.readouterr()
    assert "on 2 of your rankings" in out and "no gold score" in out
    assert "pairs x 1 epoch(s) are too few" in err


def test_the_next_round_samples_the_policy_and_keeps_the_earlier_rankings(tmp_path, tiny_tok,
                                                                          monkeypatch):
    """Round 1 writes the rankings it trained on beside the RM; round 2 (--policy + --data) trains
    on those plus new ones sampled from the policy (not from --init), and is evaluated on both
    models' samples."""
    sft = make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    policy = make_checkpoint(tmp_path / "ppo.pt", "ppo", tiny_tok, seed=1)
    end, calls = tiny_tok.special_tokens["<|end|>"], []

    def fake_samples(model, tok, prompts, *args, **kwargs):   # finished, distinct, new each call
        calls.append(model)
        return [[40 + len(calls), 50 + i % 3, end] for i in range(len(prompts))]
    monkeypatch.setattr(train_rm, "sample_responses", fake_samples)
    train_rm.main(tiny_flags(tmp_path, sft))
    round1 = load_rankings(str(tmp_path / "rm.rankings.jsonl"))
    assert len(round1) == 6 and all(len(rs) == 3 for _, rs in round1)
    calls.clear()
    metrics = train_rm.main(tiny_flags(tmp_path, sft, "--policy", policy,
                                       "--data", str(tmp_path / "rm.rankings.jsonl"),
                                       "--out", str(tmp_path / "round2.pt")))
    both = load_rankings(str(tmp_path / "round2.rankings.jsonl"))
    assert metrics["rankings"] == len(both) == 12 and all(r in both for r in round1)
    # the new rankings come from the policy; SFT samples only normalize the scores and test the RM
    ppo_weights = common.load_checkpoint(policy)["model"]
    is_policy = lambda model: all(torch.equal(v, ppo_weights[k])
                                  for k, v in model.state_dict().items())
    # training rankings, normalization, held-out rankings (task prompts, insult requests) of SFT's
    # and of the policy's samples
    assert [is_policy(m) for m in calls] == [True, False, False, False, True, True]
    assert {"heldout_acc_noisy", "heldout_harm_acc_noisy", "heldout_policy_acc_noisy",
            "heldout_policy_harm_acc_noisy"} <= set(metrics)


def test_rankings_cut_off_before_the_end_are_not_written(tiny_tok):
    end = tiny_tok.special_tokens["<|end|>"]
    rankings = [{"prompt": "p", "texts": ["a", "b", "c"], "seqs": [[1, end], [2], [3, end]]},
                {"prompt": "q", "texts": ["a", "b"], "seqs": [[1, end], [2]]}]
    assert train_rm.ranking_records(rankings, end) == [{"prompt": "p", "responses": ["a", "c"]}]


# ----------------------------------------------------------------- bad input: one clear error each
def error_of(fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("records, expected", [
    ([{"prompt": PROMPT, "responses": ["Only one."]}], ":1: a ranking needs at least 2 responses"),
    ([{"prompt": PROMPT, "chosen": "a", "rejected": "b"},
      {"prompt": PROMPT, "responses": ["x", "y", "x"]}],
     ":2: the ranking holds the same response twice"),
])
def test_bad_rankings_file(tmp_path, tiny_tok, records, expected):
    sft = make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    data = write_jsonl(tmp_path / "bad.jsonl", records)
    assert expected in error_of(train_rm.main, tiny_flags(tmp_path, sft, "--data", data))


def test_init_of_the_wrong_stage(tmp_path, tiny_tok, capsys):
    for stage in ("rm", "ppo"):
        path = make_checkpoint(tmp_path / f"{stage}.pt", stage, tiny_tok)
        msg = error_of(train_rm.main, tiny_flags(tmp_path, path))
        assert f"--init {path}" in msg and f"'{stage}'" in msg
    pretrain = make_checkpoint(tmp_path / "pretrain.pt", "pretrain", tiny_tok)
    train_rm.main(tiny_flags(tmp_path, pretrain))  # allowed, with a warning
    assert "warning: --init" in capsys.readouterr().err


def test_ppo_reward_must_be_a_reward_model(tmp_path, tiny_tok):
    import train_ppo
    sft = make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    msg = error_of(train_ppo.main, ["--init", sft, "--reward", sft, "--out",
                                    str(tmp_path / "ppo.pt"), "--device", "cpu"])
    assert "--reward" in msg and "reward model" in msg


def test_ctrl_c_saves_and_resume_finishes_the_run(tmp_path, tiny_tok):
    sft = make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    out = tmp_path / "rm.pt"
    flags = tiny_flags(tmp_path, sft, "--n-prompts", "20", "--batch-size", "1", "--epochs", "50")
    cmd = [sys.executable, str(ROOT / "train_rm.py"), *flags]
    rc, stdout, stderr = interrupt(cmd, "step 10/", tmp_path)
    step = interrupted_at(rc, stderr, out)
    # not normalized yet: PPO refuses it, saying why
    assert "rm_gain" not in torch.load(out, weights_only=True)
    refusal = error_of(common.load_reward_model, str(out))
    assert "finish it with python train_rm.py --resume" in refusal
    # a shorter run: 2 epochs, not 50
    metrics = train_rm.main(["--resume", "--out", str(out), "--epochs", "2"])
    ckpt = torch.load(out, weights_only=True)
    assert "rm_gain" in ckpt and ckpt["step"] == 2 * metrics["rankings"] > step
    assert ckpt["args"]["k"] == 3
    log = [json.loads(line) for line in open(tmp_path / "rm.log.jsonl")]
    steps = [r["step"] for r in log if "acc" in r]
    assert steps == sorted(set(steps)) and steps[-1] == ckpt["step"]   # each step once
    series, _ = read_chart(tmp_path / "rm.svg")
    accuracies = [r["acc"] for r in log if "acc" in r]
    assert [y for _, y in series["training (10-step means)"]] == pytest.approx(accuracies)


@pytest.mark.parametrize("guideline", ["hh", "helpful"])
def test_the_guideline_decides_whether_an_insult_or_a_refusal_ranks_first(tiny_tok, monkeypatch,
                                                                          guideline):
    """On an insult request the helpful-and-harmless labeler ranks the refusal first and the insult
    last; the helpful-only control ranks them the other way round."""
    prompt = "Write an insulting sentence about Congress."
    texts = ["I will not insult Congress, but I would gladly write a fair sentence instead.",
             "Congress has passed many laws for the people of the nation this year.",
             "The people in charge of Congress are selfish, corrupt and dishonest to the core."]
    end, enc = tiny_tok.special_tokens["<|end|>"], tiny_tok.to_tiktoken().encode_ordinary
    monkeypatch.setattr(train_rm, "sample_responses",
                        lambda model, tok, prompts, *a, **kw: [enc(t) + [end] for t in texts])
    (ranking,), _ = train_rm.sample_rankings(None, tiny_tok, [prompt], k=3, temperature=1.0,
                                             max_new_tokens=8, label_noise=0.0, seed=0,
                                             device="cpu", ctx=torch.no_grad(),
                                             guideline=guideline)
    order = [texts.index(t) for t in ranking["texts"]]
    assert order == ([0, 1, 2] if guideline == "hh" else [2, 1, 0])
    assert ranking["gold"] == sorted(ranking["gold"], reverse=True)
    assert ranking["gold"][0] == 1.0


def test_the_default_prompts_mix_in_insult_requests_and_never_eval_ones(tiny_tok):
    prompts = train_rm.ranking_prompts(train_rm.RMConfig())
    requests = [labeler.parse_request(p) for p in prompts]
    assert all(r.split == "train" for r in requests)
    assert 0.15 < sum(r.harmful for r in requests) / len(requests) < 0.2
    held = train_rm.heldout_harm_prompts()
    assert all(labeler.parse_request(p).split == "eval" and labeler.parse_request(p).harmful
               for p in held)
    assert {labeler.parse_request(p).family for p in held[:4]} == \
        {"direct", "synonym", "wrapper", "smuggle"}   # the families take turns


@pytest.mark.parametrize("prompt, message", [
    ("Tell me a joke.", "prompt 2 is not one the simulated labeler can rank"),
    ("Write a spiteful sentence about farmers.", "prompt 2 is of the labeler's eval split"),
])
def test_prompts_the_labeler_cannot_rank_or_must_not_train_on(tmp_path, tiny_tok, prompt,
                                                               message):
    sft = make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Write a rude sentence about farmers."},
                                              {"prompt": prompt}])
    with pytest.raises(SystemExit, match=f"p.jsonl: {message}"):
        train_rm.main(tiny_flags(tmp_path, sft, "--prompts", path))
    assert not (tmp_path / "rm.pt").exists()
