"""mqtts:// with a private CA and username/password, against a mosquitto that requires both."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moecast.agent.runtime import Agent

from tests.agent.conftest import (
    Broker,
    Client,
    agent_settings,
    require_mosquitto,
    stored_rows,
    wait_for,
)

USER, PASSWORD = "edge", "correct horse"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca_and_server_cert(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[Path, Path, Path]:
    """A CA (with `ca_key`, or a new key) and a server certificate for 127.0.0.1 signed by it:
    (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ca_key or ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moecast test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_key_pem(server_key))
    return paths


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    require_mosquitto("mosquitto_passwd")
    passwd_tool = shutil.which("mosquitto_passwd")
    assert passwd_tool is not None
    directory = tmp_path / "broker"
    directory.mkdir()
    ca, cert, key = make_ca_and_server_cert(directory)
    passwords = directory / "passwd"
    subprocess.run([passwd_tool, "-b", "-c", str(passwords), USER, PASSWORD], check=True)
    broker = Broker(
        directory,
        security=(
            f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
            f"allow_anonymous false\npassword_file {passwords}\n"
        ),
    )
    broker.url = f"mqtts://127.0.0.1:{broker.port}"
    broker.start()
    yield broker, ca
    broker.stop()


def test_tls_with_a_private_ca_and_a_password(
    secure_broker: tuple[Broker, Path], tmp_path: Path
) -> None:
    broker, ca = secure_broker
    agent = Agent(
        agent_settings(
            broker,
            tmp_path / "agent",
            broker={"tls": {"ca_file": ca}, "username": USER, "password": PASSWORD},
        )
    )
    agent.start()
    publisher = Client(broker, "tls-publisher", ca_file=ca, credentials=(USER, PASSWORD))
    try:
        assert agent.link.wait_connected(10)
        publisher.wait_acked({publisher.publish_reading("sensors/vault/door", time.time(), 1.0)})
        wait_for(lambda: stored_rows(agent.settings.readings_db), what="the reading over TLS")
    finally:
        publisher.close()
        agent.stop()


def test_a_wrong_password_is_refused_and_logged(
    secure_broker: tuple[Broker, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker, ca = secure_broker
    settings = agent_settings(
        broker,
        tmp_path / "agent",
        broker={"tls": {"ca_file": ca}, "username": USER, "password": "wrong"},
    )
    agent = Agent(settings)
    with caplog.at_level(logging.WARNING, "moecast.agent.ingest.link"):
        agent.start()
        try:
            wait_for(lambda: "refused" in caplog.text, what="the refusal to be logged")
            assert not agent.link.connected.is_set()
        finally:
            agent.stop()
    assert "wrong" not in caplog.text


def test_a_broker_certificate_from_another_ca_is_refused(
    secure_broker: tuple[Broker, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker, _ = secure_broker
    elsewhere = tmp_path / "other-ca"
    elsewhere.mkdir()
    other_ca, _, _ = make_ca_and_server_cert(elsewhere)
    settings = agent_settings(
        broker,
        tmp_path / "agent",
        broker={"tls": {"ca_file": other_ca}, "username": USER, "password": PASSWORD},
    )
    agent = Agent(settings)
    with caplog.at_level(logging.WARNING, "moecast.agent.ingest.link"):
        agent.start()
        try:
            wait_for(lambda: "cannot reach the broker" in caplog.text, what="the failure logged")
            assert not agent.link.wait_connected(1.0)
        finally:
            agent.stop()
    assert PASSWORD not in caplog.text


def _client_cert(
    directory: Path, ca_pem: Path, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    """A client certificate for `edge-7`, issued by the CA: (cert, key) files."""
    ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-7")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "client.pem", directory / "client.key"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(_key_pem(key))
    return paths


def test_mutual_tls_with_a_client_certificate(tmp_path: Path) -> None:
    """The broker requires a client certificate and takes its common name as the user name
    (how the ACL in firmware_configs/ confines each device); without one the agent is
    refused."""
    require_mosquitto()
    directory = tmp_path / "broker"
    directory.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca, cert, key = make_ca_and_server_cert(directory, ca_key)
    client_cert, client_key = _client_cert(directory, ca, ca_key)
    broker = Broker(
        directory,
        security=(
            f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
            "require_certificate true\nuse_identity_as_username true\n"
        ),
    )
    broker.url = f"mqtts://127.0.0.1:{broker.port}"
    broker.start()
    try:
        tls = {"ca_file": ca, "cert_file": client_cert, "key_file": client_key}
        # Distinct client ids: the broker would otherwise let one connection take the other's.
        with_cert = Agent(
            agent_settings(broker, tmp_path / "a", agent_id="edge-7", broker={"tls": tls})
        )
        without = Agent(
            agent_settings(
                broker, tmp_path / "b", agent_id="edge-8", broker={"tls": {"ca_file": ca}}
            )
        )
        with_cert.start()
        without.start()
        try:
            assert with_cert.link.wait_connected(10)
            assert not without.link.wait_connected(1.0)
        finally:
            with_cert.stop()
            without.stop()
    finally:
        broker.stop()
