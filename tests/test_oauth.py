"""Sign in with Hugging Face (playground/ui/identity.py): on a Space with OAuth the signed-in Hub name owns
the visitor's runs, taken from the server's signed session, never from what the caller sends.

No Space and no network here, so the whole login runs against a stand-in for the Hub's OpenID provider
on 127.0.0.1 (discovery, authorize, token, a JWKS with an RSA key, an RS256-signed id_token): gradio's
own /login/huggingface and /login/callback routes and authlib do the real work (state, nonce, code
exchange, id_token signature and claims), and a real Starlette SessionMiddleware signs the cookie.
What only a Space can show: the Hub's own pages and its redirect rules, and the variables it sets.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse

import gradio as gr
import pytest

from playground.config import settings
from playground.ui import identity

CLIENT_ID = "client-0123"
CLIENT_SECRET = "space-secret-0123"


@pytest.fixture
def space(monkeypatch):
    """The variables a Space with `hf_oauth: true` sets; gradio.oauth reads its four at import, so they are
    patched there too."""
    import gradio.oauth

    provider = FakeHub()
    values = {"SYSTEM": "spaces", "SPACE_ID": "ana/playground", "OAUTH_CLIENT_ID": CLIENT_ID,
              "OAUTH_CLIENT_SECRET": CLIENT_SECRET, "OAUTH_SCOPES": "openid profile",
              "OPENID_PROVIDER_URL": provider.url}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
        if hasattr(gradio.oauth, name):
            monkeypatch.setattr(gradio.oauth, name, value)
    monkeypatch.delenv("SPACE_HOST", raising=False)
    monkeypatch.delenv("PLAYGROUND_OAUTH", raising=False)
    settings.cache_clear()
    yield provider
    provider.stop()
    settings.cache_clear()


class FakeHub:
    """An OpenID provider on 127.0.0.1 that signs in whoever `next_user` names, as the Hub would after
    its consent page."""

    def __init__(self):
        import uvicorn
        from joserfc import jwt
        from joserfc.jwk import RSAKey
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, RedirectResponse
        from starlette.routing import Route

        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        self.next_user = "ana"
        self.codes: dict[str, dict] = {}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

        def discovery(_request):
            return JSONResponse({"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                                 "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
                                 "userinfo_endpoint": f"{self.url}/userinfo",
                                 "id_token_signing_alg_values_supported": ["RS256"]})

        def authorize(request):
            q = request.query_params
            assert q["client_id"] == CLIENT_ID and q["response_type"] == "code"
            code = f"code-{len(self.codes)}"
            self.codes[code] = {"nonce": q.get("nonce"), "user": self.next_user, "redirect_uri": q["redirect_uri"]}
            return RedirectResponse(f"{q['redirect_uri']}&" + urllib.parse.urlencode({"code": code, "state": q["state"]}))

        async def token(request):
            form = await request.form()
            grant = self.codes.pop(form["code"])             # a code is good once
            assert form["redirect_uri"] == grant["redirect_uri"]
            now = int(time.time())
            claims = {"iss": self.url, "sub": f"id-{grant['user']}", "aud": CLIENT_ID, "iat": now, "exp": now + 3600,
                      "nonce": grant["nonce"], "name": grant["user"].title(), "preferred_username": grant["user"],
                      "profile": f"https://huggingface.co/{grant['user']}", "picture": ""}
            id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, self.key)
            return JSONResponse({"access_token": "at-" + grant["user"], "token_type": "bearer", "expires_in": 3600,
                                 "scope": "openid profile", "id_token": id_token})

        def jwks(_request):
            return JSONResponse({"keys": [self.key.as_dict(private=False)]})

        app = Starlette(routes=[Route("/.well-known/openid-configuration", discovery), Route("/authorize", authorize),
                                Route("/token", token, methods=["POST"]), Route("/jwks", jwks)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "the stand-in provider did not start"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def small_app() -> gr.Blocks:
    """The playground's identity pieces on a page of their own: the Sign-in button, a read that does not
    queue (like History) and a queued event (like Generate), both answering whose runs they would save."""
    with gr.Blocks() as demo:
        identity.login_button()
        key = gr.Textbox(label="browser key")
        out = gr.Textbox()

        def whose(browser_key, request: gr.Request):
            return identity.owner_of(request, browser_key) or "nobody"

        gr.Button("read").click(whose, key, out, queue=False, api_name="read")
        gr.Button("run").click(whose, key, out, api_name="run")
    demo.queue(api_open=False)
    return demo


def client_for(demo):
    from gradio.routes import App
    from starlette.testclient import TestClient

    from playground.server import app_kwargs

    app = App.create_app(demo, app_kwargs=app_kwargs())
    # https: the session cookie is Secure (gradio's SessionMiddleware: https_only, SameSite=None), as on a Space
    return TestClient(app, base_url="https://testserver")


def sign_in(client, provider: FakeHub, user: str):
    """The browser's walk: the button's /login/huggingface, the provider's authorize page, back to the callback."""
    import httpx

    provider.next_user = user
    to_provider = client.get("/login/huggingface?_target_url=/", follow_redirects=False)
    assert to_provider.status_code in (302, 307) and to_provider.headers["location"].startswith(provider.url)
    back = httpx.get(to_provider.headers["location"], follow_redirects=False)
    assert back.status_code in (302, 307)
    callback = back.headers["location"].replace("https://testserver", "")
    landed = client.get(callback, follow_redirects=False)
    assert landed.status_code in (302, 307) and landed.headers["location"] == "/", landed.text[:300]


def call(client, demo, name: str, browser_key: str, cookies=None) -> str:
    dep = next(d for d in demo.config["dependencies"] if d.get("api_name") == name)
    body = {"data": [browser_key], "fn_index": dep["id"], "session_hash": "s" + name, "trigger_id": None,
            "event_data": None}
    if name == "read":
        response = client.post("/gradio_api/run/predict", json=body)
        assert response.status_code == 200, response.text[:300]
        return response.json()["data"][0]
    joined = client.post("/gradio_api/queue/join", json=body)
    assert joined.status_code == 200, joined.text[:300]
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": body["session_hash"]}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    assert message.get("success"), message
                    return message["output"]["data"][0]
    raise AssertionError("no result")


KEY = "0123456789abcdef0123456789abcdef"


def test_signed_in_hub_name_owns_the_runs_through_gradios_own_login(space):
    demo = small_app()
    with client_for(demo) as client:
        client.get("/gradio_api/startup-events")
        assert call(client, demo, "read", KEY) == f"browser:{KEY}"       # before signing in: the browser key
        sign_in(client, space, "ana")
        assert client.cookies.get("session")
        assert call(client, demo, "read", KEY) == "user:ana"
        assert call(client, demo, "run", KEY) == "user:ana"
        # what the caller sends cannot make it someone else: the key is not a name, a name is not a key
        assert call(client, demo, "read", "user:bob") == "user:ana"
        # a name too long for the owner column whole is not cut to a prefix another name could share
        sign_in(client, space, "a" * 60)
        assert call(client, demo, "read", KEY) == f"browser:{KEY}"
        client.get("/logout", follow_redirects=False)
        assert call(client, demo, "read", KEY) == f"browser:{KEY}"
        assert call(client, demo, "read", "user:bob") == "nobody"


def test_a_forged_or_expired_session_is_nobody(space):
    """A cookie signed with another key (what an attacker can make) is ignored by the SessionMiddleware; an
    expired login reads as signed out, as gradio's own button says."""
    import base64

    from itsdangerous import TimestampSigner

    demo = small_app()
    info = {"oauth_info": {"expires_at": int(time.time()) + 3600, "userinfo": {"preferred_username": "bob"}}}
    payload = base64.b64encode(json.dumps(info).encode())
    with client_for(demo) as client:
        client.get("/gradio_api/startup-events")
        # gradio's secret off a Space without OAUTH_CLIENT_SECRET: sha256("-v4"), public knowledge
        import hashlib
        public = hashlib.sha256(b"-v4").hexdigest()
        client.cookies.set("session", TimestampSigner(public).sign(payload).decode(), domain="testserver.local")
        assert call(client, demo, "read", KEY) == f"browser:{KEY}"
        # the right key (gradio's: sha256 of the Space's secret + "-v4") but expired: signed out
        real = hashlib.sha256((CLIENT_SECRET + "-v4").encode()).hexdigest()
        info["oauth_info"]["expires_at"] = int(time.time()) - 1
        client.cookies.clear()
        client.cookies.set("session", TimestampSigner(real).sign(base64.b64encode(json.dumps(info).encode())).decode(),
                           domain="testserver.local")
        assert call(client, demo, "read", KEY) == f"browser:{KEY}"
        # and the same cookie unexpired is bob: the check above failed on the expiry, not on the cookie
        info["oauth_info"]["expires_at"] = int(time.time()) + 3600
        client.cookies.clear()
        client.cookies.set("session", TimestampSigner(real).sign(base64.b64encode(json.dumps(info).encode())).decode(),
                           domain="testserver.local")
        assert call(client, demo, "read", KEY) == "user:bob"


def test_without_oauth_nothing_changes(monkeypatch):
    from starlette.requests import Request

    for name in ("OAUTH_CLIENT_ID", "PLAYGROUND_OAUTH", "SYSTEM"):
        monkeypatch.delenv(name, raising=False)
    assert not identity.oauth_enabled()
    with gr.Blocks() as demo:
        assert identity.login_button() is None
    assert not demo.expects_oauth                      # no login routes, no session cookie
    # even a session that somehow reached the scope is not read while OAuth is off
    scope = {"type": "http", "headers": [], "session": {"oauth_info": {"userinfo": {"preferred_username": "eve"}}}}
    request = gr.Request(request=Request(scope))
    assert identity.owner_of(request, KEY) == f"browser:{KEY}"
    monkeypatch.setenv("PLAYGROUND_OAUTH", "0")
    monkeypatch.setenv("OAUTH_CLIENT_ID", CLIENT_ID)
    assert not identity.oauth_enabled()               # the operator can turn a Space's OAuth off


def test_oauth_refuses_to_start_where_the_login_would_be_gradios_mock(monkeypatch):
    """Off a Space gradio signs everyone in as this machine's Hub user under a public cookie key: refused."""
    for name in ("SYSTEM", "SPACE_ID", "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PLAYGROUND_OAUTH", "1")
    with pytest.raises(SystemExit, match="SYSTEM=spaces and SPACE_ID, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET"):
        identity.login_button()
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "ana/playground")
    monkeypatch.setenv("OAUTH_CLIENT_ID", CLIENT_ID)
    with pytest.raises(SystemExit, match="not set: OAUTH_CLIENT_SECRET, OAUTH_SCOPES, OPENID_PROVIDER_URL$"):
        identity.login_button()


def test_the_page_has_the_sign_in_button_on_a_space_with_oauth(space):
    from playground.ui import build_app

    demo = build_app()
    assert demo.expects_oauth
    assert [b for b in demo.blocks.values() if isinstance(b, gr.LoginButton)]
