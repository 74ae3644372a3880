"""The agent daemon: runs queued tasks as subprocesses and records their output, tokens and cost."""
