"""The web UI in a real browser (headless Chromium through Playwright) on the real Serve graph
over the tiny checkpoint: synthesis, a voice upload and an error message, each step screenshotted
under tests/artifacts/ui/ (INDEXTTS_UI_SCREENSHOT=docs/ui.png also writes the README's). Then
its login with API keys, in process over fake stages."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import CODEC_SLACK_S

pytest.importorskip("gradio", reason="the web UI needs the 'ui' extra (gradio)")
requests = pytest.importorskip("requests")

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

ARTIFACTS = Path(__file__).parent / "artifacts" / "ui"
TEXT = "Hello world. Bye now."
SR = 24000
STEP_TIMEOUT_MS = 60_000
# The streamed player holds Gradio's AAC stream of the chunks: priming and frame padding.
STREAM_SLACK_S = CODEC_SLACK_S["aac"] + 0.05

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def page(tiny_app):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (driver only)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"needs Chromium at {CHROMIUM} (Debian's chromium package)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.goto(f"{tiny_app[0]}/ui/")
        page.wait_for_selector("#synthesise")
        yield page
        browser.close()


def _screenshot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _duration(page, url: str) -> float:
    """The duration the browser reads from `url` through an audio element."""
    return page.evaluate("""url => new Promise((ok, fail) => {
        const a = new Audio(url);
        a.onloadedmetadata = () => ok(a.duration);
        a.onerror = () => fail(new Error('audio element cannot load ' + url));
    })""", url)


def test_synthesis_plays_the_api_s_audio(page, tiny_app):
    url = tiny_app[0]
    body = {"model": "tts-1", "input": TEXT, "voice": "bob", "response_format": "pcm", "temperature": 0}
    response = requests.post(f"{url}/v1/audio/speech", json=body, timeout=120)
    assert response.status_code == 200, response.text
    expected = len(response.content) / 2 / SR

    page.locator("#text textarea").fill(TEXT)
    _pick(page, "voice", "bob")
    page.get_by_text("Sampling and output").click()
    page.locator("#greedy input").check()
    _pick(page, "format", "wav")
    page.locator("#synthesise").click()
    link = page.locator("#download a[download]")
    link.wait_for()
    assert link.get_attribute("download") == "speech.wav"
    assert abs(_duration(page, link.get_attribute("href")) - expected) < 1e-3     # the same greedy audio
    streamed = page.wait_for_function("""() => {
        const a = document.querySelector('#stream audio');
        return a && isFinite(a.duration) && a.duration > 0 && a.duration; }""").json_value()
    assert abs(streamed - expected) <= STREAM_SLACK_S
    figures = page.locator("#figures").inner_text()
    assert "Time to first audio" in figures and "RTF" in figures
    assert '"temperature": 0.0' in page.locator("#curl").inner_text()
    assert "client.audio.speech" in page.locator("#python").inner_text()
    shot = _screenshot(page, "1-synthesis")
    if os.environ.get("INDEXTTS_UI_SCREENSHOT"):
        shutil.copy(shot, os.environ["INDEXTTS_UI_SCREENSHOT"])


def test_uploaded_voice_is_listed_by_the_api(page, tiny_app, tiny_dir):
    page.locator("#upload-name input, #upload-name textarea").first.fill("carol")
    page.locator("#upload-audio input[type=file]").set_input_files(str(tiny_dir / "ref_a.wav"))
    page.locator("#upload-audio audio, #upload-audio [data-testid=waveform-controls]").first.wait_for(
        state="attached")
    page.locator("#upload").click()
    page.get_by_text("Added voice carol").wait_for()
    _screenshot(page, "2-upload")
    voices = requests.get(f"{tiny_app[0]}/v1/audio/voices", timeout=30).json()["data"]
    assert "carol" in {v["id"] for v in voices}


def test_too_long_text_shows_the_api_s_message(page, tiny_app):
    long = "a" * 4097        # build_app's default max_input_chars is 4096
    page.locator("#text textarea").fill(long)
    page.locator("#synthesise").click()
    page.get_by_text("'input' is 4097 characters; the limit is 4096").first.wait_for()
    assert "Traceback" not in page.content()
    _screenshot(page, "3-error")


# -- API keys: Gradio's login in front of every UI route, checked against the API's keys ---------

@pytest.fixture
def keyed_client(tiny_dir, tmp_path):
    from fastapi.testclient import TestClient

    from conftest import serve_voices_dir
    from indextts.synthesis import Synthesizer
    from indextts.voices import VoiceRegistry
    from serve_app.api import SpeechService, build_api
    from serve_app.security import AccessSettings
    from serve_app.ui import mount_ui
    from test_api import FakeFrontend, FakeGPT, FakeVocoder
    service = SpeechService(Synthesizer(FakeFrontend(), FakeGPT(), FakeVocoder()),
                            VoiceRegistry(serve_voices_dir(tmp_path / "voices", tiny_dir)))
    access = AccessSettings(api_keys=frozenset({"user-key"}), admin_keys=frozenset({"admin-key"}))
    with TestClient(build_api(service, access, ui=mount_ui)) as client:
        yield client


def test_ui_routes_need_a_login_with_an_api_key(keyed_client):
    c = keyed_client
    assert c.get("/v1/models").status_code == 401                 # the API still wants its bearer key
    assert c.get("/ui/config").status_code == 401                 # the UI's own routes want a login
    assert c.post("/ui/login", data={"username": "me", "password": "wrong"}).status_code == 400
    assert c.post("/ui/login", data={"username": "admin", "password": "user-key"}).status_code == 400
    assert c.post("/ui/login", data={"username": "me", "password": "user-key"}).status_code == 200
    assert c.get("/ui/config").status_code == 200
    assert c.post("/ui/login", data={"username": "admin", "password": "admin-key"}).status_code == 200
