"""The terminal dashboard. This package is the only place Textual is imported."""

from __future__ import annotations


def run_dashboard(runtime):
    """Run the dashboard until the user quits (None) or an upgrade is ready (a Reexec)."""
    from pilot.dashboard.app import PilotApp
    from pilot.update import note_dashboard_user

    note_dashboard_user()
    return PilotApp(runtime).run()
