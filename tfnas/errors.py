"""The base of every error caused by a user's input (file, key, value, dataset).

The CLI prints these as one line and exits with code 2; anything else is a bug and says so. Kept free of
TensorFlow so that reporting a bad file costs no TensorFlow import.
"""


class UserError(ValueError):
    """Bad input: the message says what is wrong and where (file, field, line)."""
