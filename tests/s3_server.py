"""A real S3 API on loopback for tests: moto's server (``python -m moto.server``) in a
process of its own, with authentication on, so wrong credentials are refused as AWS and
MinIO refuse them. Always stopped; the context manager checks that it is gone."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from tests.helpers import free_port, start_process, wait_until

REGION = "us-east-1"
# moto checks credentials only after this many requests: the three that make the user,
# its policy and its key (which are then needed for everything else).
_SETUP_REQUESTS = 3
_READ_WRITE = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


@dataclass(frozen=True)
class S3Server:
    url: str
    access_key: str
    secret_key: str

    @property
    def credentials(self) -> dict[str, str]:
        """The standard AWS variables, as the gate's environment would carry them."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """moto on 127.0.0.1 and a free port, with one user allowed everything in S3."""
    port = free_port()
    running = start_process(
        ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        log_dir / "moto.log",
        env={"INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_REQUESTS)},
    )
    try:
        wait_until(lambda: _listening(port), 30, "moto server", running.process, running.log)
        url = f"http://127.0.0.1:{port}"
        iam = boto3.session.Session().client(
            "iam",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="irisgate")
        iam.put_user_policy(
            UserName="irisgate", PolicyName="s3", PolicyDocument=json.dumps(_READ_WRITE)
        )
        key = iam.create_access_key(UserName="irisgate")["AccessKey"]
        yield S3Server(url, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        running.stop()
    assert running.process.poll() is not None, "moto server still running"
    assert not _listening(port), f"port {port} still open after moto stopped"
