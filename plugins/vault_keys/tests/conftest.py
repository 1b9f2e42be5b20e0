"""Fixtures: a real OpenBao dev server per test (see ``headscale_vault_keys.testing``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from headscale_vault_keys.testing import DevVault, start_dev_vault


@pytest.fixture
def vault(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DevVault]:
    """An unsealed OpenBao dev server on 127.0.0.1 with KV v2 at ``secret/``; stopped after the test."""
    running = start_dev_vault(tmp_path / "openbao")
    yield running
    running.stop()


@pytest.fixture
def tls_vault(tmp_path: Path) -> Iterator[DevVault]:
    """The same with ``-dev-tls``: HTTPS with a generated CA (``tls_vault.ca_bundle``)."""
    running = start_dev_vault(tmp_path / "openbao-tls", tls=True)
    yield running
    running.stop()
