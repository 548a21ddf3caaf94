"""Ed25519 keys and domain-separated signatures (via ``cryptography``).

Every signature is over ``domain || b"\\x00" || payload``, where ``domain`` is the message kind's
tag (``b"dlnet/v1/<name>"``, never containing a zero byte). So a signature made for one kind
never verifies as another kind, even over identical payload bytes.
"""

from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from dlnet.protocol.canonical import KEY_BYTES

SEED_BYTES = 32
SIGNATURE_BYTES = 64
KEY_FILE_HEADER = "dlnet-ed25519-key v1"


def _signed_bytes(domain: bytes, payload: bytes) -> bytes:
    if not domain or b"\x00" in domain:
        raise ValueError("a signature domain is a non-empty tag without zero bytes")
    return domain + b"\x00" + payload


class SigningKey:
    """An Ed25519 private key. ``repr`` never shows the secret."""

    __slots__ = ("_key", "_public", "_seed")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        self._public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key from the operating system's random source (key creation, not consensus)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key whose 32-byte RFC 8032 secret is ``seed``."""
        if type(seed) is not bytes or len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is exactly {SEED_BYTES} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self._seed

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return self._public

    def sign(self, domain: bytes, payload: bytes) -> bytes:
        """The 64-byte signature over ``domain || 0x00 || payload``."""
        return self._key.sign(_signed_bytes(domain, payload))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningKey) and hmac.compare_digest(self._seed, other._seed)

    def __hash__(self) -> int:
        return hash(self._public)

    def __repr__(self) -> str:
        return f"SigningKey(public_key={self._public.hex()})"


def verify(public_key: bytes, domain: bytes, payload: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s signature over ``domain || 0x00 || payload``.

    False (never an exception) for a key or signature of the wrong length or encoding.
    """
    if len(public_key) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, _signed_bytes(domain, payload)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_key_file(key: SigningKey) -> bytes:
    """The key file text: a header line, the secret seed and the public key, both hex.

    The public key is redundant; `decode_key_file` checks it, which catches a damaged seed.
    """
    return (f"{KEY_FILE_HEADER}\nseed {key.seed.hex()}\npublic {key.public_key.hex()}\n").encode()


def decode_key_file(data: bytes) -> SigningKey:
    """Parse `encode_key_file` output; ``ValueError`` says what is wrong in one line."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("key file is not ASCII text — is this a dlnet key file?") from None
    lines = text.splitlines()
    if not lines or lines[0] != KEY_FILE_HEADER:
        raise ValueError(f"key file does not start with {KEY_FILE_HEADER!r} — not a dlnet key")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(" ")
        if name not in ("seed", "public") or name in fields:
            raise ValueError(f"key file: unexpected line {line[:20]!r}")
        fields[name] = value
    values: dict[str, bytes] = {}
    for name in ("seed", "public"):
        if name not in fields:
            raise ValueError(f"key file: no {name!r} line")
        try:
            values[name] = bytes.fromhex(fields[name])
        except ValueError:
            raise ValueError(f"key file: {name} is not hex") from None
        if len(values[name]) != SEED_BYTES:
            raise ValueError(f"key file: {name} is {len(values[name])} bytes, expected 32")
    key = SigningKey.from_seed(values["seed"])
    if key.public_key != values["public"]:
        raise ValueError("key file: the public key does not match the seed — the file is damaged")
    return key
