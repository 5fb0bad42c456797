"""The exception type users see (the CLI prints it as a single line and exits non-zero), and the warning
type for what the library did in their place (the CLI prints it as one line and goes on; the web demo shows
it on the page)."""


class LatteError(Exception):
    """A problem with the user's input (path, config, checkpoint, data): message is one line."""


class LatteWarning(UserWarning):
    """Something the library changed about the user's input and went on (an image resized, one video of
    several taken): message is one line, for the user, whatever logging is set up."""
