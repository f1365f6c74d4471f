"""The Manager link: gRPC client over mutual TLS, and the durable outbox."""

import os

# grpclib needs multidict, whose C extension in the pyz is built for one CPython only, and
# multidict 7 does not fall back to its pure-Python twin when the extension fails to import: so the
# daemon always asks for the pure-Python one (grpclib touches it once per call, for metadata).
os.environ.setdefault("MULTIDICT_NO_EXTENSIONS", "1")
