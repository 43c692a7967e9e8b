"""TLS contexts for the listeners and the upstream."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from mss_relay.config import ConfigError, TlsConfig, UpstreamConfig, VerifyClient


def ensure_self_signed(cert: Path, key: Path, hostname: str) -> None:
    """Demo only: create a self-signed certificate when none is there yet."""
    if cert.exists() and key.exists():
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(hostname), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    key.touch(mode=0o600)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def server_context(
    config: TlsConfig, hostname: str, context: ssl.SSLContext | None = None
) -> ssl.SSLContext:
    """The relay's certificate in context (default: Python's defaults for a server)."""
    if config.self_signed:
        ensure_self_signed(config.certificate, config.private_key, hostname)
    if context is None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.certificate, config.private_key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            "tls.certificate", f"cannot load the certificate and its private key: {error}"
        ) from None
    return context


_VERIFY_MODES = {VerifyClient.REQUIRED: ssl.CERT_REQUIRED, VerifyClient.OPTIONAL: ssl.CERT_OPTIONAL}


def inbound_context(config: TlsConfig, hostname: str) -> ssl.SSLContext | None:
    """The context of inbound listeners when they ask for a client
    certificate (tls.verify_client), verified against tls.client_ca only;
    None: they use the submission listener's (which never asks: people
    authenticate with AUTH there, and a browser-like certificate prompt in a
    mail client would only confuse them)."""
    mode = _VERIFY_MODES.get(config.verify_client)
    if mode is None or config.client_ca is None:
        return None
    # Not create_default_context: it would trust the system's CAs too, and
    # any certificate a public CA signed would pass for an operator's.
    context = server_context(config, hostname, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    try:
        # cadata is not used: a file of several CAs (the IGC Santé's chain) loads whole.
        context.load_verify_locations(cafile=str(config.client_ca))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            "tls.client_ca", f"{config.client_ca}: cannot load CA certificates (PEM): {error}"
        ) from None
    if not context.get_ca_certs():
        raise ConfigError("tls.client_ca", f"{config.client_ca}: no CA certificate in it")
    context.verify_mode = mode
    return context


def upstream_context(config: UpstreamConfig) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError("upstream.ca_file", f"cannot load: {error}") from None
    if config.client_certificate and config.client_key:
        try:
            context.load_cert_chain(config.client_certificate, config.client_key)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError("upstream.client_certificate", f"cannot load: {error}") from None
    return context
