"""What the front ends share. chat.py and serve.py: the context rule (fit_context) and answers fit
for a terminal or a page (AnswerText). label.py's and serve.py's local web servers: a thread per
connection, one static page, JSON replies, checked request bodies, and quiet disconnects. Standard
library only (http.server)."""
import codecs
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def fit_context(turns, block_size, reserve):
    """The context rule of chat.py and serve.py. turns: token lists, oldest first, each a whole
    <|user|>..<|assistant|>..<|end|> turn but the last, the new <|user|>{text}<|assistant|>. Keep
    the newest whole turns that leave `reserve` tokens of the block for the answer; the new turn is
    kept whenever it leaves at least one (the answer is then cut short). Returns (ids, dropped): the
    context and how many old turns were left out, for the caller to say so; ids is None when the
    new turn alone fills the block."""
    if len(turns[-1]) >= block_size:
        return None, len(turns) - 1
    kept, n = 1, len(turns[-1])
    while kept < len(turns) and n + len(turns[-kept - 1]) <= block_size - reserve:
        n += len(turns[-kept - 1])
        kept += 1
    return [t for turn in turns[-kept:] for t in turn], len(turns) - kept


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")   # C0 and C1 controls but \t and \n


class AnswerText:
    """An answer's text as its tokens arrive, fit for a terminal or a page: push() returns the
    characters completed by a token (a token may end inside a UTF-8 character: it waits for the
    rest), never a control character, and None at a special token, where the answer ends (<|end|>,
    or a template token the model should not write). close() returns what is left (an unfinished
    character becomes U+FFFD)."""

    def __init__(self, tok):
        self.enc, self.specials = tok.to_tiktoken(), set(tok.special_tokens.values())
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token):
        if token in self.specials:
            return None
        return CONTROL.sub("", self.utf8.decode(self.enc.decode_single_token_bytes(token)))

    def close(self):
        return CONTROL.sub("", self.utf8.decode(b"", final=True))


def answer_text(tok, ids):
    """The whole text of an answer (token ids), cut and cleaned as AnswerText does."""
    text, pieces = AnswerText(tok), []
    for t in ids:
        piece = text.push(t)
        if piece is None:
            break
        pieces.append(piece)
    return "".join(pieces) + text.close()


class PageServer(ThreadingHTTPServer):
    """A thread per connection, one static page (self.page), and no traceback when a client leaves
    (a closed tab is ordinary; anything else still prints one)."""
    daemon_threads = True
    request_queue_size = 128   # connections waiting to be accepted; at the default 5, clients that
                               # come together see theirs dropped, and retried a second later

    def __init__(self, address, handler, page):
        super().__init__(address, handler)
        with open(page, "rb") as f:
            self.page = f.read()

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class PageHandler(BaseHTTPRequestHandler):
    """JSON replies, checked bodies, no line per request in the terminal."""
    timeout = 60   # seconds a silent client may hold its thread (each socket read or write)

    def reply(self, status, body, kind="application/json"):
        """Send body (bytes, or anything json.dumps takes) with this status; nothing cached."""
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def read_body(self, max_body):
        """A POST's JSON body: (bytes, None), or (None, (status, message)) when it has no
        Content-Length (411), is over max_body bytes (413; drained first, so that the client reads
        the answer) or is not application/json (415, which a cross-site form cannot send)."""
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            return None, (411, "a Content-Length header is needed")
        if int(length) > max_body:
            self.rfile.read(min(int(length), 16 * max_body))
            return None, (413, f"the body is over {max_body} bytes")
        body = self.rfile.read(int(length))
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return None, (415, "the Content-Type must be application/json")
        return body, None

    def log_message(self, *args):
        pass
