"""S3 for tests: moto in server mode on loopback (the real wire protocol; DESIGN.md), and a plain
boto3 client to look at what a test's code stored there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

from tests.support import free_port


@contextlib.contextmanager
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server for the block; its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(s3={"addressing_style": "path"}),
    )
