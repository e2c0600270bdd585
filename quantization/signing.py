"""Keys and signed bundle files, without torch: what `moecast fleet keygen | sign` needs on a
machine that never exports a model. `quantization.bundle` builds on it.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from moecast.bundle.format import (
    BUNDLE_FILES,
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    Manifest,
    load_bundle,
    read_bundle_files,
)

PRIVATE_KEY_FILE = "signing-key.pem"
PUBLIC_KEY_FILE = "signing-key.pub.pem"
# Deliberately public, committed next to its public half: for development bundles only.
DEV_PRIVATE_KEY = Path(__file__).parent / "dev_key" / "DEV-PRIVATE-KEY.pem"


def generate_keypair(
    directory: str | Path,
    *,
    private_name: str = PRIVATE_KEY_FILE,
    public_name: str = PUBLIC_KEY_FILE,
) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair as PEM: the private key readable by its owner only (0600).
    Refuses to overwrite an existing key. Returns (private, public) paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_path, public_path = directory / private_name, directory / public_name
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; not overwriting a key")
    # Created with mode 0600 rather than chmod-ed later: no moment where others can read it.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public_path.write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An unencrypted PEM Ed25519 private key, with errors that say what is wrong."""
    path = Path(path)
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as err:
        raise ValueError(f"cannot read signing key {path}: {err.strerror}") from None
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} is not an unencrypted PEM private key: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def write_bundle(
    out: Path, onnx_bytes: bytes, manifest: Manifest, signing_key: Ed25519PrivateKey
) -> None:
    """Sign the exact manifest bytes and write the three files; `out` appears complete or not
    at all (written beside it, then renamed into place)."""
    document = manifest.to_bytes()
    contents = {
        MODEL_FILE: onnx_bytes,
        MANIFEST_FILE: document,
        SIGNATURE_FILE: signing_key.sign(document),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, data in contents.items():
            (staging / name).write_bytes(data)
        staging.chmod(0o755)  # mkdtemp makes it private to its owner
        staging.rename(out)  # replaces `out` only if it is an empty directory
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_tar(directory: Path, path: Path) -> Path:
    """The bundle's three files at the root of an uncompressed tar, as `load_bundle` reads."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in BUNDLE_FILES:
            data = (directory / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return path


def resign_bundle(
    source: str | Path,
    out: str | Path,
    signing_key: Ed25519PrivateKey,
    **changes: Any,
) -> Path:
    """Sign `source`'s model and manifest with `signing_key` into the new bundle directory
    `out`, optionally changing manifest fields first (e.g. `model_version=4`,
    `allow_downgrade=True`); the result is verified with the key's public half."""
    files = read_bundle_files(source)
    manifest = Manifest.from_bytes(files[MANIFEST_FILE])
    if changes:
        # Validated again: a change must still give a manifest agents accept.
        manifest = Manifest.model_validate({**manifest.model_dump(), **changes})
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory")
    write_bundle(out, files[MODEL_FILE], manifest, signing_key)
    load_bundle(out, [signing_key.public_key()])
    return out
