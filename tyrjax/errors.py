"""The one exception type users see: a message naming the bad input and the fix."""


class TyrjaxError(Exception):
    """A user-facing error: bad input, missing file, impossible request."""
