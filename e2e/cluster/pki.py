"""Certificates and service-account keys for a loopback cluster.

The control plane is started fresh for every test session, so its PKI is
generated each time with the `openssl` command (in every Debian image), which
keeps the launcher free of Python crypto dependencies. EC P-256 keys are used
throughout: they are generated in milliseconds, which matters for start-up.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Names the API server's serving certificate must cover: loopback for the
# tests, the in-cluster names for anything that resolves the `kubernetes`
# Service (its ClusterIP is the first address of the service range).
SERVER_DNS = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
              "kubernetes.default.svc.cluster.local")
SERVER_IPS = ("127.0.0.1", "10.96.0.1")


class PKIError(RuntimeError):
    """openssl is missing or refused to produce a key or certificate."""


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    """Everything the control plane and its clients authenticate with."""

    ca: KeyPair
    apiserver: KeyPair
    # Client identities: admin (system:masters), the two controllers.
    clients: dict[str, KeyPair]
    service_account_key: Path
    service_account_pub: Path
    # The aggregation layer: a CA of its own (the request-header CA, so that
    # no ordinary client certificate can assert a user in headers) and the
    # client certificate the API server proxies to extension API servers with.
    front_proxy_ca: KeyPair
    front_proxy_client: KeyPair


# name -> (CN, O): RBAC's bootstrap policy already grants the controllers'
# well-known user names exactly what they need.
CLIENT_IDENTITIES = {
    "admin": ("pagoda-e2e-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
}
#: The one name the API server's request-header authenticator accepts.
FRONT_PROXY_CLIENT = "front-proxy-client"


def _openssl(args: list[str], stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise PKIError("the `openssl` command is required (Debian package openssl)") from exc
    if done.returncode != 0:
        raise PKIError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _new_key(path: Path) -> None:
    _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)])
    path.chmod(0o600)


def _subject(cn: str, org: str = "") -> str:
    return (f"/O={org}" if org else "") + f"/CN={cn}"


def _make_ca(directory: Path, name: str = "ca") -> KeyPair:
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _new_key(pair.key)
    _openssl([
        "req", "-x509", "-new", "-key", str(pair.key), "-out", str(pair.cert), "-days", "3650",
        "-subj", _subject(f"pagoda-e2e-{name}"),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    ])
    return pair


def _issue(ca: KeyPair, directory: Path, name: str, subject: str, extensions: list[str]) -> KeyPair:
    """Signs a fresh key's certificate with the CA (CSR piped, nothing else on disk)."""
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _new_key(pair.key)
    csr = _openssl(["req", "-new", "-key", str(pair.key), "-subj", subject])
    ext_file = directory / f"{name}.ext"
    ext_file.write_text("\n".join(["basicConstraints=critical,CA:FALSE",
                                   "keyUsage=critical,digitalSignature,keyEncipherment", *extensions]) + "\n")
    _openssl([
        "x509", "-req", "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", hex(secrets.randbits(63)), "-days", "365",
        "-extfile", str(ext_file), "-out", str(pair.cert),
    ], stdin=csr)
    ext_file.unlink()
    return pair


def generate(directory: Path) -> ClusterPKI:
    """Creates a CA, the API server's serving certificate, client
    certificates for each identity and the service-account signing key."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory)
    sans = ",".join([*(f"DNS:{d}" for d in SERVER_DNS), *(f"IP:{ip}" for ip in SERVER_IPS)])
    apiserver = _issue(ca, directory, "apiserver", _subject("kube-apiserver"),
                       ["extendedKeyUsage=serverAuth", f"subjectAltName={sans}"])
    clients = {
        name: _issue(ca, directory, name, _subject(cn, org), ["extendedKeyUsage=clientAuth"])
        for name, (cn, org) in CLIENT_IDENTITIES.items()
    }
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    _new_key(sa_key)
    sa_pub.write_bytes(_openssl(["pkey", "-in", str(sa_key), "-pubout"]))
    front_proxy_ca = _make_ca(directory, "front-proxy-ca")
    front_proxy_client = _issue(front_proxy_ca, directory, FRONT_PROXY_CLIENT, _subject(FRONT_PROXY_CLIENT),
                                ["extendedKeyUsage=clientAuth"])
    return ClusterPKI(ca, apiserver, clients, sa_key, sa_pub, front_proxy_ca, front_proxy_client)


def serving_certificate(directory: Path, name: str, dns_names: Sequence[str]) -> tuple[KeyPair, KeyPair]:
    """A CA of its own and the serving certificate it signs for `dns_names`:
    what an extension API server presents, and what its APIService's
    caBundle trusts, without access to the cluster's CA (an external one)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, f"{name}-ca")
    sans = ",".join(f"DNS:{d}" for d in dns_names)
    return ca, _issue(ca, directory, name, _subject(name), ["extendedKeyUsage=serverAuth", f"subjectAltName={sans}"])
