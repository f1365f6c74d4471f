"""Remote config: the Manager commands `agent_config` (validate, swap, apply, verify, then commit or
roll back to the last-known-good) and `daemon_settings` (allow-listed keys, checked by the schema,
applied by a reload), each answered with exactly one terminal status.

One push at a time, on its own thread `remote-config` (inside `host.busy`, so shutdown waits).
The verify rule (docs/contract.md): within `remote_config.verify_timeout` after the Agent was
restarted with the new file, the Agent process running at the end must have sent a heartbeat, and at
most ONE Agent process may have ended meanwhile (a crash, or a restart by a failed health check):
one blip is tolerated so that a transient does not roll a good config back; a second one fails the
config at once. After a SIGHUP (agent.config_reload: sighup) the signalled process's first heartbeat
does not count, since it may predate the re-read: it must send a second one. Daemon settings are
verified after their reload by daemon_watch.py's rule, for the same window.

A journal (store.py) makes a push survive a kill -9 of the daemon: at the next start a push that
had not swapped the file (or settings) is answered `failed` (nothing changed); one that had is
settled by restoring the last-known-good and verifying it (`rolled_back`); one that had ended gets
its answer sent again. Either way the command gets its one terminal status and one known config.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from daemon_app import command_status, remote_settings
from daemon_app import config as config_mod
from daemon_app.agent.snapshot import AgentState
from daemon_app.errors import ConfigValidateError, DaemonError, RemoteConfigError
from daemon_app.rconfig.daemon_watch import DaemonWatch, Expect, Verdict, ended
from daemon_app.rconfig.store import ConfigStore, digest, short

if TYPE_CHECKING:
    from daemon_app.config import Config
    from daemon_app.host import AgentControl, Host, LinkHealth, Peer, UpdateJobs

log = logging.getLogger(__name__)

COMPONENT = "agent_config"
SETTINGS = "daemon_settings"
POLL = 0.1
SIGHUP_HEARTBEATS = 2  # after a SIGHUP the first heartbeat may predate the re-read: the second counts


def _describe(ends: list[str]) -> str:
    if len(ends) == 2 and ends[0] == ends[1]:
        return f"made the Agent {ends[0]} twice"
    return "made the Agent " + ", then ".join(ends)


class RemoteConfigService:
    """Engine service "remote_config": the `agent_config` and `daemon_settings` command handlers,
    the hashes heartbeats carry, and its status section."""

    name = "remote_config"

    def __init__(self, host: Host, *, agent: Peer[AgentControl], link: Peer[LinkHealth],
                 updates: Peer[UpdateJobs]) -> None:
        self.host = host
        self._agent = agent
        self._link = link
        self._updates = updates  # an update stops and starts the Agent too: one at a time
        self._watch = DaemonWatch(host, agent=agent, link=link, updates=updates)
        self._lock = threading.Lock()
        self._busy = ""
        self._last: dict[str, Any] | None = None
        self.effective_hash = ""  # of the Agent's config file as in effect; heartbeats carry it
        self.settings_hash = ""  # of the daemon settings set remotely; heartbeats carry it too

    def start(self) -> None:
        self.host.on_command(COMPONENT, self.handle_command)
        self.host.on_command(SETTINGS, self.handle_settings)
        self.settings_hash = remote_settings.digest(remote_settings.read(self.host.cfg.daemon.work_dir))
        self.host.add_status("remote_config", lambda: self._last)
        store = self._store()
        self._refresh_hash(store)
        try:
            entry = store.journal()
        except RemoteConfigError as exc:  # e.g. a planted symlink: refused, and the daemon runs on
            log.error("%s; an interrupted push cannot be settled", exc, extra={"code": exc.code})
            return
        if entry is None:
            return
        cid = str(entry.get("command_id") or "")
        log.warning("D6001 agent config %s was interrupted (phase %s); settling it", cid, entry.get("phase"),
                    extra={"code": "D6001"})
        self._busy = f"recovery of the interrupted push {cid or '(no id)'}"
        threading.Thread(target=self._run, args=(cid, b"", lambda: self._recover(store, entry)),
                         name="remote-config", daemon=True).start()

    def _refresh_hash(self, store: ConfigStore) -> None:
        """Read from the file itself, so that what heartbeats say is what the Agent was given."""
        try:
            self.effective_hash = digest(store.current())
        except RemoteConfigError as exc:
            log.error("%s", exc, extra={"code": exc.code})
            self.effective_hash = ""

    def _store(self) -> ConfigStore:
        cfg = self.host.cfg
        return ConfigStore(cfg.agent.config_file, cfg.daemon.work_dir)

    def stop(self, deadline: float) -> None:
        """Take no more pushes (remote_config.enabled turned off by a reload). Shutdown itself
        waits for a push in flight: it runs inside host.busy."""
        self.host.on_command(COMPONENT, None)
        self.host.on_command(SETTINGS, None)
        self.host.add_status("remote_config", None)

    def reload(self, cfg: Config) -> None:
        """Each push reads the engine's config of the moment."""

    def status(self) -> dict[str, Any]:
        return dict(self._last or {})

    def in_progress(self) -> str:
        """ConfigPushes (daemon_app.host): the push in flight ("agent config push c-21"), or ""."""
        return self._busy

    def _claim(self, what: str) -> str:
        """Take the one push slot for `what`: "" when taken, else why not. An update stops and starts
        the Agent (or the daemon) too, so none may run meanwhile. The slot is claimed before looking
        at updates, as the update service claims before looking at pushes: of a push and an update
        arriving together at least one sees the other, so both never run."""
        with self._lock:
            if self._busy:
                return f"another push is in progress ({self._busy})"
            self._busy = what
        updates = self._updates()
        job = updates.in_progress() if updates is not None else ""
        if job:
            with self._lock:
                self._busy = ""
            return f"an update is in progress ({job})"
        return ""

    # --- the command ------------------------------------------------------------------------------

    def handle_command(self, command: dict[str, Any]) -> None:
        """{"id", "type": "agent_config", "content": bytes}; returns at once, answers later."""
        cid = str(command.get("id") or "")
        content = command.get("content")
        cfg = self.host.cfg
        if not isinstance(content, (bytes, bytearray)):
            self._answer(cid, "rejected", f"D6001 agent config {cid}: content must be bytes", "", "")
            return
        if not content:
            # proto3 cannot tell an empty file from a field a Manager forgot to set: a buggy Manager
            # must not blank the Agent's config across a fleet.
            self._answer(cid, "rejected", f"D6001 agent config {cid}: the content is empty (an empty file "
                         "cannot be told from a missing field); nothing changed", "", "")
            return
        cap = cfg.remote_config.max_agent_config_bytes
        if len(content) > cap:
            self._answer(cid, "rejected", f"D6001 agent config {cid}: {len(content)} bytes is larger than "
                         f"remote_config.max_agent_config_bytes ({cap}); nothing changed", "", "")
            return
        refused = self._claim(f"agent config push {cid}")
        if refused:
            self._answer(cid, "failed", f"D6001 agent config {cid}: {refused}; nothing changed", "",
                         digest(bytes(content)))
            return
        data = bytes(content)
        threading.Thread(target=self._run, args=(cid, data, lambda: self._push(cid, data)),
                         name="remote-config", daemon=True).start()

    def handle_settings(self, command: dict[str, Any]) -> None:
        """{"id", "type": "daemon_settings", "values": {dotted key: text}}; returns at once."""
        cid = str(command.get("id") or "")
        values = command.get("values")

        def reject(why: str) -> None:
            self._answer(cid, "rejected", f"D6001 daemon settings {cid}: {why}; nothing changed", "", "",
                         component=SETTINGS)

        if not isinstance(values, dict) or not values:
            return reject("no settings in the command")
        if len(values) > remote_settings.MAX_KEYS:
            return reject(f"{len(values)} settings, at most {remote_settings.MAX_KEYS}")
        for key, value in values.items():
            if not isinstance(key, str) or not isinstance(value, str) or len(key) > remote_settings.MAX_KEY \
                    or len(value) > remote_settings.MAX_VALUE:
                return reject(f"setting {str(key)[:60]!r}: keys of at most {remote_settings.MAX_KEY} and "
                              f"values of at most {remote_settings.MAX_VALUE} characters")
        odd = sorted(k for k in values if not remote_settings.is_config_key(k))
        if odd:
            return reject(f"not a config key: {', '.join(repr(k) for k in odd)} (dotted names of letters, "
                          "digits, _ and -; no wildcards, spaces or empty parts)")
        allowed = list(self.host.cfg.remote_config.allowed_keys)
        refused = sorted(k for k in values if not remote_settings.settable(k, allowed))
        if refused:
            return reject(f"not settable remotely: {', '.join(refused)} (remote_config.allowed_keys; code, "
                          "files and trust never are)")
        parsed = {k: remote_settings.parse_value(v) for k, v in values.items()}
        refused = self._claim(f"daemon settings push {cid}")
        if refused:
            self._answer(cid, "failed", f"D6001 daemon settings {cid}: {refused}; nothing changed", "", "",
                         component=SETTINGS)
            return
        threading.Thread(target=self._run, args=(cid, b"", lambda: self._apply_settings(cid, parsed),
                                                 SETTINGS), name="remote-config", daemon=True).start()

    def _apply_settings(self, cid: str, values: dict[str, Any]) -> None:
        """Check the settings with the config file through the schema, keep them, reload, then watch
        the daemon for verify_timeout (daemon_watch.py); unhealthy, or a reload the engine refuses,
        puts the previous settings back (rolled_back)."""
        host = self.host
        work_dir, source = host.cfg.daemon.work_dir, host.cfg.source
        current = remote_settings.read(work_dir)
        new = {**current, **values}
        old_h, new_h = remote_settings.digest(current), remote_settings.digest(new)
        store = self._store()

        def end(state: str, message: str, rolled_back: bool = False) -> None:
            self._end(store, cid, state, message, old_h, new_h, rolled_back=rolled_back, component=SETTINGS)

        if new == current:
            return self._answer(cid, "completed", f"daemon settings {short(new_h)} are already in effect; "
                                "nothing to do", old_h, new_h, component=SETTINGS)
        if source == "<defaults>":
            return self._answer(cid, "failed", f"D6001 daemon settings {cid}: the daemon runs without a "
                                "config file", old_h, new_h, component=SETTINGS)
        try:
            config_mod.validate(remote_settings.merged(config_mod.read_raw(source), new), source=source)
        except ConfigValidateError as exc:
            return self._answer(cid, "rejected", f"D1002 daemon settings {cid} rejected, nothing changed: "
                                + "; ".join(exc.problems), old_h, new_h, component=SETTINGS)
        vetoes = host.plugins.vetoes("pre_config", request={
            "command_id": cid, "kind": SETTINGS, "old": old_h, "new": new_h, "values": dict(values)})
        if vetoes:
            return self._answer(cid, "rejected", f"D6001 daemon settings {short(new_h)} vetoed "
                                f"{'; '.join(vetoes)}; nothing changed", old_h, new_h, component=SETTINGS)
        expect = self._watch.expectations()
        remote_settings.keep_last_known_good(work_dir, current)
        # A crash from here on: the next start restores the last-known-good (see _recover).
        store.write_journal("swapping", command_id=cid, kind=SETTINGS, old=old_h, new=new_h)
        remote_settings.write(work_dir, new)
        timeout = host.cfg.remote_config.verify_timeout
        self._progress(cid, "installing", 40.0, f"applying daemon settings {short(new_h)} by a reload; "
                       f"then watching the daemon for {timeout:g}s")
        result = host.call(lambda: host.reload(f"daemon settings {cid}"), timeout=120.0)
        if not result.get("reloaded"):
            remote_settings.write(work_dir, current)
            host.call(lambda: host.reload(f"daemon settings {cid} undone"), timeout=120.0)
            errors = "; ".join(result.get("errors") or [])
            return end("rolled_back", f"D6001 daemon settings {short(new_h)}: the reload was refused "
                       f"({errors}); restored {short(old_h)}", rolled_back=True)
        verdict = self._watch.verify(expect)
        if verdict.healthy:
            later = result.get("restart_required") or []
            return end("completed", f"daemon settings {short(new_h)} applied: "
                       f"{', '.join(result.get('changed') or []) or 'no changes'}"
                       + (f"; at the next restart: {', '.join(later)}" if later else "")
                       + f"; the daemon stayed healthy for {timeout:g}s")
        log.warning("D6001 daemon settings %s: %s; restoring %s", short(new_h), verdict.why, short(old_h),
                    extra={"code": "D6001"})
        again = self._restore_settings(f"daemon settings {cid} rolled back", current, expect)
        reason = f"daemon settings {short(new_h)}: {verdict.why}; restored {short(old_h)}"
        if again.healthy:
            end("rolled_back", f"D6001 {reason}, healthy", rolled_back=True)
        else:
            end("failed", f"D6001 {reason}, still unhealthy: {again.why}", rolled_back=True)

    def _restore_settings(self, why: str, values: dict[str, Any], expect: Expect) -> Verdict:
        """Put `values` back, reload, and verify by the same rule; the Agent process to watch is the
        first one up from now (the one the failed settings left may be on its way down)."""
        host = self.host
        remote_settings.write(host.cfg.daemon.work_dir, values)
        result = host.call(lambda: host.reload(why), timeout=120.0)
        if not result.get("reloaded"):
            return Verdict(False, f"the reload was refused ({'; '.join(result.get('errors') or [])})")
        return self._watch.verify(Expect(agent_up=expect.agent_up, registered=expect.registered))

    def _run(self, cid: str, content: bytes, work: Callable[[], None], kind: str = COMPONENT) -> None:
        what = kind.replace("_", " ")
        try:
            with self.host.busy(f"{what} {cid}"):
                work()
        except Exception as exc:  # every push owes the Manager one answer
            code = exc.code if isinstance(exc, DaemonError) else "D6001"
            log.exception("%s %s failed", what, cid)
            # exc.message: the code leads the answer once ("D1001 daemon settings c: config: …").
            text = exc.message if isinstance(exc, DaemonError) else f"{type(exc).__name__}: {exc}"
            undo = self._undo_after_error()
            self._answer(cid, "failed", f"{code} {what} {cid}: {text}{undo}", "",
                         digest(content) if content else "", component=kind)
            self._clear_journal()
        finally:
            with self._lock:
                self._busy = ""

    def _undo_after_error(self) -> str:
        """After an unexpected error: put the last-known-good back if the new file or settings may be
        in place."""
        store = self._store()
        try:
            entry = store.journal()
            if entry is None or entry.get("phase") != "swapping":
                return ""
            if entry.get("kind") == SETTINGS:
                previous = remote_settings.last_known_good(self.host.cfg.daemon.work_dir)
                if previous is None:
                    return "; no last-known-good settings to restore"
                verdict = self._restore_settings("daemon settings undone after an error", previous,
                                                 Expect(agent_up=False, registered=False))
            else:
                store.install(store.last_known_good())
                verdict = self._apply_and_verify()
        except Exception as exc:
            log.exception("cannot restore the last known good")
            return f"; restoring the last known good failed too: {exc}"
        return f"; restored {short(str(entry.get('old') or ''))}" + (
            ", healthy" if verdict.healthy else f", still unhealthy: {verdict.why}")

    def _clear_journal(self) -> None:
        try:
            self._store().clear_journal()
        except OSError:
            log.exception("cannot remove the remote config journal")

    def _end(self, store: ConfigStore, cid: str, state: str, message: str, old: str, new: str, *,
             rolled_back: bool = False, component: str = COMPONENT) -> None:
        """The terminal answer of a journaled push: recorded first, so a crash re-sends it, not redoes."""
        store.write_journal("ended", answer={"state": state, "message": message, "old": old, "new": new,
                                             "rolled_back": rolled_back})
        self._answer(cid, state, message, old, new, rolled_back=rolled_back, component=component)
        store.clear_journal()

    def _recover(self, store: ConfigStore, entry: dict[str, Any]) -> None:
        cid = str(entry.get("command_id") or "")
        old, new = str(entry.get("old") or ""), str(entry.get("new") or "")
        kind = SETTINGS if entry.get("kind") == SETTINGS else COMPONENT
        answer = entry.get("answer")
        if entry.get("phase") == "ended" and isinstance(answer, dict):
            self._answer(cid, str(answer.get("state")), str(answer.get("message")), old, new,
                         rolled_back=bool(answer.get("rolled_back")), component=kind)
            store.clear_journal()
            return
        if kind == SETTINGS:
            return self._recover_settings(store, cid, old, new)
        if entry.get("phase") != "swapping":
            self._end(store, cid, "failed", f"D6001 agent config {short(new)}: the daemon stopped before it "
                      "was installed; nothing changed", old, new)
            return
        store.install(store.last_known_good())
        verdict = self._apply_and_verify()
        reason = (f"config {short(new)} was not verified: the daemon stopped during the push; "
                  f"restored {short(old)}")
        if verdict.healthy:
            self._end(store, cid, "rolled_back", f"D6001 {reason}, healthy", old, new, rolled_back=True)
        else:
            self._end(store, cid, "failed", f"D6001 {reason}, still unhealthy: {verdict.why}", old, new,
                      rolled_back=True)

    def _recover_settings(self, store: ConfigStore, cid: str, old: str, new: str) -> None:
        """This start loaded the settings the push left, unverified: restore the last-known-good, as
        for an Agent config (settings that got the daemon killed must not be kept by its restart)."""
        previous = remote_settings.last_known_good(self.host.cfg.daemon.work_dir)
        if previous is None:
            now = remote_settings.digest(remote_settings.read(self.host.cfg.daemon.work_dir))
            return self._end(store, cid, "failed", f"D6001 daemon settings {short(new)} were not verified: "
                             "the daemon stopped during the push and kept no last-known-good; "
                             f"{short(now)} in effect", old, new, component=SETTINGS)
        sup = self._agent()  # adopted by this start if it outlived the daemon
        expect = Expect(agent_up=sup is not None and sup.snapshot().state.live, registered=False)
        again = self._restore_settings(f"daemon settings {cid} not verified", previous, expect)
        reason = (f"daemon settings {short(new)} were not verified: the daemon stopped during the push; "
                  f"restored {short(old)}")
        if again.healthy:
            self._end(store, cid, "rolled_back", f"D6001 {reason}, healthy", old, new, rolled_back=True,
                      component=SETTINGS)
        else:
            self._end(store, cid, "failed", f"D6001 {reason}, still unhealthy: {again.why}", old, new,
                      rolled_back=True, component=SETTINGS)

    def _push(self, cid: str, content: bytes) -> None:
        cfg = self.host.cfg
        store = self._store()
        new = digest(content)
        old_content = store.current()
        old = digest(old_content)
        if new == old:
            self._answer(cid, "completed", f"agent config {short(new)} is already effective; nothing to do",
                         old, new)
            return
        if self._agent() is None:
            raise RemoteConfigError("agent supervision is off (agent.enabled: false)")
        vetoes = self.host.plugins.vetoes("pre_config", request={
            "command_id": cid, "kind": COMPONENT, "old": old, "new": new, "size": len(content)})
        if vetoes:
            self._answer(cid, "rejected", f"D6001 agent config {short(new)} vetoed {'; '.join(vetoes)}; "
                         "nothing changed", old, new)
            return
        store.write_journal("started", command_id=cid, old=old, new=new)
        if cfg.agent.config_check:
            self._progress(cid, "verifying", 10.0, f"running agent.config_check on {short(new)}")
            check = store.check(list(cfg.agent.config_check), content, cfg.remote_config.check_timeout)
            if not check.ok:
                self._end(store, cid, "rejected", f"D6001 agent config {short(new)} rejected by "
                          f"agent.config_check ({check.why}); nothing changed. "
                          f"Output: {check.output or '(none)'}", old, new)
                return
        store.keep_last_known_good(old_content)
        store.write_journal("swapping")
        self._progress(cid, "installing", 40.0, f"installing agent config {short(new)}; restarting the Agent")
        store.install(content)
        verdict = self._apply_and_verify()
        if verdict.healthy:
            self._end(store, cid, "completed", f"agent config {short(new)} committed: the Agent heartbeated "
                      f"and stayed healthy for {cfg.remote_config.verify_timeout:g}s", old, new)
            return
        log.warning("D6001 agent config %s %s; restoring %s", short(new), verdict.why, short(old),
                    extra={"code": "D6001"})
        store.install(store.last_known_good())
        again = self._apply_and_verify()
        reason = f"config {short(new)} {verdict.why}; restored {short(old)}"
        if again.healthy:
            self._end(store, cid, "rolled_back", f"D6001 {reason}, healthy", old, new, rolled_back=True)
        else:
            self._end(store, cid, "failed", f"D6001 {reason}, still unhealthy: {again.why}", old, new,
                      rolled_back=True)

    # --- apply and verify -------------------------------------------------------------------------

    def _apply_and_verify(self) -> Verdict:
        """Restart the Agent with the file now in place, then watch it (the rule in the module doc)."""
        sup = self._agent()
        if sup is None:
            return Verdict(False, "lost its supervisor (agent.enabled turned off)")
        timeout = self.host.cfg.remote_config.verify_timeout
        # sighup: the running Agent re-reads its file; one that is not running is started instead.
        signalled = self.host.cfg.agent.config_reload == "sighup" and sup.signal_agent(signal.SIGHUP)
        if signalled:
            # Counted from after the signal, and the first heartbeat after it does not count: the
            # Agent may have made it before it re-read its file (the SIGHUP rule, docs/contract.md).
            baseline, needed = sup.snapshot().heartbeats_received, SIGHUP_HEARTBEATS
        else:
            sup.stop_agent()
            baseline, needed = sup.snapshot().heartbeats_received, 1
            try:
                sup.start_agent()
            except DaemonError as exc:
                log.warning("%s", exc, extra={"code": exc.code})  # the restart policy takes it from here
        deadline = time.monotonic() + timeout
        watched = sup.snapshot().pid
        ends: list[str] = []
        while True:
            st = sup.snapshot()
            if watched and (st.pid != watched or not st.state.live):
                ends.append(ended(st.last_exit))
                watched = 0
                if len(ends) >= 2:
                    return Verdict(False, _describe(ends))
            if not watched:
                if st.state == AgentState.FATAL:
                    return Verdict(False, _describe(ends) + " and gave up (FATAL)")
                if st.state.live and st.pid:
                    # A new process read the file at its start: its first heartbeat counts.
                    watched, baseline, needed = st.pid, st.heartbeats_received, 1
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sup.wait_for_heartbeat(None, min(left, POLL))
        st = sup.snapshot()
        if watched and st.pid == watched and st.heartbeats_received >= baseline + needed:
            return Verdict(True, "")
        why = f"sent no heartbeat within {timeout:g}s" if needed == 1 else \
            f"sent no heartbeat within {timeout:g}s of re-reading its file on SIGHUP"
        return Verdict(False, f"{_describe(ends)} and {why}" if ends else "made the Agent " + why)

    # --- answers ------------------------------------------------------------------------------------

    def _progress(self, cid: str, state: str, percent: float, message: str) -> None:
        log.info("remote config %s: %s %s", cid, state, message)
        self._send(cid, state, percent, message, None)

    def _answer(self, cid: str, state: str, message: str, old: str, new: str, *,
                rolled_back: bool = False, component: str = COMPONENT) -> None:
        ok = state == "completed"
        (log.info if ok else log.warning)("%s %s: %s %s", component.replace("_", " "), cid, state, message)
        result = {"success": ok, "old_version": old, "new_version": new, "error": "" if ok else message,
                  "rolled_back": rolled_back, "component": component}
        self._last = {"id": cid, "state": state, "message": message, "old": old, "new": new,
                      "time": time.time()}
        self._refresh_hash(self._store())
        self.settings_hash = remote_settings.digest(remote_settings.read(self.host.cfg.daemon.work_dir))
        self._send(cid, state, 100.0, message, result)
        self.host.plugins.call_each("post_config", result={
            "command_id": cid, "kind": component, "state": state, "message": message, "old_version": old,
            "new_version": new, "rolled_back": rolled_back})

    def _send(self, cid: str, state: str, percent: float, message: str,
              result: dict[str, Any] | None) -> None:
        command_status.send_quietly(self._link(), cid, state, percent, message, result)
