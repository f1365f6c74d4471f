"""Entry point for `python -m daemon_app` and for the shiv zipapp."""

from daemon_app.cli import main

if __name__ == "__main__":
    main()
