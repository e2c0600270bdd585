"""How a bundle travels over MQTT to a fleet: the one definition the publishing side
(`quantization.fleet`) and the agent share.

Topics, for a fleet prefix (default `moecast/fleet`) and a group:

    <fleet>/<group>/bundle             the announcement, retained, QoS 1
    <fleet>/<group>/bundle/chunk/<i>   chunk i of model.onnx, retained, QoS 1 (i from 0)

The announcement is JSON: the bundle's manifest.json and manifest.sig, a *transfer* document
and its signature (all base64), and, when the model is small, the model itself (then there
are no chunks). The transfer document lists the size and sha256 of every chunk and the sha256
of the manifest it carries; it is signed with the bundle's key, so an agent checks each chunk
as it arrives, and rejects a forged announcement before downloading anything.

A chunk is binary: `MCB1`, the 32-byte id of its transfer (sha256 of the transfer document),
the chunk index (uint32, big-endian), then the bytes. Retained messages come in no defined
order after a subscription: chunks may arrive before their announcement, and chunks of an
older transfer may still sit on the broker; the id tells them apart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from moecast.bundle.format import BundleError, Manifest, SignatureError, verify_signature

WIRE_VERSION = 1
# Far below mosquitto's default message_size_limit (none) and the 256 MB MQTT maximum, and
# small enough that a device on a slow link makes steady progress and retries little.
DEFAULT_CHUNK_BYTES = 256 * 1024
CHUNK_MAGIC = b"MCB1"
_CHUNK_HEADER = struct.Struct(">4s32sI")
CHUNK_HEADER_BYTES = _CHUNK_HEADER.size

Sign = Callable[[bytes], bytes]


class WireError(BundleError):
    """A fleet message is not in the wire format (bad JSON, base64, header or topic)."""


class UnsignedError(SignatureError):
    """The announcement carries no signature for the manifest or the transfer document."""


class TransferError(BundleError):
    """The signed transfer document contradicts the manifest or itself, or is too large."""


class ChunkChecksumError(BundleError):
    """A chunk's bytes do not have the sha256 (or size) the signed transfer document lists."""


def bundle_topic(fleet_prefix: str, group: str) -> str:
    return f"{fleet_prefix}/{group}/bundle"


def chunk_topic(fleet_prefix: str, group: str, index: int) -> str:
    return f"{bundle_topic(fleet_prefix, group)}/chunk/{index}"


def chunk_subscription(fleet_prefix: str, group: str) -> str:
    return f"{bundle_topic(fleet_prefix, group)}/chunk/+"


class ChunkInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: PositiveInt
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Transfer(BaseModel):
    """The signed transfer document: which manifest, and how its model is cut up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wire_version: Literal[1] = WIRE_VERSION
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    model_size: PositiveInt
    chunks: list[ChunkInfo]  # empty: the model is inline in the announcement

    @model_validator(mode="after")
    def _sizes(self) -> Transfer:
        if self.chunks and sum(c.size for c in self.chunks) != self.model_size:
            raise ValueError("the chunk sizes do not add up to model_size")
        return self

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Transfer:
        try:
            return cls.model_validate_json(data)
        except ValidationError as err:
            raise TransferError(f"the transfer document is invalid: {err}") from None


@dataclass(frozen=True)
class Announcement:
    """The announcement message, as bytes not yet trusted."""

    manifest: bytes
    manifest_sig: bytes
    transfer: bytes
    transfer_sig: bytes
    model: bytes | None = None  # the single-message form

    def to_bytes(self) -> bytes:
        fields = {
            "manifest": self.manifest,
            "manifest_sig": self.manifest_sig,
            "transfer": self.transfer,
            "transfer_sig": self.transfer_sig,
        }
        if self.model is not None:
            fields["model"] = self.model
        encoded = {name: base64.b64encode(data).decode() for name, data in fields.items()}
        return json.dumps({"wire_version": WIRE_VERSION, **encoded}).encode()

    @classmethod
    def parse(cls, payload: bytes) -> Announcement:
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            raise WireError("the announcement is not JSON") from None
        if not isinstance(document, dict) or document.get("wire_version") != WIRE_VERSION:
            raise WireError(f"the announcement is not in wire format {WIRE_VERSION}")
        decoded: dict[str, bytes] = {}
        for name in ("manifest", "manifest_sig", "transfer", "transfer_sig", "model"):
            text = document.get(name)
            if text is None and name != "model":
                # A missing signature is the common forgery, named as such below.
                text = "" if name.endswith("_sig") else None
            if text is None:
                continue
            if not isinstance(text, str):
                raise WireError(f"announcement field {name} is not a string")
            try:
                decoded[name] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise WireError(f"announcement field {name} is not base64") from None
        if "manifest" not in decoded or "transfer" not in decoded:
            raise WireError("the announcement lacks its manifest or transfer document")
        return cls(**decoded)

    @property
    def transfer_id(self) -> bytes:
        return hashlib.sha256(self.transfer).digest()


@dataclass(frozen=True)
class VerifiedAnnouncement:
    """An announcement whose manifest and transfer document a trusted key signed."""

    announcement: Announcement
    manifest: Manifest
    transfer: Transfer

    @property
    def transfer_id(self) -> bytes:
        return self.announcement.transfer_id

    @property
    def manifest_sha256(self) -> str:
        return self.transfer.manifest_sha256


def verify_announcement(
    announcement: Announcement, keys: Sequence[Ed25519PublicKey], max_model_bytes: int
) -> VerifiedAnnouncement:
    """Check signatures first (nothing unsigned is parsed further), then consistency."""
    if not announcement.manifest_sig or not announcement.transfer_sig:
        raise UnsignedError("the announcement is not signed")
    verify_signature(announcement.manifest, announcement.manifest_sig, keys)
    verify_signature(announcement.transfer, announcement.transfer_sig, keys)
    manifest = Manifest.from_bytes(announcement.manifest)
    transfer = Transfer.from_bytes(announcement.transfer)
    if transfer.manifest_sha256 != hashlib.sha256(announcement.manifest).hexdigest():
        raise TransferError("the transfer document was signed for another manifest")
    if transfer.model_size > max_model_bytes:
        raise TransferError(
            f"the model is {transfer.model_size} bytes, more than the {max_model_bytes} allowed"
        )
    inline = announcement.model is not None
    if inline == bool(transfer.chunks):
        raise TransferError("a model must come either inline or in chunks, not both or neither")
    if inline and len(announcement.model or b"") != transfer.model_size:
        raise TransferError("the inline model does not have the size the transfer lists")
    return VerifiedAnnouncement(announcement, manifest, transfer)


@dataclass(frozen=True)
class Chunk:
    transfer_id: bytes
    index: int
    data: bytes


def encode_chunk(transfer_id: bytes, index: int, data: bytes) -> bytes:
    return _CHUNK_HEADER.pack(CHUNK_MAGIC, transfer_id, index) + data


def decode_chunk(payload: bytes) -> Chunk:
    if len(payload) <= CHUNK_HEADER_BYTES or not payload.startswith(CHUNK_MAGIC):
        raise WireError("not a bundle chunk")
    _, transfer_id, index = _CHUNK_HEADER.unpack_from(payload)
    return Chunk(transfer_id, index, payload[CHUNK_HEADER_BYTES:])


def check_chunk(transfer: Transfer, chunk: Chunk) -> None:
    if chunk.index >= len(transfer.chunks):
        raise ChunkChecksumError(f"chunk {chunk.index} is beyond the {len(transfer.chunks)} listed")
    expected = transfer.chunks[chunk.index]
    digest = hashlib.sha256(chunk.data).hexdigest()
    if len(chunk.data) != expected.size or digest != expected.sha256:
        raise ChunkChecksumError(f"chunk {chunk.index} does not have the signed size and sha256")


def chunk_index(topic: str, fleet_prefix: str, group: str) -> int | None:
    """The index in a chunk topic, or None if `topic` is not one: a bounded decimal only, as
    the topic is the network's and the index only ever selects an entry of the signed list."""
    prefix = f"{bundle_topic(fleet_prefix, group)}/chunk/"
    if not topic.startswith(prefix):
        return None
    text = topic[len(prefix) :]
    if not text.isascii() or not text.isdecimal() or len(text) > 6:
        return None
    return int(text)


def package(
    manifest: bytes,
    manifest_sig: bytes,
    model: bytes,
    sign: Sign,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[Announcement, list[bytes]]:
    """The announcement and the encoded chunk payloads for a bundle; a model of at most
    `chunk_bytes` goes inline, in one message."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    pieces = [model[i : i + chunk_bytes] for i in range(0, len(model), chunk_bytes)]
    inline = len(pieces) <= 1
    transfer = Transfer(
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        model_size=len(model),
        chunks=[]
        if inline
        else [ChunkInfo(size=len(p), sha256=hashlib.sha256(p).hexdigest()) for p in pieces],
    ).to_bytes()
    announcement = Announcement(
        manifest, manifest_sig, transfer, sign(transfer), model if inline else None
    )
    transfer_id = announcement.transfer_id
    chunks = [] if inline else [encode_chunk(transfer_id, i, p) for i, p in enumerate(pieces)]
    return announcement, chunks
