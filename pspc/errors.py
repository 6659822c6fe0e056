"""The engine's one error base: bad input to pspc (data, shapes, times, options).

Every error the engine raises for input a caller can fix subclasses InputError, so the
layers above can tell "bad input" (shown to the user) from a bug (anything else).
"""


class InputError(ValueError):
    """Input the caller can fix; the message names the problem."""
