"""Signing credentials and the local CA (auditor.exports.signing): what `auditor c2pa init-ca`
writes, and every certificate or key that cannot sign refused with the file named and its
content never shown."""

from __future__ import annotations

import datetime
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from auditor.errors import UserError
from auditor.exports.files import write_private
from auditor.exports.signing import (CA_FILES, CERT_ENV, KEY_ENV, SigningError, create_local_ca, load_credentials,
                                     resolve_credentials)


def pem(value) -> bytes:
    if isinstance(value, x509.Certificate):
        return value.public_bytes(serialization.Encoding.PEM)
    return value.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())


def certificate(key, issuer_key=None, issuer_name=None, *, name="leaf", days=30, start_days=-1):
    """A certificate for `key`, issued by issuer_key (self-signed when None)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=start_days))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(issuer_key or key, hashes.SHA256()))


def ca_parts(local_ca):
    key = serialization.load_pem_private_key(local_ca.ca_key.read_bytes(), None)
    return key, x509.load_pem_x509_certificate(local_ca.ca_cert.read_bytes())


def test_init_ca_writes_a_ca_and_a_signer_it_issued_all_private(local_ca):
    directory = local_ca.ca_cert.parent
    assert sorted(p.name for p in directory.iterdir()) == sorted(CA_FILES)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in directory.iterdir())
    ca = x509.load_pem_x509_certificate(local_ca.ca_cert.read_bytes())
    leaf, chained_ca = x509.load_pem_x509_certificates(local_ca.signer_cert.read_bytes())
    assert chained_ca == ca and ca.issuer == ca.subject and leaf.issuer == ca.subject != leaf.subject
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    credentials = load_credentials(local_ca.signer_cert, local_ca.signer_key)
    assert credentials.algorithm == "es256" and "C2PA signer" in credentials.subject
    assert "key_pem" not in repr(credentials) and "PRIVATE" not in repr(credentials)


def test_init_ca_refuses_to_overwrite_unless_forced(tmp_path):
    first = create_local_ca(tmp_path / "ca")
    before = first.ca_cert.read_bytes()
    with pytest.raises(SigningError, match="exist already; pass --force"):
        create_local_ca(tmp_path / "ca")
    assert first.ca_cert.read_bytes() == before
    again = create_local_ca(tmp_path / "ca", force=True)
    assert again.ca_cert.read_bytes() != before
    load_credentials(again.signer_cert, again.signer_key)


@pytest.mark.parametrize("case, words", [
    ("other key", ("does not belong to certificate", "public keys differ")),
    ("self-signed", ("self-signed", "auditor c2pa init-ca")),
    ("ca as signer", ("is a CA certificate",)),
    ("expired", ("expired on",)),
    ("not yet valid", ("not valid before",)),
    ("garbage cert", ("not a PEM certificate chain",)),
    ("garbage key", ("not a PEM private key",)),
    ("encrypted key", ("encrypted",)),
    ("missing key", ("cannot read it",)),
    ("small rsa", ("at least 2048 bits",)),
])
def test_unusable_certificates_and_keys_are_refused_naming_the_file(tmp_path, local_ca, case, words):
    ca_key, ca = ca_parts(local_ca)
    key = ec.generate_private_key(ec.SECP256R1())
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert, key_bytes = certificate(key, ca_key, ca.subject), pem(key)
    if case == "other key":
        key_bytes = pem(ec.generate_private_key(ec.SECP256R1()))
    elif case == "self-signed":
        cert = certificate(key)
    elif case == "ca as signer":
        cert, key_bytes = ca, local_ca.ca_key.read_bytes()
    elif case == "expired":
        cert = certificate(key, ca_key, ca.subject, days=-1, start_days=-10)
    elif case == "not yet valid":
        cert = certificate(key, ca_key, ca.subject, start_days=2)
    elif case == "encrypted key":
        key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"secret"))
    elif case == "small rsa":
        small = rsa.generate_private_key(65537, 1024)
        cert, key_bytes = certificate(small, ca_key, ca.subject), pem(small)
    cert_file.write_bytes(b"not a certificate" if case == "garbage cert" else pem(cert))
    if case != "missing key":
        key_file.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
                             if case == "garbage key" else key_bytes)
    with pytest.raises(SigningError) as caught:
        load_credentials(cert_file, key_file)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and (str(cert_file) in message or str(key_file) in message)
    for word in words:
        assert word in message, message
    assert "PRIVATE KEY" not in message and key_bytes.decode(errors="replace")[40:80] not in message


def test_rsa_keys_sign_with_ps256(tmp_path, local_ca):
    ca_key, ca = ca_parts(local_ca)
    key = rsa.generate_private_key(65537, 2048)
    (tmp_path / "c.pem").write_bytes(pem(certificate(key, ca_key, ca.subject)) + local_ca.ca_cert.read_bytes())
    (tmp_path / "k.pem").write_bytes(pem(key))
    assert load_credentials(tmp_path / "c.pem", tmp_path / "k.pem").algorithm == "ps256"


def test_credentials_come_from_the_options_else_the_environment(local_ca):
    assert resolve_credentials(None, None, environ={}) is None
    env = {CERT_ENV: str(local_ca.signer_cert), KEY_ENV: str(local_ca.signer_key)}
    assert resolve_credentials(None, None, environ=env).cert_path == local_ca.signer_cert
    with pytest.raises(SigningError, match=r"the key \(--key or AUDITOR_C2PA_KEY\) is missing"):
        resolve_credentials(local_ca.signer_cert, None, environ={})
    with pytest.raises(SigningError, match=r"the certificate \(--cert or AUDITOR_C2PA_CERT\) is missing"):
        resolve_credentials(None, None, environ={KEY_ENV: str(local_ca.signer_key)})


def test_private_files_are_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    write_private(target, b"first")
    assert target.read_bytes() == b"first" and stat.S_IMODE(target.stat().st_mode) == 0o600

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("auditor.exports.files.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_private(target, b"second")
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        write_private(tmp_path / "missing" / "x.bin", b"x")
