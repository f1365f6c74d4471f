"""daemon.pyz: the host daemon (collect, supervise, report, update)."""

__version__ = "0.1.0"
