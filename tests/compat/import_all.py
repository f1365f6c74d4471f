"""Import every module of daemon_app with the running interpreter (the pyz's packages on sys.path).

Run as `SHIV_INTERPRETER=1 python3.X daemon.pyz import_all.py`: shiv's bootstrap puts the pyz's
site-packages (and build/preamble.py this interpreter's own builds) on sys.path, then runs this
file. Exit 0 and "imported N modules", or exit 1 naming each module that failed and why. Written
for the oldest Python the pyz supports.
"""

import importlib
import pkgutil
import sys
import traceback

import daemon_app

# The reference Manager's grpcio stubs and `make proto`'s generator are not the daemon's: grpcio is
# not in the pyz (the daemon's link is grpclib, daemon_app/comm/rpc.py).
NOT_THE_DAEMONS = {"daemon_app.proto.daemon_pb2_grpc", "daemon_app.proto.generate"}
failed = []
names = [m.name for m in pkgutil.walk_packages(daemon_app.__path__, "daemon_app.")
         if m.name not in NOT_THE_DAEMONS]
for name in ["daemon_app"] + names:
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\n" + traceback.format_exc())
if failed:
    print("\n".join(failed))
    sys.exit(1)
print(f"imported {len(names) + 1} modules on Python {sys.version.split()[0]}")
