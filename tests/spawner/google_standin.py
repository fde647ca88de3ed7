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
- ``GET /admin/directory/v1/groups?userKey=``: the groups of a user, for that token only, one per
  page (``nextPageToken``).
"""

from __future__ import annotations

import secrets

from google.auth import jwt
from provider_standin import Answer, ProviderStandIn

DIRECTORY_SCOPE_SUFFIX = "/auth/admin.directory.group.readonly"
# google-auth names Google's own token endpoint as the JWT's audience whatever token_uri the key
# gives, and Google accepts that.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


class GoogleStandIn(ProviderStandIn):
    """``accounts``: e-mail -> {"hd": ..., "verified_email": ..., "groups": [group e-mail, ...]}."""

    def __init__(self, *, service_account_email: str, public_key_pem: bytes, admin: str, **kwargs):
        super().__init__(**kwargs)
        self.service_account_email, self.public_key_pem, self.admin = service_account_email, public_key_pem, admin
        self.access_tokens: dict[str, str] = {}
        self.directory_tokens: set[str] = set()

    @staticmethod
    def _bearer(headers) -> str:
        value = headers.get("Authorization", "")
        return value[7:] if value.startswith("Bearer ") else ""

    def get(self, path, query, headers):
        if path == "/o/oauth2/v2/auth":
            return self.chooser(path, query)
        if path == "/oauth2/v1/userinfo":
            email = self.access_tokens.get(self._bearer(headers))
            if email is None:
                return Answer(401, {"error": "invalid_token"})
            account = self.accounts[email]
            return Answer(200, {"id": str(sum(map(ord, email))), "email": email,
                                "verified_email": account.get("verified_email", True), "hd": account.get("hd", "")})
        if path == "/admin/directory/v1/groups":
            if self._bearer(headers) not in self.directory_tokens:
                return Answer(401, {"error": {"code": 401, "message": "Invalid Credentials"}})
            groups = self.accounts.get(query.get("userKey", ""), {}).get("groups", [])
            page = int(query.get("pageToken", "0"))
            body = {"kind": "admin#directory#groups", "groups": [{"email": g} for g in groups[page:page + 1]]}
            if page + 1 < len(groups):
                body["nextPageToken"] = str(page + 1)
            return Answer(200, body)
        return Answer(404, {"error": "not found"})

    def post(self, path, form, headers):
        if path == "/o/oauth2/v2/auth":
            return self.chosen(form)
        if path == "/oauth2/v4/token":
            email = self.redeem(form, headers)
            if email is None:
                return Answer(401, {"error": "invalid_client"})
            token = secrets.token_urlsafe(16)
            self.access_tokens[token] = email
            return Answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600,
                                "scope": "openid email"})
        if path == "/token":
            return self._service_account_grant(form)
        return Answer(404, {"error": "not found"})

    def _service_account_grant(self, form: dict) -> Answer:
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return Answer(400, {"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(form.get("assertion", ""), certs=self.public_key_pem,
                                audience=[GOOGLE_TOKEN_AUDIENCE, self.url + "/token"])
        except ValueError as error:
            return Answer(400, {"error": "invalid_grant", "error_description": str(error)})
        if (claims.get("iss") != self.service_account_email or claims.get("sub") != self.admin
                or not str(claims.get("scope", "")).endswith(DIRECTORY_SCOPE_SUFFIX)):
            return Answer(400, {"error": "unauthorized_client"})
        token = secrets.token_urlsafe(16)
        self.directory_tokens.add(token)
        return Answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})
