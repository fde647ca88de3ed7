"""GitHub's OAuth and REST endpoints, on 127.0.0.1, as the hub's GitHub sign-in uses them.

No GitHub is reachable here, so this serves what a hub with ``auth.type = "github"`` asks of GitHub
(at ``GITHUB_URL``, upstream's setting for GitHub Enterprise, whose REST API is under ``/api/v3``),
in the shapes GitHub documents:

- ``GET /login/oauth/authorize``: the sign-in page; its form sends the browser back to the hub's
  callback with a one-time code.
- ``POST /login/oauth/access_token``: the code, with the hub's client id and secret, for a token
  (JSON, with the granted scopes; a refused client is GitHub's 200 with an ``error``).
- ``GET /api/v3/user``: the signed-in account.
- ``GET /api/v3/user/teams``: the account's teams, one per page with a ``Link: rel="next"`` header.
- ``GET /api/v3/orgs/<org>/members/<login>``: 204 for a member, 404 otherwise.
"""

from __future__ import annotations

import secrets

from provider_standin import Answer, ProviderStandIn


class GitHubStandIn(ProviderStandIn):
    """``accounts``: login -> {"orgs": [...], "teams": [(org, team slug), ...]}."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tokens: dict[str, str] = {}

    def _login(self, headers) -> str | None:
        kind, _, token = headers.get("Authorization", "").partition(" ")
        return self.tokens.get(token) if kind.lower() in ("token", "bearer") else None

    def get(self, path, query, headers):
        if path == "/login/oauth/authorize":
            return self.chooser(path, query)
        login = self._login(headers)
        if login is None:
            return Answer(401, {"message": "Bad credentials"})
        if path == "/api/v3/user":
            return Answer(200, {"login": login, "id": sum(map(ord, login)), "email": f"{login}@example.org",
                                "name": login.title()})
        if path == "/api/v3/user/teams":
            teams = self.accounts[login].get("teams", [])
            page = int(query.get("page", "1"))
            body = [{"slug": slug, "name": slug, "organization": {"login": org}} for org, slug in teams[page - 1:page]]
            more = page < len(teams)
            link = f'<{self.url}/api/v3/user/teams?per_page=100&page={page + 1}>; rel="next"'
            return Answer(200, body, headers=[("Link", link)] if more else [])
        parts = path.split("/")
        if len(parts) == 7 and parts[:4] == ["", "api", "v3", "orgs"] and parts[5] == "members":
            org, member = parts[4], parts[6]
            return Answer(204 if org in self.accounts.get(member, {}).get("orgs", []) else 404)
        return Answer(404, {"message": "Not Found"})

    def post(self, path, form, headers):
        if path == "/login/oauth/authorize":
            return self.chosen(form)
        if path == "/login/oauth/access_token":
            login = self.redeem(form, headers)
            if login is None:
                return Answer(200, {"error": "incorrect_client_credentials"})
            token = secrets.token_urlsafe(16)
            self.tokens[token] = login
            return Answer(200, {"access_token": token, "token_type": "bearer", "scope": "read:org,read:user"})
        return Answer(404, {"message": "Not Found"})
