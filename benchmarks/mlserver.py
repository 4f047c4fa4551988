"""MLServer's own virtual environment, made once and reused.

MLServer 1.7.1 pins versions that clash with KServe 0.21 (FastAPI, uvloop, protobuf), so it
cannot share our venv. It needs the same scikit-learn minor version as ours to unpickle the
benchmark models, and uvloop below 0.22 (0.23 crashes its inference worker at start).
The requirement list is stamped into the venv; a changed list rebuilds it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sklearn

REQUIREMENTS = (
    "mlserver==1.7.1",
    "mlserver-sklearn==1.7.1",
    "uvloop<0.22",
    f"scikit-learn=={sklearn.__version__}",
)


def ensure_venv(venv: Path, log: Path) -> Path:
    stamp = venv / "irisgate-requirements.txt"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if stamp.exists() and stamp.read_text() == wanted and (venv / "bin" / "mlserver").exists():
        return venv
    print(f"bench: installing MLServer into {venv} (once; about a minute) ...", flush=True)
    with log.open("wb") as out:
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
        ]
        for command in steps:
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"cannot install MLServer ({' '.join(command[:4])}...):\n{tail}")
    stamp.write_text(wanted)
    return venv
