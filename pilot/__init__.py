"""Pilot: an agent daemon that keeps itself up to date.

Nothing heavy is imported here: every command pays for this module.
"""

from pilot.buildinfo import current_version

__version__ = current_version()
