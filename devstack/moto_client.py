"""A boto3 EC2 client for the local moto server."""

from __future__ import annotations

from typing import Any

import boto3

# Fake credentials: moto accepts any, and they keep boto3 from looking for real ones.
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def moto_ec2_client(endpoint_url: str, region: str = "us-east-1") -> Any:
    return boto3.client(
        "ec2",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
