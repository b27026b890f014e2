"""The errors the EIF library raises."""


class EifError(Exception):
    """An EIF (or an input to the builder) is malformed; the message says what and where."""


class FileError(EifError):
    """A user-named file cannot be used: missing, not a regular file, over its size limit,
    changed while being read, or an output that cannot be written."""
