"""CLI options and error handling, written once for every command.

Each option is an ``Annotated`` type that says what it protects against; every
command is wrapped by ``handle_errors``, which turns any failure into the one
line and the exit code of DESIGN.md (0 done; 2 bad input; 3 refused by a
guard; 4 approval rejected or timed out; 1 anything else). Modelled on
sqlmesh's ``cli/options.py`` and ``@error_handler``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from safeops.core.errors import exit_code_for

TARGET_HELP = (
    "Database name to resolve (<TARGET>_DATABASE_URL or Secret block "
    "<target>-database-url); a name, never a URL."
)

MediaTarget = Annotated[str, typer.Option("--target", help=TARGET_HELP)]
CmsTarget = Annotated[str, typer.Option("--target", help=TARGET_HELP)]
Live = Annotated[
    bool,
    typer.Option(
        "--live",
        help="Really change the database (default: dry run, which changes nothing anywhere).",
    ),
]
Yes = Annotated[
    bool, typer.Option("--yes", help="Approve as the current user without a prompt (and say so).")
]
SavedPlan = Annotated[
    str | None,
    typer.Option(
        "--plan",
        help="Plan hash of a reviewed dry run: only that exact plan is applied, and "
        "a plan that changed since is refused.",
    ),
]
PlanSignature = Annotated[
    str | None,
    typer.Option(
        "--plan-signature",
        help="File written by `safeops sign-plan`: the signed saved plan, "
        "required with --plan when the workers have allowed signers.",
    ),
]
SigningKey = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Private key file to sign with (or a .pub whose private half is in the "
        "ssh-agent); default SAFEOPS_SIGNING_KEY, then the agent's first key. Used only when "
        "the run's worker has allowed signers.",
    ),
]
Approver = Annotated[
    str | None,
    typer.Option(
        "--approver",
        help="Your name, for runs without allowed signers (default: the current "
        "user). Signed runs ignore it: the signature says who you are.",
    ),
]
RunId = Annotated[str, typer.Argument(help="The paused flow run's id (safeops approvals).")]
Target = Annotated[
    str, typer.Option("--target", help="The target name (its database's fingerprint is signed).")
]
Why = Annotated[
    str, typer.Option("--reason", help="Why (one line: ticket, context); recorded with it.")
]
Reason = Annotated[
    str | None,
    typer.Option("--reason", help="Reason recorded with the approval (ticket, context)."),
]
Timeout = Annotated[
    int,
    typer.Option(
        "--timeout", help="Seconds the approval may wait; nothing changes when it runs out."
    ),
]
Untraced = Annotated[
    bool,
    typer.Option(
        "--untraced",
        help="Restore a snapshot that is not in the target's snapshot register "
        "(not written by safeops from this database); the approval and audit row say so.",
    ),
]
SnapshotUri = Annotated[str, typer.Argument(help="A snapshot: a path or s3://bucket/key.")]
SiteId = Annotated[str, typer.Argument(help="The site's UUID.")]

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(command: F) -> F:
    """One line on stderr and the documented exit code, whatever went wrong."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            print("error: interrupted; nothing was approved", file=sys.stderr)
            raise typer.Exit(4) from None
        except BaseException as exc:
            text = str(exc).strip()
            message = text.splitlines()[0] if text else type(exc).__name__
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise typer.Exit(exit_code_for(exc)) from None

    return wrapper  # type: ignore[return-value]
