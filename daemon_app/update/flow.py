"""The update flow: one request in, one UpdateResult out, with nothing changed unless all checks pass.

Read top to bottom, `Updater._update` is the procedure (python-tuf style):

  1. the signed manifest: signature (any trusted key) -> expiry -> component -> version floor
     (all before a byte is downloaded: the manifest is what tells us how much to accept)
  2. `pre_update` plugins may veto; free disk space is checked on every filesystem written to
  3. download (HTTPS, bounded by the manifest's size) or copy the local file, into download_dir
  4. the package: size -> SHA-256
  5. back up the installed file; swap; the Target proves the new version healthy or restores
  6. only then: raise the floor, record the install, prune backups

Each step that changes disk is journaled first, so `recover()` after a kill -9 leaves exactly one
complete version installed. A failure at any step is one exception class with its D-code; the
installed file, the floor and download_dir are left as they were.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daemon_app import fsutil
from daemon_app.compat import UTC
from daemon_app.errors import DaemonError
from daemon_app.update import download, install, testpoint
from daemon_app.update.errors import (
    ComponentMismatchError,
    DownloadFailedError,
    ExpiredManifestError,
    HashMismatchError,
    HealthCheckError,
    InstallError,
    InsufficientSpaceError,
    LengthMismatchError,
    MalformedManifestError,
    NoBackupError,
    RollbackFailedError,
    SourceFileError,
    UnsafePathRefusedError,
    UpdateInProgressError,
    UpdateVetoedError,
    VersionRollbackError,
    as_daemon_error,
)
from daemon_app.update.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    Manifest,
    load_trusted_keys,
    verify_signature,
)
from daemon_app.update.state import Journal, UpdateState, update_dir
from daemon_app.update.targets import AgentTarget, InstallContext, Supervisor, Target, file_sha256, holds
from daemon_app.update.versions import Version, is_valid

if TYPE_CHECKING:
    from daemon_app.config import Config
    from daemon_app.host import PluginHooks

log = logging.getLogger(__name__)

# Progress states, in the order an update goes through them (DESIGN §7).
DOWNLOADING, VERIFYING, INSTALLING, RESTARTING, WATCHING = (
    "downloading", "verifying", "installing", "restarting", "watching")
COMPLETED, ROLLED_BACK, FAILED = "completed", "rolled_back", "failed"
STATES = (DOWNLOADING, VERIFYING, INSTALLING, RESTARTING, WATCHING, COMPLETED, ROLLED_BACK, FAILED)

# Test hook, documented in docs/updates.md: the updater SIGKILLs itself at this named point.
CRASH_ENV = testpoint.CRASH_ENV

Progress = Callable[..., None]
_crash_point = testpoint.reached


@dataclass
class UpdateRequest:
    """What to install: the component, the manifest and its signature, and where the package is."""

    component: str
    manifest: bytes
    signature: bytes
    url: str = ""
    file: str = ""
    id: str = ""

    @classmethod
    def from_dir(cls, component: str, manifest_dir: str, *, url: str = "", file: str = "",
                 id: str = "") -> UpdateRequest:
        """Read manifest.json and manifest.json.sig from a directory (what `release sign` writes)."""
        parts = []
        for name, limit in ((MANIFEST_NAME, MAX_MANIFEST_BYTES), (SIGNATURE_NAME, MAX_SIGNATURE_BYTES)):
            path = os.path.join(manifest_dir, name)
            try:
                with open(path, "rb") as fh:
                    parts.append(fh.read(limit + 1))
            except OSError as exc:
                raise MalformedManifestError(f"manifest: cannot read {path}: {exc.strerror or exc}") from exc
        return cls(component, parts[0], parts[1], url=url, file=file, id=id)

    def describe(self) -> dict[str, Any]:
        return {"component": self.component, "url": self.url, "file": self.file, "id": self.id}


@dataclass
class UpdateResult:
    """Seed §3.4.1 UpdateResult (plus the component)."""

    component: str
    success: bool = False
    old_version: str = ""
    new_version: str = ""
    error: str = ""
    rolled_back: bool = False
    message: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _no_progress(state: str, percent: float = 0.0, message: str = "",
                  result: UpdateResult | None = None) -> None:
    """The default progress sink: the Updater logs every state itself."""


class UpdateLock:
    """One update at a time: a threading lock for this process, an flock for the CLI's direct mode.

    The holder writes what it is doing into the lock file so a refused caller can say who holds it.
    """

    _process_locks: dict[str, threading.Lock] = {}
    _guard = threading.Lock()

    def __init__(self, work_dir: str) -> None:
        self.path = os.path.join(update_dir(work_dir), "update.lock")
        with self._guard:
            self._thread_lock = self._process_locks.setdefault(os.path.realpath(self.path), threading.Lock())

    @contextmanager
    def hold(self, component: str, version: str) -> Iterator[None]:
        if not self._thread_lock.acquire(blocking=False):
            raise UpdateInProgressError(f"another update is in progress ({self._holder()})")
        try:
            try:
                fd = fsutil.open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except fsutil.UnsafePathError as exc:
                raise UnsafePathRefusedError(f"update lock: {exc}") from None
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise UpdateInProgressError(f"another update is in progress ({self._holder()})") from None
                info = {"component": component, "version": version, "pid": os.getpid(),
                        "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
                yield
            finally:
                os.close(fd)
        finally:
            self._thread_lock.release()

    def _holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8") as fh:
                info = json.loads(fh.read() or "{}")
            return (f"component {info.get('component')}, version {info.get('version') or '?'}, "
                    f"pid {info.get('pid')}, since {info.get('since')}")
        except (OSError, ValueError):
            return "holder unknown"


class Updater:
    """Runs updates, rollbacks and crash recovery for one daemon (or one CLI invocation)."""

    def __init__(self, cfg: Config, *, plugins: PluginHooks | None = None,
                 supervisor: Supervisor | None = None, targets: dict[str, Target] | None = None,
                 daemon_restart: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.plugins = plugins
        self.clock = clock
        self.work_dir = cfg.daemon.work_dir
        self.state = UpdateState(self.work_dir)
        self.journal = Journal(self.work_dir)
        self.lock = UpdateLock(self.work_dir)
        self.supervisor = supervisor
        self.daemon_restart = daemon_restart
        self.targets: dict[str, Target] = dict(targets or {})

    # --- targets --------------------------------------------------------------------------------

    def target(self, component: str) -> Target:
        if component in self.targets:
            return self.targets[component]
        if component == "agent":
            target: Target = AgentTarget(self.cfg.agent.binary_path, lambda: self.state.installed("agent"),
                                         self.supervisor, self.cfg.update.verify_timeout)
        elif component == "daemon":
            from daemon_app.update.selfupdate import DaemonTarget

            target = DaemonTarget(self.cfg, self.state, restart=self.daemon_restart)
        else:
            raise MalformedManifestError(f"update: component must be agent or daemon, got {component!r}")
        self.targets[component] = target
        return target

    # --- the update -----------------------------------------------------------------------------

    def run(self, request: UpdateRequest, progress: Progress = _no_progress) -> UpdateResult:
        """Run one update to its end; never raises a DaemonError (it is in the result)."""
        result = UpdateResult(component=request.component)
        report = self._reporter(result, progress)
        try:
            target = self.target(request.component)
            result.old_version = target.current_version() or ""
            with self.lock.hold(request.component, _peek_version(request.manifest)):
                self._settle_interrupted(progress)
                result.message = self._update(request, target, result, report)
            result.success = True
            report(COMPLETED, 100.0, result.message)
        except (DaemonError, OSError) as caught:
            exc = as_daemon_error(caught)
            result.error = str(exc)
            result.rolled_back = isinstance(exc, HealthCheckError)
            log.error("update of %s to %s failed: %s", request.component, result.new_version or "?", exc,
                      extra={"code": exc.code, "component": request.component})
            report(ROLLED_BACK if result.rolled_back else FAILED, 0.0, str(exc))
        self._post_update(result)
        return result

    def _settle_interrupted(self, progress: Progress) -> None:
        """An update a crash interrupted is finished or undone before a new one starts; one still
        being watched (a daemon self-update awaiting commit) blocks new ones."""
        if self.journal.read() is None:
            return
        self._recover(progress)
        pending = self.journal.read()
        if pending is not None:
            since = datetime.fromtimestamp(pending.get("phase_time", 0), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise UpdateInProgressError(
                f"another update is in progress (component {pending.get('component')}, version "
                f"{pending.get('version')}, since {since}: awaiting its health check)")

    def _update(self, request: UpdateRequest, target: Target, result: UpdateResult, report: Progress) -> str:
        report(VERIFYING, 0.0, "checking the signed manifest")
        installed = result.old_version
        manifest = self.check_manifest(request, running=installed)
        result.new_version = manifest.version
        if installed and is_valid(installed) and Version(installed) == Version(manifest.version):
            return f"{request.component} {manifest.version} is already installed"
        self._pre_update(request, manifest)
        self._check_space(manifest.size, target)

        report(DOWNLOADING, 0.0, request.url or request.file)
        package = self._fetch(request, manifest, report)
        try:
            report(VERIFYING, 100.0, "checking the package's size and SHA-256")
            self.check_package(package, manifest)
            self.journal.write("downloaded", component=request.component, version=manifest.version,
                               old_version=installed, sha256=manifest.sha256, package=package,
                               target=target.path, backup=None, pid=os.getpid(), request_id=request.id)
            _crash_point("after_download")
            report(INSTALLING, 0.0, f"backing up {target.path}")
            try:
                backup = install.backup(target.path, self.cfg.update.backup_dir, request.component, installed)
            except OSError as exc:
                raise InstallError(f"install: cannot back up {target.path}: {exc}") from exc
            self.journal.write("backed_up", backup=backup)
            _crash_point("after_backup")
            ctx = self._context(manifest, installed, backup, package, target, report)
            message = self._apply(target, ctx)
            self._finish(request.component, manifest.version, installed, backup)
            return message
        finally:
            # Success cleared the journal already; a failure has restored whatever it changed.
            fsutil.unlink_quietly(package)
            install.clean_temp_files(target.path)
            self.journal.clear()

    def check_manifest(self, request: UpdateRequest, running: str | None = None) -> Manifest:
        """Signature -> expiry -> component -> version floor. Raises the failing check's error.

        `running` is the version the target reports now (the Agent's heartbeats, the daemon's own):
        it counts toward the floor, so an Agent installed before the daemon ever updated it cannot
        be taken down by a validly signed older release. Only `rollback` goes down."""
        if len(request.manifest) > MAX_MANIFEST_BYTES:
            raise MalformedManifestError(f"manifest: larger than {MAX_MANIFEST_BYTES} bytes")
        keys = load_trusted_keys(self.cfg.update.public_key_file)
        verify_signature(request.manifest, request.signature, keys)
        manifest = Manifest.parse(request.manifest)
        now = datetime.fromtimestamp(self.clock(), UTC)
        if manifest.expires <= now:
            raise ExpiredManifestError(f"manifest: {manifest.component} {manifest.version} expired at "
                                       f"{manifest.expires:%Y-%m-%dT%H:%M:%SZ}")
        if manifest.component != request.component:
            raise ComponentMismatchError(f"manifest: signed for component {manifest.component!r}, "
                                         f"requested for {request.component!r}")
        floor = self.version_floor(request.component, running)
        if floor is not None and Version(manifest.version) < floor[0]:
            raise VersionRollbackError(f"manifest: {request.component} {manifest.version} is older than "
                                       f"{floor[0]}, {floor[1]} (replayed release? `rollback` is the "
                                       "only way down)")
        return manifest

    def version_floor(self, component: str, running: str | None = None) -> tuple[Version, str] | None:
        """The highest of the recorded floor, the recorded install and the running version, with
        where it came from; versions that do not parse (an Agent reporting 'dev') do not count."""
        candidates = ((self.state.floor(component), "the highest version ever installed"),
                      (self.state.installed(component), "the version recorded as installed"),
                      (running, "the version running now"))
        best: tuple[Version, str] | None = None
        for text, source in candidates:
            try:
                version = Version(text) if text else None
            except ValueError:
                continue
            if version is not None and (best is None or version > best[0]):
                best = (version, source)
        return best

    def check_package(self, package: str, manifest: Manifest) -> None:
        """Size -> SHA-256 of the exact file that will be installed."""
        size = os.stat(package).st_size
        if size != manifest.size:
            raise LengthMismatchError(f"package: {size} bytes, the manifest says {manifest.size}")
        digest = file_sha256(package)
        if digest != manifest.sha256:
            raise HashMismatchError(f"package: SHA-256 {digest}, the manifest says {manifest.sha256}")

    def _pre_update(self, request: UpdateRequest, manifest: Manifest) -> None:
        if self.plugins is None:
            return
        info = {**request.describe(), "version": manifest.version, "sha256": manifest.sha256,
                "size": manifest.size}
        vetoes = self.plugins.vetoes("pre_update", request=info)
        if vetoes:
            raise UpdateVetoedError("update vetoed " + "; ".join(vetoes))

    def _check_space(self, size: int, target: Target) -> None:
        """Every filesystem we write to must keep update.min_free_bytes free after the update."""
        try:
            old_size = os.stat(target.path).st_size
        except FileNotFoundError:
            old_size = 0
        needs = ((self.cfg.update.download_dir, size), (os.path.dirname(os.path.abspath(target.path)), size),
                 (self.cfg.update.backup_dir, old_size))
        per_device: dict[int, list[Any]] = {}
        for path, amount in needs:
            existing = _existing_parent(path)
            st = os.statvfs(existing)
            entry = per_device.setdefault(os.stat(existing).st_dev, [existing, 0, st.f_bavail * st.f_frsize])
            entry[1] += amount
        reserve = self.cfg.update.min_free_bytes
        for path, amount, free in per_device.values():
            if free < amount + reserve:
                raise InsufficientSpaceError(
                    f"disk: {path} has {free} bytes free; the update needs {amount} plus "
                    f"update.min_free_bytes {reserve}")

    def _fetch(self, request: UpdateRequest, manifest: Manifest, report: Progress) -> str:
        def on_bytes(received: int) -> None:
            report(DOWNLOADING, 100.0 * received / manifest.size if manifest.size else 100.0, "")

        if request.file and request.url:
            raise SourceFileError("update: give either a URL or a file, not both")
        if not (request.file or request.url):
            raise SourceFileError("update: no package URL or file given")
        u = self.cfg.update
        try:
            if request.file:
                return download.copy_local(request.file, u.download_dir, manifest.size, on_bytes)
            tls = self.cfg.manager.tls
            settings = download.DownloadSettings(tls.ca_file, tls.cert_file, tls.key_file, u.connect_timeout,
                                                 u.read_timeout, u.download_deadline)
            return download.fetch(request.url, u.download_dir, manifest.size, settings, _throttle(on_bytes))
        except OSError as exc:
            # Network and source-file errors are D4001 already; what is left is download_dir refusing
            # the file (full disk, quota, file-size limit), which must not escape as a traceback.
            raise DownloadFailedError(f"download: cannot store the package in update.download_dir "
                                      f"{u.download_dir}: {exc.strerror or exc}") from exc

    def _context(self, manifest: Manifest, installed: str, backup: str | None, package: str,
                 target: Target, report: Progress) -> InstallContext:
        journal = self.journal

        def swap() -> None:
            try:
                install.swap(package, target.path)
            except OSError as exc:
                raise InstallError(f"install: cannot replace {target.path}: {exc}") from exc
            _crash_point("swap_window")  # the new file is in place, the journal does not say so yet
            try:
                journal.write("swapped")
            except OSError as exc:
                # Unjournaled, a crash now would leave the new file unproven and unrecoverable: undo.
                self._restore(target.path, backup)
                raise InstallError(f"install: cannot record the swap in {journal.path}: {exc}; "
                                   f"{target.path} restored") from exc
            _crash_point("after_swap")

        def restore() -> None:
            self._restore(target.path, backup)

        def mark_verifying() -> None:
            try:
                journal.write("verifying")
            except OSError as exc:  # "swapped" is on disk, and recovery treats both phases alike
                log.warning("update journal: cannot record 'verifying': %s", exc,
                            extra={"code": InstallError.code})

        return InstallContext(manifest.component, manifest.version, installed or None, manifest.sha256,
                              backup, self.cfg.update.verify_timeout, swap, restore, mark_verifying, report)

    def _restore(self, path: str, backup: str | None) -> None:
        try:
            if backup:
                install.swap(backup, path)
            else:
                fsutil.unlink_quietly(path)
        except OSError as exc:
            raise RollbackFailedError(f"rollback: cannot restore {path} from {backup}: {exc}") from exc

    def _apply(self, target: Target, ctx: InstallContext) -> str:
        swapped = False
        original_swap = ctx.swap

        def tracking_swap() -> None:
            nonlocal swapped
            original_swap()
            swapped = True

        ctx.swap = tracking_swap
        try:
            return target.apply(ctx)
        except HealthCheckError:
            raise
        except BaseException as exc:
            # A target that failed after the swap without restoring: put the old file back ourselves.
            if swapped and not isinstance(exc, RollbackFailedError):
                ctx.restore()
            raise

    def _finish(self, component: str, version: str, old_version: str, backup: str | None) -> None:
        self.state.record(component, "install", version, raise_floor=True, old_version=old_version)
        install.prune_backups(self.cfg.update.backup_dir, component, self.cfg.update.max_backups)
        self.journal.clear()
        log.info("%s updated from %s to %s (backup %s)", component, old_version or "?", version, backup)

    def _reporter(self, result: UpdateResult, progress: Progress) -> Progress:
        def report(state: str, percent: float = 0.0, message: str = "") -> None:
            final = state in (COMPLETED, ROLLED_BACK, FAILED)
            if message or final:
                log.info("update %s: %s %.0f%% %s", result.component, state, percent, message,
                         extra={"update_state": state})
            progress(state, percent=percent, message=message, result=result if final else None)

        return report

    def _post_update(self, result: UpdateResult) -> None:
        if self.plugins is not None:
            self.plugins.call_each("post_update", result=result.to_dict())

    # --- crash recovery -------------------------------------------------------------------------

    def recover(self, progress: Progress = _no_progress) -> UpdateResult | None:
        """Call at start-up: finish or undo an update a crash interrupted; return its outcome, if any."""
        try:
            with self.lock.hold("recovery", ""):
                return self._recover(progress)
        except UpdateInProgressError as exc:
            log.warning("update recovery skipped: %s", exc)
            return None

    def _recover(self, progress: Progress) -> UpdateResult | None:
        entry = self.journal.read()
        self._clean_downloads()
        if entry is None:
            from daemon_app.update.selfupdate import settle_without_journal

            settle_without_journal(self.work_dir)
            return None
        component = str(entry.get("component"))
        target = self.target(component)
        install.clean_temp_files(target.path)
        result = UpdateResult(component=component, old_version=entry.get("old_version") or "",
                              new_version=str(entry.get("version", "")))
        report = self._reporter(result, progress)
        phase = entry.get("phase")
        if phase in ("downloaded", "backed_up") and holds(target.path, entry.get("sha256")):
            # Killed between the rename and the journal's record of it: the disk is the truth.
            log.warning("update of %s to %s was interrupted (%s) after the swap: %s holds the new file",
                        component, result.new_version, phase, target.path)
            entry = self.journal.write("swapped")
            phase = "swapped"
        if phase in ("downloaded", "backed_up"):
            undone = target.abandon()
            self.journal.clear()
            if undone:
                result.rolled_back = True
                result.error = (f"{HealthCheckError.code} update to {result.new_version}: {undone}; "
                                f"restored {result.old_version or 'the previous file'}")
                report(ROLLED_BACK, 0.0, result.error)
                return result
            result.error = (f"{InstallError.code} update interrupted ({phase}) before the swap; "
                            f"{target.path} was not changed")
            report(FAILED, 0.0, result.error)
            return result
        ctx = InstallContext(component, result.new_version, result.old_version or None,
                             str(entry.get("sha256")), entry.get("backup"), self.cfg.update.verify_timeout,
                             lambda: None,
                             lambda: self._restore(target.path, entry.get("backup")),
                             lambda: self.journal.write("verifying"), report)
        healthy = target.resume(ctx)
        if healthy is None:
            return None
        if healthy:
            self._finish(component, result.new_version, result.old_version, entry.get("backup"))
            result.success = True
            result.message = f"{component} {result.new_version} verified after a restart"
            report(COMPLETED, 100.0, result.message)
            return result
        try:
            target.reinstall(ctx.restore, result.old_version or None)
            result.rolled_back = True
            why = ctx.extra.get("reason") or "interrupted after the swap and not verified"
            result.error = (f"{HealthCheckError.code} update to {result.new_version}: {why}; "
                            f"restored {result.old_version or 'the previous file'}")
        except DaemonError as exc:
            result.error = str(exc)
        self.journal.clear()
        report(ROLLED_BACK if result.rolled_back else FAILED, 0.0, result.error)
        return result

    def _clean_downloads(self) -> None:
        directory = self.cfg.update.download_dir
        try:
            fsutil.check_dir(directory)  # never unlink anything behind a planted symlink
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("%s update.download_dir: %s; leftover downloads not cleaned",
                      UnsafePathRefusedError.code, exc, extra={"code": UnsafePathRefusedError.code})
            return
        for name in names:
            if name.startswith(download.PREFIX):
                fsutil.unlink_quietly(os.path.join(directory, name))

    # --- operator rollback ----------------------------------------------------------------------

    def rollback(self, component: str, progress: Progress = _no_progress) -> UpdateResult:
        """Restore the newest backup on purpose. The floor stays: this is the operator's choice,
        recorded in the history; the used backup is removed so a second rollback goes further back."""
        result = UpdateResult(component=component)
        report = self._reporter(result, progress)
        try:
            target = self.target(component)
            result.old_version = target.current_version() or ""
            with self.lock.hold(component, "rollback"):
                backups = install.list_backups(self.cfg.update.backup_dir, component)
                if not backups:
                    raise NoBackupError(f"rollback: no backup of {component} in {self.cfg.update.backup_dir}")
                newest = backups[0]
                result.new_version = "" if newest.version == "unknown" else newest.version
                report(INSTALLING, 0.0, f"restoring {newest.path}")

                def put_back() -> None:
                    try:
                        install.swap(newest.path, target.path)
                    except OSError as exc:
                        raise RollbackFailedError(f"rollback: cannot restore {target.path}: {exc}") from exc

                healthy = target.reinstall(put_back, result.new_version or None)
                fsutil.unlink_quietly(newest.path)
                self.state.record(component, "rollback", result.new_version or "unknown", raise_floor=False,
                                  from_version=result.old_version)
                if not healthy:
                    raise RollbackFailedError(f"rollback: {component} {result.new_version} was restored but "
                                              "has not reported healthy")
            result.success = True
            result.rolled_back = True
            result.message = (f"{component} rolled back from {result.old_version or '?'} "
                              f"to {result.new_version or '?'}")
            report(COMPLETED, 100.0, result.message)
        except (DaemonError, OSError) as caught:
            exc = as_daemon_error(caught)
            result.error = str(exc)
            log.error("rollback of %s failed: %s", component, exc, extra={"code": exc.code})
            report(FAILED, 0.0, str(exc))
        return result


def run_update(cfg: Any, request: UpdateRequest, progress: Progress = _no_progress,
               **kwargs: Any) -> UpdateResult:
    """The one entry point both the CLI's direct mode and the running daemon call."""
    return Updater(cfg, **kwargs).run(request, progress)


def _peek_version(raw: bytes) -> str:
    """The version for the lock's 'who holds it' note (unverified, display only)."""
    try:
        value = json.loads(raw).get("version", "")
        return value if isinstance(value, str) and len(value) < 64 else ""
    except Exception:  # unverified bytes from anyone: ValueError, RecursionError, AttributeError...
        return ""


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _throttle(fn: Callable[[int], None], every: float = 0.25) -> Callable[[int], None]:
    """Progress per chunk would flood the Manager: pass on at most a few calls a second."""
    last = [0.0]

    def call(received: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            fn(received)

    return call
