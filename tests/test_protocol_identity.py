"""Keys, domain-separated signatures and the key file."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlnet.protocol.identity import SigningKey, decode_key_file, encode_key_file, verify

seeds = st.binary(min_size=32, max_size=32)
COMMIT = b"dlnet/v1/commit"
VOTE = b"dlnet/v1/vote"


def test_rfc8032_public_key() -> None:
    # RFC 8032 section 7.1, test 1: the seed's public key.
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    expected = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert SigningKey.from_seed(seed).public_key.hex() == expected


@given(seeds, st.binary(max_size=200))
def test_sign_verify(seed: bytes, payload: bytes) -> None:
    key = SigningKey.from_seed(seed)
    sig = key.sign(COMMIT, payload)
    assert len(sig) == 64
    assert verify(key.public_key, COMMIT, payload, sig)
    assert not verify(key.public_key, COMMIT, payload + b"x", sig)
    other = SigningKey.from_seed(bytes(b ^ 1 for b in seed))
    assert not verify(other.public_key, COMMIT, payload, sig)


@given(seeds, st.binary(max_size=200))
def test_domain_separation(seed: bytes, payload: bytes) -> None:
    """A commit signature never verifies as a vote, even over the same payload bytes."""
    key = SigningKey.from_seed(seed)
    assert not verify(key.public_key, VOTE, payload, key.sign(COMMIT, payload))
    assert not verify(key.public_key, COMMIT, payload, key.sign(VOTE, payload))


def test_domain_boundary_is_unambiguous() -> None:
    """domain || 0x00 || payload: moving bytes between domain and payload changes the message."""
    key = SigningKey.generate()
    sig = key.sign(b"dlnet/v1/a", b"b")
    assert not verify(key.public_key, b"dlnet/v1/ab", b"", sig)
    with pytest.raises(ValueError):
        key.sign(b"bad\x00domain", b"")
    with pytest.raises(ValueError):
        key.sign(b"", b"")


def test_verify_rejects_wrong_lengths() -> None:
    key = SigningKey.generate()
    sig = key.sign(COMMIT, b"p")
    assert not verify(key.public_key[:31], COMMIT, b"p", sig)
    assert not verify(key.public_key, COMMIT, b"p", sig[:63])
    assert not verify(key.public_key, COMMIT, b"p", sig + b"\x00")


def test_from_seed_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        SigningKey.from_seed(bytes(31))


def test_generate_is_fresh_and_repr_hides_secret() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    assert a != b and a.public_key != b.public_key
    assert a.seed.hex() not in repr(a)
    assert a.public_key.hex() in repr(a)


@given(seeds)
def test_key_file_round_trip(seed: bytes) -> None:
    key = SigningKey.from_seed(seed)
    again = decode_key_file(encode_key_file(key))
    assert again == key
    assert again.public_key == key.public_key


def _mutations(text: str) -> list[tuple[str, str]]:
    lines = text.splitlines()
    seed_hex = lines[1].split()[1]
    flipped = ("0" if seed_hex[0] != "0" else "1") + seed_hex[1:]
    return [
        ("\n".join(["dlnet-key v0", *lines[1:]]), "not a dlnet key"),
        ("\n".join([lines[0], lines[1]]), "no 'public' line"),
        ("\n".join([lines[0], f"seed {flipped}", lines[2]]), "does not match"),
        ("\n".join([lines[0], "seed zz", lines[2]]), "not hex"),
        ("\n".join([lines[0], "seed abcd", lines[2]]), "2 bytes"),
        ("\n".join([*lines, "extra line"]), "unexpected line"),
        ("\n".join([*lines, lines[1]]), "unexpected line"),
    ]


def test_key_file_errors() -> None:
    text = encode_key_file(SigningKey.generate()).decode()
    for damaged, message in _mutations(text):
        with pytest.raises(ValueError, match=message):
            decode_key_file(damaged.encode())
    with pytest.raises(ValueError, match="ASCII"):
        decode_key_file(b"\xff\xfe")
    with pytest.raises(ValueError, match="not a dlnet key"):
        decode_key_file(b"")
