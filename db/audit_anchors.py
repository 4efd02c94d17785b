"""The audit anchors' write-once store: an S3 bucket with Object Lock in compliance mode.

Each anchor is one object that nobody (not the platform, not the bucket's owner, not AWS's root
user) can overwrite or delete before its retention date. Keys count down with time, so the first
key of a listing is the newest anchor.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from domain.audit import AuditAnchor
from domain.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PREFIX = "anchors/"
_KEY_BASE = 10**16  # microseconds since the epoch stay below this until the year 2286


class AnchorStoreError(RuntimeError):
    """The bucket is not a write-once store (no Object Lock in compliance mode)."""


def anchor_key(at: datetime) -> str:
    micros = int(at.timestamp() * 1_000_000)
    return f"{PREFIX}{_KEY_BASE - micros:016d}-{at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}.json"


def s3_client(settings: Settings) -> S3Client:
    endpoint = settings.audit_anchor_endpoint_url
    return boto3.client(
        "s3",
        region_name=settings.aws_region,
        endpoint_url=endpoint,
        # A local S3 server answers on one address: path-style URLs.
        config=Config(s3={"addressing_style": "path"} if endpoint else {}, retries={"mode": "standard"}),
    )


class AnchorStore:
    def __init__(self, client: S3Client, bucket: str, retention_days: int):
        self._s3 = client
        self._bucket = bucket
        self._retention = timedelta(days=retention_days)

    @classmethod
    def from_settings(cls, settings: Settings) -> AnchorStore:
        return cls(s3_client(settings), settings.audit_anchor_bucket, settings.audit_anchor_retention_days)

    def require_write_once(self) -> None:
        try:
            config: Any = self._s3.get_object_lock_configuration(Bucket=self._bucket)["ObjectLockConfiguration"]
        except ClientError as err:
            raise AnchorStoreError(f"bucket {self._bucket} has no Object Lock: {err}") from err
        if config.get("ObjectLockEnabled") != "Enabled":
            raise AnchorStoreError(f"bucket {self._bucket} has no Object Lock")

    def write(self, anchor: AuditAnchor) -> str:
        """Writes the anchor under compliance-mode retention; returns its key."""
        self.require_write_once()
        key = anchor_key(anchor.at)
        self._s3.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=anchor.model_dump_json().encode(),
            ContentType="application/json",
            ObjectLockMode="COMPLIANCE",
            ObjectLockRetainUntilDate=(anchor.at + self._retention).astimezone(UTC).replace(microsecond=0),
        )
        return key

    def newest(self) -> AuditAnchor | None:
        listing = self._s3.list_objects_v2(Bucket=self._bucket, Prefix=PREFIX, MaxKeys=1)
        contents = listing.get("Contents") or []
        if not contents:
            return None
        body = self._s3.get_object(Bucket=self._bucket, Key=contents[0]["Key"])["Body"].read()
        return AuditAnchor.model_validate_json(body)

    async def newest_async(self) -> AuditAnchor | None:
        return await asyncio.to_thread(self.newest)
