import re


class UserInputError(Exception):
    """Bad input from the user (a file, a folder, a setting).

    CLIs print its message as one line on stderr and exit with status 2. The message names the file or setting
    and says what is wrong with it.
    """


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none): one-line errors."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def itk_message(e: BaseException) -> str:
    """The line of a SimpleITK/ITK exception that says what is wrong, without ITK's source locations."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    picked = [ln for ln in lines if "ERROR" in ln]
    msg = picked[0] if picked else (lines[-1] if lines else type(e).__name__)
    msg = re.sub(r"^.*?ERROR:\s*", "", msg)
    msg = re.sub(r"\(0x[0-9a-fA-F]+\)", "", msg)
    if lines and lines[-1] not in msg and lines[-1] != msg and "ERROR" not in lines[-1]:
        msg += " / " + lines[-1]
    return " ".join(msg.split())[:300]
