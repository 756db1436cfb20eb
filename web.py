"""What label.py's and serve.py's local web servers share: a thread per connection, one static page, JSON
replies, checked request bodies, and quiet disconnects. Standard library only (http.server)."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PageServer(ThreadingHTTPServer):
    """A thread per connection, one static page (self.page), and no traceback when a client leaves (a closed
    tab is ordinary; anything else still prints one)."""
    daemon_threads = True
    request_queue_size = 128   # connections waiting to be accepted; at the default 5, clients that come
                               # together see theirs dropped, and retried a second later

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
        """A POST's JSON body: (bytes, None), or (None, (status, message)) when it has no Content-Length (411),
        is over max_body bytes (413; drained first, so that the client reads the answer) or is not
        application/json (415, which a cross-site form cannot send)."""
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
