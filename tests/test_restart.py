"""Uploaded voices live in `voices_dir`, not in a replica: they survive the application being
deleted and deployed again (a restart, a redeploy, replicas replaced), and stay usable and
deletable afterwards. Its own application (`/restart`), so no other test's app is touched."""

from __future__ import annotations

import pytest
import requests

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from conftest import serve_voices_dir  # noqa: E402
from serve_app.app import build_app  # noqa: E402

APP = "restart"


def _speak(url: str, voice: str) -> requests.Response:
    return requests.post(f"{url}/v1/audio/speech", timeout=120, json={
        "model": "tts-1", "input": "Hi.", "voice": voice, "response_format": "pcm", "temperature": 0})


def _voices(url: str) -> dict[str, str]:
    r = requests.get(f"{url}/v1/audio/voices", timeout=60)
    assert r.status_code == 200, r.text
    return {v["id"]: v["source"] for v in r.json()["data"]}


def test_an_uploaded_voice_survives_a_restart(serve_url, tmp_path, tiny_dir):
    voices = serve_voices_dir(tmp_path / "voices", tiny_dir)
    args = {"model_dir": str(tiny_dir), "device": "cpu", "gpt_engine": "torch", "voices_dir": str(voices)}
    url = f"{serve_url}/{APP}"
    serve.run(build_app(args), name=APP, route_prefix=f"/{APP}")
    try:
        with open(tiny_dir / "ref_b.wav", "rb") as f:
            r = requests.post(f"{url}/v1/audio/voices", data={"name": "carol"},
                              files=[("audio_sample", ("carol.wav", f, "audio/wav"))], timeout=60)
        assert r.status_code == 200, r.text
        before = _speak(url, "carol")
        assert before.status_code == 200 and len(before.content) > 0

        serve.delete(APP)
        assert requests.get(f"{url}/v1/audio/voices", timeout=60).status_code == 404    # gone
        serve.run(build_app(args), name=APP, route_prefix=f"/{APP}")

        assert _voices(url)["carol"] == "upload"
        after = _speak(url, "carol")
        assert after.status_code == 200 and after.headers["content-type"] == "audio/pcm"
        assert len(after.content) % 2 == 0 and after.content == before.content    # greedy: the same audio

        r = requests.delete(f"{url}/v1/audio/voices/carol", timeout=60)
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert "carol" not in _voices(url)
        gone = _speak(url, "carol")
        assert (gone.status_code, gone.json()["error"]["code"]) == (400, "voice_not_found")
        assert not (voices / "uploads" / "carol").exists()
    finally:
        serve.delete(APP)
