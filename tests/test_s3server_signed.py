"""The signature-checking S3 server of the tests (tests/s3server.py's S3Server: versitygw, built by
scripts/build-s3-server.sh) enforces SigV4 presigned URLs as S3 does, so that a test of presigned-URL access proves
something: a presigned URL grants exactly its method on exactly its key until it expires, and nothing else does.

With moto's server, which the tests used before, in its place these tests fail (checked), all but the s3fs one: moto
accepts a presigned URL with its key, its method or its expiry changed.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from s3server import ACCESS_KEY, REGION, S3Server

BUCKET = "sigma0-artifacts"
INPUT_KEY = "cycles/c1/verify/input/candidates.jsonl"
INPUT = b'{"fn": "add"}\n'
OUTPUT_KEY = "cycles/c1/verify/output/verified.jsonl"


def call(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    """The status and body of one plain HTTP request, as a pod holding only that URL would make it."""
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def refused(result: tuple[int, bytes], code: str) -> bool:
    status, body = result
    return status == 403 and f"<Code>{code}</Code>".encode() in body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    s = S3Server(tmp_path_factory.mktemp("s3") / "versitygw.log").start()
    try:
        s.create_bucket(BUCKET)
        s.client().put_object(Bucket=BUCKET, Key=INPUT_KEY, Body=INPUT)
        yield s
    finally:
        s.stop()


@pytest.fixture
def s3(server: S3Server) -> Any:
    return server.client()


def presign(s3: Any, method: str, key: str, expires: int = 300) -> str:
    operation = {"GET": "get_object", "PUT": "put_object"}[method]
    return s3.generate_presigned_url(operation, Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=expires)


def exists(s3: Any, key: str) -> bool:
    return any(o["Key"] == key for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def read(s3: Any, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_valid_presigned_get_and_put_urls_work(s3: Any) -> None:
    assert call(presign(s3, "GET", INPUT_KEY)) == (200, INPUT)
    status, _ = call(presign(s3, "PUT", OUTPUT_KEY), "PUT", b"verified\n")
    assert status == 200
    assert read(s3, OUTPUT_KEY) == b"verified\n"


def test_a_put_url_with_its_key_changed_is_refused(s3: Any) -> None:
    url = presign(s3, "PUT", OUTPUT_KEY)
    assert OUTPUT_KEY in url
    for other in ("cycles/c1/verify/output/evil.jsonl",  # a sibling
                  OUTPUT_KEY + ".evil",  # a longer key with the signed one as its prefix
                  INPUT_KEY,  # overwriting an input
                  "cycles/c1/verify/output/../input/candidates.jsonl"):  # the same, by a relative path
        assert refused(call(url.replace(OUTPUT_KEY, other), "PUT", b"forged\n"), "SignatureDoesNotMatch"), other
    assert refused(call(url.replace(f"/{BUCKET}/", "/other-bucket/"), "PUT", b"forged\n"), "SignatureDoesNotMatch")
    assert not exists(s3, "cycles/c1/verify/output/evil.jsonl") and not exists(s3, OUTPUT_KEY + ".evil")
    assert read(s3, INPUT_KEY) == INPUT
    # and a GET URL with its key changed reads nothing
    get = presign(s3, "GET", INPUT_KEY)
    assert refused(call(get.replace(INPUT_KEY, OUTPUT_KEY)), "SignatureDoesNotMatch")


def test_a_url_grants_only_its_own_method(s3: Any) -> None:
    get, put = presign(s3, "GET", INPUT_KEY), presign(s3, "PUT", OUTPUT_KEY)
    assert refused(call(get, "PUT", b"forged\n"), "SignatureDoesNotMatch")  # a GET URL cannot write its key
    assert refused(call(get, "DELETE"), "SignatureDoesNotMatch")
    assert refused(call(put), "SignatureDoesNotMatch")  # a PUT URL cannot read its key
    assert refused(call(put, "DELETE"), "SignatureDoesNotMatch")
    assert read(s3, INPUT_KEY) == INPUT


def test_an_expired_url_is_refused_and_its_expiry_cannot_be_extended(s3: Any) -> None:
    get, put = presign(s3, "GET", INPUT_KEY, expires=1), presign(s3, "PUT", OUTPUT_KEY + ".late", expires=1)
    assert "X-Amz-Expires=1&" in get
    assert refused(call(get.replace("X-Amz-Expires=1&", "X-Amz-Expires=604800&")), "SignatureDoesNotMatch")
    time.sleep(2.5)
    assert refused(call(get), "AccessDenied")
    assert refused(call(put, "PUT", b"late\n"), "AccessDenied")
    assert not exists(s3, OUTPUT_KEY + ".late")


def test_unsigned_and_wrongly_signed_requests_are_refused(server: S3Server, s3: Any) -> None:
    base = f"{server.endpoint}/{BUCKET}"
    assert refused(call(f"{base}/{INPUT_KEY}"), "AccessDenied")
    assert refused(call(f"{base}/anonymous.txt", "PUT", b"anonymous\n"), "AccessDenied")
    assert refused(call(f"{base}/{INPUT_KEY}", "DELETE"), "AccessDenied")
    assert refused(call(base), "AccessDenied")  # listing
    assert refused(call(f"{server.endpoint}/"), "AccessDenied")  # listing the buckets
    # a URL without its signature, or signed with another secret for the same access key
    url = presign(s3, "GET", INPUT_KEY)
    status, body = call(url.split("&X-Amz-Signature=")[0])
    assert status == 400 and b"<Code>AuthorizationQueryParametersError</Code>" in body  # as S3 answers it
    other = botocore.session.get_session().create_client(
        "s3", endpoint_url=server.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key="not-the-secret",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    assert refused(call(presign(other, "GET", INPUT_KEY)), "SignatureDoesNotMatch")
    assert not exists(s3, "anonymous.txt")
    assert read(s3, INPUT_KEY) == INPUT


def test_s3fs_works_against_it(server: S3Server, tmp_path: Path) -> None:
    fs = server.filesystem()
    fs.mkdir("sigma0-s3fs")
    source = tmp_path / "in.txt"
    source.write_bytes(b"through s3fs\n")
    fs.put_file(str(source), "sigma0-s3fs/a/b/in.txt")
    assert fs.exists("sigma0-s3fs/a/b/in.txt") and fs.isdir("sigma0-s3fs/a") and fs.isdir("sigma0-s3fs")
    assert not fs.exists("sigma0-s3fs/a/missing.txt")
    fs.pipe("sigma0-s3fs/a/c.txt", b"c\n")
    assert fs.find("sigma0-s3fs") == ["sigma0-s3fs/a/b/in.txt", "sigma0-s3fs/a/c.txt"]
    fs.get_file("sigma0-s3fs/a/b/in.txt", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_bytes() == b"through s3fs\n"
    assert fs.cat("sigma0-s3fs/a/c.txt") == b"c\n"
