"""The one error class the guest image build raises."""


class GuestBuildError(Exception):
    """A guest image could not be built; the message says which step and why."""
