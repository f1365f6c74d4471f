"""The `daemon` command line (click): run, collect, config, plugins, version, and the operator tools."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any, NoReturn

import click

from daemon_app import __version__, fsutil
from daemon_app import config as config_mod
from daemon_app.errors import ConfigValidateError, DaemonError

EXIT_CONFIG = 2


class Ctx:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    def load(self) -> config_mod.Config:
        """Load the config or exit 2 with every problem printed (D1001/D1002)."""
        try:
            return config_mod.load(self.config_path)
        except ConfigValidateError as exc:
            for problem in exc.problems:
                click.echo(f"{exc.code} config: {problem}", err=True)
            sys.exit(EXIT_CONFIG)
        except DaemonError as exc:
            click.echo(str(exc), err=True)
            sys.exit(EXIT_CONFIG)


PROGRAM = "daemon.pyz"


class _Program(click.Group):
    """Names itself daemon.pyz in --help and errors, however it was started (pyz, -m, console script)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("prog_name", PROGRAM)
        return super().main(*args, **kwargs)


@click.group(cls=_Program, context_settings={"help_option_names": ["--help", "-h"]})
@click.version_option(__version__, "-V", "--version", prog_name=PROGRAM, message=(
    f"%(prog)s %(version)s (python {platform.python_version()} on {platform.machine()})"))
@click.option("-c", "--config", "config_path", envvar=config_mod.ENV_CONFIG, metavar="FILE",
              type=click.Path(dir_okay=False), help="Config file (default: $DAEMON_CONFIG, else built-in "
              "defaults).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """daemon.pyz: collect host metrics, supervise the Agent, report to the Manager, update safely.

    Start with `daemon.pyz config check`, then `daemon.pyz collect --once` to see what it measures,
    then `daemon.pyz run`. Without -c and $DAEMON_CONFIG the built-in defaults apply: every state
    file under daemon.work_dir (/var/lib/daemon).
    """
    ctx.obj = Ctx(config_mod.resolve_path(config_path))


# --- config -------------------------------------------------------------------------------------

@main.group("config")
def config_group() -> None:
    """Check or show the configuration."""


EXIT_WARNINGS = 1


@config_group.command("check")
@click.pass_obj
def config_check(obj: Ctx) -> None:
    """Validate the config and the files and plugins it names.

    Exit 0: valid, nothing missing. Exit 1: valid and the daemon starts, but something it names is
    missing or wrong (Agent binary, update key, Manager TLS files, an unknown plugin section); each
    is printed as a D1002 warning. Exit 2: invalid, every problem listed; the daemon refuses it.
    """
    from daemon_app import configcheck, logs, plugins

    cfg = obj.load()
    logs.setup("error", "", stderr=True)
    loaded = plugins.load_all(cfg)
    warnings = configcheck.world_problems(cfg, (name for name, _ in loaded.implementations("collect")))
    for problem in warnings:
        click.echo(f"{ConfigValidateError.code} config: {problem}", err=True)
    click.echo(config_mod.summary(cfg, warnings=len(warnings)))
    sys.exit(EXIT_WARNINGS if warnings else 0)


@config_group.command("show")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.pass_obj
def config_show(obj: Ctx, fmt: str) -> None:
    """Print the effective configuration: the file merged with every default."""
    cfg = obj.load()
    data = cfg.to_yaml_dict()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        import yaml

        click.echo(f"# effective configuration from {cfg.source}")
        if cfg.derived:
            click.echo("# paths marked 'derived' were relative and are resolved under daemon.work_dir")
        click.echo(_mark_derived(yaml.safe_dump(data, sort_keys=False), cfg.derived), nl=False)


def _mark_derived(text: str, derived: tuple[str, ...]) -> str:
    """Append `# derived` to the lines of the keys put under work_dir (safe_dump indents by 2)."""
    out, stack = [], []
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip(" ")
        depth = (len(line) - len(stripped)) // 2
        key = stripped.split(":", 1)[0]
        if ":" in stripped and not stripped.startswith("- "):
            del stack[depth:]
            stack.append(key)
            if ".".join(stack) in derived:
                line = line.rstrip("\n") + "  # derived from daemon.work_dir\n"
        out.append(line)
    return "".join(out)


# --- collect ------------------------------------------------------------------------------------

@main.command("collect")
@click.option("--once", is_flag=True, required=True, help="Run one round and exit (required).")
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="json", show_default=True)
@click.option("--debug", is_flag=True, help="Log at debug level: a failing plugin's traceback too.")
@click.pass_obj
def collect_cmd(obj: Ctx, once: bool, fmt: str, debug: bool) -> None:
    """Run every enabled collector once and print the metrics (like `telegraf --test`).

    Exits 1 when a collector failed or timed out; the others are still printed.
    """
    from daemon_app import logs, plugins
    from daemon_app.collection import CollectorRunner, enabled_calls

    cfg = obj.load()
    # Each failure is logged once on stderr (with D5001 and the collector's name) as it happens.
    logs.setup("debug" if debug else "error", "", stderr=True)
    loaded = plugins.load_all(cfg)
    runner = CollectorRunner()
    outcomes = runner.run(enabled_calls(cfg, loaded.implementations("collect")))
    runner.close()
    result: dict[str, Any] = {}
    for outcome in outcomes:
        for m in outcome.metrics:
            result[m.name] = m.to_dict()
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(_table(result))
    failed = [o.name for o in outcomes if not o.ok] + [p.name for p in loaded.failed]
    if failed:
        click.echo(f"D5001 collect: {len(failed)} failed: {', '.join(failed)}", err=True)
    sys.exit(1 if failed else 0)


def _table(result: dict[str, Any]) -> str:
    lines = []
    for name, m in result.items():
        for key, value in m["values"].items():
            if isinstance(value, list):
                for i, row in enumerate(value):
                    fields = " ".join(f"{k}={v}" for k, v in row.items()) if isinstance(row, dict) else row
                    lines.append(f"{name:<10} {key}[{i}] {fields}")
            else:
                lines.append(f"{name:<10} {key:<16} {value}")
    return "\n".join(lines)


# --- plugins ------------------------------------------------------------------------------------

@main.group("plugins")
def plugins_group() -> None:
    """List, install or uninstall plugins (built-in, entry points, and the plugin directory).

    The plugin directory is plugins.dir of the config (default <work_dir>/plugins): give every
    command, and `collect`, the same -c as `run`, or they look at another directory.
    """


@plugins_group.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_obj
def plugins_list(obj: Ctx, fmt: str) -> None:
    """Show each plugin: name, version, source (builtin / entrypoint / directory) and hooks."""
    from daemon_app import logs, plugins

    cfg = obj.load()
    logs.setup("error", "", stderr=True)
    rows = plugins.load_all(cfg).describe()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'NAME':<20} {'VERSION':<10} {'SOURCE':<11} HOOKS")
    for row in rows:
        hooks = ",".join(row["hooks"]) or f"(failed: {row.get('error', '')})"
        click.echo(f"{row['name']:<20} {row['version']:<10} {row['source']:<11} {hooks}")


@plugins_group.command("install")
@click.argument("spec", nargs=-1, required=True)
@click.option("--pip-arg", multiple=True, help="Extra argument for pip (e.g. --index-url=...).")
@click.pass_obj
def plugins_install(obj: Ctx, spec: tuple[str, ...], pip_arg: tuple[str, ...]) -> None:
    """Install plugin packages into the plugin directory with pip (--target), so they survive
    self-updates. SPEC is anything pip accepts: a name, a path, a wheel.
    """
    from daemon_app import plugins

    cfg = obj.load()
    target = cfg.plugins.dir
    try:
        fsutil.private_dir(target, 0o755, tighten=False)
    except OSError as exc:
        click.echo(f"D5001 plugins install: plugins.dir: {exc}", err=True)
        sys.exit(1)
    cmd = [_python_for_pip(), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--upgrade", "--target", target, *pip_arg, *spec]
    click.echo(f"installing into {target}: {' '.join(spec)}")
    before = plugins.dist_info_dirs(target)
    rc = subprocess.call(cmd)
    if rc != 0:
        click.echo(f"D5001 plugins install: pip exited {rc} (its messages are above)", err=True)
        sys.exit(rc)
    for path in plugins.prune_upgraded(target, before):
        if path.endswith(".dist-info"):
            click.echo(f"removed the replaced version's {os.path.basename(path)}")
    click.echo(f"check it with: {PROGRAM}{_config_arg(obj)} plugins list")


@plugins_group.command("uninstall")
@click.argument("name", nargs=-1, required=True)
@click.pass_obj
def plugins_uninstall(obj: Ctx, name: tuple[str, ...]) -> None:
    """Remove plugins from the plugin directory: NAME is the package (daemon-plugin-loadavg), the
    plugin (loadavg) or a loose module (NAME.py). A running daemon keeps what it loaded until it
    restarts. Exits 1 when a NAME is not installed there.
    """
    from daemon_app import plugins

    cfg = obj.load()
    failed = False
    for one in name:
        try:
            removed = plugins.uninstall(cfg.plugins.dir, one)
        except DaemonError as exc:
            click.echo(str(exc), err=True)
            failed = True
            continue
        click.echo(f"uninstalled {one} from {cfg.plugins.dir} ({len(removed)} files and directories)")
    sys.exit(1 if failed else 0)


def _config_arg(obj: Ctx) -> str:
    """` -c FILE` when a config file was named: plugins list/collect need it to see the same dir."""
    return f" -c {obj.config_path}" if obj.config_path else ""


def _python_for_pip() -> str:
    """The interpreter running us; inside a pyz that is the host's python3, which brings its own pip."""
    import importlib.util

    python = sys.executable or "python3"
    if importlib.util.find_spec("pip") is None:
        click.echo(f"D5001 plugins install: pip is not available to {python}; install it (Debian: "
                   "apt install python3-pip) and try again", err=True)
        sys.exit(1)
    return python


# --- version ------------------------------------------------------------------------------------

@main.command("version")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def version_cmd(fmt: str) -> None:
    """Print the daemon version, the Python and machine it runs on, and the pyz build id."""
    from daemon_app import buildinfo

    info = {"version": __version__, "python": platform.python_version(), "arch": platform.machine(),
            "build_id": buildinfo.build_id()}
    if fmt == "json":
        click.echo(json.dumps(info))
    else:
        click.echo(f"daemon {info['version']} (python {info['python']} on {info['arch']}, "
                   f"build {info['build_id']})")


# --- run ----------------------------------------------------------------------------------------

@main.command("run")
@click.pass_obj
def run_cmd(obj: Ctx) -> None:
    """Run the daemon in the foreground (systemd runs it like this).

    Without `manager.address` it runs stand-alone: it collects on schedule and passes each report
    to the `report` hook (the built-in file reporter writes <work_dir>/reports.jsonl).
    SIGTERM/SIGINT stop it cleanly, SIGHUP reloads the configuration; the Agent keeps running.
    Exits 1 when another daemon already runs with the same work_dir or pid file (D1003).
    """
    import logging

    from daemon_app import logs, plugins
    from daemon_app.engine import Engine

    cfg = obj.load()
    try:
        logs.setup(cfg.daemon.log_level, cfg.daemon.log_file, cfg.daemon.log_max_bytes,
                   cfg.daemon.log_backups)
    except OSError as exc:
        click.echo(f"{ConfigValidateError.code} config: daemon.log_file: cannot open "
                   f"{cfg.daemon.log_file!r}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_CONFIG)
    engine = Engine(cfg, plugins.load_all(cfg))
    try:
        engine.start()
    except DaemonError as exc:
        logging.getLogger("daemon_app").error(str(exc), extra={"code": exc.code})
        logs.close()
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG if isinstance(exc, ConfigValidateError) else 1)
    code = engine.run_forever()
    if engine.fatal is not None:
        click.echo(str(engine.fatal), err=True)
    sys.exit(code)


# --- status, reload (through the control socket of the running daemon) ---------------------------

EXIT_NOT_RUNNING = 3  # like `systemctl status` for an inactive unit


def _find_daemon(obj: Ctx, override: str | None) -> Any:
    """Which daemon to ask, and how it was chosen (see daemon_app/locate.py)."""
    from daemon_app import locate

    if override:
        return locate.Candidate(override, "given with --socket")
    ctx = click.get_current_context().find_root()
    source = ctx.get_parameter_source("config_path")
    how = f"${config_mod.ENV_CONFIG}" if source == click.core.ParameterSource.ENVIRONMENT else "-c"
    return locate.choose(obj.config_path, how)


def _ask(obj: Ctx, socket_path: str | None, cmd: str, args: dict[str, Any] | None = None) -> Any:
    """One control request; exit 3 when no daemon runs, 1 on any other failure."""
    from daemon_app import control

    try:
        found = _find_daemon(obj, socket_path)
    except DaemonError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    try:
        return found, control.request(found.socket, cmd, args)
    except control.NotRunning as exc:
        click.echo(f"{exc}; asked the control socket {found.how}", err=True)
        sys.exit(EXIT_NOT_RUNNING)
    except DaemonError as exc:
        click.echo(f"{exc} (control socket {found.socket}, {found.how})", err=True)
        sys.exit(1)


def _last_exit_text(last_exit: Any) -> str:
    if not isinstance(last_exit, dict):
        return "no exit seen"
    if last_exit.get("signal"):
        how = f"killed by signal {last_exit['signal']}"
    elif last_exit.get("code") is not None:
        how = f"exit code {last_exit['code']}"
    else:
        how = "exit status unknown"
    return f"last {how} at {last_exit.get('at') or 'an unknown time'}"


def _agent_line(a: dict[str, Any]) -> str:
    """`RUNNING pid 42 version 1.4.2, cpu 3.5 %, rss 52428800 bytes, restarts 0, no exit seen`;
    figures read `unknown` until the first health check measured them (null in the JSON)."""
    process = f"pid {a['pid']}" if a.get("pid") else "no process"
    version = f" version {a['version']}" if a.get("version") else ""
    figures = ""
    if a.get("pid"):
        cpu, rss = a.get("cpu_percent"), a.get("memory_bytes")
        figures = (f", cpu {'unknown' if cpu is None else f'{cpu:.1f} %'}"
                   f", rss {'unknown' if rss is None else f'{rss} bytes'}")
    return (f"  agent      {a.get('state') or 'unknown state'} {process}{version}{figures}, "
            f"restarts {a.get('restart_count', 0)}, {_last_exit_text(a.get('last_exit'))}")


_socket_option = click.option("--socket", "socket_path", metavar="PATH", type=click.Path(dir_okay=False),
                              help="Control socket (default: the config's daemon.control_socket; "
                              "without -c or $DAEMON_CONFIG, the installed config's or the running "
                              "daemon's).")


@main.command("status")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_socket_option
@click.pass_obj
def status_cmd(obj: Ctx, fmt: str, socket_path: str | None) -> None:
    """Show the running daemon: version, uptime, node, Manager link, outbox, Agent, collectors,
    plugins and any update in progress. Exits 3 when no daemon is running.
    """
    found, status = _ask(obj, socket_path, "status")
    if fmt == "json":
        click.echo(json.dumps(status, indent=2))
    else:
        click.echo(format_status(status, asked=f"{found.socket} ({found.how})"))


def format_status(s: dict[str, Any], asked: str = "") -> str:
    """The human view of `daemon status`; `asked` says which control socket answered and why."""
    lines = [f"daemon {s['version']} (pid {s['pid']}) {s.get('state', '?')}, up {_ago(s['uptime_s'])}",
             f"  node       {s['node_id']}", f"  config     {s['config']}"]
    if asked:
        lines.append(f"  asked      {asked}")
    m = s.get("manager")
    if m is None:
        lines.append("  manager    none (stand-alone)")
    else:
        contact = m.get("last_contact")
        lines.append(f"  manager    {m.get('address', '?')} {m.get('state', '?')}"
                     f"{' registered' if m.get('registered') else ''}, last contact {contact or 'never'}"
                     + (f", last error: {m['last_error']}" if m.get("last_error") else ""))
        lines.append(f"  outbox     {m.get('outbox_depth', '?')} queued "
                     f"({m.get('outbox_bytes', '?')} bytes), {m.get('dropped', 0)} dropped, "
                     f"acked up to {m.get('acked_seq', '?')}")
    a = s.get("agent")
    if a is None:
        lines.append("  agent      not supervised (agent.enabled: false)")
    else:
        lines.append(_agent_line(a))
    lines.append(f"  reports    {s.get('reports_built', 0)} built, last {s.get('last_report') or 'never'}")
    lines.append("  collectors")
    for name, c in sorted(s.get("collectors", {}).items()):
        verdict = "ok" if c["ok"] else f"FAILED: {c['error']}"
        lines.append(f"    {name:<12} {c['last_run']}  {c['duration_ms']:>9.3f} ms  {verdict}")
    names = [p["name"] if isinstance(p, dict) else str(p) for p in s.get("plugins", [])]
    lines.append(f"  plugins    {', '.join(names) or 'none'}")
    u = s.get("update")
    lines.append(f"  update     {json.dumps(u) if u else 'none in progress'}")
    if s.get("in_flight"):
        lines.append(f"  in flight  {', '.join(s['in_flight'])}")
    t = s.get("threads")
    if t:
        lines.append(f"  threads    {t['count']} ({', '.join(x['name'] for x in t['threads'])})")
    for name, error in sorted((s.get("services_failed") or {}).items()):
        lines.append(f"  FAILED     {name}: {error}")
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@main.command("reload")
@_socket_option
@click.pass_obj
def reload_cmd(obj: Ctx, socket_path: str | None) -> None:
    """Make the running daemon re-read its config file (like SIGHUP) and print the outcome.

    Exits 0 when the new config is in force, 1 when it was refused (the errors are printed and the
    old config stays in force), 3 when no daemon is running.
    """
    _, result = _ask(obj, socket_path, "reload")
    if result.get("reloaded"):
        changed = ", ".join(result.get("changed") or []) or "no changes"
        click.echo(f"reloaded {result.get('config')}: {changed}")
        if result.get("restart_required"):
            click.echo("takes effect at the next restart: " + ", ".join(result["restart_required"]))
        return
    click.echo(f"reload refused; the running configuration stays in force ({result.get('config')}):",
               err=True)
    for line in result.get("errors") or []:
        click.echo(f"  {line}", err=True)
    sys.exit(1)


# --- update / rollback --------------------------------------------------------------------------

def _through_daemon(cfg: config_mod.Config, socket_path: str | None, cmd: str, args: dict[str, Any]) -> bool:
    """When a daemon owns work_dir, hand the request to it (control socket) and follow its progress
    to the end; return False when no daemon runs (the caller then acts directly, under the lock)."""
    from daemon_app import control, instance

    pid = instance.holder(cfg.daemon.work_dir)
    if not pid:
        return False
    path = socket_path or cfg.daemon.control_socket
    try:
        job = control.request(path, cmd, args)["id"]
    except control.NotRunning:
        click.echo(f"D4003 update: a daemon (pid {pid}) holds {cfg.daemon.work_dir} but its control "
                   f"socket {path} does not answer; try again, or stop it first", err=True)
        sys.exit(1)
    except DaemonError as exc:
        click.echo(str(exc), err=True)
        _print_result({"success": False, "error": str(exc), "component": args.get("component", "")})
        sys.exit(1)
    click.echo(f"{cmd} {job} running in the daemon (pid {pid})", err=True)
    _follow(path, job, cfg.update.self_update_deadline + FOLLOW_GRACE)


FOLLOW_GRACE = 30.0  # beyond update.self_update_deadline, how long a silent daemon is waited for


def _follow(path: str, job: str, patience: float) -> NoReturn:
    """Poll `update-progress` and print each state. A self-update restarts the daemon: while it is
    away (or the new one has not picked the job up yet) keep asking for up to `patience` seconds."""
    import time

    from daemon_app import control

    after = 0
    started = None
    silent_since: float | None = None
    while True:
        try:
            view = control.request(path, "update-progress", {"id": job, "after": after}, timeout=10)
            if view["started"] != started and after:
                # The new daemon took the job over (after a self-update): its states start afresh.
                after = 0
                view = control.request(path, "update-progress", {"id": job, "after": 0}, timeout=10)
            started = view["started"]
        except DaemonError as exc:
            now = time.monotonic()
            silent_since = silent_since or now
            if now - silent_since > patience:
                click.echo(f"D4003 update {job}: the daemon has not answered for {patience:g}s: {exc}",
                           err=True)
                sys.exit(1)
            time.sleep(0.2)
            continue
        silent_since = None
        for st in view["states"]:
            _echo_progress(st["state"], st["percent"], st["message"])
        after = view["next"]
        if view["done"]:
            result = view["result"] or {"success": False, "error": "D4003 update ended without a result"}
            _print_result(result)
            sys.exit(0 if result.get("success") else 1)
        time.sleep(0.2)


def _echo_progress(state: str, percent: float = 0.0, message: str = "", result: Any = None) -> None:
    if state == "downloading" and not message:
        click.echo(f"\r{state} {percent:5.1f}%", nl=False, err=True)
        return
    click.echo(f"{state}{': ' + message if message else ''}", err=True)


def _print_result(result: dict[str, Any]) -> None:
    click.echo(json.dumps(result))


def _finish_result(result: Any) -> None:
    _print_result(result.to_dict())
    sys.exit(0 if result.success else 1)


@main.command("update")
@click.option("--component", required=True, type=click.Choice(["agent", "daemon"]))
@click.option("--file", "file_", type=click.Path(dir_okay=False), help="Local package file.")
@click.option("--url", help="https:// URL of the package (mutual TLS with manager.tls.*).")
@click.option("--manifest", "manifest_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Directory holding manifest.json and manifest.json.sig.")
@_socket_option
@click.pass_obj
def update_cmd(obj: Ctx, component: str, file_: str | None, url: str | None, manifest_dir: str,
               socket_path: str | None) -> None:
    """Verify and install a signed release of the Agent or the daemon.

    Checks, in order: signature, expiry, component, version floor, then the package's size and
    SHA-256; backs up the installed file and swaps it atomically. With a daemon running it does this
    through the daemon (which stops and starts the Agent, or restarts itself into the new pyz) and
    follows its progress; with none, directly under the update lock. Prints the UpdateResult as
    JSON; exits 0 on success (also when that version is already installed), 1 with its D4xxx code
    otherwise (failed or rolled back).
    """
    import base64

    from daemon_app import logs, plugins
    from daemon_app.update.flow import UpdateRequest, run_update

    if bool(file_) == bool(url):
        raise click.UsageError("give exactly one of --file or --url")
    cfg = obj.load()
    logs.setup("warning", "", stderr=True)
    try:
        request = UpdateRequest.from_dir(component, manifest_dir, url=url or "",
                                         file=os.path.abspath(file_) if file_ else "")
    except DaemonError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    args = {"component": component, "url": request.url, "file": request.file,
            "manifest_b64": base64.b64encode(request.manifest).decode(),
            "signature_b64": base64.b64encode(request.signature).decode()}
    if _through_daemon(cfg, socket_path, "update", args):
        return
    _finish_result(run_update(cfg, request, _echo_progress, plugins=plugins.load_all(cfg)))


@main.command("rollback")
@click.option("--component", required=True, type=click.Choice(["agent", "daemon"]))
@_socket_option
@click.pass_obj
def rollback_cmd(obj: Ctx, component: str, socket_path: str | None) -> None:
    """Restore the newest backup of a component on purpose (the version floor is kept).

    Through the running daemon when there is one (it restarts the Agent), directly otherwise.
    Prints the UpdateResult as JSON; exits 1 with D4004 when there is no backup or restoring fails.
    """
    from daemon_app import logs
    from daemon_app.update.flow import Updater

    cfg = obj.load()
    logs.setup("warning", "", stderr=True)
    if _through_daemon(cfg, socket_path, "rollback", {"component": component}):
        return
    _finish_result(Updater(cfg).rollback(component, _echo_progress))


if __name__ == "__main__":
    main()
