"""TLS certificates, SuperNode keys and SuperLink connections, made as Flower expects them.

- ``make_certs``: a CA (``ca.crt``, ``ca.key``) and a SuperLink certificate it signs
  (``server.pem``, ``server.key``) whose subject alternative names hold every DNS name and IP
  address the SuperLink is reached by, plus ``127.0.0.1`` and ``localhost`` always: the
  SuperLink's own ServerApp process connects to it on loopback, even when it listens on
  ``0.0.0.0``. SuperLink flags: ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem
  --ssl-keyfile server.key``; SuperNodes and ``flwr`` trust ``ca.crt``.
- ``make_node_keys``: ECDSA P-384 key pairs, the private key in OpenSSH format and the public
  key as an OpenSSH line: what ``ssh-keygen -t ecdsa -b 384`` writes, what
  ``flower-supernode --auth-supernode-private-key`` loads and ``flwr supernode register``
  reads.
- ``write_connection``: a ``[superlink.NAME]`` table in ``$FLWR_HOME/config.toml`` (address,
  ``root-certificates`` or ``insecure``), which Flower >= 1.41 reads for ``flwr run . NAME``
  and ``flwr supernode register KEY.pub NAME`` and has no command to write.

Private keys are written with mode 0600. Nothing is overwritten unless ``force``; the check
covers every file first, so a refusal writes nothing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tomllib
from collections.abc import Iterable
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsim.errors import UsageError

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
LOOPBACK = ("127.0.0.1", "localhost")
CURVE = ec.SECP384R1  # certificates and node keys alike; Flower's node auth needs a NIST curve


class DeployError(UsageError):
    """A deploy helper refused: a file exists, a host name is not one."""


# -- files ---------------------------------------------------------------------------------
def _refuse_existing(paths: Iterable[Path], force: bool) -> None:
    if force:
        return
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing:
        names = ", ".join(str(p) for p in existing)
        raise DeployError(f"{names}: already exists (pass --force to replace)")


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path``; a private key is created 0600 (never readable by others,
    not even for a moment) and a file that exists is replaced, not written through."""
    if path.exists() or path.is_symlink():
        path.unlink()
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
    finally:
        os.close(fd)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- certificates --------------------------------------------------------------------------
def _alt_name(host: str) -> x509.GeneralName:
    """A certificate's subject alternative name for ``host``: an IP address, or a DNS name
    of ASCII labels (letters, digits, inner '-'), the leftmost of which may be ``*``."""
    host = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if host and all(label.isdigit() for label in labels):
        raise DeployError(f"--host {host!r}: not an IP address (four numbers 0-255)")
    if host and not host.isascii():
        try:
            hint = f"; its ASCII form is {host.encode('idna').decode()!r}"
        except UnicodeError:
            hint = ""
        raise DeployError(f"--host {host!r}: give the name in ASCII (IDNA){hint}")

    def bad(label: str, first: bool) -> bool:
        if first and label == "*":
            return False
        return (
            not 0 < len(label) <= 63
            or label[0] == "-"
            or label[-1] == "-"
            or not all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        )

    if not host or any(bad(label, i == 0) for i, label in enumerate(labels)):
        raise DeployError(
            f"--host {host!r}: not a DNS name or an IP address (letters, digits and inner "
            "'-' per label, '*' only as the whole first label; no scheme or port)"
        )
    return x509.DNSName(host.rstrip(".").lower())


def _names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    seen: list[x509.GeneralName] = []
    for host in [*hosts, *LOOPBACK]:
        name = _alt_name(host)
        if name not in seen:
            seen.append(name)
    return seen


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures only; a CA also signs certificates and revocation lists."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_certs(
    out_dir: Path, hosts: Iterable[str] = (), *, days: int = 365, force: bool = False
) -> dict[str, Path]:
    """A CA and a SuperLink certificate for ``hosts`` (plus loopback) under ``out_dir``.

    Returns the paths by role: ``ca_cert``, ``ca_key``, ``server_cert``, ``server_key``.
    """
    if days < 1:
        raise DeployError(f"--days {days}: must be at least 1")
    hosts = list(hosts)
    alt_names = _names(hosts)  # bad host names fail before anything is written
    out_dir = Path(out_dir)
    paths = {
        "ca_cert": out_dir / CA_CERT,
        "ca_key": out_dir / CA_KEY,
        "server_cert": out_dir / SERVER_CERT,
        "server_key": out_dir / SERVER_KEY,
    }
    _refuse_existing(paths.values(), force)
    out_dir.mkdir(parents=True, exist_ok=True)

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsim deployment CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(signs_certificates=True),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(CURVE())
    common_name = hosts[0] if hosts else "localhost"
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(signs_certificates=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )

    _write(paths["ca_key"], _private_pem(ca_key), private=True)
    _write(paths["server_key"], _private_pem(server_key), private=True)
    _write(paths["ca_cert"], ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(
        paths["server_cert"], server_cert.public_bytes(serialization.Encoding.PEM), private=False
    )
    return paths


def alt_names_of(cert_path: Path) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (for messages and tests)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]  # fmt: skip


# -- SuperNode keys ------------------------------------------------------------------------
MAX_NODE_KEYS = 10_000  # one call's pairs: ~1 ms each, and every path is checked first


def node_key_name(index: int) -> str:
    return f"supernode-{index}"


def make_node_keys(
    out_dir: Path, count: int, *, first: int = 0, force: bool = False
) -> list[tuple[Path, Path]]:
    """``count`` key pairs ``supernode-K`` (private, OpenSSH) and ``supernode-K.pub`` for
    K = first .. first+count-1 (name a node's key after its partition id)."""
    if count < 1:
        raise DeployError(f"--count {count}: must be at least 1")
    if count > MAX_NODE_KEYS:
        raise DeployError(
            f"--count {count}: at most {MAX_NODE_KEYS:,} pairs at a time (call again with "
            "--first for more)"
        )
    if first < 0:
        raise DeployError(f"--first {first}: must be 0 or more")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DeployError(f"{out_dir}: is a file, not a folder for the keys")
    pairs = [
        (out_dir / node_key_name(k), out_dir / f"{node_key_name(k)}.pub")
        for k in range(first, first + count)
    ]
    _refuse_existing([p for pair in pairs for p in pair], force)
    out_dir.mkdir(parents=True, exist_ok=True)
    for private, public in pairs:
        key = ec.generate_private_key(CURVE())
        _write(
            private,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            private=True,
        )
        line = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write(public, line + f" fedsim-{private.name}\n".encode(), private=False)
    return pairs


# -- SuperLink connections for `flwr` ------------------------------------------------------
def flwr_home() -> Path:
    """Where the ``flwr`` CLI keeps ``config.toml`` (``$FLWR_HOME``, else ``~/.flwr``)."""
    home = os.environ.get("FLWR_HOME")
    return Path(home) if home else Path.home() / ".flwr"


def write_connection(
    name: str,
    address: str,
    *,
    root_certificates: Path | None = None,
    insecure: bool = False,
    home: Path | None = None,
    force: bool = False,
) -> Path:
    """Add ``[superlink.NAME]`` to ``$FLWR_HOME/config.toml`` (replace a different one only
    with ``force``); returns its path.

    Exactly one of ``root_certificates`` (the CA of ``make_certs``; stored as an absolute path)
    and ``insecure`` must be given. A new file starts from Flower's own default (the ``local``
    simulation connection stays the default)."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise DeployError(f"connection name {name!r}: use letters, digits, '-' and '_'")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DeployError(f"--address {address!r}: give HOST:PORT (the SuperLink's --port)")
    if not 0 < int(port) < 65536:
        raise DeployError(f"--address {address!r}: port {port} is not 1-65535")
    if insecure == (root_certificates is not None):
        raise DeployError("give either --root-certificates CA.crt or --insecure")
    table: dict[str, object] = {"address": address}
    if root_certificates is not None:
        ca = Path(root_certificates).expanduser().resolve()
        if not ca.is_file():
            raise DeployError(f"{ca}: no such file (the ca.crt of `fedsim deploy certs`)")
        try:
            x509.load_pem_x509_certificates(ca.read_bytes())
        except ValueError:
            raise DeployError(
                f"{ca}: not a PEM certificate (give the ca.crt of `fedsim deploy certs`)"
            ) from None
        table["root-certificates"] = str(ca)
    else:
        table["insecure"] = True
    path = (home or flwr_home()) / "config.toml"
    if path.exists():
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    else:
        from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

        config = tomllib.loads(DEFAULT_FLOWER_CONFIG_TOML)
    existing = config.get("superlink", {}).get(name)
    if existing is not None and existing != table and not force:
        raise DeployError(
            f"{path}: [superlink.{name}] exists (address {existing.get('address')!r}); pass "
            "--force to replace it, or choose another name"
        )
    config.setdefault("superlink", {})[name] = table
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tomli_w.dumps(config), encoding="utf-8")
    tmp.replace(path)
    return path
