"""oauthenticator's GitHub, Google and generic (OpenID Connect, Cognito) authenticators, as the hub runs them.

Three additions to upstream (oauthenticator 17.4.0), nothing else:

- **A refused client secret is said so.** When the provider refuses the hub's client credentials
  at the token endpoint (OAuth 2.0, RFC 6749 §5.2: ``invalid_client``, HTTP 401; GitHub answers
  200 with ``incorrect_client_credentials``), upstream logs the raw response and the user gets a
  bare 500. Here the hub logs one line that names the client id, the provider's answer and where
  the secret lives (``client_secret_source``), and the user a 503 that says sign-in is
  misconfigured, not that their password was wrong.
- **Groups from a claim or from GitHub teams**, as callables for ``auth_state_groups_key``
  (``manage_groups``): :class:`ClaimGroups` reads a claim of the user info or ID token whatever
  characters its name has (upstream's string form splits at dots, and claims such as
  ``https://example.org/groups`` have them), :func:`github_team_groups` names each GitHub team
  ``<org>:<team-slug>``.
- **Google Workspace groups for every user** (:class:`GoogleOAuthenticator`): upstream reads them
  only to check ``allowed_google_groups``/``admin_google_groups``; here ``read_google_groups`` reads
  them at every sign-in so that JupyterHub's groups (and so each class's ``allowed_groups``) follow
  Google, and the Directory API is asked at ``google_api_url`` like upstream's other Google calls.

Configure them as ``c.GenericOAuthenticator``, ``c.GitHubOAuthenticator``, ``c.GoogleOAuthenticator``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from oauthenticator import generic, github, google, oauth2
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Bool, Unicode

# What the token endpoint says when it does not accept the client id and secret.
REFUSED_CLIENT_ERRORS = ("invalid_client", "unauthorized_client", "incorrect_client_credentials")
MISCONFIGURED = (
    "Sign-in is not working: the identity provider refused this hub's client credentials. "
    "An administrator has to fix the hub's OAuth client secret."
)


def _provider_error(body: bytes | str | None) -> str:
    """The ``error`` of an OAuth error response, or its first 200 characters."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        return str(json.loads(text).get("error", text[:200]))
    except (ValueError, AttributeError):
        return text[:200]


class RefusedSecretIsSaid(oauth2.OAuthenticator):
    """Base of the three below: a refused client secret is one clear log line and a 503."""

    client_secret_source = Unicode(
        "",
        help="""Where the hub's client secret comes from, named in the log when the provider refuses it.

        ec2hub sets the Secrets Manager secret's name. Empty: the log says only that it was refused.
        """,
    ).tag(config=True)

    async def get_token_info(self, handler, params):
        try:
            token_info = await super().get_token_info(handler, params)
        except HTTPClientError as exc:
            error = _provider_error(exc.response.body if exc.response else str(exc))
            if exc.code in (400, 401) and error in REFUSED_CLIENT_ERRORS:
                self._log_refused(f"HTTP {exc.code} {error}")
                raise web.HTTPError(503, MISCONFIGURED) from None
            raise
        except web.HTTPError as exc:
            # Upstream turns an error answered with 200 (GitHub's way) into a 403.
            if any(e in str(exc.log_message) for e in REFUSED_CLIENT_ERRORS):
                self._log_refused(str(exc.log_message))
                raise web.HTTPError(503, MISCONFIGURED) from None
            raise
        return token_info

    def _log_refused(self, answer: str) -> None:
        where = f"the Secrets Manager secret {self.client_secret_source}" if self.client_secret_source else "its config"
        self.log.error(
            "Sign-in failed: the identity provider's token endpoint %s refused client id %s (%s): "
            "the client secret is wrong or the client is not registered there; put the provider's "
            "client secret in %s (the hub reads it at every start) and restart the hub",
            self.token_url, self.client_id, answer, where,
        )


class GenericOAuthenticator(RefusedSecretIsSaid, generic.GenericOAuthenticator):
    """Any OpenID Connect provider, the stack's Cognito user pool included."""


class GitHubOAuthenticator(RefusedSecretIsSaid, github.GitHubOAuthenticator):
    """GitHub, with teams as groups."""


class GoogleOAuthenticator(RefusedSecretIsSaid, google.GoogleOAuthenticator):
    """Google accounts; with ``read_google_groups``, their Google Workspace groups.

    Google's tokens carry no group claim: the groups come from the Admin SDK Directory API, asked
    by a service account with domain-wide delegation (``google_service_account_keys``) acting as a
    Workspace administrator (``gsuite_administrator``), as upstream does. The groups land in the
    auth state as ``google_user.google_groups`` (group e-mail addresses without the domain), where
    ``manage_groups`` takes them (:class:`ClaimGroups`).
    """

    read_google_groups = Bool(
        False,
        help="""Read the user's Google Workspace groups at every sign-in, whatever decides who may sign in.

        Upstream reads them only when ``allowed_google_groups`` or ``admin_google_groups`` is set.
        """,
    ).tag(config=True)

    async def update_auth_model(self, auth_model):
        auth_model = await super().update_auth_model(auth_model)
        if self.read_google_groups and not (self.allowed_google_groups or self.admin_google_groups):
            user_info = auth_model["auth_state"][self.user_auth_state_key]
            groups: set[str] = set()
            # Only a configured domain has a service account to ask; any other is refused
            # afterwards (hosted_domain), not turned into a 500 by a missing key.
            if user_info["domain"] in self.gsuite_administrator:
                # Upstream's own reader (pinned version), with its nested-group and paging logic.
                groups = await self._fetch_member_groups(user_info["email"], user_info["domain"])
            user_info["google_groups"] = sorted(groups)
        return auth_model

    async def httpfetch(self, url, *args, **kwargs):
        # Upstream builds every Google URL from google_api_url (GOOGLE_API_URL: a proxy or private
        # endpoint) except the Directory API's, which names www.googleapis.com itself.
        public = "https://www.googleapis.com/"
        if url.startswith(public) and self.google_api_url.rstrip("/") + "/" != public:
            url = self.google_api_url.rstrip("/") + "/" + url[len(public):]
        return await super().httpfetch(url, *args, **kwargs)


@dataclass(frozen=True)
class ClaimGroups:
    """``auth_state_groups_key`` that reads the groups claim ``claim`` of the user's info.

    ``user_key`` is where oauthenticator keeps the user info (or decoded ID token) in the auth
    state (``user_auth_state_key``: ``oauth_user`` for the generic authenticator). A missing claim
    is no groups; a single string is one group.
    """

    claim: str
    user_key: str = "oauth_user"

    def __call__(self, auth_state: dict[str, Any]) -> list[str]:
        value = (auth_state.get(self.user_key) or {}).get(self.claim) or []
        return [value] if isinstance(value, str) else [str(g) for g in value]


def github_team_groups(auth_state: dict[str, Any]) -> list[str]:
    """The user's GitHub teams as ``<org>:<team-slug>`` (``populate_teams_in_auth_state``)."""
    return [f"{team['organization']['login']}:{team['slug']}" for team in auth_state.get("teams") or []]
