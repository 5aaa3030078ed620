"""The seed/artifact server, driven over real sockets on 127.0.0.1 (httpx, and raw sockets where httpx
would normalise the very requests under test: traversal, malformed and slow requests)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet.errors import SeedError
from edgefleet.seeds.iso import SeedFiles, write_seed_iso
from edgefleet.seeds.server import SeedServer, TlsFiles, check_token, mint_token, parse_range

pytestmark = pytest.mark.clock  # certificates, tokens or TLS meet the real clock: run again under faketime

IMAGE_SIZE = 5 * 1024 * 1024 + 12345  # more than one sendfile chunk, not a round number
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


class Clock:
    """The server's clock, moved by the test."""

    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def served(tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    for node in ("n1", "n2"):
        files = SeedFiles(f"version: v1alpha1\n# {node}\n".encode(), f"instance-id: {node}\n".encode(),
                          b"version: 2\n")
        write_seed_iso(root / "seeds" / "store-0001" / f"{node}.iso", files)
    (root / "images").mkdir()
    (root / "images" / "talos-v1.8.3.raw").write_bytes(os.urandom(IMAGE_SIZE))
    (root / "images" / "empty.bin").write_bytes(b"")
    (root / "with space %.txt").write_bytes(b"odd name\n")
    (tmp_path / "secret.txt").write_bytes(b"outside the root\n")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def server(served: Path, tmp_path: Path, clock: Clock) -> Iterator[SeedServer]:
    with SeedServer(served, token_ttl_s=600, access_log=tmp_path / "logs" / "access.log", clock=clock,
                    header_timeout_s=0.5, idle_timeout_s=2.0, send_timeout_s=10.0) as srv:
        yield srv


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _raw(port: int, request: bytes, *, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are, read the response until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines[0] else 0
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def _token_of(url: str) -> str:
    return url.split("/")[3]


def _access_log(tmp_path: Path) -> list[str]:
    return (tmp_path / "logs" / "access.log").read_text().splitlines()


# --- pure parts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 100, None),
    ("bytes=0-9", 100, (0, 9)),
    ("bytes=90-", 100, (90, 99)),
    ("bytes=90-500", 100, (90, 99)),
    ("bytes=-10", 100, (90, 99)),
    ("bytes=-500", 100, (0, 99)),
    ("bytes=100-", 100, "unsatisfiable"),
    ("bytes=-0", 100, "unsatisfiable"),
    ("bytes=0-", 0, "unsatisfiable"),
    ("bytes=5-1", 100, None),
    ("bytes=0-1,5-6", 100, None),
    ("items=0-1", 100, None),
    ("bytes=a-b", 100, None),
    ("bytes=-", 100, None),
])
def test_parse_range(header: str | None, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


def test_tokens_bind_path_node_and_expiry() -> None:
    secret = b"s" * 32
    token = mint_token(secret, "seeds/a.iso", "store-1/n1", 1000)
    assert check_token(secret, token, "seeds/a.iso", 999.0) == ("store-1/n1", "")
    assert check_token(secret, token, "seeds/a.iso", 1000.0)[0] is None
    assert check_token(secret, token, "seeds/b.iso", 999.0)[0] is None
    assert check_token(b"t" * 32, token, "seeds/a.iso", 999.0)[0] is None
    node_b64, expires, mac = token.split(".")
    assert check_token(secret, f"{node_b64}.{int(expires) + 1}.{mac}", "seeds/a.iso", 999.0)[0] is None
    other = base64.urlsafe_b64encode(b"store-1/n2").rstrip(b"=").decode()
    assert check_token(secret, f"{other}.{expires}.{mac}", "seeds/a.iso", 999.0)[0] is None
    with pytest.raises(SeedError):
        mint_token(secret, "seeds/a.iso", "", 1000)


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\b", "", "a/\x00"])
def test_url_for_refuses_paths_that_could_leave_the_root(server: SeedServer, bad: str) -> None:
    with pytest.raises(SeedError):
        server.url_for(bad, "n1", NOW)


# --- against the running server ------------------------------------------------------------------


def test_full_get_with_hash_headers(server: SeedServer, served: Path, tmp_path: Path) -> None:
    url = server.url_for("images/talos-v1.8.3.raw", "n1", NOW)
    assert url.startswith(f"http://127.0.0.1:{server.port}/")
    expected = (served / "images" / "talos-v1.8.3.raw").read_bytes()
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200
    assert r.content == expected
    assert r.headers["content-length"] == str(IMAGE_SIZE)
    assert r.headers["x-content-sha256"] == _sha(expected)
    assert r.headers["digest"] == "sha-256=" + base64.b64encode(hashlib.sha256(expected).digest()).decode()
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"sha256-{_sha(expected)}"'
    line = _access_log(tmp_path)[-1]
    fields = line.split(" ")
    assert fields[2:7] == ["GET", "/images/talos-v1.8.3.raw", "200", str(IMAGE_SIZE), "-"]
    assert fields[7] == "node=n1"
    assert _token_of(url) not in (tmp_path / "logs" / "access.log").read_text()


def test_seed_iso_and_odd_names(server: SeedServer, served: Path) -> None:
    r = httpx.get(server.url_for("seeds/store-0001/n2.iso", "n2", NOW), timeout=10)
    assert r.status_code == 200 and r.content == (served / "seeds/store-0001/n2.iso").read_bytes()
    r = httpx.get(server.url_for("with space %.txt", "n1", NOW), timeout=10)
    assert r.status_code == 200 and r.content == b"odd name\n"
    r = httpx.get(server.url_for("images/empty.bin", "n1", NOW), timeout=10)
    assert r.status_code == 200 and r.content == b"" and r.headers["x-content-sha256"] == _sha(b"")


def test_range_requests(server: SeedServer, served: Path, tmp_path: Path) -> None:
    data = (served / "images" / "talos-v1.8.3.raw").read_bytes()
    url = server.url_for("images/talos-v1.8.3.raw", "n1", NOW)
    with httpx.Client(timeout=10) as client:
        r = client.get(url, headers={"Range": "bytes=1000-1999"})
        assert r.status_code == 206
        assert r.content == data[1000:2000]
        assert r.headers["content-range"] == f"bytes 1000-1999/{IMAGE_SIZE}"
        assert r.headers["content-length"] == "1000"
        assert r.headers["x-content-sha256"] == _sha(data)  # always the whole file's hash
        r = client.get(url, headers={"Range": "bytes=-4096"})
        assert r.status_code == 206 and r.content == data[-4096:]
        r = client.get(url, headers={"Range": f"bytes={IMAGE_SIZE - 10}-"})
        assert r.status_code == 206 and r.content == data[-10:]
        r = client.get(url, headers={"Range": "bytes=4194000-4195000"})  # across the sendfile chunk edge
        assert r.status_code == 206 and r.content == data[4194000:4195001]
        r = client.get(url, headers={"Range": f"bytes={IMAGE_SIZE}-"})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{IMAGE_SIZE}"
        r = client.get(url, headers={"Range": "bytes=0-1,5-6"})
        assert r.status_code == 200 and len(r.content) == IMAGE_SIZE
        etag = r.headers["etag"]
        r = client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert r.status_code == 206 and r.content == data[:10]
        r = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"sha256-stale"'})
        assert r.status_code == 200 and len(r.content) == IMAGE_SIZE
    log = _access_log(tmp_path)
    assert any(" 206 1000 bytes=1000-1999 node=n1 " in line for line in log)
    assert len({line.split(" ")[1] for line in log}) == 1  # one keep-alive connection for all requests


def test_head(server: SeedServer, served: Path) -> None:
    data = (served / "images" / "talos-v1.8.3.raw").read_bytes()
    url = server.url_for("images/talos-v1.8.3.raw", "n1", NOW)
    r = httpx.head(url, timeout=10)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == str(IMAGE_SIZE)
    assert r.headers["x-content-sha256"] == _sha(data)
    r = httpx.head(url, headers={"Range": "bytes=0-99"}, timeout=10)
    assert r.status_code == 206 and r.headers["content-length"] == "100"


def test_bad_tokens_are_refused(server: SeedServer, tmp_path: Path) -> None:
    good = server.url_for("seeds/store-0001/n1.iso", "n1", NOW)
    token = _token_of(good)
    node_b64, expires, mac = token.split(".")
    base = f"http://127.0.0.1:{server.port}"
    other_node = base64.urlsafe_b64encode(b"n2").rstrip(b"=").decode()
    with httpx.Client(timeout=10) as client:
        assert client.get(good).status_code == 200
        # n1's token does not open n2's seed
        assert client.get(f"{base}/{token}/seeds/store-0001/n2.iso").status_code == 403
        # claiming to be n2 with n1's MAC, stretching the expiry, flipping the MAC, garbage
        assert client.get(f"{base}/{other_node}.{expires}.{mac}/seeds/store-0001/n1.iso").status_code == 403
        assert client.get(f"{base}/{node_b64}.{int(expires) + 3600}.{mac}/seeds/store-0001/n1.iso"
                          ).status_code == 403
        flipped = mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB")
        assert client.get(f"{base}/{node_b64}.{expires}.{flipped}/seeds/store-0001/n1.iso").status_code == 403
        assert client.get(f"{base}/not-a-token/seeds/store-0001/n1.iso").status_code == 403
        # a URL from another server instance (another secret)
        with SeedServer(server.root_dir) as other:
            foreign = other.url_for("seeds/store-0001/n1.iso", "n1", NOW)
        assert client.get(f"{base}/{_token_of(foreign)}/seeds/store-0001/n1.iso").status_code == 403
    log = _access_log(tmp_path)
    assert [line.split(" ")[4] for line in log] == ["200"] + ["403"] * 6
    assert all(mac not in line and "not-a-token" not in line for line in log)
    assert log[1].split(" ")[3] == "/seeds/store-0001/n2.iso"


def test_expired_tokens_are_refused(server: SeedServer, clock: Clock) -> None:
    url = server.url_for("seeds/store-0001/n1.iso", "n1", NOW)
    with httpx.Client(timeout=10) as client:
        assert client.get(url).status_code == 200
        clock.now = NOW + dt.timedelta(seconds=599)
        assert client.get(url).status_code == 200
        clock.now = NOW + dt.timedelta(seconds=600)
        r = client.get(url)
        assert r.status_code == 403 and "expired" in r.text
        assert client.get(server.url_for("seeds/store-0001/n1.iso", "n1", clock.now)).status_code == 200


def test_traversal_never_leaves_the_root(server: SeedServer, served: Path) -> None:
    token = _token_of(server.url_for("seeds/store-0001/n1.iso", "n1", NOW))
    for target in [f"/{token}/../secret.txt", f"/{token}/seeds/../../secret.txt", f"/{token}/%2e%2e/secret.txt",
                   f"/{token}/seeds%2F..%2F..%2Fsecret.txt", f"/{token}/..%5csecret.txt", f"/{token}//etc/passwd",
                   f"/{token}/seeds/./store-0001/n1.iso", "/../../secret.txt", f"/{token}/%00"]:
        status, _, body = _raw(server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert status in (403, 404), target
        assert b"outside the root" not in body
    # a symlink inside the root that points out of it, with a valid token for exactly that name
    r = httpx.get(server.url_for("escape.txt", "n1", NOW), timeout=10)
    assert r.status_code == 404
    # directories are not files
    assert httpx.get(server.url_for("seeds/store-0001", "n1", NOW), timeout=10).status_code == 404
    assert httpx.get(server.url_for("images/missing.raw", "n1", NOW), timeout=10).status_code == 404


def test_protocol_edges(server: SeedServer) -> None:
    url = server.url_for("seeds/store-0001/n1.iso", "n1", NOW)
    assert httpx.post(url, content=b"x", timeout=10).status_code == 405
    assert httpx.request("DELETE", url, timeout=10).status_code == 405
    status, _, _ = _raw(server.port, b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert status == 431
    status, _, _ = _raw(server.port, b"NONSENSE\r\n\r\n")
    assert status == 400
    status, _, _ = _raw(server.port, b"GET /x HTTP/2.0\r\n\r\n")
    assert status == 505


def test_fifty_concurrent_downloads_verify(server: SeedServer, served: Path, tmp_path: Path) -> None:
    expected = _sha((served / "images" / "talos-v1.8.3.raw").read_bytes())
    urls = [server.url_for("images/talos-v1.8.3.raw", f"store-{i:04d}-n1", NOW) for i in range(50)]

    async def fetch(client: httpx.AsyncClient, url: str) -> tuple[str, str]:
        h = hashlib.sha256()
        async with client.stream("GET", url) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_bytes():
                h.update(chunk)
            return h.hexdigest(), r.headers["x-content-sha256"]

    async def main() -> list[tuple[str, str]]:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(*(fetch(client, u) for u in urls))

    started = time.monotonic()
    results = asyncio.run(main())
    assert len(results) == 50
    assert all(got == header == expected for got, header in results)
    assert time.monotonic() - started < 60
    log = [line for line in _access_log(tmp_path) if " /images/talos-v1.8.3.raw 200 " in line]
    assert len(log) == 50
    assert len({line.split(" ")[1] for line in log}) == 50  # fifty distinct client connections
    assert {line.split(" ")[7] for line in log} == {f"node=store-{i:04d}-n1" for i in range(50)}


def test_slowloris_is_dropped(server: SeedServer, tmp_path: Path) -> None:
    """A client that never completes its request head is cut off after header_timeout_s (0.5 s)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /")
        closed_at = None
        for _ in range(40):  # bounded: at most ~4 s of trickling
            try:
                sock.sendall(b"a")
                time.sleep(0.1)
                sock.setblocking(False)
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    data = None
                finally:
                    sock.setblocking(True)
                if data is not None:
                    assert data == b"" or data.startswith(b"HTTP/1.1 408 ")
                    closed_at = time.monotonic()
                    break
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
    assert closed_at is not None, "server kept a trickling connection open"
    assert closed_at - started < 2.0
    # and one that sends nothing at all
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        t0 = time.monotonic()
        data = sock.recv(4096)
        assert data.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - t0 < 2.0
    assert any(" - - 408 0 " in line for line in _access_log(tmp_path))


def test_connection_limit(served: Path) -> None:
    with SeedServer(served, max_connections=2, header_timeout_s=5) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(2)]
        try:
            time.sleep(0.2)
            status, _, _ = _raw(srv.port, b"")
            assert status == 503
        finally:
            for s in idle:
                s.close()
        time.sleep(0.2)
        assert httpx.get(srv.url_for("seeds/store-0001/n1.iso", "n1", dt.datetime.now(dt.UTC)),
                         timeout=10).status_code == 200


def test_tls(served: Path, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
            .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    data = (served / "images" / "talos-v1.8.3.raw").read_bytes()
    with SeedServer(served, tls=TlsFiles(cert_path, key_path)) as srv:
        url = srv.url_for("images/talos-v1.8.3.raw", "n1", dt.datetime.now(dt.UTC))
        assert url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert_path))
        with httpx.Client(verify=ctx, timeout=20) as client:
            r = client.get(url)
            assert r.status_code == 200 and r.content == data
            r = client.get(url, headers={"Range": "bytes=10-19"})
            assert r.status_code == 206 and r.content == data[10:20]


def test_start_refuses_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(SeedError, match=re.escape(str(tmp_path / "nope"))), SeedServer(tmp_path / "nope"):
        pass


def test_grant_bound_tokens() -> None:
    secret = b"s" * 32
    bound = mint_token(secret, "seeds/a.iso", "n1", 1000, grant="g1")
    assert bound != mint_token(secret, "seeds/a.iso", "n1", 1000)
    assert check_token(secret, bound, "seeds/a.iso", 999.0, "g1") == ("n1", "")
    assert check_token(secret, bound, "seeds/a.iso", 999.0)[1] == "token not valid for this path"
    assert check_token(secret, bound, "seeds/a.iso", 999.0, "g2")[1] == "token not valid for this path"
    assert check_token(secret, bound, "seeds/a.iso", 999.0, "g2", ["g0", "g1"])[1] == (
        "token revoked: the reimage of n1 it was issued for has ended")
    assert check_token(secret, bound, "seeds/b.iso", 999.0, "g2", ["g1"])[1] == "token not valid for this path"
    assert check_token(secret, bound, "seeds/a.iso", 1000.0, "g1")[1] == "token expired"
    # tokens without a grant are the ones minted before grants existed, bit for bit
    assert mint_token(secret, "seeds/a.iso", "n1", 1000) == mint_token(secret, "seeds/a.iso", "n1", 1000, "")


def test_urls_of_a_finished_reimage_are_refused(served: Path, tmp_path: Path, clock: Clock) -> None:
    """A node's URLs open only during the reimage they were minted for: once it ended, or the
    node's next reimage began, they are refused however long their expiry; a token never opens
    another node's (or another) path; a later server instance with the same key refuses them too."""
    secret = os.urandom(32)
    n1, n2 = "seeds/store-0001/n1.iso", "seeds/store-0001/n2.iso"
    with SeedServer(served, token_ttl_s=3600, secret=secret, clock=clock,
                    access_log=tmp_path / "logs" / "access.log") as server, httpx.Client(timeout=10) as client:
        base = f"http://127.0.0.1:{server.port}"
        plain = server.url_for(n1, "n1", NOW)
        assert client.get(plain).status_code == 200  # no reimage begun: plain, expiring URLs
        server.begin_reimage("n1")
        first = server.url_for(n1, "n1", NOW)
        image = server.url_for("images/talos-v1.8.3.raw", "n1", NOW)
        assert client.get(first).status_code == 200 and client.head(image).status_code == 200
        assert client.get(plain).status_code == 403  # minted outside this reimage
        assert client.get(f"{base}/{_token_of(first)}/{n2}").status_code == 403  # n1's token, n2's seed
        server.begin_reimage("n2")  # another node's reimage changes nothing for n1
        assert client.get(first).status_code == 200
        server.end_reimage("n1")
        for url in (first, image):
            r = client.get(url)
            assert r.status_code == 403 and "token revoked: the reimage of n1 it was issued for has ended" in r.text
        r = client.get(plain)  # nor does a plain token open the node's files again
        assert r.status_code == 403 and "token revoked: no reimage of n1 is in progress" in r.text, r.text
        server.begin_reimage("n1")  # the node's next reimage: new URLs work, the old ones do not
        second = server.url_for(n1, "n1", NOW)
        assert second != first and client.get(second).status_code == 200
        r = client.get(first)
        assert r.status_code == 403 and "token revoked: the reimage of n1 it was issued for has ended" in r.text
        clock.now = NOW + dt.timedelta(seconds=3600)
        assert "token expired" in client.get(second).text  # expiry still applies
        clock.now = NOW
        server.end_reimage("n1")
        server.end_reimage("n1")  # ending twice is harmless
        with pytest.raises(SeedError):
            server.begin_reimage("")
        n2_url = server.url_for(n2, "n2", NOW)
        assert client.get(n2_url).status_code == 200
        never = server.url_for(n1, "n3", NOW)  # a node that never had a reimage: a plain token
    with SeedServer(served, token_ttl_s=3600, secret=secret, clock=clock) as again, httpx.Client(timeout=10) as client:
        port = f"127.0.0.1:{again.port}"
        # the same key, a new instance: the reimage grants died with the old one
        assert client.get(n2_url.replace(n2_url.split("/")[2], port)).status_code == 403
        assert client.get(never.replace(never.split("/")[2], port)).status_code == 200
    log = _access_log(tmp_path)
    assert all(_token_of(u) not in line for u in (first, second, image) for line in log)


def test_signal_handlers_are_left_to_the_program(served: Path) -> None:
    """The seed server runs inside a rollout (or a test, or the simulator): the program owns
    SIGINT/SIGTERM, so serving neither replaces nor restores its handlers."""
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    async def main() -> None:
        ours = {sig: signal.getsignal(sig) for sig in before}  # asyncio.run's own SIGINT handler
        async with SeedServer(served) as srv:
            assert {sig: signal.getsignal(sig) for sig in before} == ours
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.get(srv.url_for("seeds/store-0001/n1.iso", "n1", dt.datetime.now(dt.UTC)))
                assert r.status_code == 200

    asyncio.run(main())
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_client_that_stops_reading_is_dropped(served: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    with SeedServer(served, send_timeout_s=0.5, access_log=log_path) as srv:
        url = srv.url_for("images/talos-v1.8.3.raw", "n1", dt.datetime.now(dt.UTC))
        target = "/" + url.split("/", 3)[3]
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and not log_path.read_text():
                time.sleep(0.1)  # never reads: the server's send stalls, then gives up
            line = log_path.read_text()
        assert line, "the server kept sending to a client that stopped reading"
        fields = line.split(" ")
        assert fields[4] == "200" and 0 <= int(fields[5]) < IMAGE_SIZE, line
        # and the server still serves others
        assert httpx.get(url, timeout=10).status_code == 200
