"""Exceptions raised by the library.

Every error a user can cause derives from :class:`IndexTTSError` and carries a message that says
what is wrong and what to do about it. The HTTP layer maps the classes to status codes; nothing
else should need to parse messages.
"""

from __future__ import annotations


class IndexTTSError(Exception):
    """Base class of every error this library raises on purpose."""


class ModelDirError(IndexTTSError):
    """The model directory (or hub id) cannot be resolved, or required files are missing."""


class ConfigError(IndexTTSError):
    """`config.yaml` is missing keys, has values of the wrong type, or is not YAML at all."""


class CheckpointError(IndexTTSError):
    """A weights file is unreadable, truncated, or does not match the model built from the config."""

    def __init__(self, message: str, *, missing: list[str] | None = None,
                 unexpected: list[str] | None = None,
                 mismatched: list[tuple[str, tuple, tuple]] | None = None):
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []


class AudioError(IndexTTSError):
    """Reference audio cannot be used: not audio, empty, silent, too short or too long."""


class TextError(IndexTTSError):
    """Input text cannot be synthesised: empty, nothing left after normalisation, or too long."""


class NothingToSpeakError(TextError):
    """The text has no letter or digit left after normalisation (only punctuation, symbols, emoji,
    control or format characters): there is nothing to synthesise."""


class OptionsError(IndexTTSError, ValueError):
    """A synthesis or engine option is out of range or unknown."""


class VoiceError(IndexTTSError):
    """A named voice is unknown or its registry entry is invalid."""


class IncompleteSegmentError(IndexTTSError):
    """A stage's stream of a segment ended before its last chunk: the segment's audio would be cut
    short, so the utterance cannot be completed."""
