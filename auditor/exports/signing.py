"""Certificates and keys for signing C2PA manifests, and the local CA of `auditor c2pa init-ca`.

A signer is a certificate chain (PEM, the signing certificate first) and its private key
(PEM, unencrypted). They are checked before anything is signed: both parse, the key belongs
to the first certificate, that certificate is no CA, is not self-signed (C2PA validators
refuse self-signed signing certificates) and is within its validity period. The signing
algorithm follows from the key: ES256/ES384/ES512 for EC P-256/P-384/P-521, PS256 for RSA,
Ed25519.

The local CA is a self-signed root (ca.pem, ca.key) and a signing certificate it issues
(signer.pem: the leaf then the CA; signer.key), EC P-256, with the key usage C2PA asks of a
signer (digitalSignature; extended key usage documentSigning and emailProtection). A verifier
trusts it by adding ca.pem as a trust anchor (`auditor verify --trust-anchor ca.pem`, or the
c2pa library's setting trust.user_anchors). Keys are read from the user's files only: they
never enter the store, the logs or an error message; every file written is mode 0600.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from auditor.errors import UserError
from auditor.exports.files import write_private

__all__ = ["CA_FILES", "CERT_ENV", "KEY_ENV", "LocalCA", "SigningCredentials", "SigningError", "create_local_ca",
           "load_credentials", "resolve_credentials"]

CERT_ENV = "AUDITOR_C2PA_CERT"
KEY_ENV = "AUDITOR_C2PA_KEY"
CA_FILES = ("ca.pem", "ca.key", "signer.pem", "signer.key")
_CURVES = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")  # id-kp-documentSigning (RFC 9336)


class SigningError(UserError):
    """A certificate or key that cannot sign a C2PA manifest; names the file, never its content."""


@dataclass(frozen=True)
class SigningCredentials:
    """A checked certificate chain and key: chain_pem (signing certificate first), key_pem,
    algorithm (c2pa's name: es256, es384, es512, ps256, ed25519), the signer's subject and issuer."""

    chain_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    algorithm: str
    subject: str
    issuer: str
    cert_path: Path


@dataclass(frozen=True)
class LocalCA:
    """The files of a local CA: the root certificate verifiers trust, and the signer's chain and key."""

    ca_cert: Path
    ca_key: Path
    signer_cert: Path
    signer_key: Path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{what} {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None


def _algorithm(key, key_path: Path) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVES:
            raise SigningError(f"key {key_path}: EC curve {key.curve.name} is not one C2PA signs with "
                               f"(P-256, P-384 or P-521)")
        return _CURVES[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise SigningError(f"key {key_path}: RSA keys need at least 2048 bits, this one has {key.key_size}")
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise SigningError(f"key {key_path}: a {type(key).__name__}; C2PA signs with EC, RSA or Ed25519 keys")


def _public(key) -> bytes:
    """The DER SubjectPublicKeyInfo of a private key or a certificate."""
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_leaf(leaf: x509.Certificate, cert_path: Path) -> None:
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise SigningError(f"certificate {cert_path}: the first certificate is a CA certificate; sign with a "
                           f"certificate the CA issued (signer.pem of `auditor c2pa init-ca`)")
    if leaf.issuer == leaf.subject:
        raise SigningError(f"certificate {cert_path}: self-signed; C2PA validators refuse self-signed signing "
                           f"certificates: create a CA and a signer with `auditor c2pa init-ca`, or use a "
                           f"certificate issued by a CA")
    now = datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc < now:
        raise SigningError(f"certificate {cert_path}: expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if leaf.not_valid_before_utc > now:
        raise SigningError(f"certificate {cert_path}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


def load_credentials(cert_path: str | os.PathLike, key_path: str | os.PathLike) -> SigningCredentials:
    """Read and check a certificate chain and its key (see the module docstring); SigningError
    names the file and the problem."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    chain_pem, key_pem = _read(cert_path, "certificate"), _read(key_path, "key")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise SigningError(f"certificate {cert_path}: not a PEM certificate chain") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise SigningError(f"key {key_path}: encrypted; give an unencrypted PEM private key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise SigningError(f"key {key_path}: not a PEM private key") from None
    algorithm = _algorithm(key, key_path)
    leaf = chain[0]
    if _public(leaf) != _public(key):
        raise SigningError(f"key {key_path} does not belong to certificate {cert_path} (their public keys differ)")
    _check_leaf(leaf, cert_path)
    return SigningCredentials(chain_pem=chain_pem, key_pem=key_pem, algorithm=algorithm,
                              subject=leaf.subject.rfc4514_string(), issuer=leaf.issuer.rfc4514_string(),
                              cert_path=cert_path)


def resolve_credentials(cert: str | os.PathLike | None, key: str | os.PathLike | None, *,
                        environ=os.environ) -> SigningCredentials | None:
    """The credentials from --cert/--key, else AUDITOR_C2PA_CERT / AUDITOR_C2PA_KEY; None when
    neither is given (an unsigned export); SigningError when only one of the pair is."""
    cert = cert or environ.get(CERT_ENV) or None
    key = key or environ.get(KEY_ENV) or None
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "certificate (--cert or AUDITOR_C2PA_CERT)" if cert is None else "key (--key or AUDITOR_C2PA_KEY)"
        raise SigningError(f"signing needs a certificate and its key; the {missing} is missing")
    return load_credentials(cert, key)


# ---------------------------------------------------------------------------------------
# The local CA
# ---------------------------------------------------------------------------------------
def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])


def _usage(*, sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=not sign, crl_sign=not sign,
                         encipher_only=False, decipher_only=False)


def _pem(value) -> bytes:
    if isinstance(value, x509.Certificate):
        return value.public_bytes(serialization.Encoding.PEM)
    return value.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())


def create_local_ca(directory: str | os.PathLike, *, organization: str = "pspc-auditor", days: int = 3650,
                    force: bool = False) -> LocalCA:
    """Create a CA and a signing certificate it issues in `directory` (created, mode 0700):
    ca.pem, ca.key, signer.pem (leaf + CA), signer.key, all mode 0600. Existing files are
    refused unless force=True. Without a timestamp authority a signature is checked against
    the signer's validity, hence the long default (`days`)."""
    directory = Path(directory)
    paths = LocalCA(*(directory / name for name in CA_FILES))
    if not force:
        existing = [str(p) for p in vars(paths).values() if p.exists()]
        if existing:
            raise SigningError(f"{', '.join(existing)} exist already; pass --force to replace them")
    if days < 1:
        raise SigningError(f"the certificates need at least 1 day of validity, got {days}")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    host = socket.gethostname()
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{organization} local C2PA CA ({host})", organization)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_usage(sign=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    signer = (x509.CertificateBuilder().subject_name(_name(f"{organization} C2PA signer ({host})", organization))
              .issuer_name(ca_name).public_key(signer_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(_usage(sign=True), critical=True)
              .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                             critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    write_private(paths.ca_key, _pem(ca_key))
    write_private(paths.signer_key, _pem(signer_key))
    write_private(paths.ca_cert, _pem(ca))
    write_private(paths.signer_cert, _pem(signer) + _pem(ca))
    return paths
