"""Google's sign-in and Directory API endpoints, on 127.0.0.1, as the hub's Google sign-in uses them.

No Google is reachable here, so this serves what a hub with ``auth.type = "google"`` asks of Google,
in the shapes Google documents:

- ``GET /o/oauth2/v2/auth``: the account chooser; its form sends the browser back to the hub's
  callback with a one-time code (the authorization-code flow).
- ``POST /oauth2/v4/token``: the code, with the hub's client id and secret, for an access token.
- ``GET /oauth2/v1/userinfo``: the signed-in account (``email``, ``verified_email``, ``hd``).
- ``POST /token``: the service account's signed JWT (RFC 7523 grant, signed with the key the test
  made) for a Directory access token; the signature, issuer, subject (the Workspace
  administrator) and scope are checked.
- ``GET /admin/directory/v1/groups?userKey=``: the groups of a user, for that token only, in two
  pages (``nextPageToken``) when the user has more than one.

Everything the hub sends is recorded in ``requests`` for the test to look at.
"""

from __future__ import annotations

import html
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

from google.auth import jwt

DIRECTORY_SCOPE_SUFFIX = "/auth/admin.directory.group.readonly"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


class GoogleStandIn:
    def __init__(self, *, client_id: str, client_secret: str, accounts: dict[str, dict],
                 service_account_email: str, public_key_pem: bytes, admin: str):
        self.client_id, self.client_secret = client_id, client_secret
        self.accounts = accounts  # email -> {"hd": ..., "verified_email": ..., "groups": [...]}
        self.service_account_email, self.public_key_pem, self.admin = service_account_email, public_key_pem, admin
        self.codes: dict[str, str] = {}
        self.access_tokens: dict[str, str] = {}
        self.directory_tokens: set[str] = set()
        self.requests: list[tuple[str, str, dict]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="google-stand-in", daemon=True)

    def start(self) -> GoogleStandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the test reads standin.requests
                pass

            def _answer(self, status: int, body, content_type="application/json", headers=()):
                data = (json.dumps(body) if content_type == "application/json" else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _bearer(self) -> str:
                value = self.headers.get("Authorization", "")
                return value[7:] if value.startswith("Bearer ") else ""

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                standin.requests.append(("GET", url.path, query))
                if url.path == "/o/oauth2/v2/auth":
                    if query.get("client_id") != standin.client_id:
                        return self._answer(400, {"error": "invalid_client"})
                    target = html.escape(url.path)
                    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                                     for k, v in query.items())
                    page = f'<html><body><form method="post" action="{target}">{hidden}' \
                           '<input name="login"><button type="submit">Next</button></form></body></html>'
                    return self._answer(200, page, "text/html")
                if url.path == "/oauth2/v1/userinfo":
                    email = standin.access_tokens.get(self._bearer())
                    if email is None:
                        return self._answer(401, {"error": "invalid_token"})
                    account = standin.accounts[email]
                    return self._answer(200, {"id": str(abs(hash(email))), "email": email,
                                              "verified_email": account.get("verified_email", True),
                                              "hd": account.get("hd", "")})
                if url.path == "/admin/directory/v1/groups":
                    if self._bearer() not in standin.directory_tokens:
                        return self._answer(401, {"error": {"code": 401, "message": "Invalid Credentials"}})
                    groups = standin.accounts.get(query.get("userKey", ""), {}).get("groups", [])
                    # Google pages its answers; one group per page exercises the reader's paging.
                    page = int(query.get("pageToken", "0"))
                    body = {"kind": "admin#directory#groups",
                            "groups": [{"email": g} for g in groups[page:page + 1]]}
                    if page + 1 < len(groups):
                        body["nextPageToken"] = str(page + 1)
                    return self._answer(200, body)
                return self._answer(404, {"error": "not found"})

            def do_POST(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                standin.requests.append(("POST", url.path, {k: v for k, v in form.items()
                                                            if k not in ("client_secret", "assertion")}))
                if url.path == "/o/oauth2/v2/auth":
                    if form.get("login") not in standin.accounts:
                        return self._answer(200, "<html><body>no such account</body></html>", "text/html")
                    code = secrets.token_urlsafe(16)
                    standin.codes[code] = form["login"]
                    back = f"{form['redirect_uri']}?{urlencode({'code': code, 'state': form.get('state', '')})}"
                    return self._answer(302, "", "text/html", headers=[("Location", back)])
                if url.path == "/oauth2/v4/token":
                    secret = form.get("client_secret")
                    if secret is None and self.headers.get("Authorization", "").startswith("Basic "):
                        import base64

                        cid, _, secret = base64.b64decode(self.headers["Authorization"][6:]).decode().partition(":")
                        form.setdefault("client_id", cid)
                    if (form.get("client_id"), secret) != (standin.client_id, standin.client_secret):
                        return self._answer(401, {"error": "invalid_client"})
                    email = standin.codes.pop(form.get("code", ""), None)
                    if email is None:
                        return self._answer(400, {"error": "invalid_grant"})
                    token = secrets.token_urlsafe(16)
                    standin.access_tokens[token] = email
                    return self._answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600,
                                              "scope": "openid email"})
                if url.path == "/token":
                    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                        return self._answer(400, {"error": "unsupported_grant_type"})
                    try:
                        # google-auth names Google's own token endpoint as the audience
                        # whatever token_uri the key gives, and Google accepts that.
                        claims = jwt.decode(form.get("assertion", ""), certs=standin.public_key_pem,
                                            audience=[GOOGLE_TOKEN_AUDIENCE, standin.url + "/token"])
                    except ValueError as error:
                        return self._answer(400, {"error": "invalid_grant", "error_description": str(error)})
                    if (claims.get("iss") != standin.service_account_email or claims.get("sub") != standin.admin
                            or not str(claims.get("scope", "")).endswith(DIRECTORY_SCOPE_SUFFIX)):
                        return self._answer(400, {"error": "unauthorized_client", "claims": claims})
                    token = secrets.token_urlsafe(16)
                    standin.directory_tokens.add(token)
                    return self._answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})
                return self._answer(404, {"error": "not found"})

        return Handler
