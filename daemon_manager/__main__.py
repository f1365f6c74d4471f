"""Entry point for `python -m daemon_manager`."""

from daemon_manager.cli import main

if __name__ == "__main__":
    main()
