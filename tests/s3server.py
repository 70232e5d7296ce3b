"""An S3 endpoint for tests: moto's server (the `moto[server]` dev dependency) as a subprocess on a free port.

moto implements the S3 REST API over HTTP; s3fs (botocore) talks to it exactly as to AWS or MinIO, with the
endpoint and credentials taken from the environment (`S3Server.environment`), which is how stage pods get them
from the chart's Secret.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from cluster.controlplane import free_port

ACCESS_KEY = "sigma0-test-access"
SECRET_KEY = "sigma0-test-secret-d41d8cd98f00b204"  # the tests look for it in every output


class S3Server:
    def __init__(self, log: Path, host: str = "127.0.0.1") -> None:
        self.host, self.log = host, log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "eu-west-1"}

    def start(self) -> S3Server:
        env = {**os.environ, **self.environment()}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"moto server did not answer on {self.endpoint} in 60 s")

    def filesystem(self) -> Any:
        """An s3fs filesystem on this server, configured explicitly (the test process's environment is left alone)."""
        import s3fs

        return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=self.endpoint,
                                 client_kwargs={"region_name": "eu-west-1"}, skip_instance_cache=True)

    def create_bucket(self, name: str) -> None:
        self.filesystem().mkdir(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
