// A throw-away OpenID provider for PlugIt's auth_oidc tests, on the certified `oidc-provider`.
//
//   node provider.mjs [--port=N] [--issuer=URL] [--client-id=ID] [--client-secret=S]
//                     [--redirect-uris=U1,U2] [--post-logout-uris=U1,U2] [--id-token-ttl=SECONDS]
//
// Every option may also come from the environment: OIDC_PORT, OIDC_ISSUER, OIDC_CLIENT_ID,
// OIDC_CLIENT_SECRET, OIDC_REDIRECT_URIS, OIDC_POST_LOGOUT_URIS, OIDC_ID_TOKEN_TTL (argv wins).
// It listens on 127.0.0.1 only, keeps everything in memory (the package's memory adapter), signs
// with an RSA key made at start, requires PKCE (S256) for every client, and has its own small
// interaction pages, driven with plain HTTP forms:
//
//   GET  /interaction/:uid          the login form (fields: login, password) or the consent form
//   POST /interaction/:uid/login    checks the password of one of the fixed ACCOUNTS
//   POST /interaction/:uid/confirm  grants what the client asked for
//   GET  /interaction/:uid/abort    the user cancels: the client gets error=access_denied
//
// Test-only control (loopback): PATCH /_test/accounts/:id with a JSON object of claims to change
// (the next login sees them).  Never run this anywhere but in tests.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: argv } = parseArgs({
  options: {
    port: { type: 'string' },
    issuer: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    'redirect-uris': { type: 'string' },
    'post-logout-uris': { type: 'string' },
    'id-token-ttl': { type: 'string' },
  },
});

function option(name, env, fallback) {
  const value = argv[name] ?? process.env[env];
  return value === undefined || value === '' ? fallback : value;
}

function list(value) {
  return value.split(/[\s,]+/).filter(Boolean);
}

const port = Number(option('port', 'OIDC_PORT', '0'));
const clientId = option('client-id', 'OIDC_CLIENT_ID', 'plugit');
const clientSecret = option('client-secret', 'OIDC_CLIENT_SECRET', 'plugit-test-client-secret');
const redirectUris = list(option('redirect-uris', 'OIDC_REDIRECT_URIS', ''));
const postLogoutUris = list(option('post-logout-uris', 'OIDC_POST_LOGOUT_URIS', ''));
const idTokenTtl = Number(option('id-token-ttl', 'OIDC_ID_TOKEN_TTL', '3600'));
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  throw new Error(`invalid port ${port}`);
}
if (!redirectUris.length) {
  throw new Error('at least one redirect URI is needed (--redirect-uris or OIDC_REDIRECT_URIS)');
}
if (!Number.isInteger(idTokenTtl) || idTokenTtl < 1) {
  throw new Error(`invalid ID token lifetime ${idTokenTtl}`);
}

// The fixed accounts: id -> password and claims.  `sub` is the id.
const ACCOUNTS = {
  'alice-0001': {
    password: 'alice-password',
    claims: {
      preferred_username: 'alice',
      email: 'alice@example.org',
      email_verified: true,
      given_name: 'Alice',
      family_name: 'Archer',
      name: 'Alice Archer',
      groups: ['staff'],
    },
  },
  'bob-0002': {
    password: 'bob-password',
    claims: {
      preferred_username: 'bob',
      email: 'bob@example.org',
      email_verified: true,
      given_name: 'Bob',
      family_name: 'Baker',
      name: 'Bob Baker',
      groups: ['staff', 'managers'],
    },
  },
  'carol-0003': {
    password: 'carol-password',
    claims: {
      preferred_username: 'carol',
      email: 'carol@example.org',
      email_verified: true,
      given_name: 'Carol',
      family_name: 'Cook',
      name: 'Carol Cook',
      groups: ['ops'],
    },
  },
};

function accountByLogin(login) {
  return Object.entries(ACCOUNTS).find(
    ([id, account]) => id === login || account.claims.preferred_username === login,
  );
}

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `test-${randomBytes(6).toString('hex')}`,
  use: 'sig',
  alg: 'RS256',
};

const escape = (value) => String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
    + `<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

// `issuer` is known once the port is: the provider is made in listen() below.
function makeProvider(issuer) {
  return new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      post_logout_redirect_uris: postLogoutUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    pkce: { required: () => true },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['preferred_username', 'given_name', 'family_name', 'name'],
      groups: ['groups'],
    },
    scopes: ['openid', 'email', 'profile', 'groups'],
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.body = page('Sign out', `${form}<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('Signed out', '<p>You are signed out.</p>');
        },
      },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, sub) {
      const account = ACCOUNTS[sub];
      if (!account) return undefined;
      return { accountId: sub, claims: async () => ({ sub, ...account.claims }) };
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out)
        .map(([key, value]) => `<p><b>${escape(key)}</b>: ${escape(value)}</p>`).join(''));
    },
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 60,
      IdToken: idTokenTtl,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
  });
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 65536) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, html) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(html);
}

function loginForm(uid, error = '') {
  return page('Sign in', `${error ? `<p id="error">${escape(error)}</p>` : ''}`
    + `<form method="post" action="/interaction/${escape(uid)}/login">`
    + '<input name="login" required><input type="password" name="password" required>'
    + '<button type="submit">Sign in</button></form>'
    + `<a href="/interaction/${escape(uid)}/abort">Cancel</a>`);
}

async function interaction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<p>This sign-in page does not belong to your session.</p>'));
    return;
  }
  const { prompt, params, session } = details;
  if (req.method === 'GET' && action === '') {
    if (prompt.name === 'login') {
      send(res, 200, loginForm(uid));
    } else {
      send(res, 200, page('Authorize', `<p>${escape(params.client_id)} asks for: ${escape(params.scope)}</p>`
        + `<form method="post" action="/interaction/${escape(uid)}/confirm">`
        + '<button type="submit">Continue</button></form>'));
    }
    return;
  }
  if (req.method === 'GET' && action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (req.method === 'POST' && action === 'login' && prompt.name === 'login') {
    const form = await readForm(req);
    const found = accountByLogin(form.get('login') ?? '');
    if (!found || found[1].password !== form.get('password')) {
      send(res, 401, loginForm(uid, 'Wrong login or password.'));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: found[0] } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  if (req.method === 'POST' && action === 'confirm' && prompt.name === 'consent') {
    const { details: missing } = prompt;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }
  send(res, 400, page('Error', '<p>Unexpected step.</p>'));
}

async function control(req, res, id) {
  const account = ACCOUNTS[id];
  if (!account || req.method !== 'PATCH') {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  Object.assign(account.claims, JSON.parse(Buffer.concat(chunks).toString('utf8')));
  res.writeHead(204).end();
}

const server = createServer();
server.listen(port, '127.0.0.1', () => {
  const { port: bound } = server.address();
  const issuer = option('issuer', 'OIDC_ISSUER', `http://127.0.0.1:${bound}`);
  const provider = makeProvider(issuer);
  const handle = provider.callback();
  server.on('request', (req, res) => {
    const { pathname } = new URL(req.url, 'http://127.0.0.1');
    const step = pathname.match(/^\/interaction\/([\w-]+)(?:\/(login|confirm|abort))?$/);
    const test = pathname.match(/^\/_test\/accounts\/([\w-]+)$/);
    let work;
    if (step) {
      work = interaction(provider, req, res, step[1], step[2] ?? '');
    } else if (test) {
      work = control(req, res, test[1]);
    } else {
      handle(req, res);
      return;
    }
    work.catch((error) => {
      // An expired or foreign interaction (no cookie), a malformed body: a plain 400.
      console.error(`interaction error: ${error.name}: ${error.message}`);
      if (!res.headersSent) send(res, 400, page('Error', `<p>${escape(error.name)}</p>`));
      else res.end();
    });
  });
  console.log(JSON.stringify({ issuer, port: bound }));
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
