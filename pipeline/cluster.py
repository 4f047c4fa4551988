"""What the compiled pipeline needs from a Kubernetes cluster: images, Secrets, and
optionally a volume for the run notes.

Everything here is decided at compile time (``python -m pipeline compile`` flags) and
checked before KFP compiles anything, so a typo is a one-line error naming the flag, not
a pod stuck in ``InvalidImageName`` or ``CreateContainerConfigError`` an hour later.

Images are fully qualified (registry host, repository, tag) and one per step, because a
cluster's container runtime resolves an unqualified name against a default registry that
is rarely the one the images were pushed to. Steps install nothing at run time: the images
contain everything, so a cluster without a package index runs the pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# ".invalid" is the top-level domain reserved never to resolve (RFC 2606): a pipeline
# compiled without --image-prefix fails at its first image pull, naming this host, instead
# of pulling something unintended.
PLACEHOLDER_IMAGE_PREFIX = "registry.invalid/irisgate"
PLACEHOLDER_TAG = "latest"

# The OCI distribution reference grammar (github.com/distribution/reference, regexp.go).
_HOST = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
)
_HOST_PORT = rf"{_HOST}(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"
_REPOSITORY = re.compile(
    rf"(?P<host>{_HOST_PORT})/(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
)
_TAG_RE = re.compile(_TAG)
_IMAGE = re.compile(
    rf"(?P<repository>{_REPOSITORY.pattern})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)
_MAX_REPOSITORY = 255
_MAX_PREFIX = _MAX_REPOSITORY - len("-pipeline-") - 16  # room for the longest step name

# Kubernetes object names (RFC 1123 subdomain) and Secret data keys.
_K8S_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_MAX_K8S_NAME = 253

# Where --signing-secret is mounted in the steps that write or read a signed artifact
# (train signs it; evaluate and deploy verify it with the same key's public half). Without
# one shared key each pod would make its own development key, and evaluate would refuse
# the model train signed.
SIGNING_KEY_MOUNT_PATH = "/etc/irisgate/signing"
SIGNING_STEPS = ("train", "evaluate", "deploy")

# Where --registry-pvc is mounted in the deploy, reject and notify steps; pass this path as
# the pipeline's ``registry`` parameter. On a cluster it holds only the run notes the exit
# handler reports from and the rejection records: the model stays in KFP's artifact store
# (pipeline/steps/deploy).
REGISTRY_MOUNT_PATH = "/mnt/registry"


class ClusterConfigError(ValueError):
    """A compile flag that would make the pipeline fail on a cluster; one line, naming it."""


def _is_registry_host(host: str) -> bool:
    # Docker's own rule: the first component is a registry only if it looks like a host.
    return "." in host or ":" in host or host == "localhost"


def check_image_prefix(prefix: str) -> str:
    """``REGISTRY/irisgate``: each step's image is ``PREFIX-pipeline-<step>``."""
    match = _REPOSITORY.fullmatch(prefix)
    if match is None or not _is_registry_host(match["host"]):
        raise ClusterConfigError(
            f"--image-prefix {prefix!r}: expected REGISTRY-HOST/PATH with a lowercase path "
            "(e.g. ghcr.io/acme/irisgate)"
        )
    if len(prefix) > _MAX_PREFIX:
        raise ClusterConfigError(
            f"--image-prefix {prefix[:40]!r}...: longer than {_MAX_PREFIX} characters"
        )
    return prefix


def check_tag(tag: str) -> str:
    if not _TAG_RE.fullmatch(tag):
        raise ClusterConfigError(
            f"--tag {tag!r}: expected 1-128 of A-Z a-z 0-9 _ . - not starting with . or -"
        )
    return tag


def is_fully_qualified(image: str) -> bool:
    """Registry host, repository and a tag or digest: nothing left for a runtime to guess."""
    match = _IMAGE.fullmatch(image)
    return (
        match is not None
        and bool(match["tag"] or match["digest"])
        and _is_registry_host(match["host"])
        and len(match["repository"]) <= _MAX_REPOSITORY
    )


def check_image(image: str) -> str:
    if not is_fully_qualified(image):
        raise ClusterConfigError(
            f"--image {image!r}: expected a fully qualified image, "
            "REGISTRY-HOST/PATH:TAG or REGISTRY-HOST/PATH@sha256:DIGEST"
        )
    return image


def check_k8s_name(name: str, flag: str) -> str:
    if len(name) > _MAX_K8S_NAME or not _K8S_NAME.fullmatch(name):
        raise ClusterConfigError(
            f"{flag} {name!r}: expected a Kubernetes name (lowercase a-z 0-9 - ., "
            "starting and ending with a letter or digit)"
        )
    return name


def check_secret_key(key: str, flag: str) -> str:
    if len(key) > _MAX_K8S_NAME or not _SECRET_KEY.fullmatch(key):
        raise ClusterConfigError(f"{flag} {key!r}: expected a Secret key (a-z A-Z 0-9 - . _)")
    return key


@dataclass(frozen=True)
class ComponentImages:
    """One fully qualified image per step, ``{prefix}-pipeline-{step}:{tag}``, or with
    ``single`` (``--image``) one image for every step. Checked when built."""

    prefix: str = PLACEHOLDER_IMAGE_PREFIX
    tag: str = PLACEHOLDER_TAG
    single: str = ""

    def __post_init__(self) -> None:
        if self.single:
            check_image(self.single)
        else:
            check_image_prefix(self.prefix)
            check_tag(self.tag)

    def for_step(self, step: str) -> str:
        return self.single or f"{self.prefix}-pipeline-{step}:{self.tag}"

    @property
    def is_placeholder(self) -> bool:
        return not self.single and self.prefix == PLACEHOLDER_IMAGE_PREFIX


@dataclass(frozen=True)
class SecretRef:
    """A key of a Kubernetes Secret, handed to a step as one environment variable."""

    name: str
    key: str
    flag: str = "--secret"  # named in errors

    def __post_init__(self) -> None:
        check_k8s_name(self.name, self.flag)
        check_secret_key(self.key, f"{self.flag}-key")


@dataclass(frozen=True)
class ClusterOptions:
    """Everything cluster-specific in the compiled pipeline."""

    images: ComponentImages = field(default_factory=ComponentImages)
    gate_token: SecretRef = field(
        default_factory=lambda: SecretRef("irisgate-gate", "api-token", "--gate-secret")
    )
    webhook_url: SecretRef = field(
        default_factory=lambda: SecretRef("irisgate-notify", "webhook-url", "--notify-secret")
    )
    signing_key: SecretRef = field(
        default_factory=lambda: SecretRef("irisgate-signing", "signing-key", "--signing-secret")
    )
    """The Ed25519 private key (PKCS#8 PEM) artifacts are signed with, mounted as a file
    in :data:`SIGNING_STEPS` and named by ``IRISGATE_SIGNING_KEY``. Required: a pod
    without it does not start, which names the Secret, rather than signing with a key no
    predictor trusts."""
    registry_pvc: str = ""
    """PersistentVolumeClaim mounted at :data:`REGISTRY_MOUNT_PATH` in deploy, reject and
    notify, optional: models never land in it on a cluster (they stay in KFP's artifact
    store), only the run notes deploy and reject leave for the exit handler and the
    rejection records. Empty mounts nothing: each pod then has a folder of its own, the
    notes are lost with it, and the exit handler's message for a run that succeeded says
    ``unknown`` instead of deployed or rejected (a failed run is still reported as
    failed, from KFP's final state, but without the step's name or exception)."""

    def __post_init__(self) -> None:
        if self.registry_pvc:
            check_k8s_name(self.registry_pvc, "--registry-pvc")
