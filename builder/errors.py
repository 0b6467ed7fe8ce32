"""The two kinds of failure the CLI distinguishes."""


class UserError(Exception):
    """Bad input (cluster file, option, missing file): one line, exit status 2."""


class BuildError(Exception):
    """The input was fine but building failed (a tool, the disk): exit status 1."""
