"""NativeAuthenticator, made to work on JupyterHub 6.

jupyterhub-nativeauthenticator 1.3.0 (its latest release) breaks the login page on JupyterHub 6:
its ``LoginHandler.post`` times the login with ``self.statsd``, which JupyterHub 6 removed
(every login is an HTTP 500), and its ``_render`` refuses the keyword arguments JupyterHub 6's
error page passes through it (the 500 page itself fails). This subclass swaps in a login handler
without either problem and leaves everything else (sign-up, admin approval, password rules, 2FA)
to NativeAuthenticator. Configure it under ``c.NativeAuthenticator`` as usual: traitlets applies
a parent class's section to its subclasses. Drop it once a fixed release is pinned.
"""

from __future__ import annotations

from nativeauthenticator import NativeAuthenticator as _NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as _NativeLoginHandler
from tornado.escape import url_escape
from tornado.httputil import url_concat


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
        if info is not None and info.is_valid_password(data.get("password", "")) and not info.is_authorized:
            error = f"User {username} has not been authorized by an administrator yet."
        self.set_status(403)
        self.finish(await self._render(login_error=error, username=username))


class NativeAuthenticator(_NativeAuthenticator):
    """NativeAuthenticator with a login handler that works on JupyterHub 6."""

    def get_handlers(self, app):
        return [(path, LoginHandler if handler is _NativeLoginHandler else handler)
                for path, handler in super().get_handlers(app)]
