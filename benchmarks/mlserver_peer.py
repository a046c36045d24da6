"""Seldon MLServer as `benchmarks.serve_load`'s peer: its virtual environment, its settings, its process.

MLServer 1.7 pins fastapi below 0.116, which the project's server does not
take, so it runs from a virtual environment of its own: `ensure_venv` makes
one on first use in `DEFAULT_VENV` (``python -m venv`` + ``pip install
"mlserver==1.7.*" onnxruntime numpy httptools``, a minute or two and about
400 MB) and reuses it after. `MLServer` starts ``mlserver start`` on a folder of
settings written for one model, served by the custom runtime in
`benchmarks/mlserver_onnx.py` (copied beside its model-settings.json, which
MLServer puts on ``sys.path`` to import it), on 127.0.0.1 and free ports.

Settings a careful user would choose for speed on one machine:
``parallel_workers`` 0 (the model runs in the server process: the default of
1 dies at start-up with the uvloop pip picks, and a worker process would add
a hop), ``debug`` false (no access log line per request), and the runtime's
one intra-op thread without spinning. With ``batching`` the model settings
also get MLServer's adaptive batching (``max_batch_size``,
``max_batch_time``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

__all__ = ["DEFAULT_VENV", "MLServer", "REQUIREMENTS", "ensure_venv", "is_venv", "versions"]

#: What the venv is made of; onnxruntime and numpy resolved to 1.32.0 and 2.4.6 on 2026-12-03, as in the project's
#: own. httptools is uvicorn's C HTTP parser, which uvicorn takes when it is installed, as our server's venv has it;
#: MLServer does not depend on it, and without it its uvicorn parses and writes HTTP with pure-Python h11 (half
#: of MLServer's busy samples at 1 client under py-spy): a careful user adds it.
REQUIREMENTS = ("mlserver==1.7.*", "onnxruntime", "numpy", "httptools")
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "keras-attn" / "mlserver-1.7"
#: Left in a venv while `ensure_venv` installs into it: a venv holding it is a broken install of ours, made anew.
_INSTALLING = ".keras-attn-installing"
RUNTIME = Path(__file__).with_name("mlserver_onnx.py")


def is_venv(venv: Path) -> bool:
    """Whether ``venv`` holds a finished MLServer install."""
    return (venv / "bin" / "mlserver").exists() and not (venv / _INSTALLING).exists()


def ensure_venv(venv: Path = DEFAULT_VENV, *, say=lambda m: print(m, file=sys.stderr, flush=True)) -> Path:
    """``venv`` with MLServer in it, made there first when it is absent (or a broken install of ours).

    Raises:
        RuntimeError: ``venv`` exists and is no MLServer venv, or the install failed (the tail of pip's output).
    """
    venv = Path(venv).expanduser()
    if is_venv(venv):
        return venv
    if venv.exists():
        if not (venv / _INSTALLING).exists() and any(venv.iterdir()):
            raise RuntimeError(f"{venv} is not a virtual environment with MLServer in it (no bin/mlserver)")
        shutil.rmtree(venv)
    say(f"installing MLServer into {venv} (once: a minute or two, ~400 MB; --no-mlserver skips MLServer) ...")
    started = time.perf_counter()
    venv.mkdir(parents=True)
    (venv / _INSTALLING).write_text("")
    log = venv / "install.log"
    with open(log, "w") as out:
        steps = ([sys.executable, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *REQUIREMENTS])
        for step in steps:
            done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=1200)
            if done.returncode != 0:
                tail = "\n".join(line for line in log.read_text().splitlines() if "is ignored" not in line)[-1500:]
                raise RuntimeError(f"installing MLServer into {venv} failed ({' '.join(step[:3])}):\n{tail}")
    (venv / _INSTALLING).unlink()
    say(f"MLServer installed in {time.perf_counter() - started:.0f} s: {', '.join(f'{k} {v}' for k, v in versions(venv).items())}")
    return venv


def versions(venv: Path) -> dict[str, str]:
    """The versions of mlserver, onnxruntime, numpy and httptools in ``venv`` (httptools None where it is absent)."""
    code = (
        "import json, mlserver, onnxruntime, numpy\n"
        "try:\n    import httptools\nexcept ImportError:\n    httptools = None\n"
        "print(json.dumps({**{m.__name__: m.__version__ for m in (mlserver, onnxruntime, numpy)},"
        " 'httptools': httptools and httptools.__version__}))"
    )
    done = subprocess.run([str(Path(venv) / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{venv}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held together while picked, so distinct)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class MLServer:
    """``mlserver start`` serving ``model_path`` as ``model_path.stem`` on 127.0.0.1; a context manager.

    Args:
        model_path: the ``.onnx`` file.
        venv: a venv that `is_venv`.
        batching: ``(max_batch_size, max_batch_time in seconds)`` for MLServer's adaptive batching, or None for none.
        timeout: seconds to wait for the model to be ready.

    Attributes:
        process, port: the server's process (its own process group) and HTTP port, once entered.
    """

    def __init__(self, model_path: Path, venv: Path, *, batching: tuple[int, float] | None, timeout: float = 120) -> None:
        self.model_path, self.venv, self.batching, self.timeout = Path(model_path), Path(venv), batching, timeout
        self.process: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> "MLServer":
        self._folder = tempfile.TemporaryDirectory(prefix="mlserver-")
        folder = Path(self._folder.name)
        self.port, grpc_port, metrics_port = _free_ports(3)
        (folder / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": self.port, "grpc_port": grpc_port, "metrics_port": metrics_port,
            "parallel_workers": 0, "debug": False, "load_models_at_startup": True,
        }, indent=1))
        name = self.model_path.stem
        model_folder = folder / name
        model_folder.mkdir()
        shutil.copy(RUNTIME, model_folder / RUNTIME.name)
        model = {"name": name, "implementation": f"{RUNTIME.stem}.OnnxModel", "parameters": {"uri": str(self.model_path.resolve())}}
        if self.batching:
            model["max_batch_size"], model["max_batch_time"] = self.batching
        (model_folder / "model-settings.json").write_text(json.dumps(model, indent=1))
        self._log = open(folder / "mlserver.log", "w")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.process = subprocess.Popen(
            [str(self.venv / "bin" / "mlserver"), "start", str(folder)], cwd=folder, env=env,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            self._wait_ready(name)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + self.timeout
        url = f"http://127.0.0.1:{self.port}/v2/models/{name}/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MLServer exited with {self.process.returncode} at start-up:\n{self.log_tail()}")
            try:
                with urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"MLServer's model was not ready in {self.timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        self._log.flush()
        return (Path(self._folder.name) / "mlserver.log").read_text()[-chars:]

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # its group: MLServer and anything it started
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
            except ProcessLookupError:
                pass
        self._log.close()
        self._folder.cleanup()
