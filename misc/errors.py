"""The one exception type for mistakes a user can fix (paths, ids, images, labels, checkpoints, flags)."""


class UserError(Exception):
    """A problem with the user's input. The message is one line that names the file and the fix.

    Entry points (``run_sample.py`` and ``python -m step.<name>``) print it as a single line and exit
    with status 2 instead of showing a traceback.
    """
