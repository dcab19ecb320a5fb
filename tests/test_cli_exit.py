"""The `indextts` command as a user runs it: a process of its own, with the vLLM engine (which
starts subprocesses and loads Triton's bindings), ends cleanly: exit code 0, the file written,
no traceback and no leak report at exit, vLLM's own logging kept to warnings."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import soundfile as sf

from conftest import TINY


def test_synth_with_the_vllm_engine_exits_cleanly(tmp_path):
    out = tmp_path / "hello.wav"
    run = subprocess.run([sys.executable, "-m", "indextts", "synth", "--model-dir", str(TINY),
                          "--voice", str(TINY / "ref_a.wav"), "--text", "Hello world.", "--out", str(out),
                          "--engine", "vllm"], capture_output=True, text=True, timeout=600,
                         env={k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"})
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert f"wrote {out}" in run.stdout
    assert sf.info(str(out)).frames > 0
    assert "Traceback" not in output and "leaked" not in output, output
    vllm_info = re.compile(r"^(\(\w+ pid=\d+\) )?INFO \d\d-\d\d ", re.MULTILINE)   # vLLM's log format
    assert not vllm_info.search(output), output
