"""How the client prints a failure on stderr: one line "cairn: error: ...", and a hint line when
there is one; with --json one object {"error": {"message", "hint", "exit_status"}} instead.
Imports nothing beyond the standard library, so every command (wal-fetch too) stays light."""

from __future__ import annotations


def error_text(message: str, hint: str | None, code: int, as_json: bool) -> str:
    """The text to print on stderr for a failure that exits with `code`."""
    if as_json:
        import json  # only --json pays for it

        return json.dumps({"error": {"message": message, "hint": hint, "exit_status": code}})
    return f"cairn: error: {message}" + (f"\nhint: {hint}" if hint else "")
