"""The web UI (Gradio, no Ray): a page at `/ui` over the same `SpeechService` as the HTTP API.

Synthesis goes through `SpeechService.speech` (the API's request model, checks, voice resolution
and encoders), uploads through the API's `add_voice`, so the page and the API cannot disagree;
errors show the API's message (`serve_app.errors`), never a traceback.

API keys: a browser cannot send `Authorization: Bearer`, so the key check of `serve_app.security`
delegates `/ui` to this module, which puts Gradio's own login in front of every UI route (page,
config, queue, file upload): the password is an API key, compared with the same constant-time
`KeyRing`. Once admin keys exist, uploading a voice needs the user name `admin` with an admin key
(any other user name with any valid key may synthesise). With no keys the page is open, as the API.

Gradio is the optional `ui` extra: it is imported only when the UI is mounted.
"""

import asyncio
import json
import logging
import os
import shlex
import shutil
import time
from typing import Optional

import numpy as np
import torch
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from indextts.audio import SAMPLE_RATE
from indextts.formats import FORMATS, MAX_SPEED, MIN_SPEED, SpeechEncoder
from indextts.types import SEED_LIMIT, TEMPERATURE_MAX, TOP_K_MAX, TOP_P_MAX, SamplingOptions
from indextts.voices import MIX_SEPARATOR, WEIGHT_SEPARATOR
from serve_app.api import SpeechRequest, SpeechService, add_voice
from serve_app.errors import error_object, validation_error_object
from serve_app.security import UI_PATH, AccessSettings, KeyRing

logger = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8000           # Serve's default HTTP port
ADMIN_USER = "admin"               # the login name that claims the admin role (with an admin key)
NO_MIX = "(none)"
WEIGHT_MAX = 10                    # mix weights offered by the sliders (the API takes any positive number)
TEMPERATURE_STEP = 0.05
CACHE_DELETE_S = (3600, 3600)      # Gradio removes its files (uploads, results) older than an hour, hourly
_DEFAULTS = SamplingOptions()


def ui_url(host: str = "localhost", port: int = DEFAULT_HTTP_PORT) -> str:
    return f"http://{host}:{port}{UI_PATH} (under the application's route_prefix, if any)"


def mount_ui(app: FastAPI, service: SpeechService, access: AccessSettings = AccessSettings()) -> bool:
    """Mount the web UI on `app` at UI_PATH; False (with a warning) when gradio is not installed."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")    # no calls home from a replica
    try:
        import gradio as gr
    except ImportError:
        logger.warning("the web UI is on (ui=true) but gradio is missing: install the 'ui' extra "
                       "(pip install 'indextts-serve[ui]') or pass ui=false")
        return False
    access = access.with_env_keys()
    keys = KeyRing(access.api_keys, access.admin_keys)
    blocks = _blocks(gr, service, keys)
    gr.mount_gradio_app(app, blocks, path=UI_PATH, auth=_login(keys) if keys else None,
                        auth_message="Sign in with an API key as the password" +
                                     (f" (user name '{ADMIN_USER}' with an admin key to upload voices)"
                                      if keys.admin_only else ""),
                        ssr_mode=False, footer_links=[], mcp_server=False, run_history=False,
                        max_file_size=service.settings.max_upload_bytes)
    return True


def _login(keys: KeyRing):
    """Gradio's login check: the password is a valid key; the name `admin` needs an admin key."""
    def check(username: str, password: str) -> bool:
        role = keys.role(password.encode("utf-8"))
        return role is not None and (username != ADMIN_USER or role == "admin")
    return check


# -- what the controls mean in API terms ------------------------------------------------------

def voice_value(voice: str, weight: float, mix: Optional[str], mix_weight: float) -> str:
    """The API's voice string: "alice", or "alice:3+bob:1" when a second voice is mixed in."""
    if not mix or mix == NO_MIX:
        return voice or ""
    return f"{voice}{WEIGHT_SEPARATOR}{weight:g}{MIX_SEPARATOR}{mix}{WEIGHT_SEPARATOR}{mix_weight:g}"


def speech_body(model: str, text: str, voice: str, greedy: bool, temperature: float, top_p: float,
                top_k: float, seed: Optional[str], response_format: str, speed: float) -> dict:
    """The `POST /v1/audio/speech` body of the UI's controls (greedy: temperature 0, as the API)."""
    body = {"model": model, "input": text, "voice": voice, "response_format": response_format}
    if speed != 1.0:
        body["speed"] = float(speed)
    if greedy:
        body["temperature"] = 0.0
    else:
        body.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
    seed = str(seed or "").strip()
    if seed:
        body["seed"] = int(seed) if seed.isdigit() else seed      # not a number: the API's own message
    return body


def snippets(body: dict, base_url: str, with_key: bool) -> tuple[str, str]:
    """The same request as a `curl` command and an `openai` SDK call (the key stays a variable)."""
    out = f"speech.{body['response_format']}"
    auth = ' -H "Authorization: Bearer $OPENAI_API_KEY"' if with_key else ""
    curl = (f"curl -sS {shlex.quote(base_url + '/v1/audio/speech')}{auth} -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(json.dumps(body, ensure_ascii=False))} -o {out}")
    core = ("model", "input", "voice", "response_format", "speed")
    args = "".join(f"    {k}={body[k]!r},\n" for k in core if k in body)
    extra = {k: v for k, v in body.items() if k not in core}
    if extra:
        args += f"    extra_body={extra!r},\n"
    key = 'os.environ["OPENAI_API_KEY"]' if with_key else '"unused"'
    imports = "import os\n" if with_key else ""
    python = (f"{imports}from openai import OpenAI\n\nclient = OpenAI(base_url={base_url + '/v1'!r}, api_key={key})\n"
              f"with client.audio.speech.with_streaming_response.create(\n{args}) as response:\n"
              f"    response.stream_to_file({out!r})\n")
    return curl, python


def _base_url(request) -> str:
    """The API's URL as the browser reached the UI (the part before UI_PATH)."""
    url = str(getattr(request, "url", "") or "")
    cut = url.rfind(UI_PATH + "/")
    return url[:cut] if cut > 0 else f"http://localhost:{DEFAULT_HTTP_PORT}"


def _encode(pcm: bytes, response_format: str) -> bytes:
    """16-bit PCM -> `response_format` with the API's encoder (float values that convert back to
    the same integers: a half step outward survives its truncation toward zero)."""
    ints = torch.from_numpy(np.frombuffer(pcm, dtype=np.int16).astype(np.float32))
    encoder = SpeechEncoder(response_format, 1.0, streaming=False)
    return encoder.feed((ints + 0.5 * torch.sign(ints)) / 32767.0) + encoder.finish()


def _message(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return validation_error_object(exc.errors())["message"]
    return error_object(exc)["message"]     # 5xx: a generic message, the details go to the log


# -- the page ---------------------------------------------------------------------------------

def _voice_names(service: SpeechService) -> list[str]:
    return [v.name for v in service.registry.list()]


def _blocks(gr, service: SpeechService, keys: KeyRing):
    """The page: controls on the left, playback, figures, download and code on the right."""
    settings = service.settings
    names = _voice_names(service)
    with gr.Blocks(title="IndexTTS", delete_cache=CACHE_DELETE_S) as blocks:
        gr.Markdown("## IndexTTS: zero-shot speech\nSpeak text in a preset or uploaded voice, "
                    "through the same service as the HTTP API.")
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label=f"Text (at most {settings.max_input_chars} characters)", lines=4,
                                  elem_id="text")
                with gr.Row():
                    voice = gr.Dropdown(names, value=names[0] if names else None, label="Voice",
                                        elem_id="voice", scale=3)
                    weight = gr.Slider(1, WEIGHT_MAX, value=1, step=1, label="Weight", scale=2)
                    refresh = gr.Button("Refresh voices", scale=1, elem_id="refresh")
                with gr.Row():
                    mix = gr.Dropdown([NO_MIX] + names, value=NO_MIX, label="Mix with", scale=3)
                    mix_weight = gr.Slider(1, WEIGHT_MAX, value=1, step=1, label="Mix weight", scale=2)
                sampling = _sampling_controls(gr)
                run = gr.Button("Synthesise", variant="primary", elem_id="synthesise")
                upload_name, upload_file, upload, upload_status = _upload_controls(gr)
            with gr.Column():
                # Gradio streams audio through the ffmpeg program; without it, playback starts at the end.
                streams = shutil.which("ffmpeg") is not None
                if not streams:
                    logger.warning("ffmpeg is not on PATH: the web UI plays audio once it is complete")
                stream = gr.Audio(label="Playback" + (" (streams from the first chunk)" if streams else ""),
                                  streaming=streams, autoplay=True, interactive=False, elem_id="stream")
                figures = gr.Markdown(elem_id="figures")
                result = gr.Audio(label="Result (WAV)", type="filepath", interactive=False, elem_id="result")
                download = gr.File(label="Download", interactive=False, elem_id="download")
                curl = gr.Code(label="curl", language="shell", interactive=False, elem_id="curl")
                python = gr.Code(label="openai SDK", language="python", interactive=False, elem_id="python")

        synthesise = _synthesise_handler(gr, service, keys, streams)
        run.click(synthesise, [text, voice, weight, mix, mix_weight, *sampling],
                  [stream, result, download, figures, curl, python])

        def voices(request: gr.Request):
            _require_login(gr, keys, request)
            fresh = _voice_names(service)
            return gr.Dropdown(choices=fresh), gr.Dropdown(choices=[NO_MIX] + fresh)

        refresh.click(voices, None, [voice, mix])
        upload.click(_upload_handler(gr, service, keys), [upload_name, upload_file],
                     [upload_status]).then(voices, None, [voice, mix])
    return blocks


def _sampling_controls(gr) -> list:
    """Greedy switch, temperature, top-p, top-k, seed (the API's bounds), output format, speed."""
    with gr.Accordion("Sampling and output", open=False):
        greedy = gr.Checkbox(False, label="Greedy (deterministic, temperature 0)", elem_id="greedy")
        temperature = gr.Slider(TEMPERATURE_STEP, TEMPERATURE_MAX, value=_DEFAULTS.temperature,
                                step=TEMPERATURE_STEP, label="Temperature")
        top_p = gr.Slider(0.01, TOP_P_MAX, value=_DEFAULTS.top_p, step=0.01, label="Top-p")
        top_k = gr.Slider(0, TOP_K_MAX, value=_DEFAULTS.top_k, step=1, label="Top-k (0: off)")
        seed = gr.Textbox("", label=f"Seed (an integer below {SEED_LIMIT}; empty: random)")
        response_format = gr.Dropdown(list(FORMATS), value="mp3", label="Download format", elem_id="format")
        speed = gr.Slider(MIN_SPEED, MAX_SPEED, value=1.0, step=0.05, label="Speed")
    return [greedy, temperature, top_p, top_k, seed, response_format, speed]


def _upload_controls(gr) -> tuple:
    with gr.Accordion("Add a voice", open=True):
        name = gr.Textbox(label="Name", elem_id="upload-name")
        sample = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Reference audio",
                          elem_id="upload-audio")
        button = gr.Button("Upload voice", elem_id="upload")
        status = gr.Markdown(elem_id="upload-status")
    return name, sample, button, status


def _require_login(gr, keys: KeyRing, request, admin: bool = False) -> None:
    """Gradio's login already guards every UI route; this holds the role (admin for uploads)."""
    user = getattr(request, "username", None)
    if keys and user is None:
        raise gr.Error("sign in with an API key", print_exception=False)
    if admin and keys.admin_only and user != ADMIN_USER:
        raise gr.Error(f"uploading voices needs an admin API key (sign in as '{ADMIN_USER}')",
                       print_exception=False)


def _synthesise_handler(gr, service: SpeechService, keys: KeyRing, streams: bool):
    async def synthesise(text, voice, weight, mix, mix_weight, greedy, temperature, top_p, top_k, seed,
                         response_format, speed, request: gr.Request):
        _require_login(gr, keys, request)
        body = speech_body(service.settings.model_name, text or "", voice_value(voice, weight, mix, mix_weight),
                           greedy, temperature, top_p, top_k, seed, response_format, speed)
        started, first, pcm = time.perf_counter(), None, bytearray()
        try:
            audio = await service.speech(SpeechRequest(**body), "pcm")
            async for data in audio:
                first = first if first is not None else time.perf_counter() - started
                fresh, pcm = len(pcm) // 2 * 2, pcm + data
                if streams:
                    samples = np.frombuffer(bytes(pcm[fresh:len(pcm) // 2 * 2]), dtype=np.int16)
                    yield (SAMPLE_RATE, samples), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            wav, encoded = await asyncio.gather(asyncio.to_thread(_encode, bytes(pcm), "wav"),
                                                asyncio.to_thread(_encode, bytes(pcm), response_format))
        except Exception as e:      # the API's message, never a traceback
            raise gr.Error(_message(e), print_exception=False) from None
        elapsed, seconds = time.perf_counter() - started, len(pcm) / 2 / SAMPLE_RATE
        rtf = f"{elapsed / seconds:.2f}" if seconds else "n/a"
        figures = (f"**Time to first audio:** {first or 0:.2f} s · **RTF:** {rtf} · "
                   f"**Audio:** {seconds:.2f} s")
        cache = gr.utils.get_upload_folder()      # Gradio's own files, removed after CACHE_DELETE_S
        wav_path = gr.processing_utils.save_bytes_to_cache(wav, "speech.wav", cache)
        download = gr.processing_utils.save_bytes_to_cache(encoded, f"speech.{response_format}", cache)
        curl, python = snippets(body, _base_url(request), bool(keys))
        yield gr.skip() if streams else wav_path, wav_path, download, figures, curl, python

    return synthesise


def _upload_handler(gr, service: SpeechService, keys: KeyRing):
    async def upload(name, path, request: gr.Request):
        _require_login(gr, keys, request, admin=True)
        if not path:
            raise gr.Error("choose or record a reference audio file", print_exception=False)
        with open(path, "rb") as f:
            form = FormData([("name", name or ""), ("audio_sample", UploadFile(f, filename=os.path.basename(path)))])
            try:
                voice = await add_voice(service, form)
            except Exception as e:
                raise gr.Error(_message(e), print_exception=False) from None
        return f"Added voice **{voice['id']}**."

    return upload
