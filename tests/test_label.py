"""label.py's server, in-process over HTTP on 127.0.0.1, with a fake sampler (no model needed);
and once end to end: the CLI on a tiny checkpoint, then train_rm.py --data on what it wrote."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT, make_checkpoint, reset_connection
from test_serve import first_line

import label


def fake_sample(prompt, k):
    return [f"{prompt} answer {i} \u00e9\u6f22" for i in range(k)]   # non-ASCII on purpose


@pytest.fixture
def server(tmp_path):
    srv = label.LabelServer(("127.0.0.1", 0), fake_sample, ["Say hi.", "Say bye."], str(tmp_path / "r.jsonl"))
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def request(url, body=None, content_type="application/json"):
    """(status, parsed JSON reply). body: bytes, or anything else to send as JSON."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    assert not data or data.endswith(b"\n"), "the file ends with a partial line"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def test_page_and_next(server):
    with urllib.request.urlopen(server.url + "/", timeout=30) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        assert b"<script>" in r.read()
    status, item = request(server.url + "/api/next")
    assert status == 200 and item["count"] == 0 and item["prompt"] in ("Say hi.", "Say bye.")
    assert sorted(item["responses"]) == sorted(fake_sample(item["prompt"], 4))   # shown shuffled
    assert request(server.url + "/nope")[0] == 404


def test_valid_submission_appends_one_line(server):
    _, item = request(server.url + "/api/next")
    ranking = [2, 0, 3, 1]
    status, reply = request(server.url + "/api/submit", {"id": item["id"], "ranking": ranking})
    assert status == 200 and reply["count"] == 1
    assert reply["next"]["id"] != item["id"] and len(reply["next"]["responses"]) == 4
    assert lines(server.out) == [{"prompt": item["prompt"], "responses": [item["responses"][i] for i in ranking]}]
    # the same id twice: already ranked, nothing more written
    assert request(server.url + "/api/submit", {"id": item["id"], "ranking": ranking})[0] == 404
    assert len(lines(server.out)) == 1
    # and train_rm.py's reader takes the file as it is
    from data import load_rankings
    assert load_rankings(server.out) == [(item["prompt"], [item["responses"][i] for i in ranking])]


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b"\xff\xfe", 400),                                   # not UTF-8
    (b"[1, 2]", 400),                                     # not an object
    ({"ranking": [0, 1, 2, 3]}, 400),                     # no id
    ({"id": "ID", "ranking": [0, 1, 2]}, 400),            # too few
    ({"id": "ID", "ranking": [0, 1, 2, 3, 0]}, 400),      # too many
    ({"id": "ID", "ranking": [0, 1, 1, 3]}, 400),         # duplicate ranks
    ({"id": "ID", "ranking": [0, 1, 2, 4]}, 400),         # out of range
    ({"id": "ID", "ranking": [0, 1, 2.0, 3]}, 400),       # not integers
    ({"id": "ID", "ranking": [0, True, 2, 3]}, 400),
    ({"id": "ID", "ranking": "0123"}, 400),
    ({"id": "deadbeef", "ranking": [0, 1, 2, 3]}, 404),   # unknown prompt id
    ({"id": "ID", "ranking": [0, 1, 2, 3], "pad": "x" * label.MAX_BODY}, 413),   # oversized body
])
def test_invalid_submissions_write_nothing(server, body, status):
    _, item = request(server.url + "/api/next")
    if isinstance(body, dict) and body.get("id") == "ID":
        body["id"] = item["id"]
    got, reply = request(server.url + "/api/submit", body)
    assert got == status and "error" in reply
    assert not os.path.exists(server.out)
    # the item was not used up: a valid ranking still goes through
    assert request(server.url + "/api/submit", {"id": item["id"], "ranking": [0, 1, 2, 3]})[0] == 200
    assert len(lines(server.out)) == 1


def test_wrong_content_type_and_no_length(server):
    _, item = request(server.url + "/api/next")
    body = json.dumps({"id": item["id"], "ranking": [0, 1, 2, 3]}).encode()
    assert request(server.url + "/api/submit", body, "text/plain")[0] == 415
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.putrequest("POST", "/api/submit")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    assert conn.getresponse().status == 411
    assert not os.path.exists(server.out)


def test_20_concurrent_submissions_give_20_intact_lines(server):
    items = [request(server.url + "/api/next")[1] for _ in range(20)]
    rankings = [[(i + j) % 4 for j in range(4)] for i in range(20)]

    def submit(n):
        return request(server.url + "/api/submit", {"id": items[n]["id"], "ranking": rankings[n]})
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(submit, range(20)))
    assert all(status == 200 for status, _ in results)
    assert sorted(reply["count"] for _, reply in results) == list(range(1, 21))
    got = lines(server.out)
    expected = [{"prompt": it["prompt"], "responses": [it["responses"][i] for i in r]} for it, r in zip(items, rankings)]
    key = lambda rec: json.dumps(rec, sort_keys=True)
    assert sorted(got, key=key) == sorted(expected, key=key)


def test_closed_tab_prints_no_traceback(tmp_path, capsys):
    """The tab closes while the page waits for its next prompt: the reply meets a reset connection."""
    asked = threading.Event()

    def slow_sample(prompt, k):
        asked.set()
        time.sleep(0.3)
        return fake_sample(prompt, k)
    srv = label.LabelServer(("127.0.0.1", 0), slow_sample, ["Say hi."], str(tmp_path / "r.jsonl"))
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    sock = socket.create_connection(srv.server_address[:2], timeout=30)
    sock.sendall(b"GET /api/next HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert asked.wait(30)
    reset_connection(sock)
    status, item = request(f"http://127.0.0.1:{srv.server_address[1]}/api/next")   # takes 0.3 s: the other reply fails
    assert status == 200 and item["prompt"] == "Say hi."                                # meanwhile, and we still serve
    srv.shutdown()
    srv.server_close()
    assert "Traceback" not in capsys.readouterr().err


def test_count_goes_on_and_rate_mode_names(tmp_path):
    out = tmp_path / "ratings.jsonl"
    out.write_text(json.dumps({"prompt": "p", "responses": ["x", "y"], "models": ["b.pt", "a.pt"]}) + "\n")
    srv = label.LabelServer(("127.0.0.1", 0), lambda p, k: ["from a", "from b"], ["p"], str(out), k=2,
                            names=["a.pt", "b.pt"])
    assert srv.count == 1 and srv.wins == {"a.pt": 0, "b.pt": 1}
    item = srv.next_item()
    best = item["responses"].index("from a")
    assert srv.submit(json.dumps({"id": item["id"], "ranking": [best, 1 - best]}))[0] == 200
    assert lines(out)[-1] == {"prompt": "p", "responses": ["from a", "from b"], "models": ["a.pt", "b.pt"]}
    assert srv.count == 2 and srv.wins == {"a.pt": 1, "b.pt": 1}
    srv.server_close()


def test_identical_responses_are_not_served(tmp_path):
    srv = label.LabelServer(("127.0.0.1", 0), lambda p, k: ["same"] * k, ["p"], str(tmp_path / "r.jsonl"))
    with pytest.raises(RuntimeError, match="identical"):
        srv.next_item()
    srv.server_close()


def test_restart_continues_where_the_file_ends(tmp_path):
    """A second session on the same --out serves the prompts the first one had not reached, in the order
    it would have served them, and only then the ranked ones again."""
    prompts, out = [f"Prompt {i}." for i in range(6)], str(tmp_path / "r.jsonl")
    first = label.LabelServer(("127.0.0.1", 0), fake_sample, prompts, out)
    items = [first.next_item() for _ in range(6)]
    for item in items[:3]:
        assert first.submit(json.dumps({"id": item["id"], "ranking": [0, 1, 2, 3]}))[0] == 200
    first.server_close()
    second = label.LabelServer(("127.0.0.1", 0), fake_sample, prompts, out)
    assert second.count == 3
    assert [second.next_item()["prompt"] for _ in range(6)] == [it["prompt"] for it in items[3:] + items[:3]]
    second.server_close()


def run_label(args, ranking=None):
    """Start label.py, take one item from /api/next, rank it (when `ranking` is given), stop.
    Returns (status of /api/next, the item or error)."""
    proc = subprocess.Popen([sys.executable, "label.py", "--port", "0", "--max-new-tokens", "8", "--device", "cpu"]
                            + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = first_line(proc)
        assert line.startswith("labeling at http://127.0.0.1:"), line
        url = line.split()[2].rstrip("/")
        status, item = request(url + "/api/next")
        if ranking is not None:
            assert request(url + "/api/submit", {"id": item["id"], "ranking": ranking})[0] == 200
        return status, item
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_cli_restart_samples_anew_and_rates_two_alike_models(tmp_path, tiny_tok):
    """With one prompt a restart must serve it again: with new samples, not the ones already ranked.
    --rate with two identical checkpoints: the two models must not share a seed, or they answer alike."""
    ckpt = make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "rankings.jsonl"
    prompts.write_text('{"prompt": "Say hi."}\n')
    flags = ["--ckpt", ckpt, "--prompts", str(prompts), "--out", str(out)]
    run_label(flags, ranking=[0, 1, 2, 3])
    status, item = run_label(flags)
    assert status == 200 and item["count"] == 1 and item["prompt"] == "Say hi."
    assert not set(item["responses"]) & set(lines(out)[0]["responses"])
    twin = make_checkpoint(tmp_path / "ppo.pt", "ppo", tiny_tok)   # the same weights (seed 0) as sft.pt
    status, item = run_label(flags[:-1] + [str(tmp_path / "ratings.jsonl"), "--rate", twin], ranking=[1, 0])
    assert status == 200, item
    assert len(set(item["responses"])) == 2
    assert lines(tmp_path / "ratings.jsonl")[0]["models"] in ([ckpt, twin], [twin, ckpt])


def test_default_out_is_git_ignored(tmp_path, monkeypatch):
    """No --out: out/rankings.jsonl (under the folder label.py runs in), a folder the project's .gitignore covers."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rankings.jsonl").write_text('{"prompt": "p", "responses": ["a", "b"]}')   # no newline
    with pytest.raises(SystemExit, match="^error: --out out/rankings.jsonl: the last line has no newline"):
        label.main(["--port", "0", "--device", "cpu"])
    assert "out/" in (ROOT / ".gitignore").read_text().split()


def test_cli_then_train_rm(tmp_path, tiny_tok):
    """label.py on a tiny checkpoint: it prints its URL, serves model samples, writes what is ranked;
    train_rm.py --data then trains on that file."""
    ckpt = make_checkpoint(tmp_path / "sft.pt", "sft", tiny_tok)
    out = tmp_path / "rankings.jsonl"
    proc = subprocess.Popen([sys.executable, "label.py", "--ckpt", ckpt, "--out", str(out), "--port", "0",
                             "--max-new-tokens", "8", "--device", "cpu"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = first_line(proc)
        assert line.startswith("labeling at http://127.0.0.1:"), line
        url = line.split()[2].rstrip("/")
        _, item = request(url + "/api/next")
        for _ in range(6):
            status, reply = request(url + "/api/submit", {"id": item["id"], "ranking": [3, 1, 0, 2]})
            assert status == 200, reply
            item = reply["next"]
    finally:
        proc.kill()
        proc.wait(timeout=30)
    from data import load_rankings
    rankings = load_rankings(str(out))
    assert len(rankings) == 6 and all(len(r) == 4 for _, r in rankings)
    import train_rm   # in-process: one torch start-up less
    metrics = train_rm.main(["--init", ckpt, "--data", str(out), "--out", str(tmp_path / "rm.pt"), "--n-prompts", "4",
                             "--eval-prompts", "2", "--max-new-tokens", "8", "--batch-size", "2", "--device", "cpu"])
    assert metrics["rankings"] == 5 and "heldout_acc_noisy" in metrics   # the page's 6 lines: 5 to train, 1 held out
    from common import load_checkpoint
    assert load_checkpoint(str(tmp_path / "rm.pt"), ["rm"])["metrics"]["rankings"] == 5


@pytest.mark.parametrize("flags, error", [
    (["--k", "1"], "--k 1: must be in \\[2, 9\\]"),
    (["--port", "70000"], "--port 70000: must be in \\[0, 65535\\]"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
    (["--top-k", "-1"], "--top-k -1: must be >= 0"),
    (["--temperature", "0"], "--temperature 0 \\(greedy\\) would give K identical responses"),
    (["--prompts", "{tmp}/none.jsonl"], "--prompts .*none.jsonl: no such file"),
    (["--out", "{tmp}"], "--out .*: is a folder"),
    (["--out", "{tmp}/sft.jsonl"], ".*/sft.jsonl:1: expected 'responses'"),       # not a rankings file: never append
    (["--out", "{tmp}/cut.jsonl"], "--out .*/cut.jsonl: the last line has no newline"),
    (["--out", "{tmp}/array.json"], "--out .*/array.json: is one JSON array, and label.py appends JSON Lines"),
    (["--ckpt", "{tmp}/none.pt"], "--ckpt .*none.pt: no such file"),
])
def test_bad_input_is_one_error_line(tmp_path, flags, error):
    (tmp_path / "sft.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    (tmp_path / "cut.jsonl").write_text('{"prompt": "p", "responses": ["a", "b"]}')
    (tmp_path / "array.json").write_text('[{"prompt": "p", "responses": ["a", "b"]}]\n')
    flags = [f.format(tmp=tmp_path) for f in flags]
    with pytest.raises(SystemExit, match="^error: " + error):
        label.main(["--port", "0", "--out", str(tmp_path / "r.jsonl"), "--device", "cpu"] + flags)
    assert not (tmp_path / "r.jsonl").exists()


def test_write_error_is_a_500_and_the_item_stays(tmp_path):
    srv = label.LabelServer(("127.0.0.1", 0), fake_sample, ["p"], str(tmp_path / "no" / "r.jsonl"))
    item = srv.next_item()
    status, reply = srv.submit(json.dumps({"id": item["id"], "ranking": [0, 1, 2, 3]}))
    assert status == 500 and "not saved" in reply["error"]
    (tmp_path / "no").mkdir()                                         # fixed: the same ranking goes through
    assert srv.submit(json.dumps({"id": item["id"], "ranking": [0, 1, 2, 3]}))[0] == 200
    assert len(lines(srv.out)) == 1
    srv.server_close()
