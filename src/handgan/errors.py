"""The one exception type that means "the user gave us something wrong"."""


class HandganError(Exception):
    """A user mistake (bad file, bad argument). The CLI prints it on one line and exits 2.

    Library code raises it with the file and the problem in the message, e.g.
    ``HandganError(f"{path}: not an NYU depth PNG (expected 8-bit RGB, got mode 'L')")``.
    Programming errors stay ordinary exceptions with tracebacks.
    """
