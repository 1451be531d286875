"""Building the C++ kernels: keyed by source and instruction set, announced, safe to interrupt."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssmttm.ops import cpu_kernels

LOAD = "from ssmttm.ops import cpu_kernels; print(cpu_kernels.available())"
BUILDING = "building CPU kernels once"


def _env(extensions: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "SSMTTM_NO_CPU_KERNELS"}
    return {**env, "TORCH_EXTENSIONS_DIR": str(extensions), **extra}


def _load(extensions: Path, **env: str) -> subprocess.Popen:
    """A fresh process that loads the kernels from `extensions`, building them if need be."""
    return subprocess.Popen(
        [sys.executable, "-c", LOAD],
        env=_env(extensions, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(run: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The run's stdout and stderr; a failure if it is still running after `timeout` seconds."""
    try:
        return run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.kill()
        _, err = run.communicate()
        pytest.fail(f"still loading after {timeout} s: {err[-2000:]}")


def test_the_cache_name_changes_with_the_source_the_flags_and_the_cpu(tmp_path, monkeypatch):
    native, v3 = (
        cpu_kernels.cache_name("native", ["-march=native"]),
        cpu_kernels.cache_name("x86-64-v3", ["-march=x86-64-v3"]),
    )
    assert native.startswith("ssmttm_cpu_kernels_native_") and v3.startswith("ssmttm_cpu_kernels_x86_64_v3_")
    assert native.isidentifier() and v3.isidentifier()  # the module's init function is named after it
    assert cpu_kernels.cache_name("native", ["-march=native", "-O2"]) != native
    monkeypatch.setattr(cpu_kernels, "_cpu_flags", lambda: "fpu sse2 avx2")  # a CPU without AVX-512
    assert cpu_kernels.cache_name("native", ["-march=native"]) != native
    assert cpu_kernels.cache_name("x86-64-v3", ["-march=x86-64-v3"]) == v3  # compiled for no CPU in particular
    source = tmp_path / "cpu_kernels.cpp"
    source.write_text(cpu_kernels.SOURCE.read_text() + "\n// another version\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", source)
    changed_source = cpu_kernels.cache_name("x86-64-v3", ["-march=x86-64-v3"])
    assert changed_source != v3
    header = tmp_path / "quantized_dot.h"  # an included header is part of the build too
    header.write_text(cpu_kernels.HEADERS[0].read_text() + "\n// another version\n")
    monkeypatch.setattr(cpu_kernels, "HEADERS", (header,))
    assert cpu_kernels.cache_name("x86-64-v3", ["-march=x86-64-v3"]) not in (v3, changed_source)


@pytest.mark.slow  # one build of the kernels, about 40 s
def test_a_build_killed_midway_leaves_nothing_that_blocks_the_next_runs(tmp_path):
    """kill -9 during the first build left torch's lock file behind, and every later run waited on it
    silently, forever. Now the next runs build (one of them; the other waits for it, saying so),
    and the run after them loads the cache without a word."""
    extensions = tmp_path / "extensions"
    first = subprocess.Popen([sys.executable, "-c", LOAD], env=_env(extensions), start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(extensions.glob("**/lock")):  # torch's FileBaton, wherever the build runs: it is under way
        assert first.poll() is None and time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the compiler with it
    first.wait()
    assert list(extensions.glob("**/lock")), "a stale lock, as kill -9 leaves it"

    runs = [_load(extensions) for _ in range(2)]  # at the same time
    results = [_finish(run, timeout=300) for run in runs]  # a build takes 30-70 s
    assert [run.returncode for run in runs] == [0, 0], results
    assert [out for out, _ in results] == ["True\n", "True\n"], results
    messages = "".join(err for _, err in results)
    assert messages.count(BUILDING) == 1, messages
    assert "waiting for another process to build the CPU kernels" in messages, messages
    assert not list(extensions.glob("*.building-*")), "the killed build's folder is cleared"

    cached = _load(extensions)
    out, err = _finish(cached, timeout=60)
    assert (cached.returncode, out, err) == (0, "True\n", ""), "a cached load says nothing"


def test_without_a_compiler_the_kernels_are_unavailable_with_one_warning(tmp_path):
    extensions = tmp_path / "extensions"
    run = _load(extensions, CXX="false")  # a compiler that fails at once
    out, err = _finish(run, timeout=120)
    assert (run.returncode, out) == (0, "False\n"), err
    assert err.count("CPU decoding kernels unavailable") == 1, err
    assert [path.name for path in extensions.iterdir() if path.is_dir()] == [], "no half-built cache"
