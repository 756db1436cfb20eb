"""Your own language (docs/LANGUAGES.md, Korean as the example): a tiny model pretrained on a few Korean
paragraphs written for this test samples Hangul, and its tokenizer gives the corpus back byte for byte."""
import glob

import numpy as np
import torch

from conftest import ROOT

import train_pretrain
from common import load_model
from data import load_demonstrations, read_corpus

PARAGRAPHS = [  # everyday scenes, one paragraph each; the blank lines between them make them documents
    "봄이 오면 마을 뒷산에 진달래가 핀다. 아이들은 학교가 끝나면 산길을 따라 뛰어올라가 꽃잎을 따서 입에 넣어 본다. 할머니는 그 꽃으로 화전을 부쳐 주시고, 우리는 마루에 앉아 따뜻한 차와 함께 그것을 나누어 먹는다.",
    "여름에는 비가 많이 내린다. 장마가 시작되면 논에 물이 가득 차고 개구리 소리가 밤새도록 들린다. 아버지는 새벽마다 우산을 쓰고 논두렁을 돌아보시며, 물길이 막히지 않았는지 살피신다.",
    "가을은 추수의 계절이다. 들판은 누렇게 익은 벼로 가득하고, 사람들은 서로 도와 가며 벼를 벤다. 일이 끝나면 마을 사람들이 모두 모여 햅쌀로 지은 밥과 막걸리를 나누며 한 해의 수고를 이야기한다.",
    "겨울이 되면 어머니는 김장을 준비하신다. 배추를 소금에 절이고, 고춧가루와 마늘과 젓갈로 양념을 만든다. 이웃집 아주머니들도 함께 모여 하루 종일 김치를 담그고, 저녁에는 갓 담근 김치에 수육을 싸 먹는다.",
    "시장은 아침 일찍부터 사람들로 붐빈다. 생선 가게 주인은 큰 소리로 손님을 부르고, 채소 가게에는 싱싱한 무와 파가 쌓여 있다. 어머니는 값을 물어보시고 조금 깎아 달라고 하시며, 주인은 웃으면서 덤으로 고추 한 줌을 얹어 준다.",
    "도서관은 조용하고 밝은 곳이다. 학생들은 창가 자리에 앉아 책을 읽거나 공책에 무엇인가를 열심히 적는다. 사서 선생님은 새로 들어온 책을 정리하시면서, 찾는 책이 있으면 언제든지 물어보라고 말씀하신다.",
    "우리 동네에는 작은 빵집이 하나 있다. 새벽 다섯 시면 빵 굽는 냄새가 골목까지 퍼진다. 주인 아저씨는 손님이 오면 언제나 반갑게 인사하시고, 갓 구운 식빵을 봉투에 담아 주시며 맛있게 드시라고 하신다.",
    "기차를 타고 바다로 여행을 떠났다. 창밖으로 산과 강과 작은 마을들이 지나갔고, 우리는 도시락을 먹으며 이야기를 나누었다. 바닷가에 도착하자 시원한 바람이 불어왔고, 파도 소리를 들으며 모래 위를 오래 걸었다.",
]


def hangul_share(text):
    """The share of the non-space characters that are Hangul syllables (U+AC00..U+D7A3)."""
    chars = [c for c in text if not c.isspace()]
    return sum("\uac00" <= c <= "\ud7a3" for c in chars) / max(1, len(chars))


def sample(model, tok, n=8, seed=0):
    """n unconditional samples (from <|endoftext|>, as train_pretrain prints them), joined."""
    eot = tok.special_tokens["<|endoftext|>"]
    out, _ = model.generate([[eot]] * n, 48, temperature=1.0, stop_token=eot, generator=torch.Generator().manual_seed(seed))
    return "".join(tok.decode([i for i in ids if i != eot]) for ids in out)


def test_korean_pretraining_samples_hangul_and_round_trips(tmp_path):
    corpus = tmp_path / "ko.txt"
    corpus.write_text("\n\n".join(PARAGRAPHS) + "\n", encoding="utf-8")
    assert hangul_share(corpus.read_text(encoding="utf-8")) > 0.9
    flags = ["--data", str(corpus), "--out", str(tmp_path / "pretrain.pt"), "--vocab-size", "400", "--n-layer", "1",
             "--n-head", "2", "--n-embd", "64", "--block-size", "32", "--batch-size", "16", "--lr", "1e-2",
             "--warmup-iters", "5", "--eval-iters", "1", "--val-fraction", "0.2", "--device", "cpu", "--precision", "fp32"]
    train_pretrain.main(flags + ["--max-iters", "1", "--eval-interval", "1"])
    model, tok, _ = load_model(str(tmp_path / "pretrain.pt"))
    untrained = hangul_share(sample(model, tok))   # byte-level tokens in random order: mostly broken UTF-8
    train_pretrain.main(flags + ["--max-iters", "300", "--eval-interval", "300"])
    model, tok, _ = load_model(str(tmp_path / "pretrain.pt"))
    trained = hangul_share(sample(model, tok))
    assert untrained < 0.5 < 0.8 < trained, (untrained, trained)
    # the tokenizer: exact on the corpus, in both encoders and in the token file the run trained on
    text = read_corpus(str(corpus))
    ids = tok.encode(text, allowed_special="all")
    assert tok.decode(ids) == text and tok.to_tiktoken().encode(text, allowed_special="all") == ids
    (token_file,) = glob.glob(str(tmp_path / "tokens-*.bin"))
    assert tok.decode(np.fromfile(token_file, dtype=np.uint16).tolist()) == text
    # and it learned Hangul: a syllable is 3 UTF-8 bytes, a byte-level token 1
    assert len(text.encode("utf-8")) / len(ids) > 1.8


def test_the_recipes_demonstrations_are_korean():
    demos = load_demonstrations(str(ROOT / "data" / "ko_demos.jsonl"))
    assert len(demos) == 20 and len(set(demos)) == 20
    assert all(hangul_share(p) > 0.7 and hangul_share(r) > 0.7 for p, r in demos)
