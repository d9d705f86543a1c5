"""Generated PKI: a chain openssl verifies, the names the API server answers to."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from e2e.cluster import kubeconfig, pki


def _openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def test_every_certificate_chains_to_the_ca(tmp_path: Path) -> None:
    certs = pki.generate(tmp_path)
    for pair in [certs.apiserver, *certs.clients.values()]:
        assert _openssl("verify", "-CAfile", str(certs.ca.cert), str(pair.cert)).strip().endswith("OK")
        assert (pair.key.stat().st_mode & 0o077) == 0


def test_front_proxy_client_chains_only_to_the_request_header_ca(tmp_path: Path) -> None:
    certs = pki.generate(tmp_path)
    client = str(certs.front_proxy_client.cert)
    assert _openssl("verify", "-CAfile", str(certs.front_proxy_ca.cert), client).strip().endswith("OK")
    refused = subprocess.run(["openssl", "verify", "-CAfile", str(certs.ca.cert), client], capture_output=True)
    assert refused.returncode != 0
    assert f"CN = {pki.FRONT_PROXY_CLIENT}" in _openssl("x509", "-noout", "-subject", "-in", client)


def test_extension_server_certificate_names_its_service(tmp_path: Path) -> None:
    ca, serving = pki.serving_certificate(tmp_path, "adapter", ["adapter.metrics.svc"])
    assert _openssl("verify", "-CAfile", str(ca.cert), str(serving.cert)).strip().endswith("OK")
    text = _openssl("x509", "-noout", "-text", "-in", str(serving.cert))
    assert "DNS:adapter.metrics.svc" in text and "TLS Web Server Authentication" in text


def test_serving_certificate_covers_loopback_and_in_cluster_names(tmp_path: Path) -> None:
    text = _openssl("x509", "-noout", "-text", "-in", str(pki.generate(tmp_path).apiserver.cert))
    for name in ["DNS:localhost", "IP Address:127.0.0.1", "DNS:kubernetes.default.svc"]:
        assert name in text
    assert "TLS Web Server Authentication" in text


def test_client_identities_carry_rbac_user_and_group(tmp_path: Path) -> None:
    certs = pki.generate(tmp_path)
    subject = _openssl("x509", "-noout", "-subject", "-in", str(certs.clients["admin"].cert))
    assert "O = system:masters" in subject
    subject = _openssl("x509", "-noout", "-subject", "-in", str(certs.clients["scheduler"].cert))
    assert "CN = system:kube-scheduler" in subject


def test_service_account_public_key_matches_private(tmp_path: Path) -> None:
    certs = pki.generate(tmp_path)
    derived = _openssl("pkey", "-in", str(certs.service_account_key), "-pubout")
    assert derived == certs.service_account_pub.read_text()


def test_kubeconfig_is_self_contained(tmp_path: Path) -> None:
    certs = pki.generate(tmp_path)
    path = kubeconfig.write(tmp_path / "k", kubeconfig.cluster_entry("https://127.0.0.1:6443", certs.ca.cert),
                            kubeconfig.token_user("abc"), namespace="ns")
    config = json.loads(path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert "certificate-authority-data" in config["clusters"][0]["cluster"]
    assert config["users"][0]["user"] == {"token": "abc"}
    assert config["contexts"][0]["context"]["namespace"] == "ns"
    assert (path.stat().st_mode & 0o077) == 0
