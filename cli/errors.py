"""What a user got wrong on the command line: printed as one line, without a traceback, exit status 2."""


class CliError(Exception):
    """A user error: printed without a traceback, exit status 2."""
