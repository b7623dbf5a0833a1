# Copyright (c) 2026 bpfd.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A real OCI registry for image tests, and the images and signatures they push.

``LocalRegistry`` runs Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1
at a free port with its storage in a temp dir, optionally over TLS (a throw-away CA
made here with ``cryptography``) and with htpasswd basic auth (bcrypt entries written
with the ``bcrypt`` package, so apache2-utils is not needed). Images are pushed through
the library's own oras client, so the tests push the way users publish.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import io
import ipaddress
import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request

from ansible_collections.bpfd.core.plugins.module_utils import _oci

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- TLS material ---------------------------------------------------------------------------


def make_tls(directory: pathlib.Path) -> dict:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("bpfd.core test CA"))
               .issuer_name(name("bpfd.core test CA")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return {k: str(v) for k, v in paths.items()}


def write_htpasswd(path: pathlib.Path, users: dict) -> str:
    import bcrypt

    lines = ["%s:%s" % (user, bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode())
             for user, pw in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# --- the registry process ---------------------------------------------------------------------


class LocalRegistry:
    """docker-registry on 127.0.0.1:<free port>; ``stop()`` always cleans up."""

    def __init__(self, workdir: pathlib.Path, *, tls: dict | None = None,
                 htpasswd: str | None = None) -> None:
        self.workdir = workdir
        self.tls = tls
        self.htpasswd = htpasswd
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "registry.log"

    @property
    def host(self) -> str:
        return "127.0.0.1:%d" % self.port

    def url(self, repo_and_tag: str) -> str:
        return "%s/%s" % (self.host, repo_and_tag)

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            "    rootdirectory: %s" % (self.workdir / "storage"),
            "  delete:",
            "    enabled: true",
            "http:",
            "  addr: 127.0.0.1:%d" % self.port,
            "  secret: bpfd-core-test-%d" % self.port,
        ]
        if self.tls:
            lines += ["  tls:", "    certificate: %s" % self.tls["cert"], "    key: %s" % self.tls["key"]]
        if self.htpasswd:
            lines += ["auth:", "  htpasswd:", "    realm: bpfd-test", "    path: %s" % self.htpasswd]
        path = self.workdir / "config.yml"
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def start(self, port: int | None = None) -> "LocalRegistry":
        self.workdir.mkdir(parents=True, exist_ok=True)
        last_error = None
        for _attempt in range(3):  # another process may grab the free port first
            self.port = port or free_port()
            config = self._config()
            log = open(self.log, "ab")
            self.proc = subprocess.Popen([REGISTRY_BIN, "serve", config], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            try:
                self._wait_ready()
                return self
            except RuntimeError as exc:
                last_error = exc
                self.stop()
        raise last_error

    def _wait_ready(self, timeout: float = 15.0) -> None:
        scheme = "https" if self.tls else "http"
        context = ssl.create_default_context(cafile=self.tls["ca"]) if self.tls else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("docker-registry exited (%s): %s" % (
                    self.proc.returncode, self.log.read_text()[-2000:]))
            try:
                urllib.request.urlopen("%s://%s/v2/" % (scheme, self.host), timeout=1,
                                       context=context)
                return
            except urllib.error.HTTPError:
                return  # 401: up, wants auth
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not answer on %s within %.0f s" % (self.host, timeout))

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def client_args(self) -> dict:
        """How resolve_image/RegistryClient reach this registry (no credentials)."""
        if self.tls:
            return {"ca_path": self.tls["ca"]}
        return {"insecure": True}


# --- images -----------------------------------------------------------------------------------


def client(registry: LocalRegistry, repo: str, auth: dict | None = None) -> _oci.RegistryClient:
    ref = _oci.parse_reference(registry.url(repo))
    return _oci.RegistryClient(ref, auth=auth, **registry.client_args())


def push_object(registry: LocalRegistry, url: str, object_path: str, *, auth: dict | None = None,
                **kwargs) -> str:
    """A bpfd image from an object through the library's publisher; returns its digest."""
    return _oci.push_image(object_path, url, auth=auth, **registry.client_args(), **kwargs)


def layer(entries: list) -> bytes:
    """A gzip tar from (name, bytes | ('symlink', target) | ('dir',)) entries."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if isinstance(content, tuple) and content[0] == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
            elif isinstance(content, tuple) and content[0] == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def push_raw(cl: _oci.RegistryClient, reference: str, *, layer_bytes: bytes, labels: dict | None,
             layer_type: str = _oci.MT_OCI_LAYER_GZIP, docker: bool = False,
             arch: str = "amd64") -> str:
    """Any image, well-formed or not, for the refusal tests; returns the manifest digest."""
    config = json.dumps({"architecture": arch, "os": "linux",
                         "config": {"Labels": labels} if labels is not None else {},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_desc = cl.push_blob(config, _oci.MT_DOCKER_CONFIG if docker else _oci.MT_OCI_CONFIG)
    layer_desc = cl.push_blob(layer_bytes, layer_type)
    media = _oci.MT_DOCKER_MANIFEST if docker else _oci.MT_OCI_MANIFEST
    manifest = json.dumps({"schemaVersion": 2, "mediaType": media, "config": config_desc,
                           "layers": [layer_desc]}).encode()
    return cl.push_manifest(manifest, media, reference)


def push_index(cl: _oci.RegistryClient, reference: str, entries: list) -> str:
    """An OCI index over (digest, size, platform dict) entries already in the repo."""
    index = {"schemaVersion": 2, "mediaType": _oci.MT_OCI_INDEX, "manifests": [
        {"mediaType": _oci.MT_OCI_MANIFEST, "digest": d, "size": s, "platform": p}
        for d, s, p in entries]}
    return cl.push_manifest(json.dumps(index).encode(), _oci.MT_OCI_INDEX, reference)


def manifest_size(cl: _oci.RegistryClient, digest: str) -> int:
    return len(cl.get_manifest(digest)[0])


# --- cosign-format signatures -----------------------------------------------------------------


def new_signing_key() -> tuple:
    """(private key, public PEM text): a throw-away cosign-style ECDSA P-256 key pair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, pem


def sign(cl: _oci.RegistryClient, digest: str, private, *, payload_digest: str | None = None,
         docker_reference: str | None = None) -> str:
    """Write a cosign signature artifact for ``digest`` at tag sha256-<hex>.sig.

    ``payload_digest`` signs a payload naming another digest (a replayed signature).
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = json.dumps({
        "critical": {"identity": {"docker-reference": docker_reference or "%s/%s" % (
            cl.ref.registry, cl.ref.repository)},
            "image": {"docker-manifest-digest": payload_digest or digest},
            "type": _oci.COSIGN_PAYLOAD_TYPE},
        "optional": None}).encode()
    signature = base64.b64encode(private.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    config_desc = cl.push_blob(b"{}", _oci.MT_OCI_CONFIG)
    layer_desc = cl.push_blob(payload, _oci.COSIGN_MEDIA_TYPE)
    layer_desc["annotations"] = {_oci.COSIGN_ANNOTATION: signature}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": _oci.MT_OCI_MANIFEST,
                           "config": config_desc, "layers": [layer_desc]}).encode()
    return cl.push_manifest(manifest, _oci.MT_OCI_MANIFEST, _oci.signature_tag(digest))


def cache_files(lib_dir: str) -> list:
    root = pathlib.Path(lib_dir) / "images"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) \
        if root.exists() else []


def registry_env_ready() -> str | None:
    """Why the registry tests cannot run here, or None."""
    if not os.path.exists(REGISTRY_BIN):
        return "needs docker-registry (apt-get install docker-registry)"
    if not _oci.HAS_ORAS:
        return "needs the oras Python library (pip install oras)"
    try:
        import bcrypt  # noqa: F401
        import cryptography  # noqa: F401
    except ImportError as exc:
        return "needs %s (pip install -r tests/requirements.txt)" % exc.name
    return None
