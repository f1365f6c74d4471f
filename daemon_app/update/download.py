"""Fetch a package into the private download directory, never accepting more than the signed size.

HTTPS only, CA-verified (`manager.tls.ca_file`) with our client certificate, connect and read
timeouts, and an overall deadline checked after every read. `requests` is imported here, on first
use, so an idle daemon never loads it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from daemon_app import fsutil
from daemon_app.update.errors import (
    DownloadFailedError,
    DownloadTooLargeError,
    SlowRetrievalError,
    SourceFileError,
    as_daemon_error,
)
from daemon_app.update.state import private_dir

CHUNK = 256 * 1024
PREFIX = "pkg-"
Progress = Callable[[int], None]


@dataclass(frozen=True)
class DownloadSettings:
    ca_file: str
    cert_file: str
    key_file: str
    connect_timeout: float
    read_timeout: float
    deadline: float


def new_package_file(download_dir: str) -> tuple[int, str]:
    try:
        private_dir(download_dir, "update.download_dir")
    except OSError as exc:
        raise DownloadFailedError(f"update.download_dir: cannot create {download_dir}: "
                                  f"{exc.strerror or exc}") from exc
    fd, path = tempfile.mkstemp(prefix=PREFIX, suffix=".part", dir=download_dir)
    os.fchmod(fd, 0o600)
    return fd, path


def fetch(url: str, download_dir: str, size: int, settings: DownloadSettings, progress: Progress) -> str:
    """Download `url`; return the path of a 0600 file of at most `size` bytes. Cleans up on failure."""
    if not url.lower().startswith("https://"):
        raise DownloadFailedError(f"download: only https:// URLs are accepted, got {url!r}")
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(settings, name)
        if not os.access(path, os.R_OK):
            raise DownloadFailedError(f"download: cannot read manager.tls.{name} {path!r}")
    import requests

    fd, path = new_package_file(download_dir)
    started = time.monotonic()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = requests.get(url, stream=True, verify=settings.ca_file,
                                    cert=(settings.cert_file, settings.key_file),
                                    timeout=(settings.connect_timeout, settings.read_timeout),
                                    headers={"Accept-Encoding": "identity"}, allow_redirects=False)
            except requests.exceptions.ConnectTimeout as exc:
                raise SlowRetrievalError(f"download: {url}: no connection within "
                                         f"{settings.connect_timeout:g}s") from exc
            except requests.exceptions.ReadTimeout as exc:
                raise SlowRetrievalError(f"download: {url}: no response within "
                                         f"{settings.read_timeout:g}s (stalled)") from exc
            except requests.RequestException as exc:
                raise DownloadFailedError(f"download: {url}: {_reason(exc)}") from exc
            with resp:
                if resp.status_code != 200:
                    raise DownloadFailedError(f"download: {url}: HTTP {resp.status_code} {resp.reason}")
                announced = resp.headers.get("Content-Length")
                if announced and announced.isdigit() and int(announced) > size:
                    raise DownloadTooLargeError(f"download: {url}: server announces {announced} bytes, "
                                                f"the manifest says {size}")
                _copy_body(resp, out, url, size, settings, started, progress)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:  # writing it: the disk filled up under download_dir
        fsutil.unlink_quietly(path)
        raise as_daemon_error(exc, path) from exc
    except BaseException:
        fsutil.unlink_quietly(path)
        raise
    return path


def _copy_body(resp, out, url: str, size: int, settings: DownloadSettings, started: float,
               progress: Progress) -> None:
    import requests
    import urllib3

    raw = resp.raw
    # read1 returns what one socket read gave, so the deadline is checked even on a 1-byte drip.
    read = raw.read1 if hasattr(raw, "read1") else raw.read
    received = 0
    while True:
        if time.monotonic() - started > settings.deadline:
            raise SlowRetrievalError(f"download: {url}: not finished within update.download_deadline "
                                     f"({settings.deadline:g}s) after {received} bytes")
        try:
            chunk = read(CHUNK, decode_content=False)
        except (urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout, TimeoutError) as exc:
            raise SlowRetrievalError(f"download: {url}: stalled, no data for {settings.read_timeout:g}s "
                                     f"after {received} bytes") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise DownloadFailedError(f"download: {url}: connection broke after {received} bytes: "
                                      f"{_reason(exc)}") from exc
        if not chunk:
            return
        received += len(chunk)
        if received > size:
            raise DownloadTooLargeError(f"download: {url}: server sent more than the manifest's "
                                        f"{size} bytes; aborted")
        out.write(chunk)
        progress(received)


def copy_local(src: str, download_dir: str, size: int, progress: Progress) -> str:
    """Copy a local package the same way a download lands: private file, at most `size` bytes."""
    fd, path = new_package_file(download_dir)
    received = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                fin = open(src, "rb")
            except OSError as exc:
                raise SourceFileError(f"package file {src!r}: {exc.strerror or exc}") from exc
            with fin:
                while chunk := fin.read(CHUNK):
                    received += len(chunk)
                    if received > size:
                        raise DownloadTooLargeError(f"package file {src!r} is larger than the manifest's "
                                                    f"{size} bytes")
                    out.write(chunk)
                    progress(received)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        fsutil.unlink_quietly(path)
        raise as_daemon_error(exc, path) from exc
    except BaseException:
        fsutil.unlink_quietly(path)
        raise
    return path


def _reason(exc: BaseException) -> str:
    """The innermost cause: 'Connection refused' rather than three layers of urllib3 wrapping."""
    while exc.__cause__ is not None or (exc.args and isinstance(exc.args[0], BaseException)):
        exc = exc.__cause__ or exc.args[0]
    text = str(exc)
    return text.rsplit(": ", 1)[-1] if "Errno" in text else text or type(exc).__name__
