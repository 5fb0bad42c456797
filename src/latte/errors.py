"""The one exception type users see: the CLI prints it as a single line and exits non-zero."""


class LatteError(Exception):
    """A problem with the user's input (path, config, checkpoint, data): message is one line."""
