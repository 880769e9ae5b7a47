"""Errors raised for bad user input, each with a one-line message naming the field and the fix."""


class ConfigError(ValueError):
    """A configuration value or input file is unusable.

    The message is one line: ``<field>: <what is wrong>; <how to fix it>``. Entry points print it and
    exit with status 2 before any training starts.
    """

    def __init__(self, field: str, problem: str, fix: str | None = None):
        self.field = field
        message = f"{field}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message.replace("\n", " "))
