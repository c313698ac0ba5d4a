"""Fixtures shared by every test folder."""

from tests.fixtures.seaweedfs import seaweedfs_s3  # noqa: F401  (a real S3 server on loopback, session-scoped)
