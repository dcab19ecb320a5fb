"""Compiled WeTextProcessing grammars: where they live on disk, how they are built, and loading.

The original normaliser is WeTextProcessing 1.0.4.1 on pynini 2.1.6. Its grammars are OpenFst
transducers (a *tagger* that marks numbers, dates, ... and a *verbaliser* that spells them out).
We build them with exactly that pinned stack, once, into a cache directory, and run them with
`kaldifst` (OpenFst's compose + shortest path, 1.5 MB), so pynini (155 MB) is needed only by the
machine that builds the cache, never at serving time.

What the build stores is what the original holds in memory in its steady state (every process
start after the first): the zh grammars built with `remove_interjections=False,
remove_erhua=False` then read back and re-optimised, and the package's prebuilt en grammars read
and re-optimised. Re-optimising is not idempotent byte for byte, so this matters for ties.

Cache layout (`cache_root` from `resolve_cache_root`)::

    <cache_root>/text-grammars/<GRAMMAR_ID>/{zh,en}_{tagger,verbalizer}.fst, manifest.json

A build runs in a child process (it peaks near 7 GB of memory for about 40 s on one core, and
pynini keeps that memory), under an exclusive file lock, into a temporary directory that is
renamed into place only when complete, so concurrent first uses build once and never see a
half-written cache.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from indextts.errors import IndexTTSError

logger = logging.getLogger(__name__)

WETEXT_VERSION = "1.0.4.1"
PYNINI_VERSION = "2.1.6"
# Bump the suffix when what the build stores changes; old caches are then simply not used.
GRAMMAR_ID = f"wetextprocessing-{WETEXT_VERSION}-pynini-{PYNINI_VERSION}-v1"
GRAMMAR_FILES = ("zh_tagger.fst", "zh_verbalizer.fst", "en_tagger.fst", "en_verbalizer.fst")
MANIFEST = "manifest.json"
CACHE_ENV = "INDEXTTS_CACHE_DIR"
BUILD_TIMEOUT_S = 1800.0
INSTALL_HINT = (f"pip install WeTextProcessing=={WETEXT_VERSION} pynini=={PYNINI_VERSION} "
                f"(CPython 3.11 wheels exist for Linux x86_64)")

# sha256 of each file as built by scripts/text_build_grammars.py on Linux x86_64 with the pinned
# versions. A mismatch is logged, not fatal: it means a different OpenFst build, and parity with
# the golden cases should be re-checked (scripts/text_check_fst_identity.py).
EXPECTED_SHA256: dict[str, str] = {
    "zh_tagger.fst": "6b1ef392eae66dbd8026dc345a21d9a6fbc755bf7f29de5ace380b0d9df777ef",
    "zh_verbalizer.fst": "c7f2e949c80e49f0bfdf315b2268d39a0b369f5904c2c75aacaddac65f7ae6fd",
    "en_tagger.fst": "dee65085ba3a33027dd65b79c29d7bb58daf9259523510b7282b9a1ead358322",
    "en_verbalizer.fst": "ee0666a2106425f06c3e7191476aea7fe4c43864d4bf3c12a668a3e552327945",
}


class GrammarError(IndexTTSError):
    """The text-normalisation grammars are missing, corrupt, or cannot be built here."""


def resolve_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$INDEXTTS_CACHE_DIR`, else `$XDG_CACHE_HOME/indextts`, else `~/.cache/indextts`.

    The environment is read at call time, never at import time.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "indextts"


def grammar_dir(cache_root: Path) -> Path:
    return cache_root / "text-grammars" / GRAMMAR_ID


@dataclass(frozen=True)
class GrammarSet:
    """Paths of one complete, validated grammar cache."""

    directory: Path
    manifest: dict

    def path(self, lang: str, kind: str) -> Path:
        return self.directory / f"{lang}_{kind}.fst"


def _read_manifest(directory: Path) -> Optional[dict]:
    """The manifest of a complete cache, or None when the directory is absent, partial or foreign."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("grammar_id") != GRAMMAR_ID:
        return None
    files = manifest.get("files", {})
    for name in GRAMMAR_FILES:
        entry = files.get(name)
        try:
            if not entry or (directory / name).stat().st_size != entry["size"]:
                return None
        except OSError:
            return None
    return manifest


def find_grammars(cache_dir: str | os.PathLike | None = None) -> Optional[GrammarSet]:
    """The cached grammars under `cache_dir` (see `resolve_cache_root`), or None if not built yet."""
    directory = grammar_dir(resolve_cache_root(cache_dir))
    manifest = _read_manifest(directory)
    return GrammarSet(directory, manifest) if manifest else None


def builder_available() -> bool:
    """Whether this interpreter can build grammars (WeTextProcessing and pynini importable)."""
    return all(importlib.util.find_spec(m) is not None for m in ("pynini", "tn"))


_PROCESS_LOCK = threading.Lock()   # flock is per open file; this keeps threads of one process in line


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive lock shared by threads and processes (flock; released if the holder dies)."""
    with _PROCESS_LOCK:
        try:
            import fcntl
        except ImportError:  # not POSIX: the atomic rename alone keeps the cache consistent
            yield
            return
        with open(lock_path, "a+") as handle:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise GrammarError(
                            f"timed out after {timeout_s:.0f} s waiting for another process to "
                            f"finish building text grammars (lock {lock_path})") from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


Builder = Callable[[Path], None]


def build_in_subprocess(out_dir: Path, timeout_s: float = BUILD_TIMEOUT_S) -> None:
    """Run `build_grammar_files(out_dir)` in a child interpreter (pynini's memory dies with it)."""
    if not builder_available():
        raise GrammarError(
            "text-normalisation grammars are not built yet and this environment cannot build them: "
            f"{INSTALL_HINT}, or run scripts/text_build_grammars.py elsewhere and copy the "
            f"directory it prints to <cache>/text-grammars/ (cache: ${CACHE_ENV} or ~/.cache/indextts)")
    cmd = [sys.executable, "-m", "indextts.text.grammars", "--out", str(out_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise GrammarError(f"building text grammars took over {timeout_s:.0f} s; gave up") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise GrammarError(f"building text grammars failed (exit {proc.returncode}):\n{tail}")


def ensure_grammars(cache_dir: str | os.PathLike | None = None, *, builder: Optional[Builder] = None,
                    lock_timeout_s: float = BUILD_TIMEOUT_S) -> GrammarSet:
    """The cached grammars, building them first if needed (once per cache, whoever asks first).

    `builder(tmp_dir)` writes the four `GRAMMAR_FILES` into `tmp_dir`; by default a child process
    runs `build_grammar_files`. Safe to call from many threads and processes at once.
    """
    found = find_grammars(cache_dir)
    if found:
        return found
    final = grammar_dir(resolve_cache_root(cache_dir))
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.parent / f".{GRAMMAR_ID}.lock", lock_timeout_s):
        manifest = _read_manifest(final)
        if manifest:  # someone else finished while we waited
            return GrammarSet(final, manifest)
        if final.exists():  # partial or foreign leftovers; never reached through a rename
            logger.warning("discarding incomplete text grammar cache %s", final)
            shutil.rmtree(final, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{GRAMMAR_ID}.tmp-", dir=final.parent))
        try:
            started = time.perf_counter()
            logger.info("building text-normalisation grammars into %s (one time, about a minute)", final)
            (builder or build_in_subprocess)(tmp)
            seconds = time.perf_counter() - started
            _write_manifest(tmp, build_seconds=seconds)
            os.rename(tmp, final)   # atomic: readers see nothing or everything
            logger.info("text grammars built in %.1f s", seconds)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    manifest = _read_manifest(final)
    if not manifest:
        raise GrammarError(f"text grammar cache {final} is incomplete right after building it")
    return GrammarSet(final, manifest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(directory: Path, build_seconds: float) -> None:
    files = {}
    for name in GRAMMAR_FILES:
        path = directory / name
        if not path.is_file():
            raise GrammarError(f"grammar build produced no {name} in {directory}")
        files[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        expected = EXPECTED_SHA256.get(name)
        if expected and expected != files[name]["sha256"]:
            logger.warning("%s differs from the reference build (sha256 %s, expected %s); re-check "
                           "parity with scripts/text_check_fst_identity.py", name,
                           files[name]["sha256"], expected)
    manifest = {"grammar_id": GRAMMAR_ID, "files": files, "build_seconds": round(build_seconds, 2),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, directory / MANIFEST)


def _check_pinned_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist, pinned in (("WeTextProcessing", WETEXT_VERSION), ("pynini", PYNINI_VERSION)):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError as e:
            raise GrammarError(f"{dist} is not installed; {INSTALL_HINT}") from e
        if found[dist] != pinned:
            raise GrammarError(f"{dist} {found[dist]} is installed but the golden data was made with "
                               f"{pinned}; {INSTALL_HINT}")
    return found


def build_grammar_files(out_dir: Path) -> None:
    """Build the four grammar files into `out_dir` with the pinned WeTextProcessing + pynini.

    Needs about 7 GB of memory and 40 s. Loads each normaliser exactly as the original does and
    writes the transducers it then holds in memory.
    """
    _check_pinned_versions()
    import pynini
    from tn.chinese.normalizer import Normalizer as ZhNormalizer
    from tn.english.normalizer import Normalizer as EnNormalizer

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="wetext-zh-") as zh_cache:
        zh_options = dict(cache_dir=zh_cache, remove_interjections=False, remove_erhua=False)
        ZhNormalizer(overwrite_cache=True, **zh_options)          # compile the grammars
        zh = ZhNormalizer(overwrite_cache=False, **zh_options)    # read back + optimise, as on restart
        en = EnNormalizer(overwrite_cache=False)                  # the package's prebuilt en grammars
        for lang, normalizer in (("zh", zh), ("en", en)):
            for kind in ("tagger", "verbalizer"):
                fst: pynini.Fst = getattr(normalizer, kind)
                fst.write(str(out_dir / f"{lang}_{kind}.fst"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m indextts.text.grammars",
        description="Build the WeTextProcessing grammar files into OUT (used by ensure_grammars).")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build_grammar_files(args.out)
    except GrammarError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
