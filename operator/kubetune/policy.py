"""What a FineTuneJob may use, set by the platform team (chart values `policy.*`): pure.

Anyone who may create a FineTuneJob gets a pod the operator creates, so what that pod may use is policy:
its image, the Secrets it reads, whether it may land on control-plane nodes, the volume claims it mounts.
The operator refuses a FineTuneJob that breaks a rule (condition Validated=False, reason PolicyDenied, the
rule in the message); the chart's ValidatingAdmissionPolicy (templates/admissionpolicy.yaml) refuses it
at admission with the same rules in CEL, so a cluster with the policy enabled never stores one.

Image and claim patterns are regular expressions matched against the whole name (RE2 syntax, which both
Python's re and CEL's matches() read the same for the patterns a policy needs).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubetune.api import FineTuneJobSpec
from kubetune.validation import Problem

# Node labels and taint keys of control-plane nodes (the current one, and the one before Kubernetes 1.24).
CONTROL_PLANE_KEYS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
# Patterns are compiled once per process; a policy has a handful, so this bound is never reached.
MAX_PATTERNS = 256
ANY = ".*"


@dataclass(frozen=True)
class Policy:
    """The rules; the defaults are the chart's safe defaults, but for images (the chart passes its own)."""

    allowed_images: tuple[str, ...] = (ANY,)
    allow_other_secrets: bool = False
    allow_control_plane: bool = False
    allowed_claims: tuple[str, ...] = (ANY,)

    def allows_image(self, image: str) -> bool:
        return any(compiled(pattern).fullmatch(image) for pattern in self.allowed_images)

    def allows_claim(self, claim: str) -> bool:
        return any(compiled(pattern).fullmatch(claim) for pattern in self.allowed_claims)


@functools.lru_cache(maxsize=MAX_PATTERNS)
def compiled(pattern: str) -> re.Pattern[str]:
    """A policy pattern, compiled once (re.error when it is not a regular expression)."""
    return re.compile(pattern)


def image_pattern_of(repository: str) -> str:
    """The pattern that allows one image repository at any tag or digest."""
    return re.escape(repository) + r"([:@][^\s]+)?"


def _image_problems(spec: FineTuneJobSpec, policy: Policy) -> Iterator[Problem]:
    if spec.image is not None and not policy.allows_image(spec.image):
        yield Problem("spec.image", f"{spec.image} is not an allowed image (policy.allowedImages: "
                                    f"{', '.join(policy.allowed_images)}); leave spec.image out to use the "
                                    "operator's trainer image")


def _secret_problems(spec: FineTuneJobSpec, policy: Policy) -> Iterator[Problem]:
    if policy.allow_other_secrets:
        return
    allowed = spec.hf_token_secret_ref.name if spec.hf_token_secret_ref is not None else None
    for index, variable in enumerate(spec.env):
        source = variable.value_from
        ref = source.secret_key_ref if source is not None else None
        if ref is not None and ref.name != allowed:
            yield Problem(f"spec.env[{index}].valueFrom.secretKeyRef.name",
                          f"Secret {ref.name} may not be read (policy.allowOtherSecrets is false: only the "
                          "Secret of spec.hfTokenSecretRef); ask your platform team to allow it")


def _affinity_keys(affinity: dict[str, Any] | None) -> Iterator[str]:
    node = (affinity or {}).get("nodeAffinity") or {}
    required = (node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    preferred = [term.get("preference") or {} for term in node.get("preferredDuringSchedulingIgnoredDuringExecution")
                 or [] if isinstance(term, dict)]
    for term in [*required, *preferred]:
        if isinstance(term, dict):
            for expression in term.get("matchExpressions") or []:
                if isinstance(expression, dict):
                    yield str(expression.get("key", ""))


def _control_plane_problems(spec: FineTuneJobSpec, policy: Policy) -> Iterator[Problem]:
    if policy.allow_control_plane:
        return
    rule = "policy.allowControlPlane is false: training runs on worker nodes only"
    for index, toleration in enumerate(spec.resources.tolerations or []):
        if toleration.key in CONTROL_PLANE_KEYS:
            yield Problem(f"spec.resources.tolerations[{index}].key", f"{toleration.key}: {rule}")
        elif not toleration.key and toleration.operator == "Exists":
            yield Problem(f"spec.resources.tolerations[{index}]",
                          f"an empty key with operator Exists tolerates every taint, the control plane's too ({rule}); "
                          "name the taint key")
    for key in spec.resources.node_selector or {}:
        if key in CONTROL_PLANE_KEYS:
            yield Problem(f"spec.resources.nodeSelector.{key}", rule)
    for key in _affinity_keys(spec.resources.affinity):
        if key in CONTROL_PLANE_KEYS:
            yield Problem("spec.resources.affinity", f"{key}: {rule}")


def _claim_problems(spec: FineTuneJobSpec, policy: Policy) -> Iterator[Problem]:
    claims = [("spec.output.volume.claimName", spec.output.volume.claim_name)] if spec.output.volume else []
    claims += [(f"spec.volumes[{index}].claimName", volume.claim_name) for index, volume in enumerate(spec.volumes)]
    for field, claim in claims:
        if not policy.allows_claim(claim):
            yield Problem(field, f"PersistentVolumeClaim {claim} is not allowed (policy.allowedClaims: "
                                 f"{', '.join(policy.allowed_claims)})")


def policy_problems(spec: FineTuneJobSpec, policy: Policy) -> list[Problem]:
    """Every rule of `policy` the spec breaks, each naming the field, the rule and the fix."""
    return [problem for check in (_image_problems, _secret_problems, _control_plane_problems, _claim_problems)
            for problem in check(spec, policy)]
