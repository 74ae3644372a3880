"""Self-update: manifest parsing, verification, fetching, installing and the boot sentinel.

Layers, python-tuf style: `manifest` and `verify` are pure (bytes in, dataclasses or
errors out), `fetch` is the only network code, `install`/`sentinel` the only code that
touches the install, and `updater` wires them together.
"""
