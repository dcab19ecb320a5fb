"""Access control of the HTTP API (serve_app.security) over the fake stages of test_api.py: API keys,
admin keys, the `openai` SDK's `api_key=`, the CORS policy, and the `AppArgs` that configure them."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from indextts.synthesis import Synthesizer
from indextts.voices import VoiceRegistry
from serve_app import security
from serve_app.api import ServiceSettings, SpeechService, build_api
from serve_app.config import AppArgs
from serve_app.security import AccessSettings, install_access_control, parse_keys
from test_api import FakeFrontend, FakeGPT, FakeVocoder, assert_envelope, voices_dir  # noqa: F401 (fixture)

USER, ADMIN = "sk-user-0123456789", "sk-admin-9876543210"
SELF = "http://testserver"                 # the TestClient's own origin
APP, EVIL = "https://app.example", "https://evil.example"


@pytest.fixture
def make_client(voices_dir):  # noqa: F811 (the fixture imported above)
    """A TestClient over the fake stages with the given AccessSettings fields."""
    def make(**access) -> TestClient:
        settings = ServiceSettings(max_input_chars=200, max_upload_files=3, max_upload_bytes=400_000)
        synth = Synthesizer(FakeFrontend(), FakeGPT(), FakeVocoder(), lookahead=2)
        service = SpeechService(synth, VoiceRegistry(voices_dir, max_files=3, max_file_bytes=400_000), settings)
        return TestClient(build_api(service, AccessSettings(**access)), raise_server_exceptions=False)
    return make


@pytest.fixture
def wav(tiny_dir) -> tuple:
    return ("c.wav", (tiny_dir / "ref_a.wav").read_bytes(), "audio/wav")


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def speech(client, headers=None):
    body = {"model": "tts-1", "input": "Hello world.", "voice": "alice", "response_format": "pcm"}
    return client.post("/v1/audio/speech", json=body, headers=headers or {})


def upload(client, wav, name="carol", headers=None):
    return client.post("/v1/audio/voices", data={"name": name}, files=[("audio_sample", wav)],
                       headers=headers or {})


def assert_refused(r, status: int, code: str, message_has: str = ""):
    assert_envelope(r, status, None, message_has)
    assert r.json()["error"]["code"] == code


def voice_names(client, headers=None) -> set[str]:
    return {v["id"] for v in client.get("/v1/audio/voices", headers=headers or {}).json()["data"]}


# -- API keys ---------------------------------------------------------------------------------

def test_without_keys_the_api_is_open(make_client, wav):
    client = make_client()
    assert speech(client).status_code == 200
    assert upload(client, wav).status_code == 200
    assert client.delete("/v1/audio/voices/carol").status_code == 200
    assert client.get("/v1/models").status_code == 200


def test_keys_are_required_on_every_route_but_health(make_client):
    client = make_client(api_keys=frozenset({USER, "sk-other"}))
    for headers in ({}, bearer("sk-wrong"), {"Authorization": f"Basic {USER}"}, {"Authorization": "Bearer "},
                    bearer(USER + "x"), bearer(USER[:-1])):
        r = speech(client, headers)
        assert_refused(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert USER not in r.text
    for path in ("/v1/models", "/v1/audio/voices", "/audio/voices", "/docs", "/nowhere"):
        assert_refused(client.get(path), 401, "invalid_api_key")
    assert speech(client, bearer(USER)).status_code == 200
    assert speech(client, {"Authorization": f"bearer {USER}"}).status_code == 200   # the scheme is case-blind
    assert client.get("/v1/models", headers=bearer("sk-other")).json()["data"][0]["id"] == "indextts"
    assert client.get("/health").json()["status"] == "healthy"


def test_without_admin_keys_any_key_manages_voices(make_client, wav):
    client = make_client(api_keys=frozenset({USER}))
    assert_refused(upload(client, wav), 401, "invalid_api_key")
    assert upload(client, wav, headers=bearer(USER)).status_code == 200
    assert client.delete("/v1/audio/voices/carol", headers=bearer(USER)).status_code == 200


def test_admin_keys_guard_voice_upload_and_delete(make_client, wav):
    client = make_client(api_keys=frozenset({USER}), admin_keys=frozenset({ADMIN}))
    assert_refused(upload(client, wav, headers=bearer(USER)), 403, "admin_key_required", "admin")
    assert "carol" not in voice_names(client, bearer(USER))
    assert upload(client, wav, headers=bearer(ADMIN)).status_code == 200
    assert_refused(client.delete("/v1/audio/voices/carol", headers=bearer(USER)), 403, "admin_key_required")
    assert "carol" in voice_names(client, bearer(USER))
    assert client.delete("/v1/audio/voices/carol", headers=bearer(ADMIN)).status_code == 200
    assert speech(client, bearer(USER)).status_code == 200 and speech(client, bearer(ADMIN)).status_code == 200
    assert_refused(upload(client, wav), 401, "invalid_api_key")


def test_only_admin_keys_close_the_whole_api(make_client):
    client = make_client(admin_keys=frozenset({ADMIN}))
    assert_refused(speech(client), 401, "invalid_api_key")
    assert speech(client, bearer(ADMIN)).status_code == 200


def test_every_key_is_compared_in_constant_time(make_client, monkeypatch):
    compared = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: compared.append(b) or real(a, b))
    client = make_client(api_keys=frozenset({USER, "sk-2", "sk-3"}), admin_keys=frozenset({ADMIN}))
    for key in ("sk-2", "sk-3", USER, ADMIN):      # whichever key matches, all are compared
        compared.clear()
        assert speech(client, bearer(key)).status_code == 200
        assert sorted(compared) == sorted(k.encode() for k in (USER, "sk-2", "sk-3", ADMIN))


def test_keys_are_never_logged(make_client, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(api_keys=frozenset({USER}), admin_keys=frozenset({ADMIN}))
    speech(client, bearer("sk-wrong-guess"))
    speech(client, bearer(USER))
    assert "refused POST /v1/audio/speech" in caplog.text
    assert all(k not in caplog.text for k in (USER, ADMIN, "sk-wrong-guess"))
    assert USER not in repr(AccessSettings(api_keys=frozenset({USER})))
    assert USER not in repr(AppArgs(model_dir="x", api_keys=USER, admin_api_keys=ADMIN))
    assert ADMIN not in repr(AppArgs(model_dir="x", api_keys=USER, admin_api_keys=ADMIN))


def test_keys_are_checked_under_a_route_prefix(voices_dir):  # noqa: F811
    """Serve mounts the app under its route_prefix (the scope's root_path): /health stays open there."""
    settings = ServiceSettings()
    synth = Synthesizer(FakeFrontend(), FakeGPT(), FakeVocoder(), lookahead=2)
    app = build_api(SpeechService(synth, VoiceRegistry(voices_dir), settings), AccessSettings(api_keys=frozenset({USER})))
    client = TestClient(app, root_path="/tts", raise_server_exceptions=False)
    assert client.get("/tts/health").status_code == 200
    assert_refused(client.get("/tts/v1/models"), 401, "invalid_api_key")
    assert client.get("/tts/v1/models", headers=bearer(USER)).status_code == 200


# -- the openai SDK ---------------------------------------------------------------------------

def test_openai_sdk_api_key(make_client):
    openai = pytest.importorskip("openai")
    client = make_client(api_keys=frozenset({USER}))
    sdk = openai.OpenAI(base_url=f"{SELF}/v1", api_key=USER, http_client=client, max_retries=0)
    assert [m.id for m in sdk.models.list()] == ["indextts"]
    audio = sdk.audio.speech.create(model="tts-1", voice="alice", input="Hello world.", response_format="pcm")
    assert len(audio.content) == len("Hello world") * 1024 * 2    # FakeVocoder: 1024 samples a token, s16le
    wrong = openai.OpenAI(base_url=f"{SELF}/v1", api_key="sk-wrong", http_client=client, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"


# -- CORS -------------------------------------------------------------------------------------

def preflight(client, origin: str, method: str = "POST"):
    return client.options("/v1/audio/voices", headers={"Origin": origin, "Access-Control-Request-Method": method,
                                                        "Access-Control-Request-Headers": "authorization"})


def test_by_default_cross_origin_writes_are_refused(make_client, wav):
    client = make_client()
    r = upload(client, wav, headers={"Origin": EVIL})      # the form POST a foreign page sends unasked
    assert_refused(r, 403, "cross_origin_refused", "cross-origin")
    assert "access-control-allow-origin" not in r.headers
    assert "carol" not in voice_names(client)
    assert_refused(client.delete("/v1/audio/voices/alice", headers={"Origin": "null"}), 403, "cross_origin_refused")
    assert_refused(preflight(client, EVIL), 403, "cross_origin_refused")
    assert_refused(upload(client, wav, headers={"Origin": "http://testserver:8080"}), 403, "cross_origin_refused")
    # Reads may come from anywhere (a browser does not let the foreign page see them without CORS headers).
    r = client.get("/v1/audio/voices", headers={"Origin": EVIL})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    # Same origin (default port or not, any case) and no Origin at all (curl, SDKs) pass.
    assert upload(client, wav, headers={"Origin": SELF}).status_code == 200
    assert upload(client, wav, name="dave", headers={"Origin": "HTTP://TestServer:80"}).status_code == 200
    assert upload(client, wav, name="erin").status_code == 200


def test_same_origin_behind_a_tls_proxy(make_client, wav):
    client = make_client()
    https_self = {"Origin": "https://testserver"}
    assert_refused(upload(client, wav, headers=https_self), 403, "cross_origin_refused")
    assert upload(client, wav, headers={**https_self, "X-Forwarded-Proto": "https"}).status_code == 200


def test_allowed_origins_get_cors(make_client, wav):
    client = make_client(cors_allow_origins=(APP,))
    r = preflight(client, APP)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert {"POST", "DELETE"} <= set(r.headers["access-control-allow-methods"].replace(" ", "").split(","))
    r = upload(client, wav, headers={"Origin": APP})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP
    assert_refused(preflight(client, EVIL), 403, "cross_origin_refused")
    assert_refused(upload(client, wav, name="dave", headers={"Origin": EVIL}), 403, "cross_origin_refused")
    assert upload(client, wav, name="erin", headers={"Origin": SELF}).status_code == 200


def test_cors_with_keys_answers_preflights_and_labels_401s(make_client):
    client = make_client(api_keys=frozenset({USER}), cors_allow_origins=(APP,))
    assert preflight(client, APP).status_code == 200           # browsers send preflights without the key
    r = speech(client, {"Origin": APP})
    assert_refused(r, 401, "invalid_api_key")
    assert r.headers["access-control-allow-origin"] == APP     # so the page can read the error
    assert speech(client, {"Origin": APP, **bearer(USER)}).status_code == 200


def test_any_origin(make_client, wav):
    client = make_client(cors_allow_origins=("*",))
    assert preflight(client, EVIL).headers["access-control-allow-origin"] == "*"
    assert upload(client, wav, headers={"Origin": EVIL}).status_code == 200


# -- AppArgs ----------------------------------------------------------------------------------

def test_app_args_take_comma_separated_strings():
    args = AppArgs.model_validate({"model_dir": "x", "api_keys": f" {USER}, sk-2 ,admin:sk-3,",
                                   "admin_api_keys": ADMIN, "cors_allow_origins": "https://App.example/, *"})
    assert args.cors_allow_origins == (APP, "*")
    access = args.access_settings()
    assert access.api_keys == {USER, "sk-2"} and access.admin_keys == {"sk-3", ADMIN}
    assert AppArgs(model_dir="x", api_keys=[USER, "sk-2"]).access_settings().api_keys == {USER, "sk-2"}
    default = AppArgs(model_dir="x").access_settings()
    assert default == AccessSettings() and not default.api_keys and not default.cors_allow_origins


@pytest.mark.parametrize("origins", ["app.example", "https://app.example/path", "ftp://app.example"])
def test_app_args_reject_malformed_origins(origins):
    with pytest.raises(ValidationError, match="cors_allow_origins"):
        AppArgs(model_dir="x", cors_allow_origins=origins)


def test_keys_file(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# clients\n{USER}\n\n  sk-2  \nadmin:{ADMIN}\n")
    access = AppArgs(model_dir="x", api_keys="sk-inline", api_keys_file=str(keys)).access_settings()
    assert access.api_keys == {USER, "sk-2", "sk-inline"} and access.admin_keys == {ADMIN}
    with pytest.raises(ValueError, match="does not exist"):
        AppArgs(model_dir="x", api_keys_file=str(tmp_path / "missing.txt")).access_settings()
    (tmp_path / "empty.txt").write_text("# nobody yet\n")
    with pytest.raises(ValueError, match="holds no keys"):
        AppArgs(model_dir="x", api_keys_file=str(tmp_path / "empty.txt")).access_settings()
    with pytest.raises(ValueError, match="printable ASCII"):
        parse_keys(["sk with space"])


def test_keys_env_is_read_where_the_api_is_built(make_client, monkeypatch):
    monkeypatch.delenv("TTS_KEYS", raising=False)
    access = AppArgs(model_dir="x", api_keys_env="TTS_KEYS").access_settings()   # at build: not read yet
    assert access.api_keys_env == "TTS_KEYS" and not access.api_keys
    with pytest.raises(ValueError, match="TTS_KEYS"):           # unset where the API runs: fail closed
        make_client(api_keys_env="TTS_KEYS")
    monkeypatch.setenv("TTS_KEYS", f"{USER}, admin:{ADMIN}")
    client = make_client(api_keys_env="TTS_KEYS")
    assert_refused(speech(client), 401, "invalid_api_key")
    assert speech(client, bearer(USER)).status_code == 200
    assert speech(client, bearer(ADMIN)).status_code == 200
    assert AccessSettings(api_keys_env="TTS_KEYS").with_env_keys().admin_keys == {ADMIN}


def test_install_needs_no_keys_for_an_open_api():
    from fastapi import FastAPI
    app = FastAPI()
    install_access_control(app, AccessSettings())
    assert [m.cls.__name__ for m in app.user_middleware] == ["_OriginGuard"]


def test_build_graph_passes_the_settings_to_the_ingress(tmp_path):
    pytest.importorskip("ray")
    from ray.serve._private.build_app import build_app as flatten

    from serve_app.app import build_graph
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{USER}\n")
    args = AppArgs(model_dir="x", device="cpu", voices_dir=str(tmp_path), api_keys_file=str(keys),
                   admin_api_keys=ADMIN, cors_allow_origins=APP, api_keys_env="TTS_KEYS")
    ingress = next(d for d in flatten(build_graph(args, FakeFrontend, FakeGPT, FakeVocoder), name="t").deployments
                   if d.name == "Ingress")
    assert AccessSettings(frozenset({USER}), frozenset({ADMIN}), (APP,), "TTS_KEYS") in ingress.init_args
    missing = args.model_copy(update={"api_keys_file": str(tmp_path / "gone.txt")})
    with pytest.raises(ValueError, match="gone.txt"):
        build_graph(missing, FakeFrontend, FakeGPT, FakeVocoder)
