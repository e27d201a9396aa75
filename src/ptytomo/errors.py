"""The one exception type users see.

Anything raised as ``PtytomoError`` is a problem with the user's input or
environment (a missing HDF5 field, a bad option, CUDA asked for without a
GPU).  The CLI prints its message as one line and exits non-zero; every other
exception is a bug in ptytomo and keeps its traceback.
"""


class PtytomoError(Exception):
    """A user-facing error whose message names the offending field or option."""
