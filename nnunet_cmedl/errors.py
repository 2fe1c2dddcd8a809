class UserInputError(Exception):
    """Bad input from the user (a file, a folder, a setting).

    CLIs print its message as one line on stderr and exit with status 2. The message names the file or setting
    and says what is wrong with it.
    """
