"""Runs `keypost setup`'s real window and drives its page as a user would (test helper).

Run as a separate process by test_installer_setup_window.py, because a GUI toolkit's event loop
owns the main thread and starts once per process. argv: scenario ("save" or "cancel"); stdin: a
JSON object with the answers (not argv: it holds the password). Prints one line
"RESULT <json>" with what the page showed; the exit status is open_window's (0 saved, 1 not).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from keypost.installer.setup_wizard import open_window

TIMEOUT = 60.0


def wait_for(window: Any, expression: str) -> Any:
    """Poll the page until the expression is truthy (the page's own handlers are async)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = window.evaluate_js(expression)
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"the page never showed: {expression}")


def type_into(window: Any, element: str, text: str) -> None:
    # Set the value and fire the events a user's typing fires.
    window.evaluate_js(
        f"(() => {{ const e = document.getElementById({json.dumps(element)});"
        f" e.value = {json.dumps(text)};"
        " e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change')); })()"
    )


def click(window: Any, element: str) -> None:
    window.evaluate_js(f"document.getElementById({json.dumps(element)}).click()")


def fill(window: Any, answers: dict[str, str]) -> str:
    """Fill every field; returns the fingerprint text the page shows for the pasted PEM."""
    wait_for(window, "typeof window.pywebview?.api?.save === 'function'")
    for field in ("directory", "username", "password"):
        type_into(window, field, answers[field])
    if answers.get("pem_as_file"):
        # What choosing a file in the dialog does: a File in the input, then "change".
        window.evaluate_js(
            "(() => { const t = new DataTransfer();"
            f" t.items.add(new File([{json.dumps(answers['pem'])}], 'directory-ca.pem'));"
            " const e = document.getElementById('file'); e.files = t.files;"
            " e.dispatchEvent(new Event('change')); })()"
        )
    else:
        type_into(window, "pem", answers["pem"])
    fp_text = "document.getElementById('fp').textContent"
    shown: str = wait_for(window, f"(t => t !== '-' && t)({fp_text})")
    click(window, "confirm")
    return shown


def save_and_read(window: Any) -> dict[str, str]:
    window.evaluate_js("document.getElementById('result').textContent = ''")
    click(window, "save")
    text: str = wait_for(window, "document.getElementById('result').textContent")
    cls: str = window.evaluate_js("document.getElementById('result').className")
    return {"text": text, "class": cls}


def drive(window: Any, scenario: str, answers: dict[str, str], seen: dict[str, Any]) -> None:
    try:
        seen["fingerprint_shown"] = fill(window, answers)
        if scenario == "save":
            good = answers["directory"]
            type_into(window, "directory", answers["bad_directory"])
            seen["bad"] = save_and_read(window)
            seen["config_after_bad"] = os.path.exists(answers["config_dir"])
            type_into(window, "password", answers["password"])  # the page clears it after a try
            type_into(window, "directory", good)
            seen["good"] = save_and_read(window)
            seen["close_label"] = window.evaluate_js("document.getElementById('close').textContent")
        if answers.get("pause"):
            time.sleep(float(answers["pause"]))  # lets a screenshot be taken by hand
        # Cancel before saving, Close after. Clicked from a timer, not by evaluate_js
        # itself: the click destroys the window, and an evaluate_js still waiting for its
        # result then waits forever in this (non-daemon) thread, so the process printed
        # its RESULT but never exited (a CI run timed out after 150 s).
        window.evaluate_js(
            "setTimeout(() => document.getElementById('close').click(), 0); true")
    except Exception as exc:  # reported to the test; the window must still close
        seen["error"] = f"{type(exc).__name__}: {exc}"
        window.destroy()


def main() -> int:
    scenario, answers = sys.argv[1], json.load(sys.stdin)
    seen: dict[str, Any] = {}
    status = open_window(None, lambda window: drive(window, scenario, answers, seen))
    print("RESULT " + json.dumps(seen), flush=True)
    sys.stderr.flush()
    # Nothing is left to do: skip interpreter shutdown, which waits for every non-daemon
    # thread and runs Qt WebEngine's teardown, either of which can hang in a test run.
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
