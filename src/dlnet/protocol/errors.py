"""Errors shared across protocol modules.

`Reject` and `RejectReason` live here rather than in wire.py so that canonical.py (which wire.py
imports) can raise them; wire.py re-exports both.
"""

from enum import StrEnum


class ConfigError(ValueError):
    """A network config that cannot be used.

    ``str(e)`` is ``"<field.path>: <what is wrong> — <how to fix>"`` so an operator sees at once
    which field to edit and how.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class RejectReason(StrEnum):
    """Why a received message was rejected. The value is the counter name a node reports."""

    MALFORMED = "malformed"
    """Not msgpack, not one array, or a field of the wrong msgpack type, or a wrong field count."""
    NON_CANONICAL = "non_canonical"
    """Valid msgpack, but re-encoding the decoded value gives other bytes (e.g. a non-minimal
    integer or length header): two byte strings must never decode to the same message."""
    OVERSIZE = "oversize"
    """Longer than the largest valid message of its kind under the network config."""
    WRONG_KIND = "wrong_kind"
    """Unknown kind, or not the kind expected on this topic."""
    WRONG_VERSION = "wrong_version"
    """A wire version this node does not speak."""
    WRONG_NETWORK = "wrong_network"
    """The network id is not this network's."""
    WRONG_DIMENSION = "wrong_dimension"
    """An embedding vector that is not exactly dim * 4 bytes."""
    WRONG_LENGTH = "wrong_length"
    """A fixed-size byte field (key, hash, salt, signature) or a list of the wrong length."""
    NON_FINITE = "non_finite"
    """An embedding component that is NaN or infinite."""
    BAD_SIGNATURE = "bad_signature"
    """The Ed25519 signature does not verify under the signer's key and the kind's domain."""
    NOT_VALIDATOR = "not_validator"
    """An attestation, finality vote or certificate signer that is not in the validator set."""
    BAD_FIELD = "bad_field"
    """A well-typed field whose value is out of range (shard, slot, flag, order of a list)."""
    BAD_REGISTRATION = "bad_registration"
    """A Commit whose registration nonce is not a proof of work for its encoder key and this
    network at the config's difficulty (checked by the node's admission, not by `decode`)."""
    TOO_MANY_TEXTS = "too_many_texts"
    """A Submission with more texts than one round can take (``submissions.capacity``)."""
    OVER_QUOTA = "over_quota"
    """A second, different Submission from one key for the same round (quota: one per key
    per round)."""


class Reject(Exception):
    """A message that must not be accepted, relayed or stored."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
