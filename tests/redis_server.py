"""A real redis-server on a free loopback port, for the tests of the remote tier and the fleet."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from needs import missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tls_files(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 (openssl; 1 day)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing("openssl is not on PATH (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    f = {k: folder / n for k, n in (("ca", "ca.pem"), ("ca_key", "ca.key"), ("cert", "server.pem"),
                                     ("key", "server.key"), ("csr", "server.csr"), ("ext", "ext.cnf"))}  # fmt: skip
    f["ext"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f["ca_key"], "-out", f["ca"], "-days", "1",
         "-subj", "/CN=evicctl-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f["key"], "-out", f["csr"], "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", f["csr"], "-CA", f["ca"], "-CAkey", f["ca_key"], "-CAcreateserial", "-out", f["cert"],
         "-days", "1", "-extfile", f["ext"]],
    ):  # fmt: skip
        subprocess.run([openssl, *map(str, cmd)], check=True, capture_output=True)
    return f


@contextlib.contextmanager
def redis_server(workdir: Path, *, password: str | None = None, user: str | None = None,
                 tls: bool = False) -> Iterator[str]:  # fmt: skip
    """Start one (no persistence), wait until it answers, yield its URL, stop it.

    user: an ACL user with `password` (the default user is then off). tls: the server listens
    with TLS only (a throwaway CA, see tls_files; clients are not asked for certificates) and
    the URL is `rediss://...?ssl_ca_certs=<the CA>`."""
    server = shutil.which("redis-server")
    if server is None:
        missing("redis-server is not on PATH (apt-get install redis-server)")
    import redis

    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "redis-test.conf"
    conf.write_text(f"user {user} on >{password} ~* &* +@all\nuser default off\n" if user else "")
    args = [server, str(conf), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    if password is not None and user is None:
        args += ["--requirepass", password]
    query, options = "", {}
    if tls:
        f = tls_files(workdir / "tls")
        args += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(f["cert"]),
                 "--tls-key-file", str(f["key"]), "--tls-ca-cert-file", str(f["ca"]), "--tls-auth-clients", "no"]  # fmt: skip
        query, options = f"?ssl_ca_certs={f['ca']}", {"ssl": True, "ssl_ca_certs": str(f["ca"])}
    else:
        args += ["--port", str(port)]
    log_path = workdir / "redis-server.log"  # a file, not a pipe: a pipe nobody reads fills and blocks the server
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, username=user, password=password, **options)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    said = log_path.read_text(errors="replace")
                    if tls and ("tls" in said.lower() or "bad directive" in said.lower()):
                        missing(f"this redis-server has no TLS (it refused --tls-port): {said.strip()[-200:]}")
                    raise RuntimeError(f"redis-server did not start: {said.strip()[-300:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        auth = f"{user or ''}:{password}@" if password is not None else ""
        yield f"{'rediss' if tls else 'redis'}://{auth}127.0.0.1:{port}/0{query}"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
