"""NativeAuthenticator, made to work on JupyterHub 6 and hardened for a hub on the internet.

jupyterhub-nativeauthenticator 1.3.0 (its latest release) breaks the login page on JupyterHub 6:
its ``LoginHandler.post`` times the login with ``self.statsd``, which JupyterHub 6 removed
(every login is an HTTP 500), and its ``_render`` refuses the keyword arguments JupyterHub 6's
error page passes through it (the 500 page itself fails). This subclass swaps in a login handler
without either problem. Configure it under ``c.NativeAuthenticator`` as usual: traitlets applies
a parent class's section to its subclasses.

Two changes to upstream's rules, both for accounts anyone on the internet can try:

- **Growing lockout.** Upstream blocks a name for a fixed ``seconds_before_next_try`` once it has
  ``allowed_failed_logins`` failures. Here each failure past that doubles the wait, up to
  ``lockout_max_seconds``; a successful login clears the count (upstream's bookkeeping, in memory:
  a hub restart clears it too).
- **No admin by sign-up.** Upstream authorizes a sign-up under an ``admin_users`` name at once, so
  whoever signs up first under that name is admin. Here the sign-up form refuses those names; the
  admin account is created from ``admin_password_file`` when the hub starts.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import bcrypt
from nativeauthenticator import NativeAuthenticator as _NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as _NativeLoginHandler
from nativeauthenticator.orm import UserInfo
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Integer, Unicode


class LoginHandler(_NativeLoginHandler):
    """NativeAuthenticator's login page, with JupyterHub 6's handler contract."""

    def _render(self, login_error=None, username=None, sync=False, **_error_page):
        # JupyterHub 6 renders a failed form POST (an expired XSRF token, say) as the login page
        # through _render(sync=True, status_code=..., message=...): answer with the native form.
        return self.render_template(
            "native-login.html",
            sync=sync,
            next=url_escape(self.get_argument("next", default="")),
            username=username,
            login_error=login_error,
            custom_html=self.authenticator.custom_html,
            login_url=self.settings["login_url"],
            enable_signup=self.authenticator.enable_signup,
            two_factor_auth=self.authenticator.allow_2fa,
            authenticator_login_url=url_concat(
                self.authenticator.login_url(self.hub.base_url), {"next": self.get_argument("next", "")}
            ),
        )

    async def post(self):
        data = {arg: self.get_argument(arg, strip=False) for arg in self.request.body_arguments if arg != "_xsrf"}
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        username = data.get("username", "")
        error = "Invalid username or password."
        info = self.authenticator.get_user(username)
        # Saying "not authorized yet" tells that the password was right: never while the name is
        # locked out, or the lockout would not slow down guessing a pending account's password.
        name = self.authenticator.normalize_username(username)
        if (info is not None and not info.is_authorized and not self.authenticator.is_blocked(name)
                and info.is_valid_password(data.get("password", ""))):
            error = f"User {username} has not been authorized by an administrator yet."
        self.set_status(403)
        self.finish(await self._render(login_error=error, username=username))


class NativeAuthenticator(_NativeAuthenticator):
    """NativeAuthenticator with a JupyterHub 6 login handler, a growing lockout and no admin sign-up."""

    lockout_max_seconds = Integer(
        3600,
        help="""Longest wait after repeated failed logins, in seconds.

        The first lockout lasts ``seconds_before_next_try``; each further failure doubles it, up
        to this.""",
    ).tag(config=True)

    admin_password_file = Unicode(
        None,
        allow_none=True,
        help="""File holding the first admin's password (the first line), read when the hub starts.

        If the account of the (alphabetically) first name in ``admin_users`` does not exist yet it is created,
        authorized, with this password; an existing account is left as it is (its owner may have
        changed the password). None: no admin account is created.""",
    ).tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.admin_password_file:
            self._ensure_admin_account(Path(self.admin_password_file))

    def _ensure_admin_account(self, password_file: Path) -> None:
        if not self.admin_users:
            self.log.warning("admin_password_file is set but admin_users is empty: no admin account created")
            return
        name = self.normalize_username(min(self.admin_users))
        if self.user_exists(name):
            return
        lines = password_file.read_text(encoding="utf-8").splitlines()
        password = lines[0] if lines else ""
        if len(password) < self.minimum_password_length:
            raise ValueError(f"{password_file}: the admin password is shorter than {self.minimum_password_length}")
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
        self.db.add(UserInfo(username=name, password=hashed, is_authorized=True))
        self.db.commit()
        self.log.info("created the admin account %s from %s", name, password_file)

    def create_user(self, username, password, **kwargs):
        """The sign-up form's path: an admin name is never created here (see the module docstring)."""
        if self.normalize_username(username) in {self.normalize_username(a) for a in self.admin_users}:
            self.log.warning("sign-up under the admin name %s refused", username)
            return None
        return super().create_user(username, password, **kwargs)

    def can_try_to_login_again(self, username):
        attempts = self.login_attempts.get(username)
        if not attempts:
            return True
        beyond = max(attempts["count"] - self.allowed_failed_logins, 0)
        wait = min(self.seconds_before_next_try * 2**beyond, self.lockout_max_seconds)
        # Upstream records attempt times with naive datetime.now().
        return (datetime.now() - attempts["time"]).total_seconds() > wait

    def get_handlers(self, app):
        return [(path, LoginHandler if handler is _NativeLoginHandler else handler)
                for path, handler in super().get_handlers(app)]
