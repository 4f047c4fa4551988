"""Where a candidate may come from: the operator's registry, never where the client says.

The client names the artifact and the held-out set; the gate then starts a predictor on
that directory (or points an InferenceService at that URI) and scores the candidate on
that set. Without limits a client could make the gate read any file it can (``/etc``),
fetch any URL it can reach (an internal service), or pick its own held-out set and pass
the accuracy gate with a model that only knows those rows. So:

- local backend: ``artifact_uri`` must resolve, symlinks followed, to a directory inside
  the registry (``GATE_REGISTRY_DIR``, or the registry holding GATE_STABLE_MODEL_DIR);
- kserve backend: ``artifact_uri`` must lie under one of GATE_KSERVE_STORAGE_PREFIXES;
- ``holdout_uri`` must be the artifact's own ``holdout.csv`` (what the pipeline sends) or
  lie under one of GATE_HOLDOUT_ALLOWED_PREFIXES.
- a gating hook's ``url`` must be an http(s) URL under one of GATE_HOOK_ALLOWED_PREFIXES
  (or ``approval``, the gate's own): the gate calls it.

Every refusal is a :class:`gate.core.errors.Refused` naming the field (HTTP 422).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from gate.core.errors import Refused
from gate.core.hooks import APPROVAL
from gate.core.spec import AnalysisOverrides, Candidate
from gate.settings import GateSettings

ARTIFACT = "candidate.artifact_uri"
HOLDOUT = "candidate.holdout_uri"
DIGEST = "candidate.digest"
MANIFEST_FILE = "model.json"
HOLDOUT_FILE = "holdout.csv"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def confine_candidate(candidate: Candidate, settings: GateSettings) -> Candidate:
    """Refuse a candidate whose artifact or held-out set lies outside what the operator
    allowed, and return it with its model digest pinned. Reads the file system (local
    backend), nothing over the network."""
    if settings.traffic_backend == "local":
        artifact = _local_artifact(candidate.artifact_uri, settings)
        if candidate.holdout_uri is not None:
            _local_holdout(candidate.holdout_uri, artifact, settings)
        return candidate.model_copy(update={"digest": _local_digest(candidate, artifact)})
    _storage_artifact(candidate.artifact_uri, settings)
    if candidate.holdout_uri is not None:
        own = f"{candidate.artifact_uri.rstrip('/')}/{HOLDOUT_FILE}"
        if candidate.holdout_uri != own and not _under_any_prefix(
            candidate.holdout_uri, settings.holdout_allowed_prefixes
        ):
            raise Refused(HOLDOUT, _holdout_rule())
    if candidate.digest is None:
        raise Refused(DIGEST, "required by the kserve backend (the pipeline sends it)")
    return candidate


def confine_hooks(overrides: AnalysisOverrides | None, settings: GateSettings) -> None:
    """Refuse a hook URL the operator did not allow: a rollout's hooks are requests the
    gate makes, so a client must not be able to aim them at an internal service. Only
    http(s) URLs under GATE_HOOK_ALLOWED_PREFIXES, or the gate's own ``approval``."""
    for index, hook in enumerate((overrides.hooks or []) if overrides else []):
        if hook.url == APPROVAL:
            continue
        scheme = urlsplit(hook.url).scheme.lower() if _is_url(hook.url) else ""
        if scheme not in ("http", "https") or not _under_any_prefix(
            hook.url, settings.hook_allowed_prefixes
        ):
            raise Refused(
                f"analysis.hooks.{index}.url",
                f"must be '{APPROVAL}' or an http(s) URL under a prefix the operator allows "
                "(GATE_HOOK_ALLOWED_PREFIXES)",
            )


def _local_digest(candidate: Candidate, artifact: Path) -> str:
    """The model file's digest as the artifact's manifest names it. The predictor checks
    the manifest's signature and these bytes itself; pinning here means a file swapped
    after the rollout was created is refused too."""
    try:
        manifest = json.loads((artifact / MANIFEST_FILE).read_bytes())
        recorded = f"sha256:{manifest['sha256']}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Refused(ARTIFACT, f"has no readable {MANIFEST_FILE} naming its digest") from exc
    if candidate.digest is not None and candidate.digest != recorded:
        raise Refused(DIGEST, f"differs from the artifact's manifest ({recorded})")
    return recorded


def registry_of(settings: GateSettings) -> Path | None:
    """GATE_REGISTRY_DIR, else the registry holding the stable (``<registry>/<model>/<v>``)."""
    if settings.registry_dir is not None:
        return settings.registry_dir
    if settings.stable_model_dir is not None:
        return settings.stable_model_dir.resolve().parent.parent
    return None


def _local_artifact(uri: str, settings: GateSettings) -> Path:
    configured = registry_of(settings)
    if configured is None:
        raise Refused(
            ARTIFACT,
            "the local backend accepts artifacts from its registry only, and no registry "
            "configured (GATE_REGISTRY_DIR)",
        )
    if _is_url(uri):
        raise Refused(ARTIFACT, "must be a local directory path in the registry, not a URL")
    if ".." in Path(uri).parts:
        raise Refused(ARTIFACT, "must not contain '..' segments")
    try:
        registry = configured.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise Refused(ARTIFACT, f"the registry {configured} is not readable: {exc}") from exc
    try:
        resolved = Path(uri).resolve(strict=True)  # symlinks followed, then checked
    except (OSError, RuntimeError, ValueError) as exc:
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else "cannot be read"
        raise Refused(ARTIFACT, f"{reason} (must be a directory in the registry)") from exc
    if resolved == registry or not resolved.is_relative_to(registry):
        raise Refused(
            ARTIFACT,
            f"resolves outside the model registry {registry} (symlinks are followed)",
        )
    if not resolved.is_dir():
        raise Refused(ARTIFACT, "is not a directory")
    return resolved


def _local_holdout(uri: str, artifact: Path, settings: GateSettings) -> None:
    if not _is_url(uri) and ".." not in Path(uri).parts:
        try:
            resolved = Path(uri).resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            raise Refused(HOLDOUT, "cannot be read") from exc
        if resolved == artifact / HOLDOUT_FILE:
            return
    if _under_any_prefix(uri, settings.holdout_allowed_prefixes):
        return
    raise Refused(HOLDOUT, _holdout_rule())


def _storage_artifact(uri: str, settings: GateSettings) -> None:
    prefixes = settings.kserve_storage_prefixes
    if not prefixes:
        raise Refused(
            ARTIFACT,
            "no storage prefix is allowed: the operator must list them in "
            "GATE_KSERVE_STORAGE_PREFIXES",
        )
    if _has_dot_dot(urlsplit(uri).path if _is_url(uri) else uri):
        raise Refused(ARTIFACT, "must not contain '..' segments")
    if not any(_under_prefix(uri, prefix) for prefix in prefixes):
        raise Refused(
            ARTIFACT,
            "must start with one of the allowed storage prefixes "
            f"(GATE_KSERVE_STORAGE_PREFIXES: {', '.join(prefixes)})",
        )


def _holdout_rule() -> str:
    return (
        f"must be the artifact's own {HOLDOUT_FILE} or lie under a prefix the operator "
        "allows (GATE_HOLDOUT_ALLOWED_PREFIXES); leave it out to use the artifact's own"
    )


def _is_url(location: str) -> bool:
    return _SCHEME.match(location) is not None


def _has_dot_dot(path: str) -> bool:
    """``..`` as a segment, also percent-encoded (``%2e%2e``) or with backslashes."""
    return ".." in re.split(r"[/\\]", unquote(path))


def _under_any_prefix(location: str, prefixes: list[str]) -> bool:
    return any(_under_prefix(location, prefix) for prefix in prefixes)


def _under_prefix(location: str, prefix: str) -> bool:
    """Whole-segment containment, not ``str.startswith``: ``/data/holdout`` does not allow
    ``/data/holdout-evil``, and ``http://host`` does not allow ``http://host@evil/``."""
    if _is_url(prefix):
        if not _is_url(location):
            return False
        target, allowed = urlsplit(location), urlsplit(prefix)
        return _same_origin(target, allowed) and _path_within(target.path, allowed.path)
    if _is_url(location) or ".." in Path(location).parts:
        return False
    try:
        return Path(location).resolve().is_relative_to(Path(prefix).resolve())
    except (OSError, RuntimeError, ValueError):
        return False


def _same_origin(target: SplitResult, allowed: SplitResult) -> bool:
    if target.scheme.lower() != allowed.scheme.lower():
        return False
    return not allowed.netloc or target.netloc.lower() == allowed.netloc.lower()


def _path_within(path: str, allowed: str) -> bool:
    if _has_dot_dot(path):
        return False
    if not allowed or allowed == "/":
        return True
    base = allowed.rstrip("/")
    return path == base or path.startswith(base + "/")
