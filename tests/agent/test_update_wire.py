"""The fleet wire format and reassembly: what an agent accepts from the network before a byte
of the model reaches the disk."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moecast.agent.cli import DEFAULT_BUNDLE
from moecast.agent.updates.reassembly import CHUNK_OVERHEAD_BYTES, MAX_EARLY_TRANSFERS, Reassembler

from moecast.bundle.format import MANIFEST_FILE, NoTrustedKeyError, SignatureError
from moecast.bundle.wire import (
    Announcement,
    ChunkChecksumError,
    Transfer,
    TransferError,
    UnsignedError,
    WireError,
    check_chunk,
    chunk_index,
    decode_chunk,
    encode_chunk,
    package,
    verify_announcement,
)

MANIFEST = (DEFAULT_BUNDLE / MANIFEST_FILE).read_bytes()
MODEL = bytes(range(256)) * 40  # 10 240 bytes; only its digest matters here
LIMIT = 1 << 20


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def packaged(key: Ed25519PrivateKey, chunk_bytes: int = 4096) -> tuple[Announcement, list[bytes]]:
    return package(MANIFEST, key.sign(MANIFEST), MODEL, key.sign, chunk_bytes)


def test_a_chunked_bundle_round_trips(key: Ed25519PrivateKey) -> None:
    announcement, chunks = packaged(key)
    assert len(chunks) == 3
    verified = verify_announcement(
        Announcement.parse(announcement.to_bytes()), [key.public_key()], LIMIT
    )
    assert verified.manifest.name == "edge"
    assert verified.transfer.model_size == len(MODEL)
    reassembler = Reassembler(LIMIT)
    download = reassembler.start(verified)
    for payload in reversed(chunks):  # any order
        reassembler.add(decode_chunk(payload))
    assert download.complete
    assert download.model() == MODEL


def test_a_small_model_travels_inline(key: Ed25519PrivateKey) -> None:
    announcement, chunks = packaged(key, chunk_bytes=len(MODEL))
    assert chunks == []
    parsed = Announcement.parse(announcement.to_bytes())
    download = Reassembler(LIMIT).start(verify_announcement(parsed, [key.public_key()], LIMIT))
    assert download.complete
    assert download.model() == MODEL


def test_chunks_that_come_before_their_announcement_wait(key: Ed25519PrivateKey) -> None:
    announcement, chunks = packaged(key)
    reassembler = Reassembler(LIMIT)
    assert reassembler.add(decode_chunk(chunks[0])) is None
    assert reassembler.add(decode_chunk(chunks[2])) is None
    download = reassembler.start(verify_announcement(announcement, [key.public_key()], LIMIT))
    assert download.missing() == [1]
    reassembler.add(decode_chunk(chunks[1]))
    assert download.model() == MODEL


def test_the_early_chunk_buffer_is_bounded(key: Ed25519PrivateKey) -> None:
    reassembler = Reassembler(max_buffer_bytes=10_000)
    for n in range(5):  # five unknown transfers of 4 KiB each
        reassembler.add(decode_chunk(encode_chunk(bytes([n]) * 32, 0, b"x" * 4096)))
    assert reassembler.buffered_bytes <= 10_000
    assert list(reassembler._early) == [bytes([3]) * 32, bytes([4]) * 32]


def test_a_flood_of_tiny_early_chunks_is_bounded_by_what_it_costs(key: Ed25519PrivateKey) -> None:
    reassembler = Reassembler(max_buffer_bytes=100_000)
    for n in range(2_000):  # 1-byte chunks: 2 KB of data, but each costs its bookkeeping too
        transfer = (n % 10).to_bytes(32, "big")
        reassembler.add(decode_chunk(encode_chunk(transfer, n, b"x")))
    held = sum(len(parts) for parts in reassembler._early.values())
    assert reassembler.buffered_bytes <= 100_000
    assert held <= 100_000 // CHUNK_OVERHEAD_BYTES
    assert len(reassembler._early) <= MAX_EARLY_TRANSFERS


def test_unsigned(key: Ed25519PrivateKey) -> None:
    announcement, _ = packaged(key)
    bare = Announcement(announcement.manifest, b"", announcement.transfer, b"")
    with pytest.raises(UnsignedError):
        verify_announcement(Announcement.parse(bare.to_bytes()), [key.public_key()], LIMIT)


def test_wrong_key(key: Ed25519PrivateKey) -> None:
    announcement, _ = packaged(Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="trusted key"):
        verify_announcement(announcement, [key.public_key()], LIMIT)


def test_no_trusted_key(key: Ed25519PrivateKey) -> None:
    with pytest.raises(NoTrustedKeyError):
        verify_announcement(packaged(key)[0], [], LIMIT)


def test_tampered_transfer_document(key: Ed25519PrivateKey) -> None:
    announcement, _ = packaged(key)
    transfer = announcement.transfer.replace(b'"model_size":10240', b'"model_size":10241')
    forged = Announcement(
        announcement.manifest, announcement.manifest_sig, transfer, announcement.transfer_sig
    )
    with pytest.raises(SignatureError):
        verify_announcement(forged, [key.public_key()], LIMIT)


def test_a_transfer_signed_for_another_manifest(key: Ed25519PrivateKey) -> None:
    announcement, _ = packaged(key)
    other = Transfer(manifest_sha256="0" * 64, model_size=len(MODEL), chunks=[]).to_bytes()
    forged = Announcement(
        announcement.manifest, announcement.manifest_sig, other, key.sign(other), MODEL
    )
    with pytest.raises(TransferError, match="another manifest"):
        verify_announcement(forged, [key.public_key()], LIMIT)


def test_a_model_over_the_limit_is_refused_before_download(key: Ed25519PrivateKey) -> None:
    with pytest.raises(TransferError, match="more than"):
        verify_announcement(packaged(key)[0], [key.public_key()], len(MODEL) - 1)


def test_a_chunk_must_match_the_signed_list(key: Ed25519PrivateKey) -> None:
    announcement, chunks = packaged(key)
    transfer = verify_announcement(announcement, [key.public_key()], LIMIT).transfer
    good = decode_chunk(chunks[1])
    check_chunk(transfer, good)
    tampered = decode_chunk(encode_chunk(good.transfer_id, 1, good.data[:-1] + b"?"))
    with pytest.raises(ChunkChecksumError):
        check_chunk(transfer, tampered)
    beyond = decode_chunk(encode_chunk(good.transfer_id, 7, good.data))
    with pytest.raises(ChunkChecksumError, match="beyond"):
        check_chunk(transfer, beyond)
    assert hashlib.sha256(good.data).hexdigest() == transfer.chunks[1].sha256


@pytest.mark.parametrize(
    "payload", [b"", b"{", b"[]", b'{"wire_version": 2}', b'{"wire_version": 1, "manifest": 3}']
)
def test_malformed_announcements(payload: bytes) -> None:
    with pytest.raises(WireError):
        Announcement.parse(payload)


def test_malformed_chunks() -> None:
    for payload in (b"", b"MCB1", b"XXXX" + bytes(40)):
        with pytest.raises(WireError):
            decode_chunk(payload)


@pytest.mark.parametrize(
    ("topic", "index"),
    [
        ("moecast/fleet/g/bundle/chunk/0", 0),
        ("moecast/fleet/g/bundle/chunk/13", 13),
        ("moecast/fleet/g/bundle/chunk/../../x", None),
        ("moecast/fleet/g/bundle/chunk/-1", None),
        ("moecast/fleet/g/bundle/chunk/1e3", None),
        ("moecast/fleet/g/bundle/chunk/\u0663", None),  # an Arabic-Indic digit
        ("moecast/fleet/g/bundle/chunk/99999999999", None),
        ("moecast/fleet/other/bundle/chunk/1", None),
    ],
)
def test_chunk_index_takes_bounded_ascii_decimals_only(topic: str, index: int | None) -> None:
    assert chunk_index(topic, "moecast/fleet", "g") == index
