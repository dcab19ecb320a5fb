"""The original server's routes and its streaming variant's, over the fake stages of test_api."""

from __future__ import annotations

import io

import pytest

from test_api import HOP, SR, assert_envelope, client, gpt, service, voices_dir  # noqa: F401 (fixtures)


def test_original_routes(client, gpt, voices_dir):
    r = client.post("/tts_url", json={"text": "Hi there.", "audio_paths": ["alice.wav"]})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    import wave
    with wave.open(io.BytesIO(r.content)) as w:        # sent whole: exact sizes in the header
        assert (w.getframerate(), w.getnframes()) == (SR, len("Hi there") * HOP)
    assert gpt.calls[-1][2].seed == 8                   # the original's default seed
    r = client.post("/tts_url", json={"text": "Hi.", "audio_paths": [str(voices_dir / "bob.wav")], "seed": 3})
    assert r.status_code == 200 and gpt.calls[-1][2].seed == 3
    assert client.post("/tts", json={"text": "Hi.", "character": "bob"}).headers["content-type"] == "audio/wav"
    r = client.post("/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "alice"})
    assert r.headers["content-type"] == "audio/wav"     # the original always answered WAV
    assert client.get("/audio/voices").json() == {"alice": ["alice.wav"], "bob": ["bob.wav"],
                                                  "broken": ["broken.wav"]}
    health = client.get("/health").json()
    assert health["status"] == "healthy"


def test_streaming_variant_routes(client):
    """The streaming variant's clients: raw PCM (streamed or whole) and a WAV, the same audio as
    OpenAI's route with the same voice and options; an unknown reference_id is a 404."""
    text = "Hello there. Second part."
    want = client.post("/v1/audio/speech", json={"model": "m", "input": text, "voice": "bob",
                                                 "response_format": "pcm"}).content
    assert len(want) == 2 * HOP * len("Hello there" + "Second part")
    for streaming in (True, False):
        r = client.post("/index-tts/v1/tts_stream", json={"text": text, "reference_id": "bob", "streaming": streaming})
        assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm" and r.content == want
    r = client.post("/index-tts/v1/tts", json={"text": text, "reference_id": "bob"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    import wave
    with wave.open(io.BytesIO(r.content)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SR, 1, 2)
        assert w.readframes(w.getnframes()) == want
    assert_envelope(client.post("/index-tts/v1/tts_stream", json={"text": "Hi.", "reference_id": "nobody"}),
                    404, "reference_id")
    assert_envelope(client.post("/index-tts/v1/tts", json={"text": "", "reference_id": "bob"}), 400, "text", "empty")


@pytest.mark.parametrize("paths,status", [(["../private.wav"], 400), (["/etc/passwd"], 400),
                                          (["missing.wav"], 404), ([], 400)])
def test_tts_url_never_reads_outside_voices_dir(client, tmp_path, paths, status):
    (tmp_path / "private.wav").write_bytes(b"private")
    r = client.post("/tts_url", json={"text": "Hi.", "audio_paths": paths})
    assert_envelope(r, status, "audio_paths")


def test_original_route_errors_use_the_envelope(client):
    assert_envelope(client.post("/tts", json={"text": "Hi.", "character": "nobody"}), 404, "character")
    assert_envelope(client.post("/tts", json={"text": "", "character": "alice"}), 400, "text", "empty")
    assert_envelope(client.post("/tts", json={"character": "alice"}), 400, "text", "required")
