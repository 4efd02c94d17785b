"""boto3 clients for the local moto servers (EC2; S3 for the audit anchors)."""

from __future__ import annotations

from typing import Any

import boto3

# Fake credentials: moto accepts any, and they keep boto3 from looking for real ones.
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def moto_client(service: str, endpoint_url: str, region: str = "us-east-1") -> Any:
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def moto_ec2_client(endpoint_url: str, region: str = "us-east-1") -> Any:
    return moto_client("ec2", endpoint_url, region)


def ensure_anchor_bucket(endpoint_url: str, region: str, bucket: str) -> None:
    """The audit anchors' bucket, with Object Lock (each anchor sets its compliance retention)."""
    s3 = moto_client("s3", endpoint_url, region)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
