"""The local certificate authority that signs nitro-emu's attestation documents.

The root (P-384, ecdsa-with-SHA384, 30 years) is created in the user's state directory
on first use and reused after, so a verifier can pin it (`ca export`). Each machine run
gets a fresh intermediate and a fresh short-lived leaf, mirroring AWS's chain shape
(root -> CA with pathLen -> leaf signing the documents); the leaf is renewed when a
document would fall outside its validity.
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from eif.errors import EifError
from eif.files import PEM_CERTIFICATE_LIMIT, PRIVATE_KEY_LIMIT, InputKind, open_input, read_input
from nitro_emu.attestation.errors import AttestationError
from nitro_emu.attestation.state import state_dir as default_state_dir

CA_SUBDIR = "ca"
ROOT_KEY_FILE = "root-key.pem"
ROOT_CERT_FILE = "root.pem"
ROOT_LIFETIME = dt.timedelta(days=30 * 365)
INTERMEDIATE_LIFETIME = dt.timedelta(days=30)
LEAF_LIFETIME = dt.timedelta(hours=3)          # as AWS's leaves
BACKDATE = dt.timedelta(minutes=5)             # tolerate small clock differences
RENEW_MARGIN = dt.timedelta(minutes=5)
CA_KEY = InputKind("CA key", PRIVATE_KEY_LIMIT)
CA_CERTIFICATE = InputKind("CA certificate", PEM_CERTIFICATE_LIMIT)

_CURVE = ec.SECP384R1()
_SHA384 = hashes.SHA384()
_ECDSA384 = ec.ECDSA(_SHA384)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nitro-emu"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "local"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, digital_signature: bool = False, non_repudiation: bool = False,
               cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=non_repudiation,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
                         decipher_only=False)


def _issue(*, subject: x509.Name, public_key: ec.EllipticCurvePublicKey,
           issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
           not_before: dt.datetime, not_after: dt.datetime, ca: bool,
           path_length: int | None, key_usage: x509.KeyUsage, ku_critical: bool,
           issuer_public: ec.EllipticCurvePublicKey) -> x509.Certificate:
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length),
                              critical=True)
               .add_extension(key_usage, critical=ku_critical)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),
                              critical=False))
    return builder.sign(issuer_key, _SHA384)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@dataclass(frozen=True)
class SigningIdentity:
    """A leaf certificate, its CA bundle (root first) and its key: signs documents."""

    certificate: bytes
    cabundle: tuple[bytes, ...]
    key: ec.EllipticCurvePrivateKey
    not_before_ms: int
    not_after_ms: int

    def sign(self, message: bytes) -> bytes:
        """ECDSA P-384 over SHA-384(message), as COSE wants it: 48-byte r || 48-byte s."""
        r, s = decode_dss_signature(self.key.sign(message, _ECDSA384))
        return r.to_bytes(48, "big") + s.to_bytes(48, "big")


class ChainSigner:
    """The `DocumentSigner` of one machine run: a fresh intermediate under the local root
    and a leaf for `module_id`, renewed whenever a document time falls outside it."""

    def __init__(self, ca: LocalCA, module_id: str,
                 leaf_lifetime: dt.timedelta = LEAF_LIFETIME) -> None:
        self.ca = ca
        self.module_id = module_id
        self.leaf_lifetime = leaf_lifetime
        self._intermediate_key: ec.EllipticCurvePrivateKey | None = None
        self._intermediate: x509.Certificate | None = None
        self._identity: SigningIdentity | None = None

    def identity(self, now_ms: int) -> SigningIdentity:
        current = self._identity
        if current is not None and current.not_before_ms <= now_ms < current.not_after_ms:
            return current
        self._identity = self._new_leaf(now_ms)
        return self._identity

    def _new_intermediate(self, now: dt.datetime) -> None:
        key = ec.generate_private_key(_CURVE)
        root = self.ca.certificate
        not_after = min(now + INTERMEDIATE_LIFETIME, root.not_valid_after_utc)
        self._intermediate_key = key
        self._intermediate = _issue(
            subject=_name(f"{secrets.token_hex(8)}.local.nitro-emu"),
            public_key=key.public_key(), issuer=root.subject, issuer_key=self.ca.key,
            issuer_public=self.ca.key.public_key(), not_before=now - BACKDATE,
            not_after=not_after, ca=True, path_length=0,
            key_usage=_key_usage(digital_signature=True, cert_sign=True), ku_critical=True)

    def _new_leaf(self, now_ms: int) -> SigningIdentity:
        now = dt.datetime.fromtimestamp(now_ms // 1000, dt.timezone.utc)
        inter = self._intermediate
        if inter is None or not (inter.not_valid_before_utc <= now
                                 and now + self.leaf_lifetime <= inter.not_valid_after_utc):
            self._new_intermediate(now)
            inter = self._intermediate
        assert inter is not None and self._intermediate_key is not None
        key = ec.generate_private_key(_CURVE)
        not_before = now - BACKDATE
        not_after = min(now + self.leaf_lifetime, inter.not_valid_after_utc)
        leaf = _issue(
            subject=_name(f"{self.module_id}.local.nitro-emu"[:64]),  # X.520 CN limit
            public_key=key.public_key(),
            issuer=inter.subject, issuer_key=self._intermediate_key,
            issuer_public=self._intermediate_key.public_key(), not_before=not_before,
            not_after=not_after, ca=False, path_length=None,
            key_usage=_key_usage(digital_signature=True, non_repudiation=True),
            ku_critical=False)
        der = serialization.Encoding.DER
        return SigningIdentity(
            certificate=leaf.public_bytes(der),
            cabundle=(self.ca.certificate.public_bytes(der), inter.public_bytes(der)),
            key=key,
            # renew a little before the end so a document never carries an expiring leaf
            not_before_ms=int(not_before.timestamp() * 1000),
            not_after_ms=int((not_after - RENEW_MARGIN).timestamp() * 1000))


def _refuse_writable_by_others(path: Path, mode: int, what: str) -> None:
    """Whoever can write the CA key (or its directory) can make documents that verify
    against the root the user pinned; refuse, as ssh does for its keys."""
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AttestationError(f"the {what} {path} is writable by "
                               f"{'others' if mode & stat.S_IWOTH else 'its group'}, who "
                               f"could replace the root; fix with: chmod go-w {path}")


class LocalCA:
    """The user's root CA: key and self-signed certificate."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self.key = key
        self.certificate = certificate

    @classmethod
    def create(cls) -> LocalCA:
        """A new root in memory (see `load_or_create` for the persistent one)."""
        key = ec.generate_private_key(_CURVE)
        now = _now()
        name = _name("nitro-emu local root")
        cert = _issue(subject=name, public_key=key.public_key(), issuer=name, issuer_key=key,
                      issuer_public=key.public_key(), not_before=now - BACKDATE,
                      not_after=now + ROOT_LIFETIME, ca=True, path_length=None,
                      key_usage=_key_usage(digital_signature=True, cert_sign=True),
                      ku_critical=True)
        return cls(key, cert)

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike[str] | None = None) -> LocalCA:
        """The root in `state_dir`/ca (default: the user's state dir), created on first
        use. Creation is atomic: concurrent first runs end up sharing one root."""
        if state_dir is not None and not os.fspath(state_dir):
            raise AttestationError("the state directory is an empty path (it would put the "
                                   "CA in the working directory)")
        base = Path(state_dir) if state_dir is not None else default_state_dir()
        ca_dir = base / CA_SUBDIR
        if not ca_dir.exists():
            cls._create_in(ca_dir)
        return cls.load(ca_dir)

    @classmethod
    def _create_in(cls, ca_dir: Path) -> None:
        try:
            ca_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = Path(tempfile.mkdtemp(prefix=".ca-", dir=ca_dir.parent))
        except OSError as error:
            raise AttestationError(f"cannot create the CA directory {ca_dir}: "
                                   f"{error.strerror or error}") from None
        ca = cls.create()
        key_pem = ca.key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
        key_path = tmp / ROOT_KEY_FILE
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        (tmp / ROOT_CERT_FILE).write_bytes(ca.root_pem())
        try:
            os.rename(tmp, ca_dir)
        except OSError:          # another process won the race: use its root
            for child in tmp.iterdir():
                child.unlink()
            tmp.rmdir()

    @classmethod
    def load(cls, ca_dir: str | os.PathLike[str]) -> LocalCA:
        """Load and check the root kept in `ca_dir`."""
        ca_dir = Path(ca_dir)
        key_path, cert_path = ca_dir / ROOT_KEY_FILE, ca_dir / ROOT_CERT_FILE
        try:
            with open_input(key_path, CA_KEY) as opened:
                _refuse_writable_by_others(key_path, opened.info.st_mode, "CA key")
                _refuse_writable_by_others(ca_dir, os.stat(ca_dir).st_mode, "CA directory")
                key_pem = opened.read_all()
            cert_pem = read_input(cert_path, CA_CERTIFICATE)
        except (OSError, EifError) as error:
            raise AttestationError(f"cannot load the local CA: {error}") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as error:
            raise AttestationError(f"cannot load the CA key {key_path}: {error}") from None
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as error:
            raise AttestationError(f"cannot load the CA certificate {cert_path}: {error}") \
                from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
            raise AttestationError(f"{key_path} is not a P-384 key")
        if key.public_key() != cert.public_key():
            raise AttestationError(f"{cert_path} does not belong to the key {key_path}")
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            raise AttestationError(f"{cert_path} is not a self-signed root") from None
        return cls(key, cert)

    def root_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def root_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def signer(self, module_id: str, leaf_lifetime: dt.timedelta = LEAF_LIFETIME) -> ChainSigner:
        """A fresh signing chain for one machine run."""
        return ChainSigner(self, module_id, leaf_lifetime)
