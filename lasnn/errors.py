"""The one exception type users see: a sentence naming the problem and what to do about it."""


class LasnnError(Exception):
    """A user-facing error. The CLI prints ``str(error)`` as one line and exits with ``exit_code``.

    Raise it with a complete sentence that names the file/field/value at fault and what was expected.
    """

    exit_code = 2
