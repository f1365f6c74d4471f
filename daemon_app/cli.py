"""The `daemon` command line (click): run, collect, config, plugins, version, and the operator tools."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any

import click

from daemon_app import __version__
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", envvar=config_mod.ENV_CONFIG, metavar="FILE",
              type=click.Path(dir_okay=False), help="Config file (default: $DAEMON_CONFIG, else built-in "
              "defaults).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """daemon.pyz: collect host metrics, supervise the Agent, report to the Manager, update safely.

    Start with `daemon config check`, then `daemon collect --once` to see what it measures, then
    `daemon run`.
    """
    ctx.obj = Ctx(config_mod.resolve_path(config_path))


# --- config -------------------------------------------------------------------------------------

@main.group("config")
def config_group() -> None:
    """Check or show the configuration."""


@config_group.command("check")
@click.pass_obj
def config_check(obj: Ctx) -> None:
    """Validate the config: exit 0 with a summary, or exit 2 listing every problem with its D-code."""
    cfg = obj.load()
    click.echo(config_mod.summary(cfg))


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
        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


# --- collect ------------------------------------------------------------------------------------

@main.command("collect")
@click.option("--once", is_flag=True, required=True, help="Run one round and exit (required).")
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="json", show_default=True)
@click.pass_obj
def collect_cmd(obj: Ctx, once: bool, fmt: str) -> None:
    """Run every enabled collector once and print the metrics (like `telegraf --test`).

    Exits 1 when a collector failed or timed out; the others are still printed.
    """
    from daemon_app import logs, plugins
    from daemon_app.collection import CollectorRunner

    cfg = obj.load()
    # Each failure is logged once on stderr (with D5001 and the collector's name) as it happens.
    logs.setup("error", "", stderr=True)
    loaded = plugins.load_all(cfg)
    runner = CollectorRunner()
    calls = []
    for name, fn in loaded.implementations("collect"):
        ccfg = cfg.collector(name)
        if ccfg.enabled:
            calls.append((name, fn, ccfg, ccfg.timeout))
    outcomes = runner.run(calls)
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
    """List or install plugins (built-in, entry points, and the plugin directory)."""


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
    cfg = obj.load()
    target = cfg.plugins.dir
    os.makedirs(target, exist_ok=True)
    cmd = [_python_for_pip(), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--upgrade", "--target", target, *pip_arg, *spec]
    click.echo(f"installing into {target}: {' '.join(spec)}")
    rc = subprocess.call(cmd)
    if rc != 0:
        click.echo(f"D5001 plugins install: pip exited {rc} (its messages are above)", err=True)
    sys.exit(rc)


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
    """Print the daemon version, the Python version and the pyz build id."""
    from daemon_app import buildinfo

    info = {"version": __version__, "python": platform.python_version(), "build_id": buildinfo.build_id()}
    if fmt == "json":
        click.echo(json.dumps(info))
    else:
        click.echo(f"daemon {info['version']} (python {info['python']}, build {info['build_id']})")


# --- run ----------------------------------------------------------------------------------------

@main.command("run")
@click.pass_obj
def run_cmd(obj: Ctx) -> None:
    """Run the daemon in the foreground (systemd runs it like this).

    Without `manager.address` it runs stand-alone: it collects on schedule and passes each report
    to the `report` hook (the built-in file reporter writes <work_dir>/reports.jsonl).
    SIGTERM/SIGINT stop it cleanly, SIGHUP reloads the configuration; the Agent keeps running.
    """
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
    except (DaemonError, OSError) as exc:
        import logging

        # An OSError here is the host refusing a configured path (work_dir, pid_file, sockets).
        err = exc if isinstance(exc, DaemonError) else DaemonError(f"cannot start: {exc}", code="D1002")
        logging.getLogger("daemon_app").error(str(err), extra={"code": err.code})
        click.echo(str(err), err=True)
        sys.exit(1)
    sys.exit(engine.run_forever())


if __name__ == "__main__":
    main()
