"""pilot.update.installation's pure parts: the PATH hint for each shell."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilot.update.installation import path_hint


@pytest.mark.parametrize(("shell", "line"), [
    ("/bin/bash", "echo 'export PATH=\"/opt/tools/bin:$PATH\"' >> ~/.bashrc"),
    ("/usr/bin/zsh", "echo 'export PATH=\"/opt/tools/bin:$PATH\"' >> ~/.zshrc"),
    ("/usr/local/bin/fish", "fish_add_path /opt/tools/bin"),
    ("/bin/dash", "echo 'export PATH=\"/opt/tools/bin:$PATH\"' >> ~/.profile"),
    (None, "echo 'export PATH=\"/opt/tools/bin:$PATH\"' >> ~/.profile"),  # no SHELL: sudo -i, cron, CI
])
def test_the_path_hint_names_the_users_shell_and_its_profile(shell, line, monkeypatch):
    monkeypatch.delenv("SHELL", raising=False)
    if shell is not None:
        monkeypatch.setenv("SHELL", shell)
    assert path_hint(Path("/opt/tools/bin")) == line


def test_the_path_hint_writes_home_as_a_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert path_hint(tmp_path / ".local/bin", shell="bash") == \
        "echo 'export PATH=\"$HOME/.local/bin:$PATH\"' >> ~/.bashrc"
    assert path_hint(tmp_path / ".local/bin", shell="fish") == "fish_add_path $HOME/.local/bin"
