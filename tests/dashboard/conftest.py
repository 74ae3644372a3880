"""The dashboard tests use the end-to-end release tree served on 127.0.0.1."""

from tests.e2e.conftest import release_site  # noqa: F401 (a fixture)
