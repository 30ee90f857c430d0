"""CLIError: a failure the user can fix, printed as one line with an exit code."""

__all__ = ["CLIError", "EXIT_FAILURE", "EXIT_USAGE"]

EXIT_FAILURE = 1  # the work failed (server error, training or export failure)
EXIT_USAGE = 2  # the input was wrong (unknown model, unreadable file); argparse uses 2 too


class CLIError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
