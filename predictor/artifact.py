"""The model artifact contract shared by the pipeline (writer) and the predictor (reader).

A model is a directory holding the model file (``model.skops``), ``model.json`` (the
manifest: name, version, the model file's name, format and sha256, scikit-learn version,
feature and class names, ...) and ``model.json.sig``, a detached Ed25519 signature over the
exact bytes of ``model.json`` (see :mod:`predictor.signing`).

Reading is one pass over bytes held in memory, in this order, and stops at the first
failure with an :class:`ArtifactError`: the signature over the manifest's bytes, against
the trusted public keys, before anything in the manifest is parsed; the manifest; the
model file's bytes (read once) against the manifest's digest and an optional pinned
digest; the scikit-learn version; then the model is deserialized *from those same bytes*.
skops deserializes only the types in :data:`TRUSTED_TYPES`, a list this project reviewed;
anything else is refused by name. Pickle (format ``joblib``) runs code when loaded, so it
is loaded only when the caller opts in (``--allow_pickle``) and is logged loudly.

This module must stay importable without kserve: the pipeline's components import it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sklearn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from predictor import signing
from predictor.signing import SigningError, TrustedKey

logger = logging.getLogger(__name__)

MODEL_FILE = "model.skops"
PICKLE_MODEL_FILE = "model.joblib"
METADATA_FILE = "model.json"
SIGNATURE_FILE = METADATA_FILE + signing.SIGNATURE_SUFFIX
FORMAT_VERSION = 2
ModelFormat = Literal["skops", "joblib"]
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_VERSION_PATTERN = re.compile(r"^[0-9]+$")

# The types a model file may contain, reviewed by this project: skops builds nothing else.
# Found with skops.io.get_untrusted_types and by listing every type in the schema of the
# project's estimators (pipeline.steps.train.build_estimator: logreg and forest; tests/helpers
# train_iris), plus the other tree ensembles. Adding a type is a security review: say why.
TRUSTED_TYPES: Mapping[str, str] = {
    # scikit-learn estimators: skops restores their attribute dicts, no code runs.
    "sklearn.pipeline.Pipeline": "the model shape: normalisation steps plus a classifier",
    "sklearn.preprocessing._data.StandardScaler": "the normalisation step; mean/scale arrays",
    "sklearn.linear_model._logistic.LogisticRegression": "logreg classifier; coef arrays",
    "sklearn.ensemble._forest.RandomForestClassifier": "forest classifier; a list of trees",
    "sklearn.ensemble._forest.ExtraTreesClassifier": "extra-trees classifier; list of trees",
    "sklearn.tree._classes.DecisionTreeClassifier": "the trees of a random forest, or alone",
    "sklearn.tree._classes.ExtraTreeClassifier": "the trees of an extra-trees ensemble",
    # RISK ACCEPTED: skops warns that a malicious Tree (crafted node arrays) can read out of
    # bounds in sklearn's Cython code; trusted only because the signed manifest pins the
    # digest of the very bytes it is built from.
    "sklearn.tree._tree.Tree": "the node arrays of every decision tree (see risk above)",
    # numpy, as skops reports it: arrays are read with np.load(allow_pickle=False).
    "numpy.ndarray": "fitted arrays (coefficients, means, tree nodes, classes_)",
    "numpy.float64": "numpy scalars in fitted attributes (e.g. n_samples_seen_)",
    "numpy.int64": "numpy scalars in fitted attributes (e.g. n_iter_, counts)",
    # skops' plain containers and JSON values.
    "builtins.dict": "attribute dicts and parameters",
    "builtins.list": "lists of steps, trees and parameters",
    "builtins.tuple": "Pipeline (name, estimator) steps",
    "builtins.str": "strings and a Tree state's key types",
}
# How skops builds each node: the loaders above need, never functions, methods or reduce.
_TRUSTED_LOADERS = frozenset(
    {
        "ObjectNode",
        "DictNode",
        "ListNode",
        "TupleNode",
        "JsonNode",
        "NdArrayNode",
        "TreeNode",
        "TypeNode",
    }
)


class ArtifactError(Exception):
    """An artifact that must not be served; ``str()`` is one line naming the file and reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class ArtifactMetadata(BaseModel):
    """What ``model.json`` holds. Unknown keys are refused so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    name: str
    version: str
    model_file: str = Field(MODEL_FILE, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    """A bare file name in the artifact directory (no path: nothing outside it is read)."""
    format: ModelFormat = "skops"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Digest of the model file's bytes."""
    sklearn_version: str
    framework: str = "scikit-learn"
    feature_names: list[str] = Field(min_length=1)
    class_names: list[str] = Field(min_length=2)
    metrics: dict[str, float] = Field(default_factory=dict)
    training_data_fingerprint: str
    created_at: datetime

    @property
    def digest(self) -> str:
        """The model file digest as the gate and ``--model_digest`` spell it."""
        return f"sha256:{self.sha256}"

    @field_validator("name")
    @classmethod
    def _name_is_dns_label(cls, value: str) -> str:
        # The name ends up in URLs, Prometheus labels and Kubernetes object names.
        if not _NAME_PATTERN.match(value):
            raise ValueError("must be a lowercase DNS label (a-z, 0-9, '-')")
        return value

    @field_validator("version")
    @classmethod
    def _version_is_integer(cls, value: str) -> str:
        if not _VERSION_PATTERN.match(value):
            raise ValueError("must be a positive integer string such as '3'")
        return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_dataset(features: np.ndarray, labels: np.ndarray) -> str:
    """A stable digest of the training data, so a model can be traced to what it saw."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(features, dtype=np.float64), np.asarray(labels)):
        digest.update(str(array.shape).encode())
        digest.update(str(array.dtype).encode())
        digest.update(array.tobytes())
    return f"sha256:{digest.hexdigest()}"


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _check_estimator(
    estimator: Any, feature_names: Sequence[str], class_names: Sequence[str], where: Path | str
) -> None:
    """Refuse estimators the predictor cannot serve truthfully (wrong width or classes)."""
    for attribute in ("predict", "predict_proba"):
        if not callable(getattr(estimator, attribute, None)):
            raise ArtifactError(where, f"estimator has no {attribute}() method")
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise ArtifactError(where, "estimator is not fitted (no n_features_in_)")
    if int(n_features) != len(feature_names):
        raise ArtifactError(
            where,
            f"estimator expects {n_features} features but metadata names {len(feature_names)}",
        )
    classes = getattr(estimator, "classes_", None)
    if classes is None or len(classes) != len(class_names):
        raise ArtifactError(where, f"estimator classes do not match class_names {class_names}")
    try:
        ids = [int(c) for c in classes]
    except (TypeError, ValueError):
        ids = []
    if ids != list(range(len(class_names))):
        raise ArtifactError(where, "estimator classes must be the ids 0..N-1 of class_names")


# --- writing -------------------------------------------------------------------------------


def serialize_model(estimator: Any, model_format: ModelFormat = "skops") -> bytes:
    """The model file's bytes; a skops file is checked against TRUSTED_TYPES as it is made,
    so the writer learns of an unreviewed type, not the predictor at deploy time."""
    if model_format == "joblib":
        import joblib

        buffer = io.BytesIO()
        joblib.dump(estimator, buffer)
        return buffer.getvalue()
    import skops.io

    data: bytes = skops.io.dumps(estimator)
    untrusted = untrusted_types(data, MODEL_FILE)
    if untrusted:
        raise ArtifactError(
            MODEL_FILE,
            f"model contains types outside the reviewed allow-list: {', '.join(untrusted)}",
        )
    return data


def _write_manifest(
    directory: Path, metadata: ArtifactMetadata, signing_key: Ed25519PrivateKey | None
) -> None:
    key = signing_key or signing.default_signing_key()
    document = (metadata.model_dump_json(indent=2) + "\n").encode()
    (directory / METADATA_FILE).write_bytes(document)
    (directory / SIGNATURE_FILE).write_bytes(signing.sign(document, key))


def write_artifact(
    estimator: Any,
    out_dir: Path | str,
    *,
    name: str,
    version: str,
    feature_names: Sequence[str],
    class_names: Sequence[str],
    training_data_fingerprint: str,
    metrics: Mapping[str, float] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    model_format: ModelFormat = "skops",
) -> ArtifactMetadata:
    """Write ``estimator`` as a signed artifact directory; refuses a non-empty directory.

    ``signing_key`` defaults to ``IRISGATE_SIGNING_KEY``, else the development key.
    ``model_format="joblib"`` writes a pickle, which the predictor loads only with
    ``--allow_pickle``: it exists for estimators skops cannot represent safely.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ArtifactError(
            out, "directory exists and is not empty; artifacts are never overwritten"
        )
    _check_estimator(estimator, feature_names, class_names, out)
    model_file = MODEL_FILE if model_format == "skops" else PICKLE_MODEL_FILE
    data = serialize_model(estimator, model_format)
    try:
        metadata = ArtifactMetadata(
            name=name,
            version=str(version),
            model_file=model_file,
            format=model_format,
            sha256=hashlib.sha256(data).hexdigest(),
            sklearn_version=sklearn.__version__,
            feature_names=list(feature_names),
            class_names=list(class_names),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            training_data_fingerprint=training_data_fingerprint,
            created_at=datetime.now(UTC),
        )
    except ValidationError as exc:
        raise ArtifactError(out / METADATA_FILE, _first_error(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    (out / model_file).write_bytes(data)
    try:
        _write_manifest(out, metadata, signing_key)
    except SigningError as exc:
        (out / model_file).unlink()
        raise ArtifactError(out / SIGNATURE_FILE, str(exc)) from exc
    return metadata


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "document"
    return f"invalid metadata field '{field}': {error['msg']}"


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedArtifact:
    """A manifest whose signature verified, and the model file's bytes that match it."""

    metadata: ArtifactMetadata
    model_bytes: bytes
    signer: TrustedKey
    model_path: Path


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ArtifactError(path, f"{what} is missing")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ArtifactError(path, f"cannot read {what} ({exc.strerror})") from exc


def read_signed_metadata(
    model_dir: Path | str, trusted_keys: Sequence[TrustedKey] | None = None
) -> tuple[ArtifactMetadata, TrustedKey]:
    """Verify the signature over ``model.json``'s bytes, then parse those same bytes.

    ``trusted_keys`` defaults to the public half of this process's signing key (a writer
    checking its own output); the predictor always passes its configured keys.
    """
    directory = Path(model_dir)
    path = directory / METADATA_FILE
    document_bytes = _read_bytes(path, "metadata file")
    signature_path = directory / SIGNATURE_FILE
    if not signature_path.is_file():
        raise ArtifactError(signature_path, "signature file is missing (unsigned artifact)")
    signature = _read_bytes(signature_path, "signature file")
    try:
        keys = signing.default_trusted_keys() if trusted_keys is None else list(trusted_keys)
        signer = signing.verify(document_bytes, signature, keys)
    except SigningError as exc:
        raise ArtifactError(signature_path, str(exc)) from exc
    try:
        document = json.loads(document_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(path, f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ArtifactError(path, "metadata must be a JSON object")
    if document.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ArtifactError(path, f"unsupported format_version {document.get('format_version')!r}")
    try:
        return ArtifactMetadata.model_validate(document), signer
    except ValidationError as exc:
        raise ArtifactError(path, _first_error(exc)) from exc


def read_metadata(
    model_dir: Path | str, trusted_keys: Sequence[TrustedKey] | None = None
) -> ArtifactMetadata:
    """The verified manifest, without reading the model file."""
    return read_signed_metadata(model_dir, trusted_keys)[0]


def _verify(
    model_dir: Path | str,
    trusted_keys: Sequence[TrustedKey] | None,
    expected_digest: str | None,
) -> VerifiedArtifact:
    directory = Path(model_dir)
    if not directory.is_dir():
        raise ArtifactError(directory, "model directory does not exist")
    if expected_digest is not None and not DIGEST_PATTERN.match(expected_digest):
        raise ArtifactError(directory, f"pinned digest {expected_digest!r} is not sha256:<hex>")
    metadata, signer = read_signed_metadata(directory, trusted_keys)
    model_path = directory / metadata.model_file
    data = _read_bytes(model_path, "model file")  # read once: these bytes are deserialized
    actual = hashlib.sha256(data).hexdigest()
    if actual != metadata.sha256:
        raise ArtifactError(
            model_path,
            f"sha256 mismatch: metadata says {metadata.sha256[:12]}..., file is {actual[:12]}... "
            "(the file was modified or replaced)",
        )
    if expected_digest is not None and f"sha256:{actual}" != expected_digest:
        raise ArtifactError(
            model_path,
            f"digest mismatch: pinned {expected_digest[:19]}..., artifact is "
            f"sha256:{actual[:12]}... (not the model this predictor was told to serve)",
        )
    if _major_minor(metadata.sklearn_version) != _major_minor(sklearn.__version__):
        raise ArtifactError(
            model_path,
            f"written with scikit-learn {metadata.sklearn_version}, running "
            f"{sklearn.__version__}; major.minor must match",
        )
    return VerifiedArtifact(metadata, data, signer, model_path)


def verify_artifact(
    model_dir: Path | str,
    *,
    trusted_keys: Sequence[TrustedKey] | None = None,
    expected_digest: str | None = None,
) -> ArtifactMetadata:
    """Signature, manifest, digest (and pin), scikit-learn version; deserializes nothing."""
    return _verify(model_dir, trusted_keys, expected_digest).metadata


def untrusted_types(data: bytes, where: Path | str) -> list[str]:
    """Every type a skops file names that is not in TRUSTED_TYPES, read from its schema
    (JSON, so reading it runs nothing). Stricter than skops' own audit, which trusts all of
    scikit-learn and numpy by default."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, RecursionError, OSError) as exc:
        raise ArtifactError(where, f"not a skops file ({type(exc).__name__}: {exc})") from exc
    found: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if "__module__" in node or "__class__" in node or "__loader__" in node:
                type_name = f"{node.get('__module__')}.{node.get('__class__')}"
                loader = node.get("__loader__")
                if type_name not in TRUSTED_TYPES:
                    found.add(type_name)
                elif loader not in _TRUSTED_LOADERS:
                    found.add(f"{type_name} (via {loader})")
            stack.extend(node.values())
    return sorted(found)


def _deserialize(verified: VerifiedArtifact, allow_pickle: bool) -> Any:
    metadata, path = verified.metadata, verified.model_path
    if metadata.format == "joblib":
        if not allow_pickle:
            raise ArtifactError(
                path,
                "model format 'joblib' is a pickle, which runs code when loaded; refused "
                "without --allow_pickle (convert it with python -m predictor.package)",
            )
        import joblib

        logger.warning(
            "loading %s as a PICKLE (--allow_pickle): the file is executed as code with this "
            "process's rights; only its signature (key %s) and digest vouch for it",
            path,
            verified.signer.name,
        )
        try:
            return joblib.load(io.BytesIO(verified.model_bytes))
        except Exception as exc:  # a verified file that still fails is corrupt at source
            raise ArtifactError(
                path, f"cannot unpickle model ({type(exc).__name__}: {exc})"
            ) from exc
    untrusted = untrusted_types(verified.model_bytes, path)
    if untrusted:
        raise ArtifactError(path, f"untrusted types in model file: {', '.join(untrusted)}")
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.loads(verified.model_bytes, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        raise ArtifactError(path, f"untrusted types in model file: {exc}") from exc
    except Exception as exc:  # a verified file that still fails is corrupt at source
        raise ArtifactError(path, f"cannot load skops model ({type(exc).__name__}: {exc})") from exc


def load_artifact(
    model_dir: Path | str,
    *,
    trusted_keys: Sequence[TrustedKey] | None = None,
    expected_digest: str | None = None,
    allow_pickle: bool = False,
) -> tuple[Any, ArtifactMetadata]:
    """Verify, then deserialize the verified bytes. The only way the project loads a model."""
    verified = _verify(model_dir, trusted_keys, expected_digest)
    estimator = _deserialize(verified, allow_pickle)
    metadata = verified.metadata
    _check_estimator(estimator, metadata.feature_names, metadata.class_names, verified.model_path)
    return estimator, metadata


# --- local model registry: <registry>/<model_name>/<version>/ -------------------------


def registry_versions(registry: Path | str, name: str) -> list[str]:
    """Versions present for ``name``, oldest first."""
    root = Path(registry) / name
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if _VERSION_PATTERN.match(p.name)), key=int)


def register_artifact(
    source_dir: Path | str,
    registry: Path | str,
    extra_files: Mapping[str, Path] | None = None,
    metrics: Mapping[str, float] | None = None,
    *,
    trusted_keys: Sequence[TrustedKey] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> tuple[ArtifactMetadata, Path]:
    """Copy a verified artifact into the registry under the next free version.

    The registry assigns the next free number so two runs never collide, and rewrites
    ``model.json`` with it (and with ``metrics`` merged in), signing it again with
    ``signing_key`` (default: as :func:`write_artifact`); the digest covers the model file,
    which is copied from the very bytes that were verified. ``extra_files`` maps file names
    in the version folder to sources, e.g. the held-out split the gate replays. The copy
    lands in a temporary sibling and is renamed into place, so a crash never leaves a
    half-written version behind.
    """
    verified = _verify(source_dir, trusted_keys, None)
    source = verified.metadata
    root = Path(registry) / source.name
    root.mkdir(parents=True, exist_ok=True)
    while True:
        existing = registry_versions(registry, source.name)
        version = str(int(existing[-1]) + 1) if existing else "1"
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
        try:
            (staging / source.model_file).write_bytes(verified.model_bytes)
            for name, extra in (extra_files or {}).items():
                shutil.copy2(extra, staging / name)
            merged = {**source.metrics, **{k: float(v) for k, v in (metrics or {}).items()}}
            metadata = source.model_copy(update={"version": version, "metrics": merged})
            _write_manifest(staging, metadata, signing_key)
            _make_world_readable(staging)
            target = root / version
            try:
                os.rename(staging, target)  # fails if another writer took the version
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                continue
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        trusted = None if signing_key is None else _own_key(signing_key)
        verify_artifact(target, trusted_keys=trusted)
        return metadata, target


def _make_world_readable(folder: Path) -> None:
    """A version folder 0755 and its files 0644, whoever wrote them: mkdtemp makes 0700,
    copy2 keeps a source's mode (KFP's outputs, a 077 umask), and a version must be
    readable by a non-root serving container and KServe's storage initializer. Nothing in
    it is secret: the signature, not the mode, protects it."""
    folder.chmod(0o755)
    for entry in folder.iterdir():
        entry.chmod(0o644)


def _own_key(key: Ed25519PrivateKey) -> list[TrustedKey]:
    public = key.public_key()
    return [TrustedKey(signing.key_id(public), public)]
