"""The S3 endpoint of the tests: versitygw (scripts/build-s3-server.sh builds it, pinned, cached) over a temporary
folder, on a free port. It checks AWS SigV4 as S3 does, presigned (query-string) URLs included: a URL with its key or
method changed, an expired one and an unsigned request are refused (tests/test_s3server_signed.py). moto's server,
which the tests used before, checks no signature at all, so it could not show that a presigned URL grants only what
it names. s3fs (botocore) talks to it exactly as to AWS or MinIO, with the endpoint and credentials taken from the
environment (`S3Server.environment`), which is how stage pods get them from the chart's Secret.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cluster.controlplane import free_port

ACCESS_KEY = "sigma0-test-access"
SECRET_KEY = "sigma0-test-secret-d41d8cd98f00b204"  # the tests look for it in every output
REGION = "eu-west-1"
REPO = Path(__file__).resolve().parent.parent
BUILD_S3_SERVER = REPO / "scripts" / "build-s3-server.sh"


class S3ServerUnavailable(RuntimeError):
    """The signature-checking S3 server cannot be built or started here (the message says why and what to do)."""


def signed_server_binary() -> Path:
    """The versitygw binary: $SIGMA0_S3_SERVER_BIN, else scripts/build-s3-server.sh's cached build, built now if
    missing (about 1.5 minutes cold on 2 cores; at once when cached). S3ServerUnavailable if it cannot be built."""
    env = os.environ.get("SIGMA0_S3_SERVER_BIN")
    if env:
        path = Path(env)
        if not os.access(path, os.X_OK):
            raise S3ServerUnavailable(f"SIGMA0_S3_SERVER_BIN={env} is not an executable file")
        return path
    try:
        r = subprocess.run(["bash", str(BUILD_S3_SERVER)], capture_output=True, text=True, timeout=1800,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise S3ServerUnavailable(f"bash {BUILD_S3_SERVER} did not finish in 30 minutes") from e
    path = Path(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else None
    if path is None or not os.access(path, os.X_OK):
        raise S3ServerUnavailable(
            f"the signature-checking S3 server (versitygw) is not built and `bash {BUILD_S3_SERVER}` failed "
            f"(exit {r.returncode}; it needs Go >= 1.25 and the Go module proxy): {r.stderr.strip()[-2000:]}")
    return path


class S3Server:
    """versitygw on a free port over a temporary folder (its POSIX backend; object metadata in a sidecar folder, so
    the folder's file system needs no extended attributes), with ACCESS_KEY/SECRET_KEY as its root account and REGION.

    Every request must be SigV4-signed with those credentials, in an Authorization header or as a presigned URL whose
    signature covers the method, the bucket and key, the query and the expiry; anything else gets 403. `root` is the
    folder to keep the data in (buckets are its subfolders); by default a temporary one that `stop` removes.
    """

    def __init__(self, log: Path, host: str = "127.0.0.1", root: Path | None = None) -> None:
        self.host, self.log = host, log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.root, self._own_root = root, root is None
        self.binary: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        """What a stage pod gets from the chart's Secret: the keys s3fs (botocore) reads."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION}

    def create_bucket(self, name: str) -> None:
        self.filesystem().mkdir(name)

    def start(self) -> S3Server:
        self.binary = signed_server_binary()
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="sigma0-s3-"))
        data, meta = self.root / "data", self.root / "meta"
        data.mkdir(parents=True, exist_ok=True)
        meta.mkdir(parents=True, exist_ok=True)
        # The root credentials through the environment, not argv (where any process could read them); nothing of the
        # caller's VGW_*/ROOT_* settings reaches the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VGW_", "ROOT_"))}
        env |= {"ROOT_ACCESS_KEY_ID": ACCESS_KEY, "ROOT_SECRET_ACCESS_KEY": SECRET_KEY}
        argv = [str(self.binary), "--port", f"{self.host}:{self.port}", "--region", REGION,
                "posix", "--sidecar", str(meta), str(data)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise S3ServerUnavailable(
                    f"versitygw exited with {self.proc.returncode}: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                    return self
            except urllib.error.HTTPError:  # it answered (403: the request was not signed): it is up
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise S3ServerUnavailable(f"versitygw did not answer on {self.endpoint} in 30 s")

    def filesystem(self) -> Any:
        """An s3fs filesystem on this server, configured explicitly (the test process's environment is left alone);
        path-style addressing, whatever the host (bucket.127.0.0.1 is no host name)."""
        import s3fs

        return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=self.endpoint,
                                 client_kwargs={"region_name": REGION},
                                 config_kwargs={"s3": {"addressing_style": "path"}}, skip_instance_cache=True)

    def client(self) -> Any:
        """A botocore S3 client on this server with the root credentials: SigV4 (s3v4), path-style, REGION. Its
        `generate_presigned_url` makes the URLs this server checks."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
