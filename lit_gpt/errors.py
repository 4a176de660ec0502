"""The one exception type for problems a user can fix (a bad path, a bad config value, a corrupt checkpoint).

The CLI prints its message as one line and exits non-zero; any other exception is a bug and keeps its traceback.
"""


class LitGPTError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""
