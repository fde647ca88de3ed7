"""What the identity-provider stand-ins (google_standin, github_standin) share: an HTTP server on
127.0.0.1 in a thread, a record of every request, the account chooser of the authorization-code
flow and the client-credential check of its token endpoint."""

from __future__ import annotations

import base64
import html
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse


class Answer:
    def __init__(self, status: int, body: Any = None, content_type: str = "application/json", headers=()):
        self.status, self.body, self.content_type, self.headers = status, body, content_type, list(headers)


class ProviderStandIn:
    """Subclasses answer ``get(path, query, headers)`` and ``post(path, form, headers)`` with an
    :class:`Answer`; ``requests`` lists (method, path, parameters without secrets)."""

    def __init__(self, *, client_id: str, client_secret: str, accounts: dict[str, dict]):
        self.client_id, self.client_secret, self.accounts = client_id, client_secret, accounts
        self.codes: dict[str, str] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name=type(self).__name__, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def get(self, path: str, query: dict, headers) -> Answer:
        raise NotImplementedError

    def post(self, path: str, form: dict, headers) -> Answer:
        raise NotImplementedError

    # -- the authorization-code flow --------------------------------------------------------------

    def chooser(self, path: str, query: dict) -> Answer:
        """The sign-in page: a form that posts the hub's parameters back with the chosen login."""
        if query.get("client_id") != self.client_id:
            return Answer(400, {"error": "invalid_client"})
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in query.items())
        page = (f'<html><body><form method="post" action="{html.escape(path)}">{hidden}'
                '<input name="login"><button type="submit">Sign in</button></form></body></html>')
        return Answer(200, page, "text/html")

    def chosen(self, form: dict) -> Answer:
        """The chooser's form: back to the hub's callback with a one-time code for that login."""
        if form.get("login") not in self.accounts:
            return Answer(200, "<html><body>no such account</body></html>", "text/html")
        code = secrets.token_urlsafe(16)
        self.codes[code] = form["login"]
        back = f"{form['redirect_uri']}?{urlencode({'code': code, 'state': form.get('state', '')})}"
        return Answer(302, "", "text/html", [("Location", back)])

    def redeem(self, form: dict, headers) -> str | None:
        """The login a token request's code was issued for, if the client id and secret (in the
        body or as HTTP Basic) are the registered ones and the code is fresh."""
        secret = form.get("client_secret")
        if secret is None and headers.get("Authorization", "").startswith("Basic "):
            client, _, secret = base64.b64decode(headers["Authorization"][6:]).decode().partition(":")
            form.setdefault("client_id", client)
        if (form.get("client_id"), secret) != (self.client_id, self.client_secret):
            return None
        return self.codes.pop(form.get("code", ""), None)

    # -- HTTP -------------------------------------------------------------------------------------

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the tests read standin.requests
                pass

            def _send(self, answer: Answer) -> None:
                body = answer.body
                data = b"" if body is None else (json.dumps(body) if answer.content_type == "application/json"
                                                 else body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in answer.headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                standin.requests.append(("GET", url.path, query))
                self._send(standin.get(url.path, query, self.headers))

            def do_POST(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                standin.requests.append(("POST", url.path, {k: v for k, v in form.items()
                                                            if k not in ("client_secret", "assertion")}))
                self._send(standin.post(url.path, form, self.headers))

        return Handler
