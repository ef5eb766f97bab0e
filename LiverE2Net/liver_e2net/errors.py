"""User-facing errors: the message names the file or value and says what to do."""


class UserInputError(ValueError):
    """Bad input from the user (file, value, option). The CLI prints the message and exits 2."""
