"""Edge bundles: the signed, self-checking package an agent runs.

A bundle is a directory, or an uncompressed `.tar` of its three files:

    model.onnx      input `values` [batch, context_length] float32, raw scale, NaN = missing;
                    outputs `h1`, `h8`, ... [batch, horizon, n_quantiles] and optionally
                    `expert_load` [n_layers, n_experts]
    manifest.json   what the model is, the sha256 of model.onnx, a golden input and output
    manifest.sig    the raw 64-byte Ed25519 signature of the exact manifest.json bytes

`load_bundle` trusts nothing it has not checked. It checks, in order: the files are there (and
a tar is whole and holds only those plain files), the signature verifies against a trusted key,
the manifest parses in a known format version, the model's sha256 matches, ONNX Runtime loads
it, its inputs and outputs have the manifest's shapes, and the golden input reproduces the
golden output. Each failure raises its own `BundleError` subclass, whose message names what
failed, so an agent can report why it rejected an update.

This module is the format's owner and runs on the edge: no torch, nothing from `model` or
`quantization` (the writing side, `quantization.bundle`, imports this one).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({FORMAT_VERSION})

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
BUNDLE_FILES = (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE)

INPUT_NAME = "values"
EXPERT_LOAD_NAME = "expert_load"

# Far above any edge model (the int8 `edge` bundle is a few MB); a bound keeps a hostile or
# broken tar from exhausting the memory of a small device before its signature is checked.
MAX_BUNDLE_BYTES = 256 * 2**20

# Deliberately public: development bundles are signed with it. Never trust it in production.
DEV_PUBLIC_KEY = Path(__file__).parent / "dev_key" / "DEV-PUBLIC-KEY.pem"

_TAR_BLOCK = 512


def output_name(horizon: int) -> str:
    """The ONNX output holding the forecast of one head."""
    return f"h{horizon}"


class BundleError(Exception):
    """A bundle was rejected; the subclass says at which check, the message says why."""


class MissingFileError(BundleError):
    """The bundle path, or one of its three files, does not exist."""


class CorruptArchiveError(BundleError):
    """The `.tar` is truncated or not a tar archive."""


class UnsafeArchiveError(BundleError):
    """The `.tar` holds something other than the bundle's plain files at safe paths."""


class KeyFormatError(BundleError, ValueError):
    """A configured public key cannot be read as an Ed25519 key."""


class NoTrustedKeyError(BundleError):
    """No public key is configured, so no bundle can be accepted."""


class SignatureError(BundleError):
    """manifest.sig does not verify against any trusted key."""


class ManifestError(BundleError):
    """manifest.json is not valid JSON or does not match the manifest schema."""


class UnsupportedFormatError(ManifestError):
    """The manifest's format_version is one this agent cannot read."""


class ChecksumError(BundleError):
    """model.onnx does not have the sha256 the signed manifest states."""


class ModelLoadError(BundleError):
    """ONNX Runtime cannot load model.onnx."""


class InterfaceError(BundleError):
    """The model's inputs or outputs do not have the shapes the manifest describes."""


class GoldenMismatchError(BundleError):
    """The golden input does not reproduce the golden output (or gives non-finite values)."""


class Golden(BaseModel):
    """The smoke test: a fixed input (`None` = NaN = missing) and the outputs it must give."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: list[list[FiniteFloat | None]] = Field(min_length=1)
    outputs: dict[str, list[list[list[FiniteFloat]]]]
    atol: FiniteFloat = Field(gt=0)

    def input_array(self) -> np.ndarray:
        rows = [[np.nan if v is None else v for v in row] for row in self.input]
        return np.asarray(rows, dtype=np.float32)


class Manifest(BaseModel):
    """manifest.json. Serialise with `to_bytes`, sign those exact bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = FORMAT_VERSION
    name: str = Field(min_length=1)
    model_version: int = Field(ge=0)
    created: AwareDatetime
    context_length: PositiveInt
    patch_len: PositiveInt
    horizons: list[PositiveInt] = Field(min_length=1)
    quantiles: list[float] = Field(min_length=1)
    # The experts each layer routes to (indices; all of them unless pruned for a site). The
    # columns of `expert_load` follow them in order.
    experts_per_layer: list[list[NonNegativeInt]] = Field(min_length=1)
    quantization: Literal["fp32", "int8"]
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    golden: Golden
    training: dict[str, Any] = Field(default_factory=dict)
    benchmark: dict[str, Any] = Field(default_factory=dict)
    allow_downgrade: bool = False

    @field_validator("created")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.context_length % self.patch_len:
            raise ValueError(
                f"context_length {self.context_length} is not a multiple of "
                f"patch_len {self.patch_len}"
            )
        if self.horizons != sorted(set(self.horizons)):
            raise ValueError(f"horizons must be strictly increasing, got {self.horizons}")
        qs = self.quantiles
        if qs != sorted(set(qs)) or not all(0.0 < q < 1.0 for q in qs):
            raise ValueError(f"quantiles must be strictly increasing in (0, 1), got {qs}")
        self._check_golden_shapes()
        return self

    def _check_golden_shapes(self) -> None:
        rows = len(self.golden.input)
        if any(len(row) != self.context_length for row in self.golden.input):
            raise ValueError(f"golden input rows must have context_length {self.context_length}")
        expected = {output_name(h): (rows, h, len(self.quantiles)) for h in self.horizons}
        if set(self.golden.outputs) != set(expected):
            raise ValueError(
                f"golden outputs must be {sorted(expected)}, got {sorted(self.golden.outputs)}"
            )
        for name, shape in expected.items():
            got = np.shape(self.golden.outputs[name])
            if got != shape:
                raise ValueError(f"golden output {name} has shape {got}, expected {shape}")

    def to_bytes(self) -> bytes:
        # Compact: the golden arrays would take a line per number when indented.
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse manifest.json, telling an unknown format version from an invalid manifest."""
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, ValueError) as err:
            raise ManifestError(f"{MANIFEST_FILE} is not valid JSON: {err}") from None
        if not isinstance(document, dict):
            raise ManifestError(f"{MANIFEST_FILE} must hold a JSON object")
        version = document.get("format_version")
        if isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
            raise UnsupportedFormatError(
                f"{MANIFEST_FILE} has format_version {version!r}; this agent reads "
                f"{sorted(SUPPORTED_FORMAT_VERSIONS)}"
            )
        try:
            return cls.model_validate(document)
        except ValidationError as err:
            raise ManifestError(f"{MANIFEST_FILE} is invalid: {err}") from None


PublicKeySource = Ed25519PublicKey | bytes | str | os.PathLike[str]


def load_public_key(source: PublicKeySource) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, PEM (text or bytes), the raw 32 bytes, 64 hex
    digits, or the path of a file holding any of those."""
    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, str) and (source.lstrip().startswith("-----BEGIN") or _is_hex(source)):
        return _public_key_from_bytes(source.encode(), "the configured key")
    if isinstance(source, bytes):
        return _public_key_from_bytes(source, "the configured key")
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise KeyFormatError(f"cannot read public key file {path}: {err.strerror}") from None
    return _public_key_from_bytes(data, str(path))


def public_key_fingerprint(key: Ed25519PublicKey) -> str:
    """A short, stable name for a key in logs: the first 16 hex digits of its sha256."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _is_hex(text: str) -> bool:
    return re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()) is not None


def _public_key_from_bytes(data: bytes, origin: str) -> Ed25519PublicKey:
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    text = data.strip()
    if _is_hex(text.decode("ascii", errors="replace")):
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode()))
    if text.startswith(b"-----BEGIN"):
        try:
            key = load_pem_public_key(text)
        except ValueError as err:
            raise KeyFormatError(f"{origin} is not a valid PEM public key: {err}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(f"{origin} is a {type(key).__name__}, not an Ed25519 key")
        return key
    raise KeyFormatError(f"{origin} is neither PEM, 32 raw bytes nor 64 hex digits")


def read_bundle_files(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """The three files of a bundle directory or `.tar`, read and checked for safety (no
    signature check: use `load_bundle` for that); raises MissingFileError & co."""
    return _read_files(Path(path))


def _read_files(path: Path) -> dict[str, bytes]:
    if not path.exists():
        raise MissingFileError(f"no bundle at {path}")
    if path.is_dir():
        return _read_directory(path)
    return _read_archive(path)


def _read_directory(directory: Path) -> dict[str, bytes]:
    files = {}
    for name in BUNDLE_FILES:
        member = directory / name
        if not member.is_file():
            raise MissingFileError(f"bundle {directory} has no {name}")
        files[name] = member.read_bytes()
    return files


def _read_archive(path: Path) -> dict[str, bytes]:
    """The three files of a tar, read in memory: nothing is extracted, so no member can land
    outside a directory, and anything but the three plain files is refused anyway."""
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        raise UnsafeArchiveError(f"{path} is larger than {MAX_BUNDLE_BYTES} bytes")
    data = path.read_bytes()
    if not data or len(data) % _TAR_BLOCK:
        raise CorruptArchiveError(f"{path} is truncated: not a whole number of tar blocks")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                name = _member_name(member)
                if name is None:
                    continue
                if name in files:
                    raise UnsafeArchiveError(f"{path} holds {name} twice")
                extracted = archive.extractfile(member)
                assert extracted is not None  # a regular file always has a payload
                files[name] = extracted.read()
            end = archive.offset
    except (tarfile.TarError, EOFError) as err:
        raise CorruptArchiveError(f"{path} is not a readable tar archive: {err}") from None
    # tarfile stops quietly at a header cut short; a whole archive ends with two zero blocks.
    if data[end : end + 2 * _TAR_BLOCK] != bytes(2 * _TAR_BLOCK):
        raise CorruptArchiveError(f"{path} is truncated: the end-of-archive marker is missing")
    for name in BUNDLE_FILES:
        if name not in files:
            raise MissingFileError(f"bundle {path} has no {name}")
    return files


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The bundle file a tar member holds; None for the archive's own root directory entry."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts:
        raise UnsafeArchiveError(f"tar member {name!r} has an unsafe path")
    if member.isdir() and parts in ((), (".",)):
        return None
    if not member.isreg():
        raise UnsafeArchiveError(f"tar member {name!r} is not a plain file")
    clean = name.removeprefix("./")
    if clean not in BUNDLE_FILES:
        raise UnsafeArchiveError(f"unexpected tar member {name!r}; a bundle holds {BUNDLE_FILES}")
    return clean


def verify_signature(document: bytes, signature: bytes, keys: Sequence[Ed25519PublicKey]) -> None:
    """Raise NoTrustedKeyError or SignatureError unless one of `keys` signed `document`. Also
    checks the signed documents of the update wire format (`agent.update_wire`)."""
    _verify_signature(document, signature, keys)


def _verify_signature(manifest: bytes, signature: bytes, keys: Sequence[Ed25519PublicKey]) -> None:
    if not keys:
        raise NoTrustedKeyError("no trusted key configured: cannot accept any bundle")
    for key in keys:
        try:
            key.verify(signature, manifest)
            return
        except InvalidSignature:
            continue
    raise SignatureError(
        f"{SIGNATURE_FILE} does not verify against any trusted key "
        f"({len(keys)} configured: {', '.join(public_key_fingerprint(k) for k in keys)})"
    )


def _check_interface(session: ort.InferenceSession, manifest: Manifest) -> None:
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise InterfaceError(f"model inputs are {[i.name for i in inputs]}, expected ['values']")
    _check_tensor(inputs[0], ["batch", manifest.context_length])
    outputs = {o.name: o for o in session.get_outputs()}
    n_quantiles = len(manifest.quantiles)
    for horizon in manifest.horizons:
        name = output_name(horizon)
        if name not in outputs:
            raise InterfaceError(f"model has no output {name!r}; outputs: {sorted(outputs)}")
        _check_tensor(outputs[name], ["batch", horizon, n_quantiles])
    if EXPERT_LOAD_NAME in outputs:
        layers = manifest.experts_per_layer
        _check_tensor(outputs[EXPERT_LOAD_NAME], [len(layers), max(map(len, layers))])


def _check_tensor(arg: ort.NodeArg, expected: list[int | str]) -> None:
    """Integers must match; "batch" must be left dynamic (a fixed batch size would fail on
    every other batch size at run time)."""
    if arg.type != "tensor(float)":
        raise InterfaceError(f"{arg.name} is {arg.type}, expected tensor(float)")
    shape = arg.shape
    fits = len(shape) == len(expected) and all(
        (isinstance(got, str | None) if want == "batch" else got == want)
        for got, want in zip(shape, expected, strict=False)
    )
    if not fits:
        raise InterfaceError(f"{arg.name} has shape {shape}, the manifest implies {expected}")


class Bundle:
    """A verified bundle. Built by `load_bundle` only."""

    def __init__(self, manifest: Manifest, path: Path, model: bytes, threads: int = 1) -> None:
        self.manifest = manifest
        self.path = path
        # The model's bytes are not kept: the session holds what it needs of them.
        self._session = new_session(model, threads)

    @property
    def session(self) -> ort.InferenceSession:
        return self._session

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._session.get_outputs()]

    def run(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Forecast a batch `[batch, context_length]` (raw scale, NaN = missing, short
        histories left-padded with NaN): `{"h1": [batch, 1, n_quantiles], ...}` plus
        `expert_load` when the model has it."""
        values = np.asarray(values, dtype=np.float32)
        expected = self.manifest.context_length
        if values.ndim != 2 or values.shape[1] != expected or values.shape[0] == 0:
            raise ValueError(f"values must have shape [batch >= 1, {expected}], got {values.shape}")
        results = self._session.run(None, {INPUT_NAME: values})
        return dict(zip(self.output_names, results, strict=True))


def new_session(model: bytes, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime session of `model` on `threads` cores.

    Spinning is off: an idle agent between ticks must not burn a core of a small device
    waiting for work. The memory pattern is off too: it plans and keeps a buffer per input
    shape, which the agent's runs of a few rows do not need (no change in time per run).

    Where Linux offers it, the session reads the model from an anonymous in-memory file
    holding these very bytes (the ones whose checksum was verified, so nothing on disk can
    change in between), closed once loaded: ONNX Runtime then keeps 3.4-3.5 MB less of the
    default bundle than when handed the bytes (`benchmarks/agent_memory.py`: 19.3 against
    22.7-22.8 MB for a session in a fresh process).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    fd = _memory_file(model)
    if fd is None:  # not Linux, or a sandbox that forbids it: hand ONNX Runtime the bytes
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    try:
        path = f"/proc/self/fd/{fd}"
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    finally:
        os.close(fd)


def _memory_file(data: bytes) -> int | None:
    """The descriptor of an anonymous in-memory file holding `data` (the caller closes it),
    or None where Linux's memfd_create or /proc is missing or forbidden."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or not Path("/proc/self/fd").is_dir():
        return None
    try:
        fd = memfd_create("model.onnx")
    except OSError:
        return None
    try:
        with open(fd, "wb", closefd=False) as file:
            file.write(data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def load_bundle(
    path: str | os.PathLike[str], trusted_keys: Sequence[PublicKeySource], threads: int = 1
) -> Bundle:
    """Verify and load a bundle directory or `.tar` whose `run` uses `threads` cores; raises a
    `BundleError` subclass naming the first check that failed (see the module docstring)."""
    path = Path(path)
    files = _read_files(path)
    keys = [load_public_key(k) for k in trusted_keys]
    _verify_signature(files[MANIFEST_FILE], files[SIGNATURE_FILE], keys)
    manifest = Manifest.from_bytes(files[MANIFEST_FILE])
    digest = hashlib.sha256(files[MODEL_FILE]).hexdigest()
    if digest != manifest.model_sha256:
        raise ChecksumError(
            f"{MODEL_FILE} has sha256 {digest}, the signed manifest says {manifest.model_sha256}"
        )
    try:
        bundle = Bundle(manifest, path, files[MODEL_FILE], threads)
    except Exception as err:  # ONNX Runtime's errors derive from Exception only
        raise ModelLoadError(f"ONNX Runtime cannot load {MODEL_FILE}: {err}") from None
    _check_interface(bundle._session, manifest)
    _check_golden(bundle)
    return bundle


def _check_golden(bundle: Bundle) -> None:
    golden = bundle.manifest.golden
    try:
        results = bundle.run(golden.input_array())
    except Exception as err:  # ONNX Runtime's errors derive from Exception only
        raise GoldenMismatchError(f"golden smoke test: the model fails to run: {err}") from None
    for name, expected in golden.outputs.items():
        got = results[name]
        if not np.isfinite(got).all():
            raise GoldenMismatchError(f"golden smoke test: {name} has non-finite values")
        error = float(np.abs(got - np.asarray(expected, dtype=np.float64)).max())
        if error > golden.atol:
            raise GoldenMismatchError(
                f"golden smoke test: {name} differs from the manifest by {error:.3g} "
                f"(atol {golden.atol:.3g})"
            )
