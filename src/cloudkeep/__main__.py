"""``python -m cloudkeep``."""

from cloudkeep.cli.main import run

run()
