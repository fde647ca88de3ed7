// A real OpenID Connect provider for the sign-in tests: panva's certified `oidc-provider`
// (node_modules, pinned in package.json), configured for one client and a few accounts.
//
// Inputs (environment): OIDC_PORT (loopback port), OIDC_CLIENT_ID, OIDC_CLIENT_SECRET,
// OIDC_REDIRECT_URI (the hub's callback), OIDC_ACCOUNTS (JSON {"<login>": ["<group>", ...]}).
// Sign-in is oidc-provider's development interaction (a login form that takes any password for
// a known login, then a consent form); the authorization-code flow, the client authentication at
// the token endpoint and the userinfo endpoint are the provider's own. The `groups` scope
// releases the `groups` claim. Prints "oidc-provider listening <issuer>" when ready.
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS);

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.OIDC_CLIENT_ID,
    client_secret: process.env.OIDC_CLIENT_SECRET,
    redirect_uris: [process.env.OIDC_REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    // oauthenticator sends the client id and secret in the POST body by default.
    token_endpoint_auth_method: 'client_secret_post',
  }],
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email'],
    groups: ['groups'],
  },
  async findAccount(ctx, id) {
    if (!Object.hasOwn(accounts, id)) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id, preferred_username: id, name: id, email: `${id}@example.org`, groups: accounts[id],
        };
      },
    };
  },
  // Plain HTTP on loopback: the hub's client does not use PKCE unless asked.
  pkce: { required: () => false },
  cookies: { keys: ['ec2hub-test-cookie-key-0123456789'] },
  features: { devInteractions: { enabled: true } },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening ${issuer}`);
});
