"""The peers' own virtual environments, each made once and reused.

The peers pin versions that clash with ours or with each other, so each gets a venv of
its own under ``.bench/``:

- MLServer 1.7.1 pins FastAPI, uvloop and protobuf versions that clash with KServe 0.21;
  it needs uvloop below 0.22 (0.23 crashes its inference worker at start);
- BentoML 1.4.40 brings its own web stack (Starlette, its runner/worker machinery);
- MLflow 3.17.2 (3.18.0 is not fully on the package registry) brings Flask, FastAPI,
  pandas and friends; ``mlflow models serve`` runs uvicorn from the venv.

Every one needs the same scikit-learn version as ours, to load the benchmark models we
fit (unpickling across scikit-learn versions is not supported). The requirement list is
stamped into the venv; a changed list rebuilds it.

The venvs are made with uv (the dev extra has it) from one cache beside them, shared with
the pipeline's step-image test: on a fresh CI machine pip took 34 + 26 + 43 s for the three,
mostly resolving and unpacking one package after another. Without uv, ``venv`` and pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import sklearn

SKLEARN = f"scikit-learn=={sklearn.__version__}"


@dataclass(frozen=True)
class PeerVenv:
    name: str  # for messages
    requirements: tuple[str, ...]
    executable: str  # in the venv's bin/ once installed


MLSERVER = PeerVenv(
    "MLServer", ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22", SKLEARN), "mlserver"
)
BENTOML = PeerVenv("BentoML", ("bentoml==1.4.40", SKLEARN), "bentoml")
MLFLOW = PeerVenv("MLflow", ("mlflow==3.17.2", SKLEARN), "mlflow")


def ensure_venv(peer: PeerVenv, venv: Path, log: Path) -> Path:
    stamp = venv / "irisgate-requirements.txt"
    wanted = "\n".join(peer.requirements) + "\n"
    if stamp.exists() and stamp.read_text() == wanted and (venv / "bin" / peer.executable).exists():
        return venv
    print(f"bench: installing {peer.name} into {venv} (once) ...", flush=True)
    started = time.monotonic()
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    with log.open("wb") as out:
        steps = _uv_steps(uv, peer, venv) if uv else _pip_steps(peer, venv)
        environment = {
            **os.environ,
            "UV_CACHE_DIR": str(venv.parent / "uv-cache"),
            "UV_PYTHON_DOWNLOADS": "never",  # the interpreter is ours, never a download
            "UV_NO_PROGRESS": "1",
        }
        for command in steps:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=environment)
            if done.returncode != 0:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"cannot install {peer.name} ({' '.join(command[:4])}...):\n{tail}"
                )
    stamp.write_text(wanted)
    print(f"bench: {peer.name} installed in {time.monotonic() - started:.0f} s", flush=True)
    return venv


def _uv_steps(uv: str, peer: PeerVenv, venv: Path) -> list[list[str]]:
    python = str(venv / "bin" / "python")
    return [
        # --seed: pip in the venv, as a venv made by ``python -m venv`` has it
        [uv, "venv", "--quiet", "--clear", "--seed", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", python, *peer.requirements],
    ]


def _pip_steps(peer: PeerVenv, venv: Path) -> list[list[str]]:
    return [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        # --no-compile: byte-compiling every module of MLflow's or BentoML's tree costs
        # more CPU than the download; the few modules a run imports compile on import
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            *peer.requirements,
        ],
    ]
