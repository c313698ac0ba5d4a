"""Objects in an S3-compatible store (MinIO in production, SeaweedFS in tests) via the ``minio`` SDK."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from components.storage.base import ObjectInfo, Storage, StorageError, check_key, check_prefix

__all__ = ["S3Storage", "s3_config_from_env"]

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "ResourceNotFound", "NoSuchObject"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
           "InvalidSecurity", "AllAccessDisabled", "AuthorizationHeaderMalformed"}
_SHA256_META = "sha256"


def s3_config_from_env(environ: Mapping[str, str] | None = None) -> dict:
    """Endpoint and credentials from the environment.

    Variables: ``S3_ENDPOINT_URL`` (e.g. ``http://127.0.0.1:8333``; ``AWS_ENDPOINT_URL``
    is accepted too), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional
    ``AWS_SESSION_TOKEN`` and ``S3_REGION`` (default ``us-east-1``, which MinIO and
    SeaweedFS use; giving it saves the SDK a region lookup per bucket).

    Raises:
        StorageError: (``config``) when the endpoint or a key is missing or malformed.
    """
    env = os.environ if environ is None else environ
    endpoint = env.get("S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL")
    if not endpoint:
        raise StorageError("s3://", "config", "S3_ENDPOINT_URL is not set (e.g. http://127.0.0.1:8333)")
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise StorageError(endpoint, "config", "S3_ENDPOINT_URL must look like http(s)://host[:port], without a path")
    missing = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(name)]
    if missing:
        raise StorageError(endpoint, "config", f"{' and '.join(missing)} not set: the S3 store needs credentials")
    return {
        "endpoint": parts.netloc,
        "secure": parts.scheme == "https",
        "access_key": env["AWS_ACCESS_KEY_ID"],
        "secret_key": env["AWS_SECRET_ACCESS_KEY"],
        "session_token": env.get("AWS_SESSION_TOKEN") or None,
        "region": env.get("S3_REGION") or env.get("AWS_REGION") or "us-east-1",
    }


def _http_client(connect_timeout: float, read_timeout: float, retries: int):
    import certifi
    import urllib3

    # The SDK's default retries 5 times with backoff on an unreachable endpoint; a
    # pipeline task that cannot reach its store should say so within seconds.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),  # as the SDK does
        retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix``.

    A PUT becomes visible only when complete (multipart uploads too), so no reader
    ever lists a partial object. Every upload records the content's SHA-256 as
    user metadata, which lets :meth:`same_content` recognise multipart objects
    (whose ETag is not an MD5). Writing to a bucket that does not exist creates it.

    Args:
        bucket: the bucket name.
        prefix: key prefix inside the bucket (``""`` for the whole bucket).
        endpoint, access_key, secret_key, session_token, region, secure: the server
            and credentials; by default from the environment (:func:`s3_config_from_env`).
        connect_timeout, read_timeout: seconds.
        retries: HTTP retries on connection errors and 5xx answers.
    """

    scheme = "s3"

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, session_token: str | None = None,
                 region: str | None = None, secure: bool | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 120.0, retries: int = 2):
        from minio import Minio  # import cost only for S3 users

        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        if prefix:
            check_key(prefix, f"s3://{bucket}/{prefix}")
        if endpoint is None:
            config = s3_config_from_env()
            endpoint, secure = config["endpoint"], config["secure"]
            access_key = access_key or config["access_key"]
            secret_key = secret_key or config["secret_key"]
            session_token = session_token or config["session_token"]
            region = region or config["region"]
        self.endpoint = endpoint
        try:
            self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, session_token=session_token,
                                secure=bool(secure), region=region or "us-east-1",
                                http_client=_http_client(connect_timeout, read_timeout, retries))
            from minio.helpers import check_bucket_name

            check_bucket_name(bucket)
        except ValueError as exc:
            raise StorageError(f"s3://{bucket}", "config", str(exc)) from exc
        self._bucket_checked = False

    @classmethod
    def from_uri(cls, uri: str, **kwargs) -> S3Storage:
        """``s3://bucket/prefix`` with the endpoint and keys from the environment."""
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise StorageError(uri, "config", "expected s3://bucket[/prefix]")
        return cls(parts.netloc, parts.path, **kwargs)

    # -- helpers --------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key, self.uri())

    @contextmanager
    def _errors(self, key: str):
        from minio.error import InvalidResponseError, S3Error, ServerError
        from urllib3.exceptions import HTTPError, MaxRetryError, ResponseError

        uri = self.uri(key)
        try:
            yield
        except StorageError:
            raise
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                raise StorageError(uri, "not_found", f"bucket {self.bucket!r} does not exist") from exc
            if exc.code in _NOT_FOUND:
                raise StorageError(uri, "not_found", "no such object") from exc
            if exc.code in _DENIED:
                raise StorageError(
                    uri, "access_denied",
                    f"the S3 server at {self.endpoint} refused the credentials ({exc.code}: {exc.message}); "
                    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                ) from exc
            raise StorageError(uri, "io", f"S3 error {exc.code}: {exc.message}") from exc
        except ServerError as exc:
            raise StorageError(uri, "io", f"the S3 server at {self.endpoint} failed: {exc}") from exc
        except InvalidResponseError as exc:
            raise StorageError(uri, "io", f"unexpected answer from {self.endpoint}: {exc}") from exc
        except MaxRetryError as exc:
            if isinstance(exc.reason, ResponseError):  # it answered, with 5xx every time
                raise StorageError(uri, "io", f"the S3 server at {self.endpoint} kept failing: {exc.reason}") from exc
            raise StorageError(uri, "unreachable", f"cannot reach the S3 server at {self.endpoint}: {exc.reason}") from exc
        except HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise StorageError(uri, "unreachable", f"cannot reach the S3 server at {self.endpoint}: {reason}") from exc
        except ValueError as exc:  # the SDK's own argument checks
            raise StorageError(uri, "invalid_key", str(exc)) from exc

    def _write(self, key: str, action) -> None:
        from minio.error import S3Error

        with self._errors(key):
            try:
                action()
            except S3Error as exc:
                if exc.code != "NoSuchBucket":
                    raise
                self._make_bucket()
                action()

    def _make_bucket(self) -> None:
        from minio.error import S3Error

        try:
            self.client.make_bucket(self.bucket)
        except S3Error as exc:  # created meanwhile by another worker: fine
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    # -- the interface ----------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        name = self._name(key)
        data = bytes(data)
        meta = {_SHA256_META: hashlib.sha256(data).hexdigest()}
        self._write(key, lambda: self.client.put_object(self.bucket, name, io.BytesIO(data), len(data), metadata=meta))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        name = self._name(key)
        try:
            with open(path, "rb") as file:
                sha256 = hashlib.file_digest(file, "sha256").hexdigest()
        except OSError as exc:
            raise StorageError(str(path), "not_found" if isinstance(exc, FileNotFoundError) else "io",
                               f"cannot read the local file: {exc.strerror or exc}") from exc
        meta = {_SHA256_META: sha256}
        self._write(key, lambda: self.client.fput_object(self.bucket, name, os.fspath(path), metadata=meta))

    def get_bytes(self, key: str) -> bytes:
        name = self._name(key)
        with self._errors(key):
            response = self.client.get_object(self.bucket, name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def get_file(self, key: str, path: str | os.PathLike[str]) -> Path:
        name = self._name(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            with self._errors(key):
                response = self.client.get_object(self.bucket, name)
                try:
                    with open(temp, "wb") as file:
                        for chunk in response.stream(1 << 20):
                            file.write(chunk)
                finally:
                    response.close()
                    response.release_conn()
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        return path

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except StorageError as error:
            if error.code == "not_found":
                return False
            raise
        return True

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        with self._errors(key):
            info = self.client.stat_object(self.bucket, name)
        return ObjectInfo(key, int(info.size), (info.etag or "").strip('"') or None)

    def _stored_sha256(self, key: str) -> str | None:
        with self._errors(key):
            info = self.client.stat_object(self.bucket, self._name(key))
        return (info.metadata or {}).get(f"x-amz-meta-{_SHA256_META}")

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix, self.uri())
        with self._errors(prefix):
            for obj in self.client.list_objects(self.bucket, prefix=self.prefix + prefix, recursive=True):
                if obj.is_dir:
                    continue
                yield ObjectInfo(obj.object_name[len(self.prefix):], int(obj.size or 0),
                                 (obj.etag or "").strip('"') or None)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def delete(self, key: str) -> None:
        name = self._name(key)
        from minio.error import S3Error

        with self._errors(key):
            try:
                self.client.remove_object(self.bucket, name)
            except S3Error as exc:
                if exc.code not in _NOT_FOUND:  # deleting what is not there is done
                    raise
