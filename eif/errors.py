"""The one error class the EIF reader and builder raise."""


class EifError(Exception):
    """An EIF (or an input to the builder) is malformed; the message says what and where."""
