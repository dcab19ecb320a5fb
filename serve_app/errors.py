"""Errors of the HTTP API in OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`:
4xx for what the client can fix, 5xx with a generic message (details go to the log only)."""

from __future__ import annotations

import json
import logging
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from indextts.errors import AudioError, IndexTTSError, NothingToSpeakError, OptionsError, TextError, VoiceError
from indextts.formats import FORMATS
from indextts.voices import VoiceExistsError, VoiceNotFoundError

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5                      # what a 503 tells clients to wait


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")


class StageUnavailableError(ApiError):
    """A stage cannot take the call now (no live replica, its queue is full, or its replica died and
    the call could not be repeated): HTTP 503 with `Retry-After`, the client may try again."""

    def __init__(self, message: str):
        super().__init__(503, message, None, "service_unavailable")


def _unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a wrapper (Ray re-raises a replica's error with a `cause`)."""
    for _ in range(8):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    return exc


def _classify(exc: BaseException,
              param: Optional[str] = None) -> tuple[int, str, Optional[str], Optional[str], str]:
    """(status, message, param, code, type) for any exception."""
    exc = _unwrap(exc)
    if isinstance(exc, ApiError):
        return exc.status, exc.message, exc.param, exc.code, exc.type
    if isinstance(exc, VoiceNotFoundError):
        return 400, str(exc), param or "voice", "voice_not_found", "invalid_request_error"
    if isinstance(exc, VoiceExistsError):
        return 409, str(exc), "name", "voice_exists", "invalid_request_error"
    if isinstance(exc, VoiceError):
        return 400, str(exc), param or "voice", "invalid_voice", "invalid_request_error"
    if isinstance(exc, AudioError):
        # a request's audio is its voice's references (uploads name their own field)
        return 400, str(exc), param or "voice", "invalid_audio", "invalid_request_error"
    if isinstance(exc, NothingToSpeakError):
        return 400, str(exc), "input", "nothing_to_speak", "invalid_request_error"
    if isinstance(exc, TextError):
        return 400, str(exc), "input", "invalid_input", "invalid_request_error"
    if isinstance(exc, OptionsError):
        return 400, str(exc), param, "invalid_value", "invalid_request_error"
    if isinstance(exc, IndexTTSError):   # a server-side model or config problem
        logger.error("request failed: %s: %s", type(exc).__name__, exc)
        return 500, "the server could not synthesise this request", None, "model_error", "server_error"
    logger.error("internal error", exc_info=exc)
    return 500, "internal server error", None, "internal_error", "server_error"


def _error_body(message: str, param: Optional[str], code: Optional[str], type_: str) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_object(exc: BaseException) -> dict:
    """The envelope's inner object for any exception (for errors sent in-band, mid-stream)."""
    return _error_body(*_classify(exc)[1:])["error"]


def error_response(exc: BaseException, param: Optional[str] = None) -> JSONResponse:
    """The envelope of `exc`; a 503 says when to try again (`Retry-After`)."""
    status, message, param, code, type_ = _classify(exc, param)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(_error_body(message, param, code, type_), status_code=status, headers=headers)


# pydantic's bound errors -> (the bound's key in the error context, words): says 2.0 as defined, not "2".
_BOUND_ERRORS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
                 "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = loc[0] if loc else None
    message = first.get("msg", "invalid request")
    if param == "response_format":
        message = f"unsupported response_format; use one of {', '.join(FORMATS)}"
    elif first.get("type") == "missing":
        message = f"'{param}' is required" if param else "a JSON request body is required"
    elif first.get("type") in _BOUND_ERRORS and param:
        key, words = _BOUND_ERRORS[first["type"]]
        message = f"invalid '{param}': must be {words} {first.get('ctx', {}).get(key)!r}"
    elif param:
        message = f"invalid '{param}': {message}"
    if first.get("type") == "json_invalid":
        message, param = "request body is not valid JSON", None
    elif not param and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        message = "the request body must be a JSON object"
    return JSONResponse(_error_body(message, param, "invalid_value", "invalid_request_error"),
                        status_code=400)


def validation_error_object(errors: list) -> dict:
    """The envelope's inner object for pydantic's `errors()` of a request body (as the API answers)."""
    return json.loads(_validation_response(RequestValidationError(errors)).body)["error"]


def install_error_handlers(app: FastAPI) -> None:
    async def on_validation(_: Request, exc: RequestValidationError):
        return _validation_response(exc)

    async def on_http(_: Request, exc: HTTPException):
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "invalid_request" if exc.status_code < 500 else "server_error")
        return JSONResponse(_error_body(str(exc.detail), None, code, type_),
                            status_code=exc.status_code)

    async def on_error(_: Request, exc: Exception):
        return error_response(exc)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(ApiError, on_error)
    app.add_exception_handler(IndexTTSError, on_error)
    # Anything else: a 500 envelope (Starlette still re-raises it afterwards, for the server log).
    app.add_exception_handler(Exception, on_error)
