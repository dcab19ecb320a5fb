"""`build_app(args)`: validate the typed arguments and bind the deployment graph.

    serve run serve_app.app:build_app model_dir=checkpoints/IndexTTS-1.5 device=cpu voices_dir=voices
    serve run configs/serve_config.yaml

Graph: Ingress(FastAPI) -> Frontend (CPU), GPT (GPU: conditioning + engine), Vocoder (GPU,
batched). `build_graph` takes the stage factories explicitly, so tests bind the same graph over
fake or tiny stages.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import click
from pydantic import ValidationError
from ray.serve import Application

from indextts.checkpoint import CheckpointInfo
from serve_app.api import ServiceSettings
from serve_app.config import AppArgs, StageFactory
from serve_app.frontend import Frontend
from serve_app.gpt import GPT
from serve_app.ingress import Ingress
from serve_app.vocoder import Vocoder

logger = logging.getLogger(__name__)


class AppArgsError(click.ClickException, ValueError):
    """Arguments `build_app` cannot take; a `ClickException` so that `serve run` prints it as one
    line (`Error: ...`) instead of a traceback."""


def build_app(args: Union[AppArgs, dict]) -> Application:
    """The application for `serve run` / `serve deploy` (Serve's builders take one argument)."""
    return build_application(args)


def build_application(args: Union[AppArgs, dict],
                      overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Application:
    """`build_app` with deployment options by deployment name (`overrides`, as `build_graph` takes
    them; a config file sets them in its `deployments`). `args` are validated here (not by Serve,
    whose validation error would print as a traceback) into `AppArgs`."""
    if not isinstance(args, AppArgs):
        try:
            args = AppArgs.model_validate(args)
        except ValidationError as e:
            raise AppArgsError(_one_line(e)) from None
    limit = args.max_tokens_per_segment
    if args.check_model_dir and _is_local_path(args.model_dir):
        # Fail at deploy time with the checkpoint's problem, not later in every replica. (A hub id
        # is resolved by each replica into its node's cache, not downloaded here on the head.)
        info = CheckpointInfo.from_dir(args.model_dir)
        limit = info.config.gpt.max_segment_tokens       # the text position table's size, less one
        if args.max_tokens_per_segment > limit:
            logger.warning("max_tokens_per_segment %d exceeds this checkpoint's limit; using %d",
                           args.max_tokens_per_segment, limit)
        args = args.model_copy(update={"model_dir": str(info.model_dir),
                                       "max_tokens_per_segment": min(args.max_tokens_per_segment, limit)})
    return build_graph(args, StageFactory("frontend", args), StageFactory("gpt", args),
                       StageFactory("vocoder", args), max_tokens_limit=limit, overrides=overrides)


def build_graph(args: AppArgs, make_frontend: Callable, make_gpt: Callable, make_vocoder: Callable,
                max_tokens_limit: Optional[int] = None,
                overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Application:
    """Bind Ingress over the three stage deployments; each `make_*` builds its stage in the replica.
    `max_tokens_limit` caps a request's `max_tokens_per_segment` (`GPTConfig.max_segment_tokens`).
    `overrides`: more deployment options by deployment name (e.g. `{"GPT": {"num_replicas": 2}}`)."""
    voices_dir = args.resolved_voices_dir()
    access = args.access_settings()      # reads api_keys_file now: a missing file fails the build
    if not args.voices_dir:
        logger.warning("voices_dir not given: using %s (use a shared volume when replicas run on "
                       "several nodes)", voices_dir)
    settings = ServiceSettings(model_name=args.model_name, max_input_chars=args.max_input_chars,
                               max_tokens_per_segment=args.max_tokens_per_segment,
                               max_tokens_per_segment_limit=max_tokens_limit or args.max_tokens_per_segment,
                               max_upload_files=args.max_upload_files,
                               max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    cpus = args.num_cpus
    extra = overrides or {}
    frontend = Frontend.options(ray_actor_options={"num_cpus": cpus}, **extra.get("Frontend", {})).bind(make_frontend)
    gpt = GPT.options(ray_actor_options=args.accelerator_options(args.gpt_num_gpus),
                      **extra.get("GPT", {})).bind(make_gpt)
    vocoder = Vocoder.options(ray_actor_options=args.accelerator_options(args.vocoder_num_gpus),
                              **extra.get("Vocoder", {})).bind(make_vocoder)
    return Ingress.options(ray_actor_options={"num_cpus": cpus}, **extra.get("Ingress", {})).bind(
        frontend, gpt, vocoder, str(voices_dir), settings, args.segment_lookahead, access,
        request_timeout_s=args.request_timeout_s, ui=args.ui)


def _one_line(error: ValidationError) -> str:
    """pydantic's errors of `AppArgs` as one line: each argument and what is wrong with it."""
    problems = []
    for item in error.errors():
        name = ".".join(str(p) for p in item["loc"]) or "arguments"
        if item["type"] == "extra_forbidden":
            problems.append(f"{name}: unknown argument")
        else:
            problems.append(f"{name}: {item['msg']}")
    return f"build_app: {'; '.join(problems)} (arguments: {', '.join(AppArgs.model_fields)})"


def _is_local_path(model_dir: str) -> bool:
    return Path(model_dir).expanduser().exists() or model_dir.startswith(("/", ".", "~"))
